"""Installing the Python packages in a child process: real pip, progress, Cancel, and pip's reason on failure.

Nothing is downloaded and the test environment is never changed: every pip call gets an index that
cannot answer (a closed port, or a socket that never replies) or a local folder with a wheel built
here, installed into a temporary ``--target`` folder that only the child's ``PYTHONPATH`` sees. The
runner is the module's ``SubprocessRunner`` (the one explanations use) driven by a plain loop in
place of Qt's timer. Starting an installation and cancelling one must each keep the main thread
under 200 ms.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
import zipfile
from pathlib import Path

import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAIRuntime import process
from MedXAIRuntime.installer import InstallJob, InstallPlan, explainFailure, installCommand, pipArguments, torchArguments
from MedXAIRuntime.jobs import RunProcessError
from MedXAIRuntime.runners import SubprocessRunner

MAIN_THREAD_MS = 200.0
PROBE = "medxai-installer-probe"


class Loop:
    """Qt's timer replaced by a list the test drains."""

    def __init__(self):
        self.pending = []

    def __call__(self, delayMs, callback):
        self.pending.append(callback)

    def run(self, until, timeout=120.0):
        deadline = time.monotonic() + timeout
        while self.pending and not until():
            assert time.monotonic() < deadline, "the installation did not finish in time"
            time.sleep(0.02)
            self.pending.pop(0)()


