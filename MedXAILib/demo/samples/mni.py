"""The MNI ICBM152 2009 T1 template with grey- and white-matter maps, as shipped inside nilearn.

nilearn's wheel carries the 1 mm, skull-stripped, symmetric ICBM152 2009a nonlinear template
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 197 x 233 x 189
voxels, RAS axes, origin (-98, -134, -72) mm). :func:`mni_t1` reads those files with
:func:`MedXAILib.io.read_image` and never calls nilearn's fetchers (which download): nilearn is
located with :func:`importlib.util.find_spec`, not even imported. ``pip install nilearn`` (it is in
MedXAILib's ``demo`` extra) makes it available.

Template: Fonov V, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood. NeuroImage 47 (2009) S102; and Fonov V et
al., Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 54 (2011) 313-327.
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University (permissive licence, see nilearn's documentation).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ...errors import InputError, MedXAIError
from ...volume import ImageVolume

__all__ = ["mni_t1", "mni_template_files"]

_FILES = {kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")}


def mni_template_files() -> dict[str, Path]:
    """Paths of the T1, GM and WM template files inside the installed nilearn package.

    Raises:
        MedXAIError: nilearn is not installed, or its package lacks the files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MedXAIError("the MNI ICBM152 template ships with nilearn, which is not installed: "
                          "pip install nilearn  (or pip install 'slicer-medxai[demo]')")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {kind: folder / name for kind, name in _FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise MedXAIError(f"this nilearn installation ({folder}) lacks {', '.join(missing)}; "
                          "pip install --upgrade nilearn")
    return paths


def _grid(reference: ImageVolume, resolution_mm: float) -> ImageVolume:
    """An empty grid with `reference`'s origin and direction, `resolution_mm` voxels, same extent."""
    old = reference.spacing
    shape = tuple(int(np.floor((n - 1) * o / resolution_mm + 1e-9)) + 1 for n, o in zip(reference.shape, old))
    affine = reference.affine.copy()
    affine[:3, :3] = reference.direction * resolution_mm
    return ImageVolume(np.zeros((1, *shape), np.float32), affine)


def mni_t1(resolution_mm: float = 2.0) -> tuple[ImageVolume, ImageVolume, ImageVolume]:
    """The MNI ICBM152 2009a T1 template and its GM and WM probability maps, at `resolution_mm`.

    Args:
        resolution_mm: isotropic voxel size; 1 keeps the stored 1 mm grid, other values resample
            it linearly onto a grid with the same origin and direction covering the same extent
            (2 mm gives 99 x 117 x 95 voxels, as nilearn's own ``load_mni152_template(2)``).

    Returns:
        ``(t1, gm, wm)``: one-channel volumes on the same grid; T1 intensities scaled to [0, 1]
        (the stored 0-255 divided by 255), GM and WM probabilities in [0, 1].

    Raises:
        MedXAIError: nilearn is missing (the message says ``pip install nilearn``).
        InputError: a non-positive resolution.
    """
    from ...io import read_image, resample_to

    resolution = float(resolution_mm)
    if not np.isfinite(resolution) or resolution <= 0:
        raise InputError(f"resolution_mm must be a positive number of mm; got {resolution_mm!r}")
    paths = mni_template_files()
    out = []
    for kind in ("t1", "gm", "wm"):
        volume = read_image(paths[kind])
        if abs(resolution - 1.0) > 1e-9:
            volume = resample_to(volume, _grid(volume, resolution), interpolation="linear", default_value=0.0)
        array = np.clip(volume.array / 255.0, 0.0, 1.0).astype(np.float32)
        name = {"t1": "T1", "gm": "GM", "wm": "WM"}[kind]
        out.append(ImageVolume(array, volume.affine, channel_names=[name],
                               meta={"source": str(paths[kind]), "modality": "MR" if kind == "t1" else "probability",
                                     "template": "MNI ICBM152 2009a nonlinear symmetric"}))
    return out[0], out[1], out[2]
