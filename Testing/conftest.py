"""Shared pytest set-up: GPU tests run only where CUDA is present; the small demo's output, made once."""

from __future__ import annotations

import contextlib
import io

import pytest


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The folder of ``run_demo(small=True)`` (its printout in ``printed.txt``), made once per test
    session for Testing/Lib/test_demo.py, Testing/Bridge/test_demo_scene.py and Testing/Viewer (the web
    viewer)."""
    from MedXAILib.demo import open_hint, run_demo

    out = tmp_path_factory.getbasetemp() / "medxai-demo-small"
    if not (out / "report.html").is_file():  # written last
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert run_demo(out, small=True) == 0
            print(open_hint(out))  # as `medxai demo` prints it once the folder is committed
        (out / "printed.txt").write_text(printed.getvalue())
    return out


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
