"""``medxai run FOLDER``: run the request in a folder (the worker of background jobs and cohort cases)."""

from __future__ import annotations

import argparse

from . import common

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run", help="run the request in a folder (background jobs, cohort cases)",
        description="Run the request written into FOLDER (request.json and arrays.npz) and write its result "
                    "there (result.npz, then result.json). Progress is printed as JSON lines.")
    parser.add_argument("folder", metavar="FOLDER", help="the folder holding the run request")
    # The result goes into the request folder itself, each file atomically (MedXAILib.runs.folder), so the
    # command names no output option for the output guard.
    common.declare_io(parser, ("folder",), [])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..runs.worker import serve

    return serve(args.folder)
