"""drafttrain's recipes: one linear script per workflow (`drafttrain run NAME --config FILE`)."""
