"""drafttrain: train and tune draft hierarchies and schedulers for lossless speculative decoding."""

__version__ = "0.1.0"
