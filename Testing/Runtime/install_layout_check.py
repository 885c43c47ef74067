"""Use the extension from its install tree alone, as a Slicer user's installation has it.

Usage: ``python install_layout_check.py QT_SCRIPTED_MODULES OUT_JSON [SLICER_SOURCE_DIR]``

Run by ``test_runtime_install_layout.py`` in a fresh interpreter whose working folder and
``PYTHONPATH`` are the install tree (built from the CMake lists by ``Testing/Repo/cmake_lists.py``);
the repository is taken off ``sys.path`` (including an editable install of MedXAILib), so only what
CMake would package can be found. Each step's outcome goes to OUT_JSON, errors included, and the test
asserts on it:

1. ``imports``: with torch and MONAI blocked (an import of either raises), the module's packages
   import, and with SLICER_SOURCE_DIR (a Slicer checkout: its parameterNodeWrapper and
   ScriptedLoadableModule) MedXAI.py itself too, through ``slicer_module_harness``'s loader;
2. ``demo``: Load demo as the widget runs it: ``MedXAIRuntime.demo``'s command in a child process
   (``CommandRunner``), timed; every file ``demoOutputs()`` names must exist; ``demoScene``: the files
   are loaded into a real MRML scene (slicer-core) and each demo's settings point at its shipped model
   inside the tree;
3. ``explain``: integrated gradients of that model through ``SubprocessRunner`` (the worker started
   from the tree), shown as a result node with its colour legend; with SLICER_SOURCE_DIR also
   ``MedXAILogic.process`` on the real parameter node;
4. ``latent``: the latent counterfactual with its default autoencoder (found in the tree) on the
   CT demo's phantom and model (independent of the steps before).
"""

from __future__ import annotations

import importlib
import importlib.abc
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BLOCKED = ("torch", "monai")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: importing the module must not need it")
        return None


def _isolate(tree: Path) -> None:
    """Only the tree and the environment's site-packages: no repository folder, no editable finder."""
    repo = {str(REPO), str(REPO / "MedXAI"), "", "."}
    sys.path[:] = [str(tree)] + [p for p in sys.path if os.path.abspath(p) not in {os.path.abspath(r) for r in repo if r}
                                 and p not in ("", ".") and not p.startswith(str(HERE))]
    sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in type(finder).__module__.lower()
                        and "editable" not in type(finder).__name__.lower()]


def _step(results: dict, name: str, function) -> None:
    started = time.monotonic()
    try:
        results[name] = function()
        results[name]["seconds"] = round(time.monotonic() - started, 2)
    except BaseException:
        results[name] = {"error": traceback.format_exc(limit=8), "seconds": round(time.monotonic() - started, 2)}


def _runSync(runner, start, timeout: float):
    """Drive a non-blocking runner with a plain loop in place of Qt's timer."""
    pending, finished = [], []
    runner._schedule = lambda ms, callback: pending.append(callback)
    start(finished)
    deadline = time.monotonic() + timeout
    while not finished and pending:
        if time.monotonic() > deadline:
            runner.cancel()
            raise TimeoutError(f"gave up after {timeout:.0f} s")
        time.sleep(0.05)
        pending.pop(0)()
    return finished[0]


def imports(tree: Path, source: str) -> dict:
    blocker = _Blocker()
    sys.meta_path.insert(0, blocker)
    try:
        # segmentStatisticsPlugin subclasses Slicer's Segment Statistics plugin base: only Slicer has it
        names = [f"MedXAIRuntime.{p.stem}" for p in sorted((tree / "MedXAIRuntime").glob("*.py"))
                 if p.stem not in ("__init__", "segmentStatisticsPlugin")]
        names += [f"MedXAIBridge.{p.stem}" for p in sorted((tree / "MedXAIBridge").glob("*.py")) if p.stem != "__init__"]
        names += ["MedXAILib", "MedXAILib.runs", "MedXAILib.demo"]
        for name in names:
            importlib.import_module(name)
        module = None
        if source:
            sys.path.insert(1, str(HERE))
            import slicer_module_harness as harness

            harness.load_slicer_python(Path(source))
            module = harness._load("MedXAI", tree / "MedXAI.py")
        files = {name: sys.modules[name].__file__ for name in list(sys.modules)
                 if name.split(".")[0] in ("MedXAI", "MedXAIRuntime", "MedXAIBridge", "MedXAILib")
                 and getattr(sys.modules[name], "__file__", None)}
        return {"heavy": sorted(m for m in BLOCKED if m in sys.modules), "moduleImported": module is not None,
                "outsideTree": sorted(name for name, f in files.items() if not Path(f).resolve().is_relative_to(tree)),
                "modules": len(files)}
    finally:
        sys.meta_path.remove(blocker)


def demo(tree: Path, work: Path, state: dict) -> dict:
    from MedXAIRuntime import demo as demos
    from MedXAIRuntime import runners

    folder = work / "demo"
    runner = runners.CommandRunner(pollIntervalMs=50)
    started = time.monotonic()
    code = _runSync(runner, lambda done: runner.start(demos.demoCommand(sys.executable, folder),
                                                      lambda c, m: done.append((c, m))), timeout=60)
    seconds = time.monotonic() - started
    outputs = demos.demoOutputs(folder)
    state["folder"] = folder
    return {"exitCode": code[0], "message": code[1], "demoSeconds": round(seconds, 2),
            "missing": sorted(name for name, path in outputs.items() if not path.is_file())}


