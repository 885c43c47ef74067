"""MedXAIRuntime.process: progress parsing, the library environment of a child and killing process trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib.runs import protocol
from MedXAIRuntime import process
from MedXAIRuntime.process import (
    BackgroundProcess,
    DoneEvent,
    LogLine,
    ProgressEvent,
    isProcessAlive,
    killProcessTree,
    lastErrorLine,
    parseOutputLine,
)

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")


# ------------------------------------------------------------------------------------------------
# Parsing


def test_parse_reads_what_the_protocol_writes(tmp_path):
    stream_path = tmp_path / "out.txt"
    with open(stream_path, "w") as stream:
        emit = protocol.json_lines(stream)
        emit(0.25, "Integrated gradients: 8/32 path points")
        emit(1.0, "done")
        protocol.write_done(["/tmp/a.nrrd", Path("/tmp/s.json")], ["a caveat"], stream)
    events = [parseOutputLine(line) for line in stream_path.read_text().splitlines()]
    assert isinstance(events[0], ProgressEvent)
    assert events[0].fraction == 0.25 and events[0].message.startswith("Integrated gradients")
    assert events[0].elapsedSeconds >= 0
    assert events[1].fraction == 1.0
    assert events[2] == DoneEvent(("/tmp/a.nrrd", "/tmp/s.json"))


@pytest.mark.parametrize(
    "line",
    ["Warning: something from a library", "{not json", '{"other": 1}', '["progress", 0.5]', '{"progress": "half"}'],
)
def test_parse_keeps_anything_else_as_a_log_line(line):
    assert parseOutputLine(line) == LogLine(line.strip())


def test_parse_clamps_progress_and_skips_blank_lines():
    assert parseOutputLine("   \n") is None
    assert parseOutputLine('{"progress": 1.7, "message": "x"}').fraction == 1.0
    assert parseOutputLine('{"progress": -1}').fraction == 0.0


def test_last_error_line_prefers_the_cli_reason():
    stderr = "usage: medxai explain ...\nmedxai: error: model not found: /x/model.ts\n"
    assert lastErrorLine(stderr, 2) == "model not found: /x/model.ts"
    traceback = "Traceback (most recent call last):\n  File ...\nRuntimeError: CUDA out of memory\n\n"
    assert lastErrorLine(traceback, 1) == "RuntimeError: CUDA out of memory"
    assert "exit code 1" in lastErrorLine("", 1)
    assert "signal 9" in lastErrorLine("", -9)


def test_exit_codes_are_the_library_protocol():
    assert (process.EXIT_OK, process.EXIT_INTERNAL, process.EXIT_BAD_INPUT, process.EXIT_CANCELLED) == (0, 1, 2, 130)
    assert process.EXIT_CANCELLED == protocol.EXIT_CANCELLED
    with pytest.raises(AttributeError):
        process.EXIT_UNKNOWN  # noqa: B018


def test_child_environment_makes_the_library_importable(tmp_path):
    env = process.childEnvironment({"PYTHONPATH": "/elsewhere", "PATH": os.environ.get("PATH", "")})
    # the library's folder, then the runtime's (the same folder in Slicer: qt-scripted-modules), then the rest
    assert env["PYTHONPATH"].split(os.pathsep) == [str(process.libraryRoot()), str(process.runtimeRoot()), "/elsewhere"]
    assert env["PYTHONUNBUFFERED"] == "1"
    code = "import MedXAILib, MedXAIRuntime; print(MedXAILib.__file__); print(MedXAIRuntime.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=process.childEnvironment(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    library, runtime = result.stdout.split()
    assert Path(library).resolve().parent == process.libraryRoot() / "MedXAILib"
    assert Path(runtime).resolve().parent == process.runtimeRoot() / "MedXAIRuntime"
    same = process.childEnvironment({}, root=process.runtimeRoot())["PYTHONPATH"]
    assert same == str(process.runtimeRoot())  # one folder listed once (the installed layout)


def test_python_executable_outside_slicer_is_this_interpreter():
    assert process.pythonExecutable() == sys.executable


# ------------------------------------------------------------------------------------------------
# BackgroundProcess


def _drain(background: BackgroundProcess, timeout: float = 30.0) -> tuple[list[str], int]:
    lines, deadline = [], time.monotonic() + timeout
    while True:
        lines += background.readLines()
        code = background.poll()
        if code is not None:
            return lines, code
        assert time.monotonic() < deadline, "the process did not end"
        time.sleep(0.02)


def test_background_process_collects_stdout_and_keeps_stderr_apart(tmp_path):
    script = "import sys\nfor i in range(3): print(f'line {i}', flush=True)\nsys.stderr.write('medxai: error: bad\\n')\nsys.exit(2)"
    background = BackgroundProcess([sys.executable, "-c", script], stderrPath=tmp_path / "err.txt")
    background.start()
    lines, code = _drain(background)
    assert lines == ["line 0", "line 1", "line 2"] and code == 2
    assert lastErrorLine(background.stderrText(), code) == "bad"


def test_poll_never_blocks_while_the_process_runs():
    background = BackgroundProcess([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(5)"])
    background.start()
    try:
        started = time.monotonic()
        for _ in range(20):
            background.readLines()
            assert background.poll() is None
        assert time.monotonic() - started < 1.0
    finally:
        background.kill(timeout=2)
    assert background.popen.returncode is not None


# ------------------------------------------------------------------------------------------------
# Killing process trees: a launcher that starts the real worker as a child (as PythonSlicer does)

LAUNCHER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    worker = "import signal, time\\n"
    if sys.argv[1] == "stubborn":
        worker += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    worker += "print('ready', flush=True)\\ntime.sleep(120)\\n"
    child = subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def _start_launcher(kind: str = "polite") -> tuple[BackgroundProcess, int]:
    background = BackgroundProcess([sys.executable, "-c", LAUNCHER, kind])
    background.start()
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while not lines:
        lines = background.readLines()
        assert time.monotonic() < deadline, "the launcher did not report its child"
        time.sleep(0.02)
    child = int(lines[0])
    assert isProcessAlive(child)
    return background, child


@posix_only
def test_killing_only_the_launcher_leaves_its_child_running():
    background, child = _start_launcher()
    try:
        background.popen.kill()  # what proc.kill() does: the launcher only
        background.popen.wait(10)
        time.sleep(0.2)
        assert isProcessAlive(child), "the pitfall this module exists for did not reproduce"
    finally:
        killProcessTree(background.popen, timeout=2)  # the leaderless process group still works
    assert not isProcessAlive(child)


@posix_only
def test_kill_process_tree_ends_the_launcher_and_its_child():
    background, child = _start_launcher()
    started = time.monotonic()
    killProcessTree(background.popen, timeout=5)
    assert not isProcessAlive(child)
    assert background.popen.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 5, "SIGTERM should have been enough"


@posix_only
def test_kill_process_tree_forces_a_child_that_ignores_sigterm():
    background, child = _start_launcher("stubborn")
    killProcessTree(background.popen, timeout=0.5)
    assert not isProcessAlive(child)
    assert background.popen.returncode is not None


def test_kill_process_tree_of_an_ended_process_is_harmless():
    background = BackgroundProcess([sys.executable, "-c", "pass"])
    background.start()
    _drain(background)
    killProcessTree(background.popen, timeout=0.5)
    assert background.popen.returncode == 0


@posix_only
def test_terminate_returns_at_once_and_the_tree_of_a_stubborn_child_ends_on_a_thread():
    """What Cancel does: the main thread only sends SIGTERM; killing a child that ignores it (here
    after 1 s), reaping and the cleanup happen on the reaper thread."""
    background, child = _start_launcher("stubborn")
    ended = []
    started = time.perf_counter()
    thread = background.terminate(timeout=1.0, onEnded=lambda: ended.append(time.perf_counter()))
    mainThreadMs = 1000 * (time.perf_counter() - started)
    assert mainThreadMs < 200, f"terminate kept the caller for {mainThreadMs:.0f} ms"
    assert isProcessAlive(child) and not ended  # the stubborn child is still there: nothing waited for it
    thread.join(15)
    assert not thread.is_alive() and ended and ended[0] - started >= 1.0
    assert not isProcessAlive(child) and background.popen.returncode is not None


@posix_only
def test_command_runner_cancel_does_not_wait_for_the_kill(tmp_path):
    from MedXAIRuntime.runners import CommandRunner

    pending, finished = [], []
    runner = CommandRunner(pollIntervalMs=10, scheduler=lambda ms, callback: pending.append(callback))
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    lines = []
    runner.start([sys.executable, "-c", stubborn], lambda code, message: finished.append(code), lines.append)
    pid = runner._process.pid
    deadline = time.monotonic() + 30
    while not lines:
        assert time.monotonic() < deadline
        time.sleep(0.02)
        pending.pop(0)()
    started = time.perf_counter()
    runner.cancel()
    mainThreadMs = 1000 * (time.perf_counter() - started)
    assert mainThreadMs < 200, f"Cancel kept the main thread for {mainThreadMs:.0f} ms"
    assert finished == [process.EXIT_CANCELLED] and not runner.running
    deadline = time.monotonic() + 15
    while isProcessAlive(pid) and time.monotonic() < deadline:  # SIGKILL after 3 s, on the reaper thread
        time.sleep(0.05)
    assert not isProcessAlive(pid)
