"""Training: distillation losses, Lightning modules and the recipes' shared parts."""
