"""MedXAIRuntime: devices, the demo command, and the package's import rules in practice."""

from __future__ import annotations

import subprocess
import sys

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib.cli.main import build_parser
from MedXAIRuntime import demo, devices


def test_device_labels_and_list():
    assert devices.deviceLabel(0, "NVIDIA H100 80GB HBM3", 85_520_809_984) == "GPU 0: NVIDIA H100 80GB HBM3 (79.6 GiB)"
    assert devices.deviceLabel(1, "GPU", None) == "GPU 1: GPU"
    listed = devices.listDevices(queryTorch=False)
    assert [value for value, _ in listed] == ["auto", "cpu"]
    values = [value for value, _ in devices.listDevices()]
    assert values[:2] == ["auto", "cpu"] and all(v.startswith("cuda:") for v in values[2:])


def test_demo_command_parses_with_the_cli(tmp_path):
    command = demo.demoCommand("/usr/bin/python3", tmp_path / "demo")
    args = build_parser().parse_args(command[3:])
    assert args.command == "demo" and args.out == str(tmp_path / "demo") and args.quiet
    outputs = demo.demoOutputs(tmp_path)
    assert outputs["model"].name == "demo_classifier.json" and outputs["image"].name == "image.nrrd"
    assert all(d.targetClass >= 0 and d.title for d in demo.DEMO_MODELS.values())


def test_runtime_imports_without_torch_monai_or_qt():
    """What Slicer imports when it loads the module must not pull torch, MONAI, SimpleITK or Qt."""
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(runtime_paths.MODULE_DIR)!r}, {str(runtime_paths.ROOT)!r}]\n"
        "import MedXAIRuntime.dependencies, MedXAIRuntime.devices, MedXAIRuntime.process, MedXAIRuntime.jobs\n"
        "import MedXAIRuntime.runners, MedXAIRuntime.forms, MedXAIRuntime.targets, MedXAIRuntime.views\n"
        "import MedXAIRuntime.demo\n"
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
