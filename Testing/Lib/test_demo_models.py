"""The shipped demo models (Resources/Models): they load, are small, and reproduce their model cards.

The metrics are recomputed on freshly generated held-out phantoms with the seeds recorded in each
``<name>.metrics.json``, by the same evaluation code the trainer used
(:mod:`MedXAILib.demo.training.demo_models`), through :func:`MedXAILib.load_model` as a user would.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import MedXAILib
from MedXAILib.demo.training import accuracy, dice_per_class, roc_auc
from MedXAILib.demo.training.demo_models import (
    CLASSIFIER_CT,
    CLASSIFIER_PETCT,
    DEMO_MODELS,
    SEGMENTER,
    classifier_case,
    default_model_dir,
    evaluate_classifiers,
    evaluate_segmenter,
    train_all,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "Resources" / "Models"
DICE_TOLERANCE = 0.02
AUC_TOLERANCE = 0.02


def _record(name: str) -> dict:
    return json.loads((MODELS / f"{name}.metrics.json").read_text())


# ------------------------------------------------------------------------------------------------
# Files


def test_default_model_dir_is_resources_models():
    assert default_model_dir() == MODELS


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_every_model_ships_spec_weights_card_and_metrics(name):
    for suffix in (".json", ".pt", ".md", ".metrics.json"):
        assert (MODELS / f"{name}{suffix}").is_file(), f"{name}{suffix} is missing"
    size = (MODELS / f"{name}.pt").stat().st_size
    assert size < 10 * 1024 * 1024, f"{name}.pt is {size / 2**20:.1f} MiB (limit 10 MiB)"
    record = _record(name)
    assert record["model"] == name
    assert record["reproduce"].startswith("python -m MedXAILib.demo.training --out Resources/Models --seed ")
    import hashlib

    assert record["weights_sha256"] == hashlib.sha256((MODELS / f"{name}.pt").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_model_card_states_data_architecture_preprocessing_metrics_and_command(name):
    card = (MODELS / f"{name}.md").read_text()
    record = _record(name)
    for heading in ("## Data", "## Architecture", "## Preprocessing", "## Training", "## Metrics", "## Reproduce"):
        assert heading in card, heading
    assert record["reproduce"] in card
    assert f"monai.networks.nets.{DEMO_MODELS[name].network}" in card
    metrics = record["metrics"]
    if DEMO_MODELS[name].task == "segmentation":
        for structure, value in metrics["dice"].items():
            assert f"| {structure} | {value:.3f} |" in card
    else:
        assert f"| ROC AUC | {metrics['auc']:.3f} |" in card
        assert f"| accuracy (argmax) | {metrics['accuracy']:.3f} |" in card


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_specs_load_through_load_model(name):
    model = DEMO_MODELS[name]
    adapter = MedXAILib.load_model(MODELS / f"{name}.json", device="cpu")
    assert adapter.task == model.task
    assert adapter.class_names == model.class_names
    assert adapter.in_channels == len(model.channels)
    assert [step["kind"] for step in adapter.preprocessing.describe()] == [s["kind"] for s in model.preprocessing]
    assert adapter.model_id == name
    if model.roi_size:
        assert list(adapter.roi_size) == model.roi_size


# ------------------------------------------------------------------------------------------------
# Reproducing the cards


def test_segmenter_reproduces_its_card():
    record = _record(SEGMENTER.name)["metrics"]
    measured = evaluate_segmenter(MODELS / f"{SEGMENTER.name}.json", record["seeds"])
    for structure, value in record["dice"].items():
        assert measured["dice"][structure] == pytest.approx(value, abs=DICE_TOLERANCE), structure
    # and the model is useful: large organs well segmented, lesions found
    for structure in ("body", "liver", "lung", "bone"):
        assert measured["dice"][structure] > 0.8, structure
    assert measured["dice"]["lesion"] > 0.4


@pytest.mark.slow
def test_classifiers_reproduce_their_cards():
    records = {name: _record(name)["metrics"] for name in (CLASSIFIER_CT.name, CLASSIFIER_PETCT.name)}
    seeds = records[CLASSIFIER_CT.name]["seeds"]
    assert records[CLASSIFIER_PETCT.name]["seeds"] == seeds
    measured = evaluate_classifiers({name: MODELS / f"{name}.json" for name in records}, seeds)
    for name, record in records.items():
        assert measured[name]["auc"] == pytest.approx(record["auc"], abs=AUC_TOLERANCE), name
        assert measured[name]["accuracy"] == pytest.approx(record["accuracy"], abs=AUC_TOLERANCE), name
    assert measured[CLASSIFIER_CT.name]["auc"] > 0.7
    assert measured[CLASSIFIER_PETCT.name]["auc"] > 0.9


def test_classifier_cases_pair_with_and_without_a_lesion():
    with_lesion, label1 = classifier_case(11, lesion=True)
    without, label0 = classifier_case(11, lesion=False)
    assert (label1, label0) == (1, 0) and classifier_case(11)[1] == 1 and classifier_case(12)[1] == 0
    assert with_lesion.channel_names == ["CT", "PET"]
    changed = np.abs(with_lesion.array[0] - without.array[0]) > 1e-3
    assert 0 < changed.sum() < 0.01 * changed.size  # only around the lesion


# ------------------------------------------------------------------------------------------------
# Metrics (numpy only)


def test_dice_per_class():
    truth = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    prediction = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    dice = dice_per_class(prediction, truth, 4)
    np.testing.assert_allclose(dice[:3], [2 * 2 / 6, 2 * 2 / 5, 2 * 2 / 5])
    assert np.isnan(dice[3])  # absent from both
    np.testing.assert_allclose(dice_per_class(truth, truth, 3), 1.0)


def test_roc_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    with pytest.raises(ValueError):
        accuracy([], [])


# ------------------------------------------------------------------------------------------------
# The trainer


def test_trainer_command_line_help_and_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "MedXAILib.demo.training", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "--seed" in result.stdout and "--out" in result.stdout
    from MedXAILib.demo.training import main

    assert main(["--models", "no_such_model", "--out", str(ROOT / "does-not-matter"), "--quiet"]) == 2
    assert main(["--seed", "42", "--out", str(ROOT / "does-not-matter"), "--quiet"]) == 2
    from MedXAILib.cli.main import main as medxai  # the same options as `medxai train-demo`

    assert medxai(["train-demo", "--models", "no_such_model", "--out", str(ROOT / "does-not-matter"), "--quiet"]) == 2
    assert not (ROOT / "does-not-matter").exists() or not any((ROOT / "does-not-matter").iterdir())


@pytest.mark.slow
def test_trainer_smoke_run_writes_loadable_models(tmp_path):
    results = train_all(tmp_path, seed=1, models=[SEGMENTER.name, CLASSIFIER_PETCT.name], scale=0.02,
                        log=lambda *_: None)
    assert set(results) == {SEGMENTER.name, CLASSIFIER_PETCT.name}
    for name in results:
        assert MedXAILib.load_model(tmp_path / f"{name}.json", device="cpu").model_id == name
        record = json.loads((tmp_path / f"{name}.metrics.json").read_text())
        assert record["scale"] == 0.02 and "--scale 0.02" in record["reproduce"]
        assert (tmp_path / f"{name}.md").read_text().startswith("# ")
    assert not (tmp_path / f"{CLASSIFIER_CT.name}.json").exists()


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    """The same seed gives the same weights, byte for byte: the shipped files can be re-created."""
    for run in ("a", "b"):
        train_all(tmp_path / run, seed=2, models=[CLASSIFIER_PETCT.name], scale=0.02, log=lambda *_: None)
    first, second = (json.loads((tmp_path / run / f"{CLASSIFIER_PETCT.name}.metrics.json").read_text())
                     for run in ("a", "b"))
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["metrics"]["scores"] == second["metrics"]["scores"]
    other = train_all(tmp_path / "c", seed=3, models=[CLASSIFIER_PETCT.name], scale=0.02, log=lambda *_: None)
    assert other and json.loads((tmp_path / "c" / f"{CLASSIFIER_PETCT.name}.metrics.json").read_text())[
        "weights_sha256"] != first["weights_sha256"]  # and the seed matters