def _env(tmp_path, extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_NO_CACHE_DIR": "1"})
    env.update(extra or {})
    return env


def _start(plan, env, loop):
    progress, outcomes = [], []
    runner = SubprocessRunner(scheduler=loop, pollIntervalMs=20, env=env)
    started = time.perf_counter()
    runner.startJob(InstallJob(plan), lambda f, m, s: progress.append((f, m)), outcomes.append)
    startMs = 1000 * (time.perf_counter() - started)
    return runner, progress, outcomes, startMs


def _wheel(folder: Path, project: str = PROBE, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel of a probe package (hashes in RECORD, as pip checks them), declaring
    `requires` as its requirements."""
    name = project.replace("-", "_")
    metadata = f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{name}-1.0.dist-info/METADATA": metadata.encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: medxai-test\nRoot-Is-Purelib: true\n"
                                           b"Tag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


# ------------------------------------------------------------------------------------------------
# Commands and messages


def test_commands_follow_the_pytorch_extension_and_pin_slicers_packages(tmp_path):
    assert installCommand("/s/PythonSlicer", Path("/t/i")) == ["/s/PythonSlicer", "-m", "MedXAIRuntime.installer", "/t/i"]
    assert torchArguments(">=2.4") == ["install", "torch>=2.4", "torchvision"]  # PyTorchUtils._getPipInstallArguments
    assert pipArguments(["monai>=1.4,<1.7"], tmp_path / "c.txt", ["--index-url", "u"]) == [
        "install", "--disable-pip-version-check", "monai>=1.4,<1.7", "-c", str(tmp_path / "c.txt"), "--index-url", "u"]
    assert pipArguments(["dna>=0.4"], tmp_path / "c.txt", noDeps=True) == [
        "install", "--disable-pip-version-check", "--no-deps", "dna>=0.4", "-c", str(tmp_path / "c.txt")]
    plan = InstallPlan.forMissing("missing", ["monai>=1.4,<1.7"])
    assert plan.torch and plan.torchRequirement == ">=2.4" and "numpy" in plan.pinned and "torch" in plan.pinned
    assert plan.noDepsRequirements == []
    plan = InstallPlan.forMissing("ok", [], ["dynamic-network-architectures>=0.4.4,<0.5"])
    assert not plan.torch and plan.noDepsRequirements == ["dynamic-network-architectures>=0.4.4,<0.5"]
    plan.write(tmp_path)
    assert InstallPlan.read(tmp_path) == plan


def test_failure_messages_say_why_and_what_to_do():
    offline = explainFailure("monai", [
        "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...: Failed to establish "
        "a new connection: [Errno 111] Connection refused')': /simple/monai/",
        "ERROR: Could not find a version that satisfies the requirement monai (from versions: none)"])
    assert "could not be reached" in offline and "click Apply again" in offline and "\n" not in offline
    conflict = explainFailure("monai", ["ERROR: Cannot install monai because these package versions have "
                                        "conflicting dependencies.", "ERROR: ResolutionImpossible: ..."])
    assert "ResolutionImpossible" in conflict and "update MedXAI" in conflict
    nothing = explainFailure("monai", ["ERROR: Could not find a version that satisfies the requirement monai "
                                       "(from versions: none)"])
    assert "found no release at all" in nothing and "network" in nothing
    assert "pip gave no reason" in explainFailure("x", [])


# ------------------------------------------------------------------------------------------------
# Real pip in the child process


@pytest.mark.slow
def test_an_offline_installation_fails_with_pips_reason_and_starts_without_blocking(tmp_path):
    # one retry: pip reports the refused connection once (as it does, five times, with its default retries)
    plan = InstallPlan(requirements=[f"{PROBE}==1.0"], pipOptions=[
        "--index-url", "http://127.0.0.1:9/simple", "--retries", "1", "--timeout", "2", "--target", str(tmp_path / "t")])
    loop = Loop()
    runner, progress, outcomes, startMs = _start(plan, _env(tmp_path), loop)
    assert startMs < MAIN_THREAD_MS, f"starting the installation kept the main thread for {startMs:.0f} ms"
    job = runner.job
    loop.run(lambda: outcomes)
    outcome = outcomes[0]
    assert isinstance(outcome.error, RunProcessError) and outcome.error.returnCode == process.EXIT_BAD_INPUT
    message = str(outcome.error)
    assert message.startswith(f"installing {PROBE} failed: the Python package index could not be reached"), message
    assert "click Apply again" in message and "PythonSlicer -m pip install" in message
    assert "Connection refused" in outcome.log or "Failed to establish" in outcome.log  # pip's own lines
    assert progress[0][1] == "Starting the installation process" and any(PROBE in m for _, m in progress)
    assert job.folder is None and not list(tmp_path.glob("t/*"))


@pytest.mark.slow
def test_an_installation_runs_pip_under_the_constraints_and_checks_the_result(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    _wheel(wheels)
    plan = InstallPlan(requirements=[f"{PROBE}>=1.0"], pipOptions=["--no-index", "--find-links", str(wheels),
                                                                   "--target", str(target)])
    loop = Loop()
    env = _env(tmp_path, {"PYTHONPATH": str(target)})  # the child sees the target like a site-packages
    runner, progress, outcomes, startMs = _start(plan, env, loop)
    assert startMs < MAIN_THREAD_MS
    loop.run(lambda: outcomes)
    outcome = outcomes[0]
    assert outcome.error is None and not outcome.cancelled, outcome.log
    assert outcome.result == {"installed": {PROBE: "1.0"}}
    assert (target / "medxai_installer_probe" / "__init__.py").is_file()
    assert "Successfully installed" in outcome.log
    messages = [m for _, m in progress]
    assert messages[0] == "Starting the installation process" and messages[-1] == "Installed"
    assert [f for f, _ in progress] == sorted(f for f, _ in progress)


@pytest.mark.slow
def test_cancel_stops_a_hanging_pip_without_waiting(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # connections complete in the backlog and then nothing is ever answered
    port = server.getsockname()[1]
    try:
        plan = InstallPlan(requirements=[f"{PROBE}==1.0"], pipOptions=[
            "--index-url", f"http://127.0.0.1:{port}/simple", "--retries", "0", "--timeout", "60",
            "--target", str(tmp_path / "t")])
        loop = Loop()
        runner, progress, outcomes, _ = _start(plan, _env(tmp_path), loop)
        job = runner.job
        pid, folder = job._process.pid, job.folder
        loop.run(lambda: any(PROBE in m for _, m in progress[1:]) or outcomes, timeout=60)  # pip is waiting
        assert not outcomes, outcomes and outcomes[0].log
        started = time.perf_counter()
        runner.cancel()
        cancelMs = 1000 * (time.perf_counter() - started)
        assert cancelMs < MAIN_THREAD_MS, f"Cancel kept the main thread for {cancelMs:.0f} ms"
        assert len(outcomes) == 1 and outcomes[0].cancelled and not runner.running
        deadline = time.monotonic() + 20
        while (process.isProcessAlive(pid) or folder.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process.isProcessAlive(pid) and not folder.exists()
    finally:
        server.close()


@pytest.mark.slow
def test_the_nnunet_package_is_installed_without_its_declared_requirements_in_a_step_of_its_own(tmp_path):
    # the second probe declares a requirement no index has (as dynamic-network-architectures declares timm):
    # it installs only because its step runs pip with --no-deps; the first probe is installed normally before it
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    _wheel(wheels)
    nodeps = "medxai-installer-nodeps-probe"
    _wheel(wheels, nodeps, requires=("medxai-installer-absent-dependency>=1",))
    plan = InstallPlan(requirements=[f"{PROBE}>=1.0"], noDepsRequirements=[f"{nodeps}>=1.0"],
                       pipOptions=["--no-index", "--find-links", str(wheels), "--target", str(target)])
    loop = Loop()
    runner, progress, outcomes, startMs = _start(plan, _env(tmp_path, {"PYTHONPATH": str(target)}), loop)
    assert startMs < MAIN_THREAD_MS
    loop.run(lambda: outcomes)
    outcome = outcomes[0]
    assert outcome.error is None and not outcome.cancelled, outcome.log
    assert outcome.result == {"installed": {PROBE: "1.0", nodeps: "1.0"}}
    assert (target / "medxai_installer_nodeps_probe" / "__init__.py").is_file()
    assert not list(target.glob("medxai_installer_absent*"))
    messages = [m for _, m in progress]
    assert messages.index(f"Installing {PROBE}") < messages.index(f"Installing {nodeps}")  # two pip steps, in order
    assert [f for f, _ in progress] == sorted(f for f, _ in progress) and messages[-1] == "Installed"
    # without --no-deps the same wheel cannot be installed: pip looks for the declared requirement
    plain = InstallPlan(requirements=[f"{nodeps}>=1.0"], pipOptions=["--no-index", "--find-links", str(wheels),
                                                                     "--target", str(tmp_path / "other")])
    runner, progress, outcomes, _ = _start(plain, _env(tmp_path), loop)
    loop.run(lambda: outcomes)
    assert isinstance(outcomes[0].error, RunProcessError) and "medxai-installer-absent-dependency" in str(outcomes[0].error)
