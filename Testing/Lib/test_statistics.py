"""Per-structure relevance statistics, relevance-volume curves, comparison tables, writers and ``medxai stats``.

Every number is known in advance (hand-built cubes and maps) or recomputed independently by brute
force (sorting, explicit centroids through the affine).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from MedXAILib import ImageVolume
from MedXAILib.cli.main import main
from MedXAILib.errors import InputError, ParameterError, UnknownNameError
from MedXAILib.io import write_image
from MedXAILib.analysis.statistics import (STATISTIC_COLUMNS, STATISTIC_UNITS, compare_statistics, relevance_volume_curves,
                                  structure_statistics, write_table_csv, write_table_json)
from MedXAILib.evaluation.localisation import pointing_game_score, relevance_mass_accuracy_score
from MedXAILib.volume import spacing_of

from conftest import oblique_affine

SHAPE = (20, 16, 12)
N = int(np.prod(SHAPE))


def cube_labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int64)
    labels[4:10, 3:9, 2:7] = 1  # 6 * 6 * 5 = 180 voxels
    labels[13:17, 10:14, 6:10] = 2  # 4 * 4 * 4 = 64 voxels
    return labels


def row(table: dict, name: str) -> dict:
    index = table["structure"].index(name)
    return {column: values[index] for column, values in table.items()}


def test_indicator_map_of_a_cube_gives_the_textbook_numbers():
    labels = cube_labels()
    cube = labels == 1
    affine = oblique_affine()  # rotated, 0.8 x 1.1 x 2.0 mm
    table = structure_statistics(cube.astype(float), labels, ["background", "cube", "other"], affine,
                                 top_fraction=0.02)
    assert list(table) == list(STATISTIC_COLUMNS) and table["label"] == [0, 1, 2]
    c, bg, other = row(table, "cube"), row(table, "background"), row(table, "other")
    assert c["voxels"] == 180 and c["volume_mm3"] == pytest.approx(180 * 0.8 * 1.1 * 2.0)
    assert c["share_abs"] == 1.0 and c["density_ratio"] == pytest.approx(N / 180)
    assert c["abs_rank_accuracy"] == 1.0 and c["peak_distance_mm"] == 0.0
    assert c["share_positive"] == 1.0 and c["volume_share"] == pytest.approx(180 / N)
    n_top = round(0.02 * N)  # 77 voxels, all of them tied at 1 inside the cube
    assert c["top_dice"] == pytest.approx(2 * n_top / (n_top + 180))
    assert c["top_iou"] == pytest.approx(n_top / 180)
    assert c["sum"] == 180 and c["mean"] == 1 and c["max"] == 1 and c["p95"] == 1
    assert c["positive_mass"] == 180 and c["negative_mass"] == 0
    # uniform relevance: its centroid is the structure's centroid
    assert c["centre_distance_mm"] == pytest.approx(0, abs=1e-9)
    centre = affine[:3, :3] @ np.argwhere(cube).mean(0) + affine[:3, 3]
    assert [c["centre_ras_x"], c["centre_ras_y"], c["centre_ras_z"]] == pytest.approx(list(centre))
    assert other["share_abs"] == 0 and other["peak_distance_mm"] > 0 and other["top_dice"] == 0
    assert math.isnan(other["centre_distance_mm"])
    # background: K = its voxel count; the 180 ones come first, then its own zeros (ties shared in proportion)
    k = N - 244
    assert bg["abs_rank_accuracy"] == pytest.approx((k - 180) * (k / (N - 180)) / k)
    assert sum(table["share_abs"]) == pytest.approx(1.0)


def test_statistics_agree_with_brute_force_on_a_random_map():
    rng = np.random.default_rng(3)
    labels = cube_labels()
    a = rng.normal(size=SHAPE)
    a[labels == 2] += 2.0  # relevance concentrated in structure 2
    affine = oblique_affine()
    table = structure_statistics(a, labels, ["bg", "one", "two"], affine, top_fraction=0.1)
    order = np.argsort(-np.abs(a), axis=None)  # continuous values: no ties
    n_top = round(0.1 * N)
    top = np.zeros(N, bool)
    top[order[:n_top]] = True
    for label, name in enumerate(["bg", "one", "two"]):
        r, s = row(table, name), labels == label
        values = a[s]
        assert r["sum"] == pytest.approx(values.sum()) and r["mean"] == pytest.approx(values.mean())
        assert r["max"] == pytest.approx(values.max()) and r["p95"] == pytest.approx(np.percentile(values, 95))
        assert r["negative_mass"] == pytest.approx(np.minimum(values, 0).sum()) and r["negative_mass"] <= 0
        assert r["positive_mass"] + r["negative_mass"] == pytest.approx(r["sum"])
        assert r["share_abs"] == pytest.approx(np.abs(values).sum() / np.abs(a).sum())
        assert r["density_ratio"] == pytest.approx(r["share_abs"] * N / s.sum())
        k = int(s.sum())
        assert r["abs_rank_accuracy"] == pytest.approx(s.ravel()[order[:k]].mean())
        overlap = (top & s.ravel()).sum()
        assert r["top_dice"] == pytest.approx(2 * overlap / (n_top + k))
        assert r["top_iou"] == pytest.approx(overlap / (n_top + k - overlap))
        # the positive-evidence columns are the registry metrics' definitions (one definition per name)
        assert r["share_positive"] == pytest.approx(relevance_mass_accuracy_score(a, s)["value"])
        assert r["peak_distance_mm"] == pytest.approx(pointing_game_score(a, s, spacing_of(affine))["distance_mm"])
        weights = np.abs(values)
        ijk = np.argwhere(s)
        centre = affine[:3, :3] @ (weights @ ijk / weights.sum()) + affine[:3, 3]
        centroid = affine[:3, :3] @ ijk.mean(0) + affine[:3, 3]
        assert [r["centre_ras_x"], r["centre_ras_y"], r["centre_ras_z"]] == pytest.approx(list(centre))
        assert r["centre_distance_mm"] == pytest.approx(np.linalg.norm(centre - centroid))
    assert row(table, "two")["density_ratio"] > 2 and row(table, "two")["peak_distance_mm"] == 0


def test_boundary_interior_ratio_of_a_shell_map():
    labels = np.zeros((20, 20, 20), np.int64)
    labels[5:15, 5:15, 5:15] = 1
    a = np.zeros(labels.shape)
    # 1 mm voxels, 1 mm band: the inner layer (-0.5 mm) and every outside voxel touching the cube by a
    # face, edge or corner (0.5, 0.71, 0.87 mm): the 12^3 box minus the 8^3 interior
    a[4:16, 4:16, 4:16] = 4.0
    a[6:14, 6:14, 6:14] = 1.0
    table = structure_statistics(a, labels, ["bg", "cube"], np.eye(4), boundary_mm=1.0)
    assert row(table, "cube")["boundary_interior_ratio"] == pytest.approx(4.0)
    a[6:14, 6:14, 6:14] = 0.0
    assert structure_statistics(a, labels, ["bg", "cube"], np.eye(4), boundary_mm=1.0)["boundary_interior_ratio"][1] \
        == math.inf
    # a structure too thin to have an interior
    labels[:] = 0
    labels[8:10, 5:15, 5:15] = 1
    assert math.isnan(structure_statistics(a, labels, ["bg", "slab"], np.eye(4))["boundary_interior_ratio"][1])


def test_absent_structures_ties_and_an_empty_map():
    labels = cube_labels()
    table = structure_statistics(np.zeros(SHAPE), labels, ["bg", "one", "two", "absent"], np.eye(4))
    absent = row(table, "absent")
    assert absent["voxels"] == 0 and math.isnan(absent["mean"]) and math.isnan(absent["abs_rank_accuracy"])
    assert all(math.isnan(v) for v in table["share_abs"])  # no relevance at all
    assert all(math.isnan(v) for v in table["peak_distance_mm"] + table["share_positive"])
    # every voxel tied: top-K draws are chance level
    assert row(table, "one")["abs_rank_accuracy"] == pytest.approx(180 / N)
    a = np.zeros(SHAPE)
    a[labels == 1] = -5.0  # strongest |relevance| is negative evidence
    a[0, 0, 0] = 5.0  # the positive maximum lies in the background, |a| ties it in "one"
    table = structure_statistics(a, labels, ["bg", "one", "two"], np.eye(4))
    assert table["peak_distance_mm"][0] == 0 and table["peak_distance_mm"][1] > 0  # positive evidence only
    assert row(table, "one")["share_positive"] == 0 and row(table, "bg")["share_positive"] == 1
    assert row(table, "one")["negative_mass"] == -900 and row(table, "one")["share_abs"] == pytest.approx(900 / 905)


def test_relevance_volume_curves_by_hand():
    labels = np.zeros((4, 4, 4), np.int64)
    labels[0, 0, :4] = 1
    a = np.zeros(labels.shape)
    a[0, 0, :4] = [1.0, -2.0, 3.0, 4.0]  # |a| in the structure: 1, 2, 3, 4
    a[3, 3, 3] = 10.0  # background holds the maximum
    curves = relevance_volume_curves(a, labels, ["bg", "s"], n_points=6)
    assert list(curves) == ["bg", "s"]
    s = curves["s"]
    assert s["threshold"] == pytest.approx([0, 2, 4, 6, 8, 10])
    assert s["volume_fraction"] == pytest.approx([1.0, 0.75, 0.25, 0, 0, 0])
    assert s["relevance_fraction"] == pytest.approx([10 / 20, 9 / 20, 4 / 20, 0, 0, 0])
    bg = curves["bg"]
    assert bg["volume_fraction"] == pytest.approx([1.0] + [1 / 60] * 5)
    assert bg["relevance_fraction"] == pytest.approx([0.5] * 6)
    table = structure_statistics(a, labels, ["bg", "s"], np.eye(4))
    assert s["relevance_fraction"][0] == pytest.approx(table["share_abs"][1])
    with pytest.raises(ParameterError, match="n_points"):
        relevance_volume_curves(a, labels, ["bg", "s"], n_points=1)


def test_compare_statistics_lays_maps_side_by_side():
    labels = cube_labels()
    rng = np.random.default_rng(0)
    maps = {"IG": rng.normal(size=SHAPE), "Saliency": (labels == 1).astype(float)}
    names = ["bg", "one", "two"]
    table = compare_statistics(maps, labels, names, oblique_affine(), columns=("share_abs", "peak_distance_mm"))
    assert list(table) == ["structure", "label", "share_abs · IG", "share_abs · Saliency", "peak_distance_mm · IG",
                           "peak_distance_mm · Saliency"]
    for key, value in maps.items():
        single = structure_statistics(value, labels, names, oblique_affine())
        assert table[f"share_abs · {key}"] == single["share_abs"]
    assert table["share_abs · Saliency"][1] == 1.0
    with pytest.raises(UnknownNameError, match="did you mean 'share_abs'"):
        compare_statistics(maps, labels, names, np.eye(4), columns=("share_ab",))
    with pytest.raises(InputError, match="at least one map"):
        compare_statistics({}, labels, names, np.eye(4))


def test_refusals():
    labels = cube_labels()
    a = np.ones(SHAPE)
    with pytest.raises(InputError, match="labels up to 2 but 2 name"):
        structure_statistics(a, labels, ["one", "two"], np.eye(4))
    with pytest.raises(InputError, match="unique"):
        structure_statistics(a, labels, ["bg", "x", "x"], np.eye(4))
    with pytest.raises(InputError, match="shape"):
        structure_statistics(a[:-1], labels, ["bg", "x", "y"], np.eye(4))
    with pytest.raises(InputError, match="non-integer"):
        structure_statistics(a, labels + 0.5, ["bg", "x", "y"], np.eye(4))
    with pytest.raises(InputError, match=">= 0"):
        structure_statistics(a, labels - 1, ["bg", "x", "y"], np.eye(4))
    with pytest.raises(ParameterError, match="top_fraction"):
        structure_statistics(a, labels, ["bg", "x", "y"], np.eye(4), top_fraction=0)
    with pytest.raises(InputError, match="NaN"):
        structure_statistics(np.full(SHAPE, np.nan), labels, ["bg", "x", "y"], np.eye(4))
    with pytest.raises(InputError, match="affine"):
        structure_statistics(a, labels, ["bg", "x", "y"], np.zeros((4, 4)))


def test_units_cover_every_column():
    assert set(STATISTIC_COLUMNS) <= set(STATISTIC_UNITS)
    assert STATISTIC_UNITS["volume_mm3"] == "mm3" and STATISTIC_UNITS["centre_distance_mm"] == "mm"
    assert STATISTIC_UNITS["share_abs"] == "" and STATISTIC_UNITS["distance_mm"] == "mm"


def test_writers_round_trip_atomically(tmp_path):
    labels = cube_labels()
    table = compare_statistics({"a": (labels == 1).astype(float)}, labels, ["bg", "one", "two"], np.eye(4),
                               columns=("share_abs", "centre_distance_mm", "peak_distance_mm"))
    table["centre_distance_mm · a"][2] = math.nan
    csv_path = write_table_csv(table, tmp_path / "t.csv")
    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["structure"] for r in rows] == ["bg", "one", "two"]
    assert float(rows[1]["share_abs · a"]) == 1.0 and math.isnan(float(rows[2]["centre_distance_mm · a"]))
    json_path = write_table_json(table, tmp_path / "t.json")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["columns"] == list(table) and data["units"]["centre_distance_mm · a"] == "mm"
    assert data["rows"][2]["centre_distance_mm · a"] is None and data["rows"][1]["peak_distance_mm · a"] == 0
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "t.json"]  # no temporary files left
    custom = json.loads(write_table_json(table, tmp_path / "u.json", units={"label": "id", "nope": "x"}).read_text())
    assert custom["units"] == {"label": "id"}
    with pytest.raises(InputError, match="does not exist"):
        write_table_csv(table, tmp_path / "missing" / "t.csv")
    with pytest.raises(InputError, match="same length"):
        write_table_csv({"a": [1], "b": [1, 2]}, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


# ------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    affine = oblique_affine()
    labels = cube_labels()
    write_image(ImageVolume(labels.astype(np.float32), affine), tmp_path / "labels.nii.gz")
    write_image(ImageVolume((labels == 1).astype(np.float32), affine), tmp_path / "ig.nrrd")
    rng = np.random.default_rng(0)
    write_image(ImageVolume(rng.normal(size=SHAPE).astype(np.float32), affine), tmp_path / "noise.nrrd")
    spec = {"network": {"name": "UNet", "args": {}}, "weights": "w.pt", "class_names": ["bg", "liver", "tumour"]}
    (tmp_path / "model.json").write_text(json.dumps(spec))
    return {"dir": tmp_path, "labels": tmp_path / "labels.nii.gz", "ig": tmp_path / "ig.nrrd",
            "noise": tmp_path / "noise.nrrd"}


def test_stats_cli_writes_table_json_and_curves(files, capsys):
    d = files["dir"]
    code = main(["stats", "--attribution", str(files["ig"]), "--labels", str(files["labels"]), "--names",
                 "background,liver,tumour", "--top-fraction", "0.02", "--out", str(d / "t.csv"), "--json",
                 str(d / "t.json"), "--curves", str(d / "c.json"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(d / "t.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    liver = rows[1]
    assert liver["structure"] == "liver" and liver["share_abs"] == "1.0" and liver["abs_rank_accuracy"] == "1.0"
    assert float(liver["density_ratio"]) == pytest.approx(N / 180) and float(liver["peak_distance_mm"]) == 0
    data = json.loads((d / "t.json").read_text())
    assert data["units"]["volume_mm3"] == "mm3" and data["rows"][1]["voxels"] == 180
    curves = json.loads((d / "c.json").read_text())
    assert curves["maps"]["ig"]["liver"]["volume_fraction"][0] == 1.0
    assert len(curves["maps"]["ig"]["tumour"]["threshold"]) == 50


def test_stats_cli_compares_maps_and_reads_names_from_a_model_spec(files, capsys, monkeypatch):
    d = files["dir"]
    import MedXAILib.model as model_package

    class Declared:  # what load_model returns, without building the network (the spec's weights are fake)
        class_names = ["bg", "liver", "tumour"]

    seen = []
    monkeypatch.setattr(model_package, "load_model", lambda path, **kw: seen.append(path) or Declared())
    code = main(["stats", "--attribution", str(files["ig"]), "--attribution", str(files["noise"]), "--labels",
                 str(files["labels"]), "--names-from", str(d / "model.json"), "--out", str(d / "t.csv"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert seen == [str(d / "model.json")]
    with open(d / "t.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["structure"] for r in rows] == ["bg", "liver", "tumour"]
    assert set(rows[0]) >= {"share_abs · ig", "share_abs · noise", "top_dice · noise"}
    assert float(rows[1]["share_abs · ig"]) == 1.0


BAD_STATS = {
    "too few names": (["--names", "bg,liver"], "2 name(s)"),
    "missing labels": (["--labels", "{dir}/nope.nrrd"], "nope.nrrd"),
    "csv suffix": (["--out", "{dir}/t.txt"], "--out must end in .csv"),
    "top fraction": (["--top-fraction", "1.5"], "--top-fraction"),
    "json onto the table": (["--json", "{dir}/t.csv"], "--json must end in .json"),
    "output is an input": (["--names-from", "{dir}/model.json", "--json", "{dir}/model.json"], "never overwrites"),
    "different grids": (["--attribution", "{dir}/moved.nrrd"], "not on the grid"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATS))
def test_stats_cli_bad_input_exits_2_with_one_line_and_no_output(case, files, capsys):
    d = files["dir"]
    write_image(ImageVolume(np.zeros(SHAPE, np.float32), np.diag([1.0, 1.0, 1.0, 1.0])), d / "moved.nrrd")
    before = set(os.listdir(d))
    extra, fragment = BAD_STATS[case]
    extra = [e.format(dir=d) for e in extra]
    args = ["stats", "--attribution", str(files["ig"]), "--labels", str(files["labels"]), "--out", str(d / "t.csv"),
            "--quiet"]
    for option, value in zip(extra[::2], extra[1::2]):
        if option in args and option != "--attribution":
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1
    assert set(os.listdir(d)) == before
