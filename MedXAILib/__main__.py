"""``python -m MedXAILib`` runs the ``medxai`` command line."""

import sys

from .cli.main import main

sys.exit(main())
