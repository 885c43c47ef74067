"""A deterministic abdominal CT phantom with ground-truth organs and lesions.

:func:`ct_phantom` draws a torso in air from simple shapes defined in RAS millimetres around the
grid centre, so the anatomy is the same whatever the voxel grid (shape, spacing, origin, rotation):

=====  ==========  =====================================================================  =========
label  name        what                                                                   mean HU
=====  ==========  =====================================================================  =========
0      background  air outside the body                                                   -1000
1      body        other tissue inside the body outline: subcutaneous, mesenteric,          45
                   perirenal and perisplenic fat (-100 HU), soft tissue and muscle, heart,
                   aorta and vena cava (40 HU), intervertebral discs (80 HU)
2      liver       right upper abdomen, two lobes                                           60
3      spleen      left upper abdomen                                                       50
4      kidney      both kidneys, lower abdomen                                              35
5      lung        both lung bases, upper part of the field of view                        -850
6      bone        vertebral bodies (about 350 HU inside to 650 HU at the rim), posterior  350-700
                   arches and spinous processes (600 HU), ribs (700 HU)
7      lesion      spheres of known centre, radius and contrast inside an organ          organ + contrast
=====  ==========  =====================================================================  =========

The patient axes are RAS: +x towards the patient's right (the liver side), +y anterior, +z superior.
The voxel grid is stored as a CT usually is (I towards the patient's left, J posterior, K superior,
i.e. the LPS direction of DICOM, seen from RAS), optionally rotated about the S axis, with its
centre at ``centre_ras`` (not the origin), so code that ignores the affine gets it wrong.

The default grid is 96 x 96 x 64 voxels of 2.0 x 2.0 x 3.0 mm (a 192 mm cube): the torso is about
176 x 132 mm (roughly a child's size, so the whole body fits a small, fast grid). Tissue values are
piecewise constant, then blurred by a Gaussian reconstruction kernel (``kernel_fwhm_mm``), and
spatially correlated Gaussian noise of standard deviation ``noise_hu`` is added.

Randomness comes from three independent streams spawned from ``seed``: anatomy (organ sizes and
positions vary by a few percent and millimetres), lesions, and noise. The same seed with and without
lesions therefore gives the same anatomy and the same noise, differing only in the lesions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ...errors import InputError
from ...volume import ImageVolume

__all__ = ["CLASS_NAMES", "LESION_ORGANS", "ORGAN_HU", "Lesion", "ct_phantom", "phantom_affine", "sphere_mask",
           "voxel_ras", "blur"]

CLASS_NAMES = ["background", "body", "liver", "spleen", "kidney", "lung", "bone", "lesion"]
LABEL = {name: index for index, name in enumerate(CLASS_NAMES)}
ORGAN_HU = {"air": -1000.0, "fat": -100.0, "soft_tissue": 45.0, "blood": 40.0, "disc": 80.0, "liver": 60.0,
            "spleen": 50.0, "kidney": 35.0, "lung": -850.0, "vertebra": 350.0, "vertebra_rim": 650.0,
            "arch": 600.0, "rib": 700.0}
LESION_ORGANS = ("liver", "spleen", "kidney", "lung")
# default lesion contrast (HU relative to the organ), drawn uniformly from these ranges
_CONTRAST_RANGE = {"liver": (-70.0, -35.0), "spleen": (-60.0, -30.0), "kidney": (-40.0, -25.0),
                   "lung": (780.0, 850.0)}
_RADIUS_RANGE = {"liver": (5.0, 12.0), "spleen": (4.0, 8.0), "kidney": (4.0, 8.0), "lung": (3.0, 7.0)}
_SUV_RANGE = (6.0, 10.0)


@dataclass
class Lesion:
    """A spherical lesion; fields left ``None`` are drawn from the lesion stream of the seed.

    Attributes:
        organ: where it grows, one of :data:`LESION_ORGANS`.
        radius_mm: sphere radius in millimetres.
        contrast_hu: lesion HU minus the organ's mean HU (negative = hypodense).
        centre_ras: centre in RAS mm; when ``None`` a random position is chosen such that the
            whole sphere lies inside the organ (at least 1.5 mm from its border and from other
            lesions).
        suv: PET uptake of the lesion (standardised uptake value) used by
            :func:`MedXAILib.demo.samples.pet.pet_channel`.
    """

    organ: str = "liver"
    radius_mm: Optional[float] = None
    contrast_hu: Optional[float] = None
    centre_ras: Optional[Sequence[float]] = None
    suv: Optional[float] = None


def phantom_affine(shape: Sequence[int], spacing: Sequence[float], centre_ras: Sequence[float],
                   rotation_deg: float = 0.0) -> np.ndarray:
    """IJK -> RAS affine of an LPS-stored grid rotated about S, with its centre voxel at `centre_ras`."""
    a = math.radians(rotation_deg)
    rotation = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    linear = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - linear @ ((np.asarray(shape, np.float64) - 1) / 2)
    return affine


def voxel_ras(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS coordinates (mm) of every voxel centre: three float64 arrays shaped `shape`."""
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij", sparse=True)
    a = np.asarray(affine, dtype=np.float64)
    return tuple(a[r, 0] * ii + a[r, 1] * jj + a[r, 2] * kk + a[r, 3] for r in range(3))  # type: ignore


