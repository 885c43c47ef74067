"""The ``medxai`` command line (also ``python -m MedXAILib``).

Each subcommand lives in its own module with ``register(subparsers)`` and ``run(args)``. Packages beside
MedXAILib add subcommands through the entry-point group ``medxai.commands`` (``medxai view`` from
MedXAIViewer): the library finds them without importing them by name (docs/adr/0003-web-viewer.md).
Exit codes: 0 success; 2 bad input (a one-line reason on stderr, no traceback, no output file);
130 cancelled (Ctrl-C or SIGTERM, no output file); 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional, Sequence

from .. import __version__
from ..errors import Cancelled, MedXAIError
from . import boundary_cmd, counterfactual_cmd, demo_cmd, explain_cmd, layers_cmd, methods_cmd, stats_cmd
from . import cohort_cmd, compare_cmd, evaluate_cmd, run_cmd, train_demo_cmd
from .common import EXIT_CANCELLED, EXIT_OK, Parser, fail, guard_outputs

__all__ = ["main", "build_parser", "PLUGIN_GROUP", "plugin_commands"]

COMMANDS = (explain_cmd, methods_cmd, layers_cmd, demo_cmd, boundary_cmd, stats_cmd, counterfactual_cmd)
COMMANDS += (evaluate_cmd, compare_cmd, train_demo_cmd, run_cmd, cohort_cmd)
#: Entry-point group of subcommands that other packages provide (a module with ``register`` and ``run``).
PLUGIN_GROUP = "medxai.commands"


def plugin_commands() -> list[tuple[str, Any]]:
    """The installed ``medxai.commands`` entry points as (name, loaded module); one that fails to load still
    gets a parser that says why in one line, so a broken plug-in never takes the other commands down."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        if entry.name in found:
            continue
        try:
            found[entry.name] = entry.load()
        except Exception as error:  # noqa: BLE001 - any import failure of someone else's package
            found[entry.name] = _Unloadable(entry.name, f"{type(error).__name__}: {error}".splitlines()[0])
    return list(found.items())


class _Unloadable:
    """Stands in for a plug-in subcommand whose module cannot be imported."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def register(self, sub: argparse._SubParsersAction) -> None:
        parser = sub.add_parser(self.name, help=f"(unavailable: {self.reason})", add_help=False)
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(handler=self.run, io_inputs=(), io_outputs=())

    def run(self, args: argparse.Namespace) -> int:
        return fail(f"'medxai {self.name}' cannot be loaded: {self.reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medxai", description="Explain MONAI/PyTorch models on CT, MRI and PET volumes.")
    parser.add_argument("--version", action="version", version=f"medxai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    for name, command in plugin_commands():
        if name not in sub.choices:  # a built-in command is never replaced
            command.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # The one output guard: every output is checked against every input before any work, written
        # into staging, and committed together when the command succeeds (common.finish).
        args.outputs = guard_outputs(args)
        with args.outputs:
            code = args.handler(args)
            if code == EXIT_OK and not args.outputs.committed:
                args.outputs.commit()
            elif code != EXIT_OK:
                args.outputs.discard()
        return code
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("\nmedxai: cancelled; nothing was written\n")
        return EXIT_CANCELLED
    except MedXAIError as exc:
        return fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def command() -> int:
    """The ``medxai`` command and ``python -m MedXAILib``: :func:`main` in a process of its own, whose
    allocator ``MEDXAI_ALLOCATOR`` may choose (:func:`MedXAILib.allocator.from_environment`)."""
    from ..allocator import choice, keep_freed_buffers

    try:
        if choice() == "keep" and not keep_freed_buffers():
            sys.stderr.write("medxai: warning: MEDXAI_ALLOCATOR=keep not applied: not glibc, or the allocator "
                             "was chosen already (MALLOC_*, GLIBC_TUNABLES, a preloaded allocator)\n")
    except MedXAIError as exc:
        return fail(str(exc))
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(command())
