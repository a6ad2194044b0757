"""Schedulers: drafters that drive other drafters (DyTC, the cascade baselines) and their math."""
