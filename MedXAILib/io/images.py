"""Reading and writing image files: the one place where file geometry meets :class:`ImageVolume`.

SimpleITK arrays are (K, J, I) (or (K, J, I, C) for vector pixels) and its geometry is LPS
(origin, spacing, direction); :class:`ImageVolume` is (C, I, J, K) with a 4x4 IJK -> RAS affine.
:func:`to_sitk` and :func:`from_sitk` are the only functions that convert between the two; every
reader and writer below goes through them.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) and, for reading only, a folder holding a DICOM series. NIfTI cannot hold free-form
metadata, so :func:`write_image` puts the metadata of a NIfTI file into a JSON sidecar
(``<stem>.json``) and :func:`read_image` reads that sidecar back into ``meta["header"]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import GeometryError, InputError
from ..volume import ImageVolume
from .integrity import check_finite_voxels, check_nifti

__all__ = ["read_image", "read_images", "read_label_map", "write_image", "resample_to", "to_sitk",
           "from_sitk", "add_sidecar", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_LPS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS: negate x and y (its own inverse)
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")  # safe in NRRD "key:=value" and MetaImage "key = value"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reason(error: Exception) -> str:
    """One line from a SimpleITK exception (its text starts with C++ file names and line numbers)."""
    text = str(error)
    if "sitk::ERROR:" in text:
        text = text.rsplit("sitk::ERROR:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _sidecar(path: Path) -> Path:
    stem = path.name[: -len(_suffix(path))] if _suffix(path) else path.stem
    return path.with_name(stem + ".json")


def add_sidecar(path: str | Path, header: dict) -> dict:
    """`header` with the keys of a NIfTI file's JSON sidecar added (the header's own keys win): where a NIfTI
    file keeps what NRRD keeps in its header (the provenance). An unreadable sidecar is ignored, never fatal."""
    path = Path(path)
    sidecar = _sidecar(path)
    if _suffix(path) in (".nii", ".nii.gz") and sidecar.is_file():
        try:
            extra = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            extra = {}
        if isinstance(extra, dict):
            for key, value in extra.items():
                header.setdefault(str(key), value if isinstance(value, str) else json.dumps(value))
    return header



def from_sitk(image: sitk.Image) -> ImageVolume:
    """A 3D SimpleITK image as a (C, I, J, K) float32 volume; vector components become channels.

    Raises:
        InputError: when the image is not 3D or its pixels are complex.
    """
    if image.GetDimension() != 3:
        raise InputError(f"a 3D volume was expected; got a {image.GetDimension()}D image")
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError("complex-valued images are not supported; convert to magnitude first")
    array = sitk.GetArrayViewFromImage(image)
    array = array[..., np.newaxis] if array.ndim == 3 else array  # (K, J, I, C)
    array = np.transpose(array, (3, 2, 1, 0)).astype(np.float32)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = _LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return ImageVolume(array, affine)


def to_sitk(volume: ImageVolume, channel: int | None = None) -> sitk.Image:
    """`volume` as a float32 SimpleITK image with the same geometry (LPS, (K, J, I) array).

    Args:
        volume: the volume to convert.
        channel: convert only this channel; by default one channel gives a scalar image and
            several a vector image.

    Raises:
        GeometryError: when the affine has shear (ITK needs orthonormal direction cosines).
    """
    array = volume.array if channel is None else volume.array[channel : channel + 1]
    spacing = volume.spacing
    direction = _LPS @ volume.direction
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError("the affine has shear; ITK image files need orthogonal voxel axes")
    vector = array.shape[0] > 1
    kji = np.transpose(array, (3, 2, 1, 0)) if vector else np.transpose(array[0], (2, 1, 0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(kji, dtype=np.float32), isVector=vector)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((_LPS @ volume.origin).tolist())
    return image



def _read_dicom(folder: Path, series_uid: str | None) -> tuple[sitk.Image, dict[str, str]]:
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM prints "No Series were found"
    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if not uids:
        raise InputError(f"cannot read '{folder}': the folder holds no DICOM series")
    if series_uid is None and len(uids) > 1:
        raise InputError(
            f"'{folder}' holds {len(uids)} DICOM series; pass series_uid= one of: {', '.join(uids)}"
        )
    uid = series_uid or uids[0]
    if uid not in uids:
        raise InputError(f"series '{uid}' is not in '{folder}'; it holds: {', '.join(uids)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    header = {k: reader.GetMetaData(0, k) for k in reader.GetMetaDataKeys(0)}  # first slice's tags
    return image, header


def _to_3d(image: sitk.Image, path: Path, expect_3d: bool) -> list[sitk.Image]:
    """The 3D image(s) in `image`: one, or one per volume of a 4D file when 3D is not required."""
    dim, size = image.GetDimension(), image.GetSize()
    if dim == 3:
        return [image]
    if dim == 4 and (size[3] == 1 or not expect_3d):
        # Keep the spatial 3x3 block of the 4x4 direction rather than letting ITK guess.
        collapse = sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        return [sitk.Extract(image, [*size[:3], 0], [0, 0, 0, t], collapse) for t in range(size[3])]
    if dim == 2 and not expect_3d:
        return [sitk.JoinSeries(image)]  # one slice, 1 mm thick
    raise InputError(
        f"a 3D volume was expected but '{path}' is a {dim}D image of size {tuple(size)}; "
        + ("extract one volume (e.g. one time point) first" if dim > 3 else "use a 3D file")
    )


def read_image(
    path: str | os.PathLike, *, expect_3d: bool = True, series_uid: str | None = None
) -> ImageVolume:
    """Read a NIfTI, NRRD or MetaImage file, or a folder holding a DICOM series.

    Args:
        path: the file, or a folder for DICOM.
        expect_3d: when False, a 4D file's volumes become channels (e.g. multi-sequence MRI stored
            as 4D NIfTI) and a 2D image becomes a one-slice volume; when True both are refused.
        series_uid: which DICOM series to read when the folder holds several.

    Returns:
        The volume; ``meta["source"]`` is the path and ``meta["header"]`` the file's metadata
        (str -> str, plus a NIfTI sidecar's keys, or the first DICOM slice's tags).

    Raises:
        InputError: missing, unreadable, damaged (cut short, failed checksum) or non-image path, NaN or
            infinite voxels, or the wrong dimension.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"cannot read image '{path}': no such file or folder")
    try:
        if path.is_dir():
            image, header = _read_dicom(path, series_uid)
        else:
            if _suffix(path) in (".nii", ".nii.gz"):
                check_nifti(path)  # SimpleITK zero-fills a cut-short file and reads NaN/inf as 0
            image = sitk.ReadImage(str(path))
            # ITK_original_* are SimpleITK artefacts ("[UNKNOWN_PRINT_CHARACTERISTICS]"), not data.
            header = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()
                      if not k.startswith("ITK_original_")}
    except RuntimeError as error:
        raise InputError(f"cannot read image '{path}': {_reason(error)}") from None
    if image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() != 3:
        raise InputError(f"a 3D volume was expected; '{path}' is {image.GetDimension()}D vector")
    parts = [from_sitk(part) for part in _to_3d(image, path, expect_3d)]
    volume = ImageVolume(np.concatenate([p.array for p in parts]), parts[0].affine)
    check_finite_voxels(volume.array, path)
    add_sidecar(path, header)
    volume.meta.update(source=str(path), header=header)
    return volume


