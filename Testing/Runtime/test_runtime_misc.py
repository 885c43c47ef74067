"""MedXAIRuntime: devices, the demo command, and the package's import rules in practice."""

from __future__ import annotations

import subprocess
import sys

import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAIRuntime import demo, devices


def test_device_labels_and_list():
    assert devices.deviceLabel(0, "NVIDIA H100 80GB HBM3", 85_520_809_984) == "GPU 0: NVIDIA H100 80GB HBM3 (79.6 GiB)"
    assert devices.deviceLabel(1, "GPU", None) == "GPU 1: GPU"
    assert [value for value, _ in devices.listDevices()] == ["auto", "cpu"]
    listed = devices.listDevices([{"index": 0, "name": "NVIDIA H100", "totalBytes": 2**36}])
    assert listed[2] == ("cuda:0", "GPU 0: NVIDIA H100 (64.0 GiB)")
    assert devices.parseProbeLine('{"progress": 0.5}') is None and devices.parseProbeLine("not json") is None


def test_gpus_are_listed_by_a_child_process_and_this_one_never_imports_torch(tmp_path):
    """The widget's probe, run as it runs it: torch (and CUDA) are initialised in the child only."""

    code = (
        "import sys, time\n"
        f"sys.path[:0] = [{str(runtime_paths.MODULE_DIR)!r}, {str(runtime_paths.ROOT)!r}]\n"
        "from MedXAIRuntime import devices, process\n"
        "from MedXAIRuntime.runners import CommandRunner\n"
        "pending, lines, done = [], [], []\n"
        "runner = CommandRunner(pollIntervalMs=20, scheduler=lambda ms, f: pending.append(f))\n"
        "runner.start(devices.probeCommand(process.pythonExecutable()), lambda c, m: done.append(c), lines.append)\n"
        "while pending:\n"
        "    time.sleep(0.02)\n"
        "    pending.pop(0)()\n"
        "gpus = [g for g in map(devices.parseProbeLine, lines) if g is not None]\n"
        "print(done, len(gpus), 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[0]", "1", "False"]  # the probe answered; torch stayed out of this process


def test_demo_command_and_outputs():
    command = demo.demoCommand("/usr/bin/python3", "/t/demo")
    assert command == ["/usr/bin/python3", "-m", "MedXAIRuntime.demo", "/t/demo"]
    assert {name: path.name for name, path in demo.demoOutputs("/t/demo").items()} == {
        "ct": "ct.nrrd", "pet": "pet.nrrd", "lesion": "lesion.nrrd"}
    assert demo.DEFAULT_DEMO in demo.DEMO_MODELS
    for name, model in demo.DEMO_MODELS.items():
        assert model.name == name and model.title and model.channels[0] == "CT"
        assert demo.demoModelPath(model).is_file(), f"{model.modelFile} is not in Resources/Models"
    assert demo.DEMO_MODELS["lesionClassifierPetCt"].channels == ("CT", "PET")


def test_demo_child_process_writes_every_output(tmp_path):
    """``python -m MedXAIRuntime.demo`` (what Load demo runs) speaks the run protocol and writes its files."""
    from MedXAIRuntime import process

    env = process.childEnvironment()
    result = subprocess.run(demo.demoCommand(sys.executable, tmp_path / "demo"), capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [process.parseOutputLine(line) for line in result.stdout.splitlines()]
    assert isinstance(events[-1], process.DoneEvent) and len(events[-1].outputs) == 3
    assert all(path.is_file() for path in demo.demoOutputs(tmp_path / "demo").values())
    assert any(isinstance(e, process.ProgressEvent) and "phantom" in e.message for e in events)
    bad = subprocess.run([sys.executable, "-m", "MedXAIRuntime.demo"], capture_output=True, text=True, env=env)
    assert bad.returncode == process.EXIT_BAD_INPUT and bad.stderr.startswith("medxai: error: usage")


def test_runtime_imports_without_torch_monai_or_qt():
    """What Slicer imports when it loads the module must not pull torch, MONAI, SimpleITK or Qt."""
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(runtime_paths.MODULE_DIR)!r}, {str(runtime_paths.ROOT)!r}]\n"
        "import MedXAIRuntime.dependencies, MedXAIRuntime.devices, MedXAIRuntime.process, MedXAIRuntime.jobs\n"
        "import MedXAIRuntime.runners, MedXAIRuntime.forms, MedXAIRuntime.targets, MedXAIRuntime.views\n"
        "import MedXAIRuntime.demo, MedXAIRuntime.installer, MedXAIRuntime.modelPaths\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'SimpleITK', 'scipy', 'qt', 'slicer') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_provenance_rows_for_the_results_table():
    from MedXAIRuntime.views import provenanceRows

    provenance = {
        "method": "integrated_gradients", "method_title": "Integrated Gradients", "parameters": {"n_steps": 8},
        "target": {"class_index": 1, "region": "class"}, "target_name": "lesion",
        "model": {"id": "tiny", "sha256": "ab" * 32}, "seed": 0, "device": "cpu", "seconds": 1.25,
        "diagnostics": {}, "reference": "Sundararajan et al. 2017",
    }
    rows = dict(provenanceRows(provenance))
    assert rows["Method"] == "Integrated Gradients" and rows["Parameters"] == '{"n_steps": 8}'
    assert rows["Target"].startswith("lesion ") and rows["Model"] == "tiny" and rows["Seed"] == "0"
    assert "Diagnostics" not in rows and provenanceRows({}) == []


def test_the_mni_checksum_is_that_of_the_template_nilearn_ships():
    """The Sample Data entry downloads the file nilearn's wheel carries (checked here without a download)."""
    import hashlib

    try:
        from MedXAILib.demo.samples.mni import mni_template_files
        path = mni_template_files()["t1"]
    except Exception as error:  # nilearn is in the demo extra
        pytest.skip(str(error))
    assert path.name == demo.MNI_T1_FILE and demo.MNI_T1_URL.endswith(f"/{demo.MNI_T1_FILE}")
    assert demo.MNI_T1_CHECKSUM == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()
