"""Command-line front end of MedXAILib."""

from .main import main

__all__ = ["main"]
