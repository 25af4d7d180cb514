"""Shipped surrogate checkpoints (package data; loaded with importlib.resources)."""
