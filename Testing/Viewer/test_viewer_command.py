"""``medxai view``: found through the ``medxai.commands`` entry point, with the command line's conventions.

- MedXAILib's parser gets ``view`` from the installed entry point (pyproject.toml declares it), and the
  subcommand declares its folder as an input and no output (the output guard's walk covers it too);
- a missing folder, a file, a bad port and a port already taken fail in one line with exit code 2, before
  any server starts;
- without the viewer's packages ``medxai --help`` still works and ``medxai view`` says how to install them;
- a plug-in whose module cannot be imported gets a one-line error and leaves the other commands working;
- ``medxai demo`` ends by printing the ``medxai view`` command for its folder.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from viewer_testing import ROOT

from MedXAILib.cli.main import PLUGIN_GROUP, build_parser, main, plugin_commands


def _subcommands():
    import argparse

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_view_comes_from_the_declared_entry_point_and_declares_its_input():
    declared = re.search(r'\[project\.entry-points\."medxai\.commands"\]\s*\nview = "([\w.]+)"',
                         (ROOT / "pyproject.toml").read_text())
    assert declared and declared.group(1) == "MedXAIViewer.command", "pyproject.toml must declare the view command"
    assert ("view", "MedXAIViewer.command") in {(n, getattr(m, "__name__", "")) for n, m in plugin_commands()}, (
        f"the {PLUGIN_GROUP} entry point is not installed: pip install -e '.[test,demo,viewer]'")
    view = _subcommands()["view"]
    assert view.get_default("io_inputs") == ("folder",) and view.get_default("io_outputs") == ()
    defaults = view.parse_args(["some-folder"])
    assert defaults.host == "127.0.0.1" and defaults.port == 8080


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medxai: error: "), err
    return err


def test_bad_folder_and_port_fail_in_one_line_before_serving(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in _one_line_error(capsys)
    (tmp_path / "file.nrrd").write_text("x")
    assert main(["view", str(tmp_path / "file.nrrd")]) == 2
    assert "is not a folder" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as raised:
        main(["view", str(tmp_path), "--port", "70000"])
    assert raised.value.code == 2 and "--port" in _one_line_error(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["view", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in _one_line_error(capsys)


BLOCKED = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{fullname}}", name=fullname)
sys.meta_path.insert(0, Block())
from MedXAILib.cli.main import main
sys.exit(main({argv!r}))
"""


def _run_blocked(argv: list[str], blocked: set[str], tmp_path: Path, extra_path: str = "") -> subprocess.CompletedProcess:
    code = textwrap.dedent(BLOCKED.format(blocked=sorted(blocked), argv=argv))
    path = [p for p in (extra_path, str(ROOT)) if p]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(path), "HOME": str(tmp_path)})


def test_without_the_viewer_packages_help_works_and_view_says_how_to_install(tmp_path):
    heavy = {"trame", "trame_slicer", "trame_server", "trame_client", "trame_vuetify", "wslink", "slicer", "vtk",
             "vtkmodules", "aiohttp", "MedXAIBridge"}
    result = _run_blocked(["--help"], heavy, tmp_path)
    assert result.returncode == 0 and "view" in result.stdout, result.stderr
    result = _run_blocked(["view", str(tmp_path)], heavy, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install" in result.stderr and "trame" in result.stderr


def test_a_plugin_that_cannot_be_imported_does_not_break_the_command_line(tmp_path):
    dist = tmp_path / "plugins" / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\nbroken = no_such_module_anywhere\n")
    result = _run_blocked(["broken"], set(), tmp_path, extra_path=str(tmp_path / "plugins"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "'medxai broken' cannot be loaded: ModuleNotFoundError" in result.stderr
    result = _run_blocked(["view", "--help"], set(), tmp_path, extra_path=str(tmp_path / "plugins"))
    assert result.returncode == 0 and "DIR" in result.stdout, result.stderr


@pytest.mark.slow
def test_demo_prints_the_view_command_for_its_folder(small_demo):
    printed = (small_demo / "printed.txt").read_text().split("Open:")[-1]
    assert f"medxai view {small_demo}" in printed, printed
    assert json.loads((small_demo / "summary.json").read_text())["attributions"]