def _bounds(volume: ImageVolume) -> tuple[np.ndarray, np.ndarray]:
    """RAS bounding box (mm) of the grid's outer voxel edges, from its eight corners."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in volume.shape])).reshape(3, -1)
    ras = volume.affine[:3, :3] @ corners + volume.affine[:3, 3:]
    return ras.min(axis=1), ras.max(axis=1)


def resample_to(volume: ImageVolume, reference: ImageVolume, *, interpolation: str = "linear",
                default_value: float | None = None) -> ImageVolume:
    """Resample every channel of `volume` onto `reference`'s grid.

    Args:
        volume: the volume to move.
        reference: the grid to land on (its values are not used).
        interpolation: ``"linear"`` for intensities, ``"nearest"`` for labels.
        default_value: value outside `volume`; defaults to each channel's minimum (linear) or 0
            (nearest, i.e. background).

    Returns:
        A new volume on the reference grid (a copy when the grids already match).

    Raises:
        GeometryError: when the two grids' physical extents do not overlap at all.
    """
    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolation not in interpolators:
        raise InputError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
    if volume.same_grid(reference):
        return volume.with_array(volume.array.copy(), channel_names=list(volume.channel_names))
    (lo_a, hi_a), (lo_b, hi_b) = _bounds(volume), _bounds(reference)  # conservative if oblique
    if np.any(np.maximum(lo_a, lo_b) >= np.minimum(hi_a, hi_b)):
        def box(lo: np.ndarray, hi: np.ndarray) -> str:
            return f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm"

        raise GeometryError(f"the volume (RAS box {box(lo_a, hi_a)}) does not overlap the reference "
                            f"grid ({box(lo_b, hi_b)}); check that both come from the same scan "
                            "and frame of reference, or register them first")
    target = to_sitk(reference.with_array(np.zeros((1, *reference.shape), np.float32)))
    channels = []
    for c in range(volume.n_channels):
        fill = default_value
        if fill is None:
            fill = float(volume.array[c].min()) if interpolation == "linear" else 0.0
        out = sitk.Resample(to_sitk(volume, channel=c), target, sitk.Transform(),
                            interpolators[interpolation], fill)
        channels.append(from_sitk(out).array[0])
    return ImageVolume(np.stack(channels), reference.affine.copy(),
                       channel_names=list(volume.channel_names), meta=dict(volume.meta))


def read_images(paths: Sequence[str | os.PathLike]) -> ImageVolume:
    """Read single-channel files and stack them as channels on the first file's grid.

    Files on another grid are resampled (linear; outside their extent: their minimum).

    Raises:
        InputError: no path, or a file with more than one channel.
        GeometryError: a file does not overlap the first one.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)  # not its characters
    if not paths:
        raise InputError("read_images needs at least one path")
    volumes = [read_image(p) for p in paths]
    for path, vol in zip(paths, volumes):
        if vol.n_channels != 1:
            raise InputError(f"'{path}' has {vol.n_channels} channels; read_images needs 1 each")
    first = volumes[0]
    arrays = [resample_to(v, first, interpolation="linear").array[0] for v in volumes]
    return ImageVolume(np.stack(arrays), first.affine.copy(),
                       meta={"source": [str(p) for p in paths],
                             "header": [v.meta["header"] for v in volumes]})


