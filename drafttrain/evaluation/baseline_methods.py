"""`drafttrain eval` methods for the cascade and tree baselines: vc, hc, csd, tree."""
