"""Evaluation: run decoding methods side by side on a prompt set and report speed and losslessness."""
