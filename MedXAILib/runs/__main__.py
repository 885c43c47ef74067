"""``python -m MedXAILib.runs FOLDER``: run the request in FOLDER (see :mod:`MedXAILib.runs.worker`)."""

import sys

from ..allocator import from_environment
from ..errors import InputError
from .protocol import write_error
from .worker import main

if __name__ == "__main__":  # pragma: no cover - run as a process
    try:
        from_environment()  # a process of its own: MEDXAI_ALLOCATOR may choose its allocator
    except InputError as error:
        sys.exit(write_error(str(error)))
    sys.exit(main())
