"""Recipes: short end-to-end scripts over the building blocks (one file per job)."""
