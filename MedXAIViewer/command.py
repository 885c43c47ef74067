"""``medxai view DIR``: serve a result folder as a web page (the ``medxai.commands`` entry point ``view``).

MedXAILib's command line finds this module through the entry-point group ``medxai.commands``
(pyproject.toml) and calls :func:`register`; it never names it, so MedXAILib stays free of slicer, vtk and
trame. This module imports only the standard library and MedXAILib's command-line helpers at load time:
``medxai --help`` works without the viewer's dependencies, and :func:`run` says in one line how to install
them when they are missing.

Conventions of every subcommand: one-line errors with exit code 2, ``common.declare_io`` for its paths (the
folder is an input; a viewer writes nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from MedXAILib.cli import common
from MedXAILib.errors import InputError

__all__ = ["register", "run", "DEFAULT_HOST", "DEFAULT_PORT", "NEEDED"]

DEFAULT_HOST = "127.0.0.1"  # this machine only; another address only when asked for with --host
DEFAULT_PORT = 8080
#: Import names the viewer needs (the ``viewer`` extra of pyproject.toml), checked before anything loads.
NEEDED = ("trame", "trame_slicer", "slicer", "vtk")
_INSTALL = "pip install 'slicer-medxai[viewer]' (in a checkout: pip install -e '.[viewer]')"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("view", help="serve a result folder as a web page: Slicer's views in a browser",
                            description="Serve a result folder (of explain, demo or cohort) as a web page and "
                                        "print its address; Ctrl-C stops it.")
    parser.add_argument("folder", metavar="DIR", help="the result folder to show; nothing outside it is read")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 makes "
                             "the page reachable from the network)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--quiet", action="store_true", help="print only the address")
    common.declare_io(parser, ("folder",), [])
    parser.set_defaults(handler=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be an integer in [0, 65535]; got {text!r}")
    return port


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise InputError(f"'{folder}' is not a folder: give the folder that explain, demo or cohort wrote")
    missing = [name for name in NEEDED if not _installed(name)]
    if missing:
        raise InputError(f"the web viewer needs {', '.join(missing)}: {_INSTALL}")
    _check_port(args.host, args.port)

    from .app import ViewerApp

    app = ViewerApp(folder)
    if not args.quiet:
        for problem in app.viewer_scene.problems:
            sys.stderr.write(f"medxai: warning: {problem}\n")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            sys.stderr.write(f"medxai: warning: listening on {args.host}: anyone who can reach this machine can "
                             "open the page\n")

    def ready(url: str) -> None:
        print(url if args.quiet else f"MedXAI viewer of {folder.resolve()}: {url}  (Ctrl-C stops it)", flush=True)

    try:
        app.start(args.host, args.port, on_ready=ready)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a viewer is stopped
    return common.EXIT_OK


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a package that is half there counts as missing
        return False


def _check_port(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be bound (trame would only log it)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise InputError(f"--host {host}: {error.strerror or error}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port"
                             ) from None
