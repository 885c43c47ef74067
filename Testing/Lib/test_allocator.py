"""MEDXAI_ALLOCATOR=keep: MedXAI's own processes reuse freed buffers (MedXAILib.allocator); by default, and in
any process whose allocator was chosen already, nothing changes.

The setting is process-wide, so every case runs in a child process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from MedXAILib.allocator import is_glibc

from conftest import DEFAULT_SIGINT, ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not is_glibc(),
                                reason="the allocator settings are glibc's")

#: What chooses a process's allocator besides MEDXAI_ALLOCATOR: the children start without it.
CHOSEN = ("MEDXAI_ALLOCATOR", "GLIBC_TUNABLES", "LD_PRELOAD")

#: Allocates and frees a 64 MiB buffer, then prints the page faults per allocation of five more and
#: whether the allocator was changed. argv[1]: "keep" calls keep_freed_buffers() first, "command" runs
#: the ``medxai`` command's entry point first (``medxai methods``), "worker" starts a cohort worker as a
#: Ray actor is started with a driver's choice of ``keep``, anything else none of these.
CHURN = """
import resource, sys
import numpy as np
from MedXAILib import allocator
if sys.argv[1] == "keep":
    allocator.keep_freed_buffers()
elif sys.argv[1] == "command":
    import contextlib, io
    from MedXAILib.cli.main import command
    sys.argv = ["medxai", "methods"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = command()
    if code:
        sys.exit(code)
elif sys.argv[1] == "worker":
    from MedXAILib.cohort.executors import CaseWorker
    CaseWorker(sys.argv[2], device="cpu", allocator="keep")
n = 64 * 2**20 // 4
np.ones(n, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(n, np.float32)  # allocated, touched and freed
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5, allocator.kept())
"""


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in CHOSEN}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**environment, **env},
                          timeout=120, **DEFAULT_SIGINT)


def _churn(mode: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", CHURN, mode, *args], **env)


def _faults(mode: str, *args: str, **env: str) -> tuple[float, bool]:
    result = _churn(mode, *args, **env)
    assert result.returncode == 0, result.stderr
    faults, kept = result.stdout.split()
    return float(faults), kept == "True"


def test_a_process_that_keeps_freed_buffers_reuses_them_and_others_do_not():
    default, default_kept = _faults("none")
    kept, kept_kept = _faults("keep")
    assert not default_kept and kept_kept
    assert default >= 16, default  # a fresh mapping each time: its pages fault in again
    assert kept < default / 4, (kept, default)


def test_the_medxai_command_keeps_freed_buffers_when_asked():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["medxai"] == "MedXAILib.cli.main:command"
    default, default_kept = _faults("command")
    asked, asked_kept = _faults("command", MEDXAI_ALLOCATOR="keep")
    assert not default_kept and asked_kept and asked < default / 4, (asked, default)
    _, chosen_kept = _faults("command", MEDXAI_ALLOCATOR="keep", MALLOC_ARENA_MAX="2")
    assert not chosen_kept  # the user's own allocator settings win
    refused = ["medxai: error: MEDXAI_ALLOCATOR must be 'keep' or 'system'; got 'fast'"]
    for command in ([sys.executable, "-c", CHURN, "command"], [sys.executable, "-m", "MedXAILib", "methods"],
                    [sys.executable, "-m", "MedXAILib.runs", str(ROOT / "no-such-run")]):  # the run worker
        wrong = _run(command, MEDXAI_ALLOCATOR="fast")
        assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == refused, (command, wrong.stderr)


def test_a_cohort_worker_keeps_freed_buffers_when_its_driver_asked():
    faults, kept = _faults("worker", str(ROOT / "Resources" / "Models" / "phantom_segmenter.json"))
    default, _ = _faults("none")
    assert kept and faults < default / 4, (faults, default)
