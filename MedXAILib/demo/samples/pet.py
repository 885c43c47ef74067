"""A PET-like SUV channel for the CT phantom of :mod:`MedXAILib.demo.samples.phantom`.

:func:`pet_channel` turns the phantom's labels into an ideal uptake map (standardised uptake values,
SUV, typical of FDG PET/CT), blurs it with a Gaussian point-spread function of ``psf_fwhm_mm``
(applied in millimetres with the true, anisotropic spacing), draws Poisson counts, and smooths
them with a reconstruction post-filter. The result lies on the CT grid (PET resampled onto CT),
as the two channels of a PET/CT model expect.

===========  ===========================================
structure    SUV
===========  ===========================================
background   0 (air)
body         0.6 (fat, muscle, blood pool)
liver        2.0
spleen       1.8
kidney       5.0 (urinary excretion)
lung         0.4
bone         1.0
lesion       the lesion's ``suv`` from ``info`` (6-10 unless set)
===========  ===========================================
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ...errors import InputError
from ...volume import ImageVolume
from .phantom import CLASS_NAMES, LABEL, blur, ct_phantom, sphere_mask

__all__ = ["ORGAN_SUV", "pet_channel", "pet_ct_phantom"]

ORGAN_SUV = {"background": 0.0, "body": 0.6, "liver": 2.0, "spleen": 1.8, "kidney": 5.0, "lung": 0.4,
             "bone": 1.0, "lesion": 8.0}


def pet_channel(
    labels: np.ndarray | ImageVolume,
    info: dict[str, Any],
    seed: Optional[int] = None,
    *,
    psf_fwhm_mm: float = 6.0,
    counts_per_suv: float = 12.0,
    postfilter_fwhm_mm: float = 4.0,
) -> ImageVolume:
    """A PET SUV map on the phantom's grid, deterministic with `seed`.

    Args:
        labels: the phantom's (I, J, K) labels (or a one-channel :class:`ImageVolume` of them).
        info: the phantom's info dict (its ``affine``, ``spacing`` and ``lesions`` are used; each
            lesion gets its own ``suv``).
        seed: seed of the Poisson noise; by default derived from ``info["seed"]``.
        psf_fwhm_mm: FWHM of the scanner's point-spread function, mm (about 4-7 on clinical PET).
        counts_per_suv: mean counts per voxel per unit SUV (higher = less noise).
        postfilter_fwhm_mm: FWHM of the Gaussian post-reconstruction filter, mm (0 for none).

    Returns:
        A one-channel volume (``channel_names ["PET"]``, ``meta["unit"] = "SUVbw"``).
    """
    array = labels.array[0] if isinstance(labels, ImageVolume) else np.asarray(labels)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    try:
        affine = np.asarray(info["affine"], dtype=np.float64)
        spacing = np.asarray(info["spacing"], dtype=np.float64)
        lesions = list(info.get("lesions", []))
    except (KeyError, TypeError, ValueError):
        raise InputError("pet_channel needs the phantom's info dict (with 'affine', 'spacing', 'lesions')") from None
    if array.ndim != 3 or tuple(array.shape) != tuple(info.get("shape", array.shape)):
        raise InputError(f"labels of shape {array.shape} do not match the phantom's grid {info.get('shape')}")
    if counts_per_suv <= 0 or psf_fwhm_mm < 0 or postfilter_fwhm_mm < 0:
        raise InputError("counts_per_suv must be > 0 and the FWHMs >= 0")
    table = np.array([ORGAN_SUV[name] for name in CLASS_NAMES], dtype=np.float64)
    suv = table[np.clip(array.astype(np.int64), 0, len(table) - 1)]
    for lesion in lesions:  # each lesion with its own uptake, on the exact sphere the CT used
        sphere = sphere_mask(affine, array.shape, lesion["centre_ras"], lesion["radius_mm"])
        suv[sphere & (array == LABEL["lesion"])] = float(lesion.get("suv", ORGAN_SUV["lesion"]))
    rng = np.random.default_rng(int(info.get("seed", 0)) * 7919 + 17 if seed is None else int(seed))
    ideal = blur(suv, psf_fwhm_mm, spacing)
    counts = rng.poisson(np.clip(ideal, 0, None) * counts_per_suv).astype(np.float64)
    measured = blur(counts / counts_per_suv, postfilter_fwhm_mm, spacing)
    return ImageVolume(measured.astype(np.float32)[np.newaxis], affine, channel_names=["PET"],
                       meta={"source": f"MedXAILib.demo.samples.pet_channel(seed={info.get('seed')})", "modality": "PT",
                             "unit": "SUVbw", "psf_fwhm_mm": psf_fwhm_mm})


def pet_ct_phantom(seed: int = 0, **kwargs: Any) -> tuple[ImageVolume, np.ndarray, dict[str, Any]]:
    """:func:`~MedXAILib.demo.samples.phantom.ct_phantom` plus its PET: a two-channel (CT, PET) volume.

    Takes the same arguments as ``ct_phantom``; the PET noise seed derives from `seed`.
    """
    ct, labels, info = ct_phantom(seed, **kwargs)
    pet = pet_channel(labels, info)
    volume = ImageVolume(np.concatenate([ct.array, pet.array]), ct.affine, channel_names=["CT", "PET"],
                         meta={"source": f"MedXAILib.demo.samples.pet_ct_phantom(seed={int(seed)})", "modality": "PT/CT"})
    return volume, labels, info