def demoScene(tree: Path, state: dict) -> dict:
    from MedXAIRuntime import demo as demos
    from MedXAIRuntime import modelPaths, process

    folder = state["folder"]
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # the Colors module's node class
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    nodes = demos.loadDemo(scene, folder)
    again = demos.loadDemo(scene, folder)  # a second click reuses the nodes
    settings = {name: demos.demoSettings(demo, nodes) for name, demo in demos.DEMO_MODELS.items()}
    models = {name: modelPaths.resolveModelPath(s["modelPath"]) for name, s in settings.items()}
    state.update(scene=scene, colors=colors, nodes=nodes, settings=settings, models=models)
    return {
        "nodes": {role: node.GetName() for role, node in nodes.items()},
        "reused": all(again[role] is nodes[role] for role in nodes),
        "models": {name: [str(Path(path).relative_to(tree)) if Path(path).is_relative_to(tree) else path,
                          Path(path).is_file()] for name, path in models.items()},
        "inputs": {name: [s["inputVolume"].GetName(), s["inputVolume2"].GetName() if s["inputVolume2"] else None]
                   for name, s in settings.items()},
        "libraryRoot": str(process.libraryRoot()),
    }


def explain(tree: Path, source: str, state: dict) -> dict:
    import numpy as np

    from MedXAIBridge import display, results, volumes
    from MedXAILib.target import Target
    from MedXAIRuntime import jobs, runners

    settings = state["settings"]["lesionClassifierPetCt"]
    inputs = [settings["inputVolume"], settings["inputVolume2"]]
    request = jobs.explainRequest(volumes.imageVolumeFromNodes(inputs), state["models"]["lesionClassifierPetCt"],
                                  "integrated_gradients", {"n_steps": 8}, Target(class_index=settings["targetClass"]),
                                  "cpu")
    runner = runners.SubprocessRunner(pollIntervalMs=50)
    outcome = _runSync(runner, lambda done: runner.start(request, lambda *a: None, done.append), timeout=300)
    if outcome.error is not None:
        raise RuntimeError(f"{outcome.error}\n{outcome.log[-3000:]}")
    node = results.createAttributionNode(outcome.attribution, inputs[0])
    display.applyAttributionDisplay(node)
    legend = display.showColorLegend(node)
    values = np.abs(outcome.attribution.summed)
    result = {"channels": outcome.attribution.array.shape[0], "finite": bool(np.isfinite(values).all()),
              "nonZero": bool(values.max() > 0), "legend": legend is not None and legend.GetVisibility() == 1,
              "resultNode": node.GetName()}
    if source:  # the module's own logic on the real parameter node
        module = sys.modules["MedXAI"]
        import slicer

        slicer.mrmlScene = state["scene"]
        logic = module.MedXAILogic()
        p = logic.getParameterNode()
        p.inputVolume, p.inputVolume2 = inputs
        p.modelPath = settings["modelPath"]
        p.targetKind = module.TargetKind[settings["targetKind"]]
        p.targetClass = settings["targetClass"]
        p.methodParameters = module.forms.encodeMethodParameters({"integrated_gradients": {"n_steps": 8}})
        p.device = "cpu"
        processed = logic.process(p)
        result["logic"] = {"storedModelPath": p.modelPath, "resolved": logic.modelPath(p),
                           "sameMap": bool(np.allclose(slicer.util.arrayFromVolume(processed),
                                                       slicer.util.arrayFromVolume(node), rtol=1e-4, atol=1e-7))}
    return result


def latent(tree: Path) -> dict:
    """On its own (the demo's phantom drawn here, the CT classifier from the tree): it must not depend on
    the demo step."""
    import numpy as np

    from MedXAILib.demo import demo_case
    from MedXAIRuntime import jobs

    base = jobs.explainRequest(demo_case(0).ct, str(tree / "Resources" / "Models" / "lesion_classifier_ct.json"),
                               device="cpu")
    request = jobs.analysisRequest(base, "counterfactual", {
        "goal": {"kind": "class_probability", "class_index": 1}, "generator": "latent", "params": {}, "bounds": None})
    result = jobs.runInProcess(request)
    text = json.dumps(result.data)
    autoencoder = str(tree / "Resources" / "Models" / "demo_autoencoder.json")
    return {"volumes": sorted(result.volumes), "reached": result.data["metrics"]["validity"]["reached"],
            "autoencoderFromTree": autoencoder in text or str(Path(autoencoder).resolve()) in text,
            "changed": bool(np.abs(result.volumes["difference"].array).max() > 0)}


def main(tree: Path, out: Path, source: str) -> None:
    tree = tree.resolve()
    _isolate(tree)
    os.chdir(tree)
    results: dict = {"sysPath": sys.path[:3]}
    state: dict = {}
    _step(results, "imports", lambda: imports(tree, source))
    _step(results, "demo", lambda: demo(tree, out.parent, state))
    _step(results, "demoScene", lambda: demoScene(tree, state))
    if "error" not in results["demoScene"]:
        _step(results, "explain", lambda: explain(tree, source, state))
    _step(results, "latent", lambda: latent(tree))
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
    os._exit(0)  # skip the MRML teardown of a script that may have faked qt
