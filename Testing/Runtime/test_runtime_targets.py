"""MedXAIRuntime.targets: ROI and point targets on an oblique, anisotropic grid."""

from __future__ import annotations

import numpy as np
import pytest

import runtime_paths  # noqa: F401  (puts MedXAIRuntime and MedXAILib on sys.path)

from MedXAILib.errors import TargetError
from MedXAIRuntime.targets import (
    TargetKind,
    boxFromRasCorners,
    roiCorners,
    targetFromSettings,
    transformPoints,
    voxelFromRas,
)

SHAPE = (40, 30, 20)


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 1.2, 3.0])
    affine[:3, 3] = (15.0, -40.0, 100.0)
    return affine


def ras_of(affine, ijk):
    return (affine @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def test_voxel_round_trip_on_an_oblique_grid():
    affine = oblique_affine()
    for ijk in [(0, 0, 0), (39, 29, 19), (12, 7, 3)]:
        ras = ras_of(affine, ijk) + 0.2 * affine[:3, 0]  # a fifth of a voxel off the centre
        assert voxelFromRas(affine, ras, SHAPE) == ijk


def test_point_outside_the_grid_is_refused():
    with pytest.raises(TargetError, match="outside"):
        voxelFromRas(oblique_affine(), ras_of(oblique_affine(), (40, 0, 0)), SHAPE)


def test_roi_aligned_with_the_grid_gives_its_voxel_box():
    affine = oblique_affine()
    lo, hi = np.array([5, 6, 2]), np.array([14, 20, 9])
    centre = ras_of(affine, (lo + hi) / 2)
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    size = (hi - lo) * np.linalg.norm(affine[:3, :3], axis=0)  # between the outer voxel centres
    box = boxFromRasCorners(affine, roiCorners(centre, axes.T, size), SHAPE)
    assert box == (*lo, *hi)


def test_roi_is_clipped_to_the_grid_and_refused_when_outside():
    affine = oblique_affine()
    corners = np.array([ras_of(affine, c) for c in [(-5, -5, -5), (10, 10, 10)]])
    assert boxFromRasCorners(affine, corners, SHAPE) == (0, 0, 0, 10, 10, 10)
    far = np.array([ras_of(affine, c) for c in [(100, 100, 100), (120, 120, 120)]])
    with pytest.raises(TargetError, match="ROI"):
        boxFromRasCorners(affine, far, SHAPE)


def test_world_to_image_transform_is_applied():
    affine = oblique_affine()
    shift = np.eye(4)
    shift[:3, 3] = (10.0, 0.0, 0.0)  # world -> image coordinates
    world = ras_of(affine, (5, 5, 5)) - shift[:3, 3]
    target = targetFromSettings(TargetKind.point, affine, SHAPE, classIndex=1, pointRas=world, worldToImage=shift)
    assert target.voxel == (5, 5, 5) and target.region == "voxel"
    assert transformPoints(None, [1, 2, 3]).tolist() == [[1.0, 2.0, 3.0]]


def test_target_for_every_kind():
    affine = oblique_affine()
    mask = np.zeros(SHAPE, bool)
    mask[1:3, 1:3, 1:3] = True
    corners = np.array([ras_of(affine, c) for c in [(2, 2, 2), (6, 6, 6)]])
    point = ras_of(affine, (4, 5, 6))
    common = dict(classIndex=2, score="probability", reduction="mean", mask=mask, roiCornersRas=corners, pointRas=point)
    targets = {kind: targetFromSettings(kind, affine, SHAPE, **common) for kind in TargetKind}
    assert {kind: t.region for kind, t in targets.items()} == {kind: kind.value for kind in TargetKind}
    assert targets[TargetKind.roi].box == (2, 2, 2, 6, 6, 6)
    assert targets[TargetKind.component].voxel == (4, 5, 6)
    assert targets[TargetKind.segment].mask.sum() == 8
    assert all(t.class_index == 2 and t.score == "probability" and t.reduction == "mean" for t in targets.values())


def test_negative_class_means_the_predicted_class():
    target = targetFromSettings(TargetKind.classScore, oblique_affine(), SHAPE, classIndex=-1)
    assert target.class_index is None and target.region == "class"


@pytest.mark.parametrize("kind, missing", [(TargetKind.segment, "segment"), (TargetKind.roi, "ROI"),
                                           (TargetKind.point, "point"), (TargetKind.component, "point")])
def test_missing_inputs_are_reported(kind, missing):
    with pytest.raises(TargetError, match=missing):
        targetFromSettings(kind, oblique_affine(), SHAPE, classIndex=1)


def test_empty_segment_is_reported():
    with pytest.raises(TargetError, match="empty"):
        targetFromSettings(TargetKind.segment, oblique_affine(), SHAPE, classIndex=1, mask=np.zeros(SHAPE, bool))


def test_labels_for_the_combo_box():
    assert len({TargetKind.label(kind) for kind in TargetKind}) == len(TargetKind)
