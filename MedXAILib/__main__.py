"""``python -m MedXAILib`` runs the ``medxai`` command line."""

import sys

from .cli.main import command

sys.exit(command())
