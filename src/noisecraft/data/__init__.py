"""Datasets: every one yields (image tensor in [-1, 1], caption)."""
