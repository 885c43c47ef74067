"""``python -m MedXAILib.runs FOLDER``: run the request in FOLDER (see :mod:`MedXAILib.runs.worker`)."""

import sys

from .worker import main

if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
