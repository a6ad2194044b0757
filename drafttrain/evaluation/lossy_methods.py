"""`drafttrain eval` methods for lossy speculative cascades: speccascade-chow|diff|opt|token."""
