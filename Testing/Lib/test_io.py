"""Tests of MedXAILib.io: file <-> ImageVolume conversion, geometry, atomic writes and errors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedXAILib import io as mio
from MedXAILib.errors import GeometryError, InputError
from MedXAILib.volume import ImageVolume

FORMATS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]
FLIP = np.diag([-1.0, -1.0, 1.0])


def _rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, b = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rx @ rz


def _oblique_affine(spacing=(0.7, 1.3, 2.9), origin=(-1234.5, 987.25, 4321.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(30, 20) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _oblique_volume(channels: int = 1, shape=(7, 9, 11), seed: int = 0) -> ImageVolume:
    rng = np.random.default_rng(seed)
    array = rng.normal(size=(channels, *shape)).astype(np.float32) * 100
    return ImageVolume(array, _oblique_affine())


def _leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_oblique_anisotropic(tmp_path, suffix, channels):
    volume = _oblique_volume(channels)
    path = tmp_path / f"vol{suffix}"
    written = mio.write_image(volume, path)
    assert written[0] == path and all(p.exists() for p in written)
    if suffix in (".nhdr", ".mhd"):
        assert len(written) == 2  # header + detached data file, moved together
    back = mio.read_image(path)
    assert back.array.dtype == np.float32 and back.array.shape == volume.array.shape
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5, rtol=0)
    ijk = np.array([3, 5, 8, 1.0])
    np.testing.assert_allclose(back.affine @ ijk, volume.affine @ ijk, atol=1e-5, rtol=0)
    assert back.meta["source"] == str(path)
    assert isinstance(back.meta["header"], dict)
    assert [n for n in _leftovers(tmp_path) if n.startswith(".")] == []  # no temp folder left


def test_to_from_sitk_conversion_is_exact():
    volume = _oblique_volume(2)
    image = mio.to_sitk(volume)
    assert image.GetSize() == (7, 9, 11) and image.GetNumberOfComponentsPerPixel() == 2
    back = mio.from_sitk(image)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-12)
    single = mio.to_sitk(volume, channel=1)
    assert single.GetNumberOfComponentsPerPixel() == 1
    assert single.GetPixel(2, 4, 6) == volume.array[1, 2, 4, 6]


def test_to_sitk_refuses_shear():
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(GeometryError, match="shear"):
        mio.to_sitk(ImageVolume(np.zeros((1, 3, 3, 3)), affine))


def _hand_built_sitk() -> tuple[sitk.Image, np.ndarray]:
    """A SimpleITK image with known LPS geometry, and its RAS affine computed by hand."""
    size = (5, 6, 7)
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.normal(size=size[::-1]).astype(np.float32))
    spacing = (0.8, 1.1, 2.5)
    origin_lps = (12.5, -40.25, 300.0)
    direction_lps = _rotation(25, -15)
    image.SetSpacing(spacing)
    image.SetOrigin(origin_lps)
    image.SetDirection(direction_lps.ravel().tolist())
    ras = np.eye(4)
    ras[:3, :3] = direction_lps * np.asarray(spacing)  # column j scaled by spacing[j]
    ras[:3, 3] = origin_lps
    ras[0, :] *= -1  # L -> R
    ras[1, :] *= -1  # P -> A
    return image, ras


def test_conversion_is_ras_ijk_not_just_self_consistent(tmp_path):
    image, ras = _hand_built_sitk()
    path = tmp_path / "hand.nii"
    sitk.WriteImage(image, str(path))
    volume = mio.read_image(path)
    assert volume.shape == image.GetSize()  # (I, J, K) = SimpleITK's (x, y, z) size
    np.testing.assert_allclose(volume.affine, ras, atol=1e-5, rtol=0)
    for i, j, k in [(0, 0, 0), (4, 1, 2), (1, 5, 6), (3, 2, 0)]:
        assert volume.array[0, i, j, k] == image.GetPixel(i, j, k)
        lps = np.array(image.TransformIndexToPhysicalPoint((i, j, k)))
        np.testing.assert_allclose(volume.affine @ [i, j, k, 1], [*(FLIP @ lps), 1], atol=1e-5)
    # Independent of SimpleITK's reader: the NIfTI sform (RAS by the standard) read from the bytes.
    raw = path.read_bytes()
    assert struct.unpack("<h", raw[254:256])[0] > 0  # sform_code set
    srow = np.array(struct.unpack("<12f", raw[280:328])).reshape(3, 4)
    np.testing.assert_allclose(volume.affine[:3], srow, atol=1e-4)
    offset = int(struct.unpack("<f", raw[108:112])[0])
    data = np.frombuffer(raw[offset:], dtype="<f4", count=5 * 6 * 7).reshape((5, 6, 7), order="F")
    np.testing.assert_array_equal(volume.array[0], data)


def test_conversion_matches_nibabel(tmp_path):
    import nibabel as nib  # an independent reader of NIfTI geometry

    image, ras = _hand_built_sitk()
    path = tmp_path / "hand.nii.gz"
    sitk.WriteImage(image, str(path))
    volume = mio.read_image(path)
    reference = nib.load(str(path))
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array[0], np.asarray(reference.dataobj, np.float32))


# ------------------------------------------------------------------------------------------------
# DICOM


def _write_dicom_series(folder: Path, array_kji, spacing, origin_lps, direction_lps, uid) -> None:
    folder.mkdir(exist_ok=True)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing)
    image.SetOrigin(origin_lps)
    image.SetDirection(np.asarray(direction_lps).ravel().tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    iop = "\\".join(f"{v:.10f}" for v in np.asarray(direction_lps)[:, :2].T.ravel())
    for k in range(array_kji.shape[0]):
        slice_k = image[:, :, k : k + 1]
        ipp = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9.1",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in ipp),
            "0020|0037": iop,
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # row spacing \ column spacing
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)


def test_dicom_series_folder(tmp_path):
    rng = np.random.default_rng(5)
    array = rng.integers(-1000, 2000, size=(6, 10, 8)).astype(np.int16)  # (K, J, I)
    spacing, origin = (0.75, 0.9, 2.5), (-120.5, 80.25, 30.0)
    direction = _rotation(20, 30)
    folder = tmp_path / "dicom"
    _write_dicom_series(folder, array, spacing, origin, direction, "1.2.826.0.1.3680043.2.1125.7.1")
    volume = mio.read_image(folder)
    assert volume.shape == (8, 10, 6)
    np.testing.assert_array_equal(volume.array[0], np.transpose(array, (2, 1, 0)).astype(np.float32))
    expected = np.eye(4)
    expected[:3, :3] = FLIP @ direction @ np.diag(spacing)
    expected[:3, 3] = FLIP @ np.asarray(origin)
    np.testing.assert_allclose(volume.affine, expected, atol=1e-4, rtol=0)
    assert volume.meta["header"].get("0008|0060", "").strip() == "CT"


def test_dicom_folder_with_two_series_needs_a_uid(tmp_path):
    folder = tmp_path / "dicom"
    array = np.zeros((3, 4, 5), np.int16)
    uids = ["1.2.826.0.1.3680043.2.1125.7.2", "1.2.826.0.1.3680043.2.1125.7.3"]
    _write_dicom_series(folder, array, (1, 1, 1), (0, 0, 0), np.eye(3), uids[0])
    array[:] = 7
    sub = tmp_path / "tmp2"
    _write_dicom_series(sub, array, (1, 1, 1), (0, 0, 0), np.eye(3), uids[1])
    for f in sub.iterdir():
        f.rename(folder / ("b" + f.name))
    with pytest.raises(InputError) as info:
        mio.read_image(folder)
    assert uids[0] in str(info.value) and uids[1] in str(info.value)
    assert mio.read_image(folder, series_uid=uids[1]).array.max() == 7
    with pytest.raises(InputError, match="not in"):
        mio.read_image(folder, series_uid="1.2.3")
    with pytest.raises(InputError, match="no DICOM"):
        mio.read_image(sub)


# ------------------------------------------------------------------------------------------------
# metadata / provenance


PROVENANCE = {
    "MedXAI.method": "integrated_gradients",
    "MedXAI.params": json.dumps({"steps": 32, "baseline": "zeros"}),
    "MedXAI.version": "0.1.0",
}


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_metadata_in_header(tmp_path, suffix):
    path = tmp_path / f"attr{suffix}"
    mio.write_image(_oblique_volume(), path, metadata=PROVENANCE)
    header = mio.read_image(path).meta["header"]
    for key, value in PROVENANCE.items():
        assert header[key] == value
    assert not (tmp_path / "attr.json").exists()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_metadata_sidecar(tmp_path, suffix):
    path = tmp_path / f"attr{suffix}"
    written = mio.write_image(_oblique_volume(), path, metadata=PROVENANCE)
    sidecar = tmp_path / "attr.json"
    assert written == [path, sidecar]
    assert json.loads(sidecar.read_text()) == PROVENANCE
    header = mio.read_image(path).meta["header"]
    assert all(header[k] == v for k, v in PROVENANCE.items())


@pytest.mark.parametrize("bad", [{"a b": "x"}, {"k": "two\nlines"}, {"k": 3}])
def test_bad_metadata_refused(tmp_path, bad):
    with pytest.raises(InputError, match="metadata"):
        mio.write_image(_oblique_volume(), tmp_path / "x.nrrd", metadata=bad)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# atomic writes and overwrite protection


def _failing_write(image, filename, *args, **kwargs):
    Path(filename).write_bytes(b"partial")
    if filename.endswith(".nhdr"):
        Path(filename[:-5] + ".raw.gz").write_bytes(b"partial")
    raise RuntimeError("Exception thrown in SimpleITK WriteImage: x.cxx:1:\nsitk::ERROR: disk full")


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".nii.gz"])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(sitk, "WriteImage", _failing_write)
    with pytest.raises(InputError, match="disk full"):
        mio.write_image(_oblique_volume(), tmp_path / f"out{suffix}", metadata=PROVENANCE)
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "out.nrrd"
    mio.write_image(_oblique_volume(seed=1), path)
    before = path.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", _failing_write)
    with pytest.raises(InputError):
        mio.write_image(_oblique_volume(seed=2), path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == ["out.nrrd"]


def test_failed_move_rolls_back_detached_pair(tmp_path, monkeypatch):
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match="No space"):
        mio.write_image(_oblique_volume(), tmp_path / "out.nhdr")
    assert _leftovers(tmp_path) == []


def test_unwritable_folder_is_an_input_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mio.images.tempfile, "mkdtemp", refuse)
    with pytest.raises(InputError, match="Permission denied"):
        mio.write_image(_oblique_volume(), tmp_path / "out.nrrd")
    assert _leftovers(tmp_path) == []


def test_overwrite_protection(tmp_path):
    path = tmp_path / "in.nrrd"
    mio.write_image(_oblique_volume(seed=1), path)
    volume = mio.read_image(path)
    with pytest.raises(InputError, match="own source"):
        mio.write_image(volume, path)  # default: never silently replace the input file
    with pytest.raises(InputError, match="exists"):
        mio.write_image(_oblique_volume(seed=2), path, overwrite=False)
    np.testing.assert_array_equal(mio.read_image(path).array, volume.array)
    mio.write_image(_oblique_volume(seed=2), path)  # another volume: replacing is fine
    mio.write_image(volume, path, overwrite=True)
    assert _leftovers(tmp_path) == ["in.nrrd"]


def test_one_slice_multichannel_nifti_refused(tmp_path):
    volume = ImageVolume(np.ones((2, 4, 5, 1)), np.eye(4))
    with pytest.raises(InputError, match="nrrd"):
        mio.write_image(volume, tmp_path / "x.nii.gz")
    mio.write_image(volume, tmp_path / "x.nrrd")
    assert mio.read_image(tmp_path / "x.nrrd").array.shape == (2, 4, 5, 1)


def test_write_refuses_unknown_suffix_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match="use one of"):
        mio.write_image(_oblique_volume(), tmp_path / "x.png")
    with pytest.raises(InputError, match="does not exist"):
        mio.write_image(_oblique_volume(), tmp_path / "nope" / "x.nrrd")


# ------------------------------------------------------------------------------------------------
# errors on reading


def test_missing_file(tmp_path):
    path = tmp_path / "missing.nii.gz"
    with pytest.raises(InputError, match="no such file") as info:
        mio.read_image(path)
    assert str(path) in str(info.value)


def test_text_file_named_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError) as info:
        mio.read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and ".cxx" not in message


def _4d_image() -> sitk.Image:
    volumes = [sitk.GetImageFromArray(np.full((4, 5, 6), t, np.float32)) for t in range(3)]
    for v in volumes:
        v.SetSpacing((1.5, 2.0, 3.0))
        v.SetOrigin((10.0, 20.0, 30.0))
    return sitk.JoinSeries(volumes)


def test_4d_nifti_refused_or_split_into_channels(tmp_path):
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(_4d_image(), str(path))
    with pytest.raises(InputError, match="3D volume was expected") as info:
        mio.read_image(path)
    assert "4D" in str(info.value)
    volume = mio.read_image(path, expect_3d=False)
    assert volume.array.shape == (3, 6, 5, 4)
    assert [float(volume.array[c].mean()) for c in range(3)] == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(volume.spacing, [1.5, 2.0, 3.0])
    np.testing.assert_allclose(volume.origin, [-10.0, -20.0, 30.0])


def test_2d_image_refused(tmp_path):
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match="3D volume was expected"):
        mio.read_image(path)
    assert mio.read_image(path, expect_3d=False).shape == (8, 9, 1)


# ------------------------------------------------------------------------------------------------
# label maps and multi-file inputs


def _grid(shape, spacing, origin, direction=None) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if direction is None else direction) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def test_label_map_on_reference_grid(tmp_path):
    reference = ImageVolume(np.zeros((1, 12, 12, 12)), _grid((12,) * 3, (1, 1, 1), (0, 0, 0)))
    labels = np.zeros((6, 6, 6), np.float32)
    labels[1:4, 2:5, 0:3] = 3
    labels[4:, :, :] = 1
    path = tmp_path / "labels.nrrd"
    mio.write_image(ImageVolume(labels, _grid((6,) * 3, (2, 2, 2), (0.5, 0.5, 0.5))), path)
    same = mio.read_label_map(path)
    np.testing.assert_array_equal(same.array[0], labels)
    moved = mio.read_label_map(path, reference)
    assert moved.same_grid(reference)
    assert set(np.unique(moved.array)) == {0.0, 1.0, 3.0}  # nearest neighbour: no new values
    assert moved.array[0, 4, 6, 2] == 3 and moved.meta["source"] == str(path)


def test_label_map_far_away_is_a_geometry_error(tmp_path):
    reference = _oblique_volume()
    path = tmp_path / "labels.nii.gz"
    far = ImageVolume(np.ones((1, 5, 5, 5)), _grid((5,) * 3, (1, 1, 1), (5000, 5000, 5000)))
    mio.write_image(far, path)
    with pytest.raises(GeometryError, match="does not overlap"):
        mio.read_label_map(path, reference)


def test_label_map_refuses_fractional_values(tmp_path):
    path = tmp_path / "prob.nrrd"
    mio.write_image(_oblique_volume(), path)
    with pytest.raises(InputError, match="non-integer"):
        mio.read_label_map(path)


def test_read_images_resamples_onto_first_grid(tmp_path):
    first_affine = _grid((10, 10, 10), (1, 1, 1), (0, 0, 0))
    second_affine = _grid((6, 6, 6), (2, 2, 2), (-0.5, -0.5, -0.5))
    # A linear function of RAS x on both grids: linear interpolation must reproduce it inside.
    def ramp(affine, shape):
        ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
        return (ijk @ affine[:3, :3].T + affine[:3, 3])[..., 0].astype(np.float32)
    a, b = tmp_path / "a.nrrd", tmp_path / "b.nii.gz"
    mio.write_image(ImageVolume(ramp(first_affine, (10,) * 3) * 0 + 5, first_affine), a)
    mio.write_image(ImageVolume(ramp(second_affine, (6,) * 3), second_affine), b)
    stacked = mio.read_images([a, b])
    assert stacked.array.shape == (2, 10, 10, 10)
    np.testing.assert_allclose(stacked.affine, first_affine)
    np.testing.assert_array_equal(stacked.array[0], 5)
    inner = stacked.array[1, :9, :9, :9]
    np.testing.assert_allclose(inner, ramp(first_affine, (9, 9, 9)), atol=1e-4)
    assert stacked.meta["source"] == [str(a), str(b)]


def test_read_images_refuses_disjoint_channel(tmp_path):
    a, b = tmp_path / "a.mha", tmp_path / "b.mha"
    mio.write_image(ImageVolume(np.zeros((1, 4, 4, 4)), _grid((4,) * 3, (1, 1, 1), (0, 0, 0))), a)
    mio.write_image(ImageVolume(np.zeros((1, 4, 4, 4)), _grid((4,) * 3, (1, 1, 1), (0, 0, 90))), b)
    with pytest.raises(GeometryError):
        mio.read_images([a, b])


def test_resample_to_rejects_unknown_interpolation():
    volume = _oblique_volume()
    with pytest.raises(InputError, match="interpolation"):
        mio.resample_to(volume, volume, interpolation="cubic")
