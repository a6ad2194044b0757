"""Decoding: sampling math, lossless verification, and the speculative decode loop."""
