#!/usr/bin/env python3
"""Render the Extensions Index screenshot and the Sample Data thumbnails with slicer-core, headless.

    OMP_NUM_THREADS=1 .venv/bin/python Resources/make_screenshots.py

What the MedXAI module shows after "Load demo" and Apply, minus the application around it: the demo's
CT + PET phantom (MedXAIRuntime.demo), integrated gradients of the shipped PET/CT lesion classifier
(MedXAILib through the module's run request), the result node made and coloured by MedXAIBridge with
its colour legend, and Slicer's slice logic and displayable managers drawing the Red, Yellow and Green
views off screen (Testing/Bridge/mrmlTesting.py, as Testing/Bridge/render_scene_views.py draws the
README's picture). Writes:

- ``Resources/Screenshots/1.png``: the three views side by side (EXTENSION_SCREENSHOTURLS);
- ``MedXAI/Resources/Icons/SampleData/<demo>.png`` and ``MNI152_T1.png``: 128 x 128 thumbnails for the
  Sample Data module (the MNI one needs nilearn, which ships the template).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing" / "Bridge"), str(ROOT / "MedXAI"), str(ROOT)]

import mrmlTesting  # noqa: E402

VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))
GAP = 4  # pixels between views
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "1.png"
THUMBNAILS = ROOT / "MedXAI" / "Resources" / "Icons" / "SampleData"


def _views(scene, size):
    return [mrmlTesting.OffscreenSliceView(scene, size, orientation, name) for name, orientation in VIEWS]


def _capture(views, focusRas) -> list[np.ndarray]:
    images = []
    for view in views:
        view.sliceNode.JumpSliceByOffsetting(*focusRas)  # the slice through the lesion, the view kept
        images.append(view.capture()[::-1])  # rows from the top
    return images


def _lesionCentre(folder: Path) -> np.ndarray:
    from MedXAILib.io import read_image
    from MedXAIRuntime import demo as demos

    return np.argwhere(read_image(demos.demoOutputs(folder)["lesion"]).array[0] > 0.5).mean(axis=0)


def _save(path: Path, image: np.ndarray) -> None:
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, image)
    print(f"wrote {path.relative_to(ROOT)}")


def screenshot(folder: Path, size: int) -> None:
    from MedXAIBridge import results
    from MedXAIBridge.display import applyAttributionDisplay, showInSliceViews
    from MedXAIBridge.volumes import imageVolumeFromNodes
    from MedXAILib.target import Target
    from MedXAIRuntime import demo as demos
    from MedXAIRuntime import jobs

    scene = mrmlTesting.newScene()
    views = _views(scene, (size, size))
    nodes = demos.loadDemo(scene, folder)
    model = demos.DEMO_MODELS[demos.DEFAULT_DEMO]
    request = jobs.explainRequest(imageVolumeFromNodes([nodes["ct"], nodes["pet"]]), str(demos.demoModelPath(model)),
                                  "integrated_gradients", {}, Target(class_index=model.targetClass), "cpu")
    attribution = jobs.runInProcess(request).attribution()
    node = results.createAttributionNode(attribution, nodes["ct"])
    applyAttributionDisplay(node, opacity=0.6, thresholdPercentile=99.0, windowPercentile=99.9)
    showInSliceViews(scene, nodes["ct"], node, 0.6, [view.logic for view in views])
    lesion = _lesionCentre(folder)
    focus = (mrmlTesting.ijkToRasOf(nodes["ct"]) @ np.append(lesion, 1.0))[:3]
    images = _capture(views, focus)
    gap = np.full((size, GAP, 3), 255, np.uint8)
    _save(SCREENSHOT, np.concatenate([part for image in images for part in (image, gap)][:-1], axis=1))
    for view in views:
        view.close()
    scene.Clear(True)


def thumbnails(folder: Path) -> None:
    from MedXAIBridge import segments
    from MedXAIRuntime import demo as demos

    size = (128, 128)
    for name, layers in (("lesionClassifierPetCt", ("ct", "pet")), ("lesionClassifierCt", ("ct", None)),
                         ("phantomSegmenter", ("ct", "labels"))):
        scene = mrmlTesting.newScene()
        view = mrmlTesting.OffscreenSliceView(scene, size)
        nodes = demos.loadDemo(scene, folder)
        composite = view.compositeNode
        composite.SetBackgroundVolumeID(nodes["ct"].GetID())
        if layers[1] == "pet":
            composite.SetForegroundVolumeID(nodes["pet"].GetID())
            composite.SetForegroundOpacity(0.5)
        elif layers[1] == "labels":
            from MedXAILib.demo import demo_case

            case = demo_case(0)
            labelled = segments.segmentationNodeFromLabelMap(scene, case.labels, nodes["ct"], case.class_names[1:],
                                                             "organs")
            labelled.CreateDefaultDisplayNodes()
        view.logic.ResizeSliceNode(*size)
        view.logic.FitSliceToBackground()
        lesion = _lesionCentre(folder)
        focus = (mrmlTesting.ijkToRasOf(nodes["ct"]) @ np.append(lesion, 1.0))[:3]
        _save(THUMBNAILS / f"{name}.png", _capture([view], focus)[0])
        view.close()
        scene.Clear(True)
    try:
        from MedXAILib.demo.samples.mni import mni_template_files
        from MedXAILib.io import read_image

        path = mni_template_files()["t1"]
    except Exception as error:  # nilearn missing: keep the existing thumbnail
        print(f"MNI thumbnail skipped: {error}")
        return
    from MedXAIBridge.volumes import volumeNodeFromImageVolume

    scene = mrmlTesting.newScene()
    view = mrmlTesting.OffscreenSliceView(scene, size)
    node = volumeNodeFromImageVolume(scene, read_image(path), "MNI152_T1")
    view.compositeNode.SetBackgroundVolumeID(node.GetID())
    view.logic.ResizeSliceNode(*size)
    view.logic.FitSliceToBackground()
    _save(THUMBNAILS / "MNI152_T1.png", _capture([view], (0.0, 0.0, 10.0))[0])
    view.close()
    scene.Clear(True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=360, help="pixels per view of the screenshot (default 360)")
    parser.add_argument("--only", choices=("screenshot", "thumbnails"), help="make only one of the two")
    args = parser.parse_args(argv)
    from MedXAIRuntime import demo as demos

    with tempfile.TemporaryDirectory() as folder:
        demos.writeDemoInputs(folder)
        if args.only != "thumbnails":
            screenshot(Path(folder), args.size)
        if args.only != "screenshot":
            thumbnails(Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
