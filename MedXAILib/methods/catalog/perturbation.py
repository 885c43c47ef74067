"""Perturbation family: metadata and parameter dataclasses (importable without torch)."""
