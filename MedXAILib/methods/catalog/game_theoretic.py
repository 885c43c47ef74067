"""Game-theoretic family: metadata and parameter dataclasses (importable without torch)."""
