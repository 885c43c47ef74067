"""Method comparison (compare_methods, ComparisonResult) and the ``medxai evaluate`` / ``compare`` CLI."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from MedXAILib import Cancelled, ImageVolume, Monitor, Target, explain
from MedXAILib.cli.main import main
from MedXAILib.errors import InputError, ParameterError, ProvenanceError, UnknownNameError
from MedXAILib.evaluation import compare_methods, evaluate
from MedXAILib.evaluation.compare import rank_methods
from MedXAILib.io import read_image, write_image
from MedXAILib.model import load_model

from conftest import expect_cli_error, interrupt_cli, oblique_affine, with_extra_args

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]
METRICS = ["deletion", "insertion", "relevance_mass_accuracy", "sparseness", "max_sensitivity"]
METRIC_PARAMS = {"deletion": {"n_steps": 10}, "insertion": {"n_steps": 10}, "max_sensitivity": {"n_samples": 2}}
METHOD_PARAMS = {"integrated_gradients": {"n_steps": 4}}


def _mask(shape):
    mask = np.zeros(shape, bool)
    mask[5:12, 4:10, 3:8] = True
    return mask


@pytest.fixture
def comparison(classifier, volume):
    return compare_methods(volume, classifier, METHODS, metrics=METRICS, mask=_mask(volume.shape),
                           method_params=METHOD_PARAMS, seed=2, metric_params=METRIC_PARAMS)


def test_table_rows_are_what_evaluate_gives_each_method(comparison, classifier, volume):
    assert comparison.table["method"] == METHODS and list(comparison.table)[1:] == METRICS
    for row, method in enumerate(METHODS):
        attribution = explain(volume, classifier, method, params=METHOD_PARAMS.get(method), seed=2)
        np.testing.assert_array_equal(comparison.attributions[method].array, attribution.array)
        alone = evaluate(volume, classifier, attribution, metrics=METRICS, mask=_mask(volume.shape), seed=2,
                         params=METRIC_PARAMS)
        for metric in METRICS:
            assert comparison.table[metric][row] == alone[metric]["value"], (method, metric)
        curve = comparison.curves[method]["deletion"]
        assert curve == {"fractions": alone["deletion"]["fractions"], "curve": alone["deletion"]["curve"]}
    assert set(comparison.curves[METHODS[0]]) == {"deletion", "insertion"}


def test_precomputed_maps_are_graded_without_running_their_method_again(comparison, classifier, volume, monkeypatch):
    import MedXAILib.engine

    given = {m: comparison.attributions[m] for m in METHODS[1:]}
    calls = []
    original = MedXAILib.engine.explain
    monkeypatch.setattr(MedXAILib.engine, "explain", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    reused = compare_methods(volume, classifier, METHODS, metrics=METRICS, mask=_mask(volume.shape), seed=2,
                             metric_params=METRIC_PARAMS, attributions=given)
    assert calls == [METHODS[0]]  # only the method without a map was run
    assert reused.table == comparison.table and reused.ranking == comparison.ranking
    assert reused.attributions[METHODS[2]] is given[METHODS[2]]
    assert reused.info["method_parameters"] == comparison.info["method_parameters"]


@pytest.mark.parametrize("case", ["not compared", "made by another method", "both parameters and map"])
def test_precomputed_maps_that_do_not_fit_are_refused(comparison, classifier, volume, case):
    maps = {"not compared": {"lrp": comparison.attributions["saliency"]},
            "made by another method": {"input_x_gradient": comparison.attributions["saliency"]},
            "both parameters and map": {"integrated_gradients": comparison.attributions["integrated_gradients"]}}
    with pytest.raises(ParameterError):
        compare_methods(volume, classifier, METHODS, metrics=["sparseness"], attributions=maps[case],
                        method_params=METHOD_PARAMS if case == "both parameters and map" else None)


def test_ranking_is_the_mean_rank_over_metrics_with_a_direction(comparison):
    directions = {"deletion": False, "insertion": True, "relevance_mass_accuracy": True, "max_sensitivity": False}
    ranks = [rankdata([-v if better else v for v in comparison.table[m]]) for m, better in directions.items()]
    mean = np.mean(ranks, axis=0)
    expected = sorted(zip(METHODS, mean), key=lambda pair: pair[1])
    assert [m for m, _ in comparison.ranking] == [m for m, _ in expected]
    np.testing.assert_allclose([r for _, r in comparison.ranking], [r for _, r in expected])
    assert comparison.ranked_metrics == list(directions)  # sparseness has no better direction


def test_rank_rule_with_ties_undefined_values_and_flipped_directions():
    results = {
        "a": {"m1": {"value": 1.0, "higher_is_better": True}, "m2": {"value": 0.2, "higher_is_better": False},
              "m3": {"value": 5.0, "higher_is_better": None}},
        "b": {"m1": {"value": 1.0, "higher_is_better": True}, "m2": {"value": float("nan"), "higher_is_better": False},
              "m3": {"value": 1.0, "higher_is_better": None}},
        "c": {"m1": {"value": 0.5, "higher_is_better": True}, "m2": {"value": 0.1, "higher_is_better": False},
              "m3": {"value": 9.0, "higher_is_better": None}},
    }
    # m1: a and b tie for ranks 1-2 (1.5 each), c is 3; m2: c 1, a 2, b (NaN) last; m3 has no direction
    assert rank_methods(results, ["a", "b", "c"], ["m1", "m2", "m3"]) == [("a", 1.75), ("c", 2.0), ("b", 2.25)]
    assert rank_methods(results, ["a", "b", "c"], ["m3"])[0][0] == "a"  # nothing to rank: given order, NaN
    assert np.isnan(rank_methods(results, ["a", "b", "c"], ["m3"])[0][1])


def test_write_saves_csv_strict_json_plots_and_maps(comparison, tmp_path):
    folder = tmp_path / "out" / "cmp"
    written = comparison.write(folder, maps=True)
    names = {p.name for p in written}
    assert names == {"comparison.csv", "comparison.json", "curves.png", "metrics.png",
                     *(f"{m}.nrrd" for m in METHODS)}
    rows = list(csv.DictReader((folder / "comparison.csv").open()))
    assert [r["method"] for r in rows] == METHODS
    for row, method in zip(rows, METHODS):
        for metric in METRICS:
            assert float(row[metric]) == comparison.table[metric][METHODS.index(method)]
        assert float(row["mean_rank"]) == dict(comparison.ranking)[method]

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    document = json.loads((folder / "comparison.json").read_text(), parse_constant=no_constants)
    assert document["table"] == comparison.table and document["ranking_rule"] == comparison.ranking_rule
    assert document["metric_info"]["deletion"]["higher_is_better"] is False
    assert document["results"]["saliency"]["deletion"]["curve"] == comparison.curves["saliency"]["deletion"]["curve"]
    for plot in ("curves.png", "metrics.png"):
        data = (folder / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    saved = read_image(folder / "saliency.nrrd")
    np.testing.assert_allclose(saved.array, comparison.attributions["saliency"].to_volume().array)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(InputError, match="is a file"):
        comparison.write(folder / "comparison.csv")


def test_bad_requests_fail_before_any_explanation(classifier, volume):
    calls = []
    monitor = Monitor(lambda fraction, message: calls.append(message))
    cases = [
        (dict(methods=["saliency", "salency"]), UnknownNameError, "did you mean 'saliency'"),
        (dict(methods=["saliency", "saliency"]), ParameterError, "more than once"),
        (dict(methods=["saliency"], method_params={"lime": {}}), ParameterError, "not compared"),
        (dict(methods=["saliency"], method_params={"saliency": {"absolut": True}}), ParameterError, "absolute"),
        (dict(methods=["saliency"], metrics=["auroc"]), InputError, "pass mask="),
        (dict(methods=["saliency"], metrics=["deletion"], metric_params={"deletion": {"order": "up"}}),
         ParameterError, "morf, lerf"),
        (dict(methods=[]), ParameterError, "at least one method"),
    ]
    for kwargs, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            compare_methods(volume, classifier, monitor=monitor, **kwargs)
    assert calls == []


def test_cancel_propagates(classifier, volume):
    monitor = Monitor(lambda fraction, message: monitor.cancel() if fraction > 0.3 else None)
    with pytest.raises(Cancelled):
        compare_methods(volume, classifier, ["saliency", "input_x_gradient"], metrics=["deletion"], monitor=monitor)


# ------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture
def files(cli_files) -> dict[str, Path]:
    """The command-line test files (their mask is :func:`_mask`) and a saliency map of the image."""
    image = read_image(cli_files["image"])
    target = Target(class_index=1, region="mask", mask=_mask(image.shape))
    attribution = explain(image, load_model(cli_files["model"]), "saliency", target, seed=4)
    attribution.save(cli_files["dir"] / "attr.nrrd")
    return {**cli_files, "attribution": cli_files["dir"] / "attr.nrrd"}


def _common(files):
    return ["--image", str(files["image"]), "--model", str(files["model"]), "--target-class", "1",
            "--target-mask", str(files["mask"]), "--quiet"]


def test_evaluate_cli_writes_the_library_results(files, capsys):
    out = files["dir"] / "metrics.json"
    code = main(["evaluate", *_common(files), "--attribution", str(files["attribution"]), "--mask", str(files["mask"]),
                 "--metrics", "deletion,auroc,max_sensitivity", "--metric-param", "deletion.n_steps=5",
                 "--metric-param", "max_sensitivity.n_samples=2", "--seed", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    document = json.loads(out.read_text())
    assert list(document["metrics"]) == ["deletion", "auroc", "max_sensitivity"]
    assert "deletion" in printed and "lower is better" in printed
    # the same numbers from the library, with the method and its seed taken from the file's provenance
    image = read_image(files["image"])
    attribution = read_image(files["attribution"])
    mask = _mask(image.shape)
    expected = evaluate(image, load_model(files["model"]), attribution.array, Target(class_index=1, region="mask",
                        mask=mask), ["deletion", "auroc", "max_sensitivity"], mask, "saliency",
                        {"deletion": {"n_steps": 5}, "max_sensitivity": {"n_samples": 2}}, seed=3)
    for name in ("deletion", "auroc"):
        assert document["metrics"][name]["value"] == pytest.approx(expected[name]["value"], rel=1e-6)
    assert document["metrics"]["max_sensitivity"]["value"] > 0  # re-ran saliency, named by the provenance


def test_evaluate_cli_progress_json_reports_values(files, capsys, monkeypatch):
    from MedXAILib.cli import progress

    # json_lines binds sys.stdout when progress.py is imported; point it at this test's captured stdout
    original = progress.json_lines
    monkeypatch.setattr(progress, "json_lines", lambda stream=None: original(stream or sys.stdout))
    code = main(["evaluate", *_common(files), "--attribution", str(files["attribution"]), "--metrics",
                 "entropy,sparseness", "--progress-json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all({"progress", "message", "elapsed_s"} <= set(r) for r in lines[:-1])
    assert lines[-1]["done"] is True and lines[-1]["outputs"] == [] and set(lines[-1]["values"]) == {"entropy",
                                                                                                   "sparseness"}


def _far_attribution(files):
    path = files["dir"] / "far.nrrd"
    affine = oblique_affine()
    affine[:3, 3] += 500.0
    write_image(ImageVolume(np.zeros((1, 20, 16, 12), np.float32), affine), path)
    return path


BAD_EVALUATE = {
    "unknown metric": (lambda f: ["--metrics", "deletoin"], "did you mean 'deletion'"),
    "mask missing": (lambda f: ["--metrics", "auroc"], "pass mask="),
    "attribution off the grid": (lambda f: ["--attribution", str(_far_attribution(f))], "not on the image grid"),
    "bad metric parameter": (lambda f: ["--metric-param", "deletion.n_step=3"], "did you mean 'n_steps'"),
    "malformed metric parameter": (lambda f: ["--metric-param", "n_steps=3"], "NAME.PARAM=VALUE"),
    "wrong suffix": (lambda f: ["--out", str(f["dir"] / "metrics.txt")], "must end in .json"),
    "overwrite an input": (lambda f: ["--out", str(f["attribution"])], "never overwrites its inputs"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVALUATE))
def test_evaluate_cli_bad_input_exits_2_with_one_line_and_no_output(case, files, capsys):
    make, fragment = BAD_EVALUATE[case]
    out = files["dir"] / "metrics.json"
    args = ["evaluate", *_common(files), "--attribution", str(files["attribution"]), "--out", str(out)]
    expect_cli_error(with_extra_args(args, make(files), ("--attribution", "--out")), fragment, capsys)
    assert not out.exists() and not (files["dir"] / "metrics.txt").exists()


def test_compare_cli_writes_the_folder_and_prints_the_ranking(files, capsys):
    out = files["dir"] / "comparison"
    code = main(["compare", *_common(files), "--methods", "saliency,input_x_gradient", "--mask", str(files["mask"]),
                 "--metrics", "deletion,relevance_mass_accuracy,entropy", "--metric-param", "deletion.n_steps=4",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"comparison.csv", "comparison.json", "curves.png", "metrics.png"}
    document = json.loads((out / "comparison.json").read_text())
    first = document["ranking"][0]["method"]
    assert "ranking (mean rank over 2 metrics" in printed and f"1. {first}" in printed
    bad = {"is a file": ["--methods", "saliency", "--out", str(out / "comparison.csv")],
           "did you mean 'saliency'": ["--methods", "saliency,salency", "--out", str(out / "new")],
           "pass mask=": ["--methods", "saliency", "--metrics", "auroc", "--out", str(out / "new")],
           "NAME.PARAM=VALUE (e.g. integrated_gradients": ["--methods", "saliency", "--param", "n_steps=3", "--out", str(out / "new")]}
    for fragment, extra in bad.items():
        code = main(["compare", *_common(files), *extra])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and err.count("\n") <= 3, err
    assert not (out / "new").exists()


def test_compare_cli_progress_json_and_ctrl_c_cancels_without_output(files):
    out = files["dir"] / "cancelled"
    args = ["compare", *_common(files), "--methods", "saliency,occlusion", "--metrics", "deletion",
            "--metric-param", "deletion.n_steps=10000", "--metric-param", "deletion.batch_size=1",
            "--progress-json", "--out", str(out)]
    records = interrupt_cli(args, until=lambda record: "Deletion" in record.get("message", ""))
    assert {"progress", "message", "elapsed_s"} <= set(records[-1])
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# What was graded: provenance checked and recorded; cost announced; separation and chance levels


def test_evaluate_refuses_a_map_made_for_another_target_or_model(files, capsys):
    image, model = read_image(files["image"]), load_model(files["model"])
    attribution = explain(image, model, "saliency", Target(class_index=1, region="mask", mask=_mask(image.shape)))
    other_class = Target(class_index=2, region="mask", mask=_mask(image.shape))
    with pytest.raises(ProvenanceError, match=r"class_index 1 \(given: 2\).*--ignore-provenance"):
        evaluate(image, model, attribution, other_class, ["sparseness"])
    other_model = load_model(files["model"])
    other_model.sha256 = "0" * 64  # the same network under another weights hash: another model as far as a file says
    with pytest.raises(ProvenanceError, match="computed with model"):  # refused before the model runs
        evaluate(image, other_model, attribution, Target(class_index=1, region="mask", mask=_mask(image.shape)),
                 ["sparseness"])
    graded = evaluate(image, model, attribution, other_class, ["sparseness"], check_provenance=False).graded
    assert graded["provenance_checked"] is False and graded["target"]["class_index"] == 2
    # no target given: the map's own target, rebuilt from its provenance when it can be (here a mask: the default)
    own = explain(image, model, "saliency", Target(class_index=2, region="predicted"))
    record = evaluate(image, model, own, None, ["sparseness"]).graded
    assert record["target"]["class_index"] == 2 and record["target"]["region"] == "predicted"
    assert record["method"] == "saliency" and record["model"]["sha256"] == model.sha256
    assert record["image"]["shape"] == list(image.shape) and record["provenance_checked"] is True

    # the command line: exit 2, one line naming the override; the override works and is said
    args = ["evaluate", "--image", str(files["image"]), "--model", str(files["model"]), "--attribution",
            str(files["attribution"]), "--metrics", "sparseness", "--target-class", "2", "--target-mask",
            str(files["mask"]), "--quiet"]
    expect_cli_error(args, "--ignore-provenance", capsys)
    out = files["dir"] / "graded.json"
    assert main([*args, "--ignore-provenance", "--out", str(out)]) == 0
    assert "provenance was not checked" in capsys.readouterr().err
    document = json.loads(out.read_text())
    assert document["graded"]["provenance_checked"] is False and document["graded"]["target"]["class_index"] == 2
    assert document["graded"]["attribution"]["target"]["class_index"] == 1  # what the map was made for


def test_evaluate_and_compare_announce_their_cost_and_report_progress_off_a_terminal(files, capsys):
    # capsys: stderr is no terminal, as in a batch job's log
    code = main(["evaluate", *_common(files)[:-1], "--attribution", str(files["attribution"]), "--mask",
                 str(files["mask"]), "--metrics", "deletion,pointing_game,max_sensitivity", "--metric-param",
                 "deletion.n_steps=5", "--metric-param", "max_sensitivity.n_samples=2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "evaluate: about 8 model passes (6 forward passes for the metrics; 2 explanations; saliency 1 pass each)" \
        in printed.splitlines()[0]
    assert any(line.startswith("progress ") for line in printed.splitlines())
    assert "pointing_game" in printed and "(chance " in printed  # a localisation value beside its chance level
    code = main(["compare", *_common(files)[:-1], "--methods", "saliency,integrated_gradients", "--param",
                 "integrated_gradients.n_steps=4", "--metrics", "deletion", "--metric-param", "deletion.n_steps=3",
                 "--out", str(files["dir"] / "cmp")])
    printed = capsys.readouterr().out
    assert code == 0 and printed.startswith("compare: about 13 model passes")
    assert "integrated_gradients 4 passes each" in printed and "progress " in printed


def test_a_metric_that_does_not_separate_the_methods_does_not_rank_them():
    from MedXAILib.evaluation.compare import SEPARATION_FRACTION, separation

    results = {"a": {"auroc": {"value": 0.98, "higher_is_better": True, "chance": 0.5},
                     "pointing_game": {"value": 1.0, "higher_is_better": True, "chance": 0.01}},
               "b": {"auroc": {"value": 0.981, "higher_is_better": True, "chance": 0.5},
                     "pointing_game": {"value": 0.0, "higher_is_better": True, "chance": 0.01}}}
    flat = separation(results, ["a", "b"], "auroc")
    assert not flat["separates"] and flat["chance"] == 0.5 and "AUROC does not separate the methods" in flat["note"]
    assert flat["spread"] == pytest.approx(0.001) and flat["scale"] == pytest.approx(0.481)
    assert flat["spread"] < SEPARATION_FRACTION * flat["scale"]
    assert separation(results, ["a", "b"], "pointing_game")["separates"]
    assert rank_methods(results, ["b", "a"], ["auroc"]) == [("b", 1.0), ("a", 2.0)]  # without the rule 0.001 decides
    assert rank_methods(results, ["b", "a"], ["auroc"], ties=["auroc"]) == [("b", 1.5), ("a", 1.5)]
