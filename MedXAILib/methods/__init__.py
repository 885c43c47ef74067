"""Attribution methods. Importing this package registers every method (light metadata only)."""

from . import catalog  # noqa: F401  (registers the methods)
from ..registry import METHODS

__all__ = ["METHODS"]
