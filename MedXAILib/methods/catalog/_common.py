"""Shared constants of the method catalogue."""

BOTH = ("classification", "segmentation")
