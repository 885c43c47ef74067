"""``python -m MedXAILib.demo.training``: train the demo models into Resources/Models (or --out)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
