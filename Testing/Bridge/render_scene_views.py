"""Render what 3D Slicer shows of a scene bundle: its Red, Yellow and Green slice views, side by side.

The scene is read with Slicer's own ``vtkMRMLScene.ReadFromMRB`` and each view is drawn by
slicer-core's slice logic and displayable managers off screen (mrmlTesting.OffscreenSliceView), as
in the bridge tests. It is the slice-view area of Slicer's window, without the application around
it. The README's picture of the demo scene is made with::

    make demo
    .venv/bin/python Testing/Bridge/render_scene_views.py medxai-out/scene.mrb docs/images/demo-slice-views.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mrmlTesting  # noqa: E402

VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))
GAP = 4  # pixels between views


def render_views(bundle: Path, size: int = 360) -> np.ndarray:
    """(rows, columns, RGB) uint8: the three slice views of `bundle` as the scene set them up."""
    scene = mrmlTesting.newScene()
    views = [mrmlTesting.OffscreenSliceView(scene, (size, size), orientation, name) for name, orientation in VIEWS]
    with tempfile.TemporaryDirectory() as cache:
        mrmlTesting.readBundle(scene, bundle, cache)
        images = []
        for view in views:
            view.logic.ResizeSliceNode(size, size)
            images.append(view.capture()[::-1])  # rows from the top
    for view in views:
        view.close()
    scene.Clear(True)
    gap = np.full((size, GAP, 3), 255, np.uint8)
    return np.concatenate([part for image in images for part in (image, gap)][:-1], axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a .mrb scene bundle (e.g. medxai-out/scene.mrb)")
    parser.add_argument("png", type=Path, help="the PNG to write")
    parser.add_argument("--size", type=int, default=360, help="pixels per view (default 360)")
    args = parser.parse_args(argv)
    import matplotlib.image

    args.png.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(args.png, render_views(args.bundle, args.size))
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