def read_label_map(
    path: str | os.PathLike, reference: ImageVolume | None = None, *, series_uid: str | None = None
) -> ImageVolume:
    """Read an integer label map, resampled (nearest neighbour) onto `reference`'s grid if needed.

    Labels are kept as integer-valued float32 (:class:`ImageVolume` is float32), exact up to 2**24.

    Raises:
        InputError: several channels or non-integer values (threshold a probability map first).
        GeometryError: the label map does not overlap `reference` at all.
    """
    labels = read_image(path, series_uid=series_uid)
    if labels.n_channels != 1:
        raise InputError(f"a label map has one channel; '{path}' has {labels.n_channels}")
    values = labels.array
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise InputError(f"'{path}' holds non-integer values; a label map needs integer labels "
                         "(threshold or round a probability map first)")
    if reference is None or labels.same_grid(reference):
        return labels
    return resample_to(labels, reference, interpolation="nearest")


def write_image(
    volume: ImageVolume,
    path: str | os.PathLike,
    *,
    metadata: dict[str, str] | None = None,
    compress: bool = True,
    overwrite: bool | None = None,
) -> list[Path]:
    """Write `volume` (float32, scalar or vector pixels) with its exact geometry, atomically.

    Everything is written into a temporary folder next to `path` and then moved into place, so a
    failure leaves neither a partial file nor temporary files. A detached header (``.nhdr``,
    ``.mhd``) and its data file keep their names, so the header's reference stays valid.

    Args:
        volume: the volume to write.
        path: destination; its suffix picks the format (one of :data:`SUPPORTED_SUFFIXES`).
        metadata: single-line string values under keys made of letters, digits, ``_ . -``. Written
            into the header for NRRD and MetaImage (which silently drops keys naming its own
            fields, e.g. ``NDims``: prefer ``MedXAI.*`` keys); NIfTI cannot hold them, so they go
            to a JSON sidecar ``<stem>.json`` next to the image.
        compress: compress the voxel data (``.nii`` and ``.nii.gz`` follow their suffix).
        overwrite: True replaces existing files; False refuses; None (default) replaces existing
            files except the volume's own source file (``meta["source"]``).

    Returns:
        The paths written (image, then data file or sidecar when there is one).

    Raises:
        InputError: unsupported suffix, missing folder, bad metadata, refused overwrite or a
            failed write.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"cannot write '{path}': use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': the folder '{path.parent}' does not exist")
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not (isinstance(key, str) and _KEY.match(key) and isinstance(value, str)) or any(
                c in value for c in "\r\n"):
            raise InputError(f"metadata {key!r}: keys need letters, digits, '_.-' and values "
                             "single-line strings (json.dumps structured values)")
    source = volume.meta.get("source")
    if overwrite is None and isinstance(source, str) and Path(source).resolve() == path.resolve():
        raise InputError(f"refusing to overwrite the volume's own source file '{path}'; "
                         "choose another name or pass overwrite=True")
    if overwrite is False and path.exists():
        raise InputError(f"'{path}' exists; pass overwrite=True to replace it")
    nifti = suffix in (".nii", ".nii.gz")
    if nifti and volume.n_channels > 1 and volume.shape[2] == 1:
        # ITK writes it, but reads it back as a 2D image and the slice geometry is lost.
        raise InputError(f"cannot write '{path}': NIfTI cannot round-trip a one-slice "
                         "multi-channel volume; write .nrrd or .mha instead")
    image = to_sitk(volume)
    if not nifti:
        for key, value in metadata.items():
            image.SetMetaData(key, value)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".medxai-write-", dir=path.parent))
    except OSError as error:
        raise InputError(f"cannot write '{path}': {error.strerror or error}") from None
    moved: list[Path] = []
    try:
        try:
            sitk.WriteImage(image, str(tmp / path.name), compress)
        except RuntimeError as error:
            raise InputError(f"cannot write '{path}': {_reason(error)}") from None
        if nifti and metadata:
            (tmp / _sidecar(path).name).write_text(json.dumps(metadata, indent=1), "utf-8")
        # Header last: a reader never sees a header whose data file is not there yet.
        names = sorted(os.listdir(tmp), key=lambda n: (n == path.name, n))
        targets = [path.parent / n for n in names]
        if overwrite is False and any(t.exists() for t in targets):
            raise InputError(f"'{path}' (or its data/sidecar file) exists; pass overwrite=True")
        for name, target in zip(names, targets):
            os.replace(tmp / name, target)
            moved.append(target)
    except BaseException as error:
        for target in moved:  # roll back a half-moved detached pair
            target.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise InputError(f"cannot write '{path}': {error.strerror or error}") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(moved, key=lambda t: t != path)