def sphere_mask(affine: np.ndarray, shape: Sequence[int], centre_ras: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within `radius_mm` of `centre_ras` (boolean, shaped `shape`)."""
    x, y, z = voxel_ras(affine, shape)
    cx, cy, cz = (float(v) for v in centre_ras)
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= float(radius_mm) ** 2


def _ellipsoid(x, y, z, centre, semi) -> np.ndarray:
    return ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2 <= 1


def blur(array: np.ndarray, fwhm_mm: float | Sequence[float], spacing: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    fwhm = np.broadcast_to(np.asarray(fwhm_mm, dtype=np.float64), (3,))
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / np.asarray(spacing, dtype=np.float64)
    if not np.any(sigma > 0):
        return array
    return gaussian_filter(array, sigma=sigma, mode="nearest", truncate=3.0)


def _anatomy(rng: np.random.Generator) -> dict[str, Any]:
    """Organ shape parameters (mm, relative to the grid centre) with per-seed variation."""

    def jitter(values, sd):
        return [float(v + rng.normal(0.0, sd)) for v in values]

    def scale(values, lo=0.92, hi=1.08):
        return [float(v * rng.uniform(lo, hi)) for v in values]

    s = float(rng.uniform(0.95, 1.05))  # overall body size
    return {
        "body_semi": [88.0 * s, 66.0 * s],
        "fat_mm": float(rng.uniform(6.0, 11.0)),
        "lung_r": {"centre": jitter([40.0 * s, -2.0, 62.0], 2.0), "semi": scale([30.0 * s, 40.0 * s, 60.0])},
        "lung_l": {"centre": jitter([-40.0 * s, -2.0, 64.0], 2.0), "semi": scale([30.0 * s, 40.0 * s, 60.0])},
        "heart": {"centre": jitter([-12.0, 18.0, 58.0], 2.0), "semi": scale([33.0, 28.0, 30.0])},
        "liver": {"centre": jitter([32.0 * s, 4.0, 8.0], 3.0), "semi": scale([44.0 * s, 46.0 * s, 44.0])},
        "liver_left": {"centre": jitter([-8.0, 22.0, 18.0], 2.5), "semi": scale([30.0, 22.0, 20.0])},
        "spleen": {"centre": jitter([-44.0 * s, -14.0 * s, 18.0], 2.0), "semi": scale([13.0, 24.0, 28.0])},
        "kidney_r": {"centre": jitter([40.0 * s, -32.0 * s, -48.0], 2.5), "semi": scale([15.0, 17.0, 30.0])},
        "kidney_l": {"centre": jitter([-40.0 * s, -32.0 * s, -42.0], 2.5), "semi": scale([15.0, 17.0, 30.0])},
        "aorta": {"centre": jitter([-8.0, -18.0], 1.0), "radius": float(rng.uniform(8.0, 10.0))},
        "ivc": {"centre": jitter([18.0, -14.0], 1.0), "radius": float(rng.uniform(7.0, 9.0))},
        "spine_y": float(-36.0 * s + rng.normal(0.0, 1.0)),
        "vertebra_radius": float(rng.uniform(13.0, 15.0)),
        "vertebra_phase": float(rng.uniform(0.0, 30.0)),
        "rib_phase": float(rng.uniform(0.0, 24.0)),
        # mesenteric fat: where a sum of random plane waves (wavelength about 25-45 mm) is high
        "fat_waves": [[*(rng.normal(size=3) / 1.0), float(rng.uniform(25.0, 45.0)), float(rng.uniform(0, 2 * np.pi))]
                      for _ in range(8)],
    }


def _tissues(x, y, z, anatomy: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and labels (uint8) from the anatomy, at RAS offsets (x, y, z)."""
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    hu = np.full(shape, ORGAN_HU["air"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    def put(mask, value, label):
        hu[mask] = value
        labels[mask] = LABEL[label]

    a, b = anatomy["body_semi"]
    fat = anatomy["fat_mm"]
    body = (x / a) ** 2 + (y / b) ** 2 <= 1
    body = np.broadcast_to(body, shape)
    put(body, ORGAN_HU["fat"], "body")
    inner = np.broadcast_to((x / (a - fat)) ** 2 + (y / (b - fat)) ** 2 <= 1, shape)
    put(inner, ORGAN_HU["soft_tissue"], "body")
    field = np.zeros(shape, dtype=np.float32)
    for *k, wavelength, phase in anatomy["fat_waves"]:
        k = 2 * np.pi / wavelength * np.asarray(k) / max(float(np.linalg.norm(k)), 1e-9)
        field += np.cos(np.float32(k[0]) * x + np.float32(k[1]) * y + np.float32(k[2]) * z + np.float32(phase))
    cavity = ((x / (a - fat - 10)) ** 2 + (y / (b - fat - 10)) ** 2 <= 1) & (z < 25.0)
    put(cavity & (field > 1.2), ORGAN_HU["fat"], "body")
    for side in ("lung_r", "lung_l"):
        put(_ellipsoid(x, y, z, **anatomy[side]) & inner, ORGAN_HU["lung"], "lung")
    put(_ellipsoid(x, y, z, **anatomy["heart"]) & inner, ORGAN_HU["blood"], "body")
    wall = np.broadcast_to((x / (a - fat - 5)) ** 2 + (y / (b - fat - 5)) ** 2 <= 1, shape)
    for organ, margin in (("kidney_r", 7.0), ("kidney_l", 7.0), ("spleen", 4.0)):  # perirenal, perisplenic fat
        grown = {"centre": anatomy[organ]["centre"], "semi": [v + margin for v in anatomy[organ]["semi"]]}
        put(_ellipsoid(x, y, z, **grown) & wall, ORGAN_HU["fat"], "body")
    liver = (_ellipsoid(x, y, z, **anatomy["liver"]) | _ellipsoid(x, y, z, **anatomy["liver_left"]))
    put(liver & wall, ORGAN_HU["liver"], "liver")
    put(_ellipsoid(x, y, z, **anatomy["spleen"]) & wall, ORGAN_HU["spleen"], "spleen")
    for side in ("kidney_r", "kidney_l"):
        put(_ellipsoid(x, y, z, **anatomy[side]) & wall, ORGAN_HU["kidney"], "kidney")
    for vessel in ("aorta", "ivc"):
        (cx, cy), r = anatomy[vessel]["centre"], anatomy[vessel]["radius"]
        put(np.broadcast_to((x - cx) ** 2 + (y - cy) ** 2 <= r * r, shape), ORGAN_HU["blood"], "body")
    # spine: vertebral bodies separated by discs, posterior arches, spinous processes
    sy, vr = anatomy["spine_y"], anatomy["vertebra_radius"]
    r_body = np.sqrt(x**2 + (y - sy) ** 2)
    in_disc = np.mod(z - anatomy["vertebra_phase"], 30.0) < 6.0
    column = np.broadcast_to(r_body <= vr, shape)
    vertebra = column & ~in_disc
    rim = np.broadcast_to(ORGAN_HU["vertebra"] + (ORGAN_HU["vertebra_rim"] - ORGAN_HU["vertebra"])
                          * np.clip(r_body / vr, 0, 1) ** 4, shape)
    hu[vertebra] = rim[vertebra]
    labels[vertebra] = LABEL["bone"]
    put(column & in_disc, ORGAN_HU["disc"], "body")
    cy = sy - vr - 8.0  # spinal canal centre
    r_canal = np.sqrt(x**2 + (y - cy) ** 2)
    arch = (r_canal >= 7.0) & (r_canal <= 12.0) & (y < cy + 4.0)
    process = (np.abs(x) <= 4.0) & (y <= cy - 7.0) & (y >= cy - 7.0 - 16.0)
    put(np.broadcast_to((arch | process) & ~in_disc, shape) & inner, ORGAN_HU["arch"], "bone")
    # ribs: tubes of 3.5 mm radius along an ellipse inside the body wall, sloping down anteriorly,
    # every 24 mm above z = -40 mm, except at the front (costal cartilage) and next to the spine
    ra, rb = a - fat - 6.0, b - fat - 6.0
    rho = np.sqrt((x / ra) ** 2 + (y / rb) ** 2)
    radial = (rho - 1.0) * np.sqrt((ra**2 * (x / ra) ** 2 + rb**2 * (y / rb) ** 2) / np.maximum(rho**2, 1e-9))
    zc = z + 0.12 * (y + rb)  # the rib's height follows the slope
    dz = np.mod(zc - anatomy["rib_phase"], 24.0)
    dz = np.minimum(dz, 24.0 - dz)
    rib = (radial**2 + dz**2 <= 3.5**2) & (z > -40.0) & ~((np.abs(x) < 14.0) & (y > 0)) & ~((np.abs(x) < 24.0) & (y < 0))
    put(np.broadcast_to(rib, shape), ORGAN_HU["rib"], "bone")
    return hu, labels


def _as_lesion(item: Lesion | dict[str, Any]) -> Lesion:
    if isinstance(item, Lesion):
        lesion = Lesion(**asdict(item))
    elif isinstance(item, dict):
        unknown = set(item) - set(Lesion.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown lesion field(s) {sorted(unknown)}; known: {sorted(Lesion.__dataclass_fields__)}")
        lesion = Lesion(**item)
    else:
        raise InputError(f"a lesion is a Lesion or a dict, not {type(item).__name__}")
    if lesion.organ not in LESION_ORGANS:
        raise InputError(f"lesion organ must be one of {', '.join(LESION_ORGANS)}; got {lesion.organ!r}")
    if lesion.radius_mm is not None and not lesion.radius_mm > 0:
        raise InputError(f"lesion radius must be positive; got {lesion.radius_mm}")
    return lesion


def ct_phantom(
    seed: int = 0,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (2.0, 2.0, 3.0),
    *,
    lesions: Optional[Sequence[Lesion | dict[str, Any]]] = None,
    n_lesions: int = 2,
    lesion_organs: Sequence[str] = ("liver",),
    centre_ras: Sequence[float] = (12.5, -31.0, -415.0),
    rotation_deg: float = 0.0,
    noise_hu: float = 15.0,
    kernel_fwhm_mm: float | Sequence[float] = 2.5,
) -> tuple[ImageVolume, np.ndarray, dict[str, Any]]:
    """Draw a deterministic CT phantom (HU) with organ labels and lesions of known geometry.

    Args:
        seed: the same seed gives the same phantom, bit for bit.
        shape: voxels along I, J, K.
        spacing: voxel size in mm along I, J, K (anisotropic by default).
        lesions: explicit lesions (:class:`Lesion` or dicts with its fields); unset fields are drawn
            at random. When given, `n_lesions` and `lesion_organs` are ignored.
        n_lesions: number of random lesions when `lesions` is not given (0 for a lesion-free phantom).
        lesion_organs: organs the random lesions are drawn in (uniformly), from :data:`LESION_ORGANS`.
        centre_ras: RAS position (mm) of the grid centre; the anatomy is centred there.
        rotation_deg: rotation of the voxel grid about the S axis (degrees); the anatomy stays put.
        noise_hu: standard deviation of the (spatially correlated) noise, HU.
        kernel_fwhm_mm: FWHM of the Gaussian reconstruction kernel, mm (one value or three).

    Returns:
        ``(image, labels, info)``: the CT as a one-channel :class:`ImageVolume` (``channel_names
        ["CT"]``), the labels as a uint8 (I, J, K) array on the same grid (:data:`CLASS_NAMES`),
        and a JSON-friendly dict: ``seed``, ``shape``, ``spacing``, ``affine``, ``class_names``,
        ``organ_hu`` and ``lesions`` (each with ``organ``, ``centre_ras``, ``centre_ijk``,
        ``radius_mm``, ``contrast_hu``, ``hu``, ``suv``, ``n_voxels``).

    Raises:
        InputError: bad arguments, or no room for a lesion of the requested size in its organ.
    """
    shape = tuple(int(n) for n in shape)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if len(shape) != 3 or min(shape) < 2 or spacing_arr.shape != (3,) or not np.all(spacing_arr > 0):
        raise InputError(f"shape needs three sizes >= 2 and spacing three positive mm values; got {shape}, "
                         f"{tuple(spacing)}")
    if noise_hu < 0:
        raise InputError(f"noise_hu must be >= 0; got {noise_hu}")
    for organ in lesion_organs:
        if organ not in LESION_ORGANS:
            raise InputError(f"lesion organs must be among {', '.join(LESION_ORGANS)}; got {organ!r}")
    anatomy_seq, lesion_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
    anatomy = _anatomy(np.random.default_rng(anatomy_seq))
    lesion_rng = np.random.default_rng(lesion_seq)
    affine = phantom_affine(shape, spacing_arr, centre_ras, rotation_deg)
    x, y, z = voxel_ras(affine, shape)
    centre = np.asarray(centre_ras, dtype=np.float64)
    hu, labels = _tissues(*((c - o).astype(np.float32) for c, o in zip((x, y, z), centre)), anatomy)

    if lesions is None:
        requested = [Lesion(organ=str(lesion_rng.choice(list(lesion_organs)))) for _ in range(int(n_lesions))]
    else:
        requested = [_as_lesion(item) for item in lesions]
    placed: list[dict[str, Any]] = []
    lesion_mask = np.zeros(shape, dtype=bool)
    inverse = np.linalg.inv(affine)
    for lesion in requested:
        lo, hi = _RADIUS_RANGE[lesion.organ]
        radius = float(lesion.radius_mm) if lesion.radius_mm is not None else float(lesion_rng.uniform(lo, hi))
        lo, hi = _CONTRAST_RANGE[lesion.organ]
        contrast = float(lesion.contrast_hu) if lesion.contrast_hu is not None else float(lesion_rng.uniform(lo, hi))
        suv = float(lesion.suv) if lesion.suv is not None else float(lesion_rng.uniform(*_SUV_RANGE))
        if lesion.centre_ras is None:
            centre_l = _random_centre(labels == LABEL[lesion.organ], lesion_mask, placed, affine, spacing_arr,
                                      radius, lesion_rng, lesion.organ)
        else:
            centre_l = np.asarray(lesion.centre_ras, dtype=np.float64)
            if centre_l.shape != (3,):
                raise InputError(f"lesion centre_ras needs three numbers; got {lesion.centre_ras!r}")
        sphere = sphere_mask(affine, shape, centre_l, radius)
        value = ORGAN_HU[lesion.organ] + contrast
        hu[sphere] = value
        labels[sphere] = LABEL["lesion"]
        lesion_mask |= sphere
        placed.append({
            "organ": lesion.organ,
            "centre_ras": [round(float(v), 4) for v in centre_l],
            "centre_ijk": [round(float(v), 4) for v in (inverse @ np.append(centre_l, 1.0))[:3]],
            "radius_mm": round(radius, 4),
            "contrast_hu": round(contrast, 4),
            "hu": round(float(value), 4),
            "suv": round(suv, 4),
            "n_voxels": int(sphere.sum()),
        })

    noise_rng = np.random.default_rng(noise_seq)
    image = blur(hu.astype(np.float64), kernel_fwhm_mm, spacing_arr)
    if noise_hu > 0:
        noise = blur(noise_rng.standard_normal(shape), kernel_fwhm_mm, spacing_arr)
        image += noise * (noise_hu / max(float(noise.std()), 1e-12))
    volume = ImageVolume(image.astype(np.float32)[np.newaxis], affine, channel_names=["CT"],
                         meta={"source": f"MedXAILib.demo.samples.ct_phantom(seed={int(seed)})", "modality": "CT",
                               "unit": "HU"})
    info = {
        "seed": int(seed),
        "shape": list(shape),
        "spacing": [float(v) for v in spacing_arr],
        "affine": np.round(affine, 10).tolist(),
        "centre_ras": [float(v) for v in centre],
        "rotation_deg": float(rotation_deg),
        "class_names": list(CLASS_NAMES),
        "organ_hu": dict(ORGAN_HU),
        "noise_hu": float(noise_hu),
        "kernel_fwhm_mm": np.broadcast_to(np.asarray(kernel_fwhm_mm, float), (3,)).tolist(),
        "lesions": placed,
    }
    return volume, labels, info


def _random_centre(organ: np.ndarray, taken: np.ndarray, placed: list[dict[str, Any]], affine: np.ndarray,
                   spacing: np.ndarray, radius: float, rng: np.random.Generator, name: str) -> np.ndarray:
    """A random voxel centre (plus sub-voxel jitter) whose sphere lies inside `organ`, clear of other lesions."""
    from scipy.ndimage import distance_transform_edt

    margin = 1.5
    free = organ & ~taken
    if not free.any():
        raise InputError(f"the {name} is not in this phantom's field of view; no room for a lesion")
    lo = np.maximum(np.argwhere(free).min(axis=0) - 1, 0)  # the distance transform on the organ's box only
    hi = np.argwhere(free).max(axis=0) + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    room = np.zeros(free.shape, dtype=np.float64)
    room[box] = distance_transform_edt(np.pad(free[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(room >= radius + margin + float(np.max(spacing)) / 2)
    if len(candidates):
        ras = candidates @ affine[:3, :3].T + affine[:3, 3]
        keep = np.ones(len(candidates), dtype=bool)
        for other in placed:  # clear of earlier lesions by the margin
            keep &= np.linalg.norm(ras - np.asarray(other["centre_ras"]), axis=1) >= radius + other["radius_mm"] + margin
        candidates = candidates[keep]
    if not len(candidates):
        raise InputError(f"no room for a lesion of radius {radius:.1f} mm in the {name} of this phantom; "
                         "use a smaller radius or fewer lesions")
    ijk = candidates[rng.integers(len(candidates))] + rng.uniform(-0.25, 0.25, 3)
    return affine[:3, :3] @ ijk + affine[:3, 3]
