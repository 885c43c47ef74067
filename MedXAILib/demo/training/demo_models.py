"""The shipped demo models: definitions, training on CT phantoms, evaluation and model cards.

Three small MONAI networks are trained on CPU in minutes, deterministically, on freshly generated
phantoms (:mod:`MedXAILib.demo.samples`); nothing is downloaded:

- ``phantom_segmenter``: a 3D ``UNet`` of the phantom's 8 classes (background, body, liver,
  spleen, kidney, lung, bone, lesion) on CT;
- ``lesion_classifier_ct``: a 3D ``ResNet`` telling CT phantoms with a liver lesion from those
  without;
- ``lesion_classifier_petct``: the same network with two input channels (CT, PET).

Every model runs at the phantom's native grid (2 x 2 x 3 mm, 96 x 96 x 64 voxels): no
downsampling step sits between the voxels and the network, so gradients and attributions reach
every voxel. Each spec still starts with a ``spacing`` step to 2 x 2 x 3 mm (a no-op on the
phantom), so the models also run on volumes of another spacing, and the segmenter has a
``roi_size`` of the phantom grid, so larger volumes run window by window.

The segmenter learns from class-balanced 64 x 64 x 32 crops (batch norm, so a crop and the whole
volume see the same function at inference); the classifiers learn from whole volumes in pairs, the
same phantom with and without its lesion, so that the lesion is the only thing that tells them apart.

:func:`train_all` writes, per model, ``<name>.json`` + ``<name>.pt`` (through
:func:`MedXAILib.model.save_spec_model`), a model card ``<name>.md`` and ``<name>.metrics.json``
(the held-out metrics and the seeds they were measured on). The evaluation functions here are
the ones the tests use to check that the shipped weights reproduce their cards.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..samples.pet import pet_channel
from ..samples.phantom import CLASS_NAMES, ct_phantom
from ...volume import ImageVolume
from .metrics import accuracy, dice_per_class, roc_auc

__all__ = ["DemoModel", "DEMO_MODELS", "SEGMENTER", "CLASSIFIER_CT", "CLASSIFIER_PETCT", "SEG_EVAL_SEEDS",
           "CLS_EVAL_SEEDS", "default_model_dir", "segmenter_case", "classifier_case", "evaluate_segmenter",
           "evaluate_classifiers", "train_all"]

Log = Callable[[str], None]

PHANTOM_SHAPE = (96, 96, 64)
PHANTOM_SPACING = (2.0, 2.0, 3.0)
CT_WINDOW = (-200.0, 300.0)  # mapped linearly to [0, 1], not clipped: lung, air and bone keep contrast
LIVER_WINDOW = (-50.0, 150.0)  # the CT classifier's window, clipped: soft tissue only
PET_SCALE = 10.0  # SUV divided by this
SPACING_STEP = {"kind": "spacing", "pixdim": list(PHANTOM_SPACING), "mode": "bilinear"}
CT_STEP = {"kind": "scale_intensity_range", "a_min": CT_WINDOW[0], "a_max": CT_WINDOW[1], "b_min": 0.0,
           "b_max": 1.0, "clip": False}
LIVER_STEP = {"kind": "scale_intensity_range", "a_min": LIVER_WINDOW[0], "a_max": LIVER_WINDOW[1], "b_min": 0.0,
              "b_max": 1.0, "clip": True}
PETCT_STEP = {"kind": "normalize_intensity", "subtrahend": [CT_WINDOW[0], 0.0],
              "divisor": [CT_WINDOW[1] - CT_WINDOW[0], PET_SCALE], "channel_wise": True}

# Held-out evaluation sets: fixed seeds, far from every training seed (seed * 100_000 + i, i < 100_000).
SEG_EVAL_SEEDS = tuple(range(1_000_000, 1_000_008))
CLS_EVAL_SEEDS = tuple(range(2_000_000, 2_000_040))  # odd seed: one liver lesion; even: none
MAX_TRAIN_SEED = 9
LESION = CLASS_NAMES.index("lesion")
SEG_CROP = (64, 64, 32)  # training crops of the segmenter (voxels); inference runs on the whole phantom
SEG_FOREGROUND = 0.6  # share of crops centred on a structure (the others are anywhere)
SEG_LESION_BOOST = 3.0  # lesion-centred crops are this much more likely than those of one organ
SEG_CLASS_WEIGHTS = (1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 5.0)  # loss weights per class (small ones up)


@dataclass(frozen=True)
class DemoModel:
    """A demo model: network, task, channels and preprocessing, plus its training settings."""

    name: str
    title: str
    network: str
    args: dict[str, Any]
    task: str
    class_names: list[str]
    channels: tuple[str, ...]
    preprocessing: list[dict[str, Any]]
    roi_size: Optional[list[int]] = None
    steps: int = 100
    batch_size: int = 2
    learning_rate: float = 3e-3
    n_train_phantoms: int = 48
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        """The model-spec entries besides network and weights (the model id is the file stem)."""
        out: dict[str, Any] = {"description": self.description, "task": self.task,
                               "class_names": list(self.class_names), "in_channels": len(self.channels),
                               "preprocessing": [dict(step) for step in self.preprocessing]}
        if self.roi_size is not None:
            out["roi_size"] = list(self.roi_size)
            out["overlap"] = 0.25
            out["sw_batch_size"] = 1
        return out


SEGMENTER = DemoModel(
    name="phantom_segmenter",
    title="Phantom organ and lesion segmenter (CT)",
    network="UNet",
    args={"spatial_dims": 3, "in_channels": 1, "out_channels": len(CLASS_NAMES), "channels": [8, 16, 32, 64],
          "strides": [2, 2, 2], "num_res_units": 0, "norm": "batch"},
    task="segmentation",
    class_names=list(CLASS_NAMES),
    channels=("CT",),
    preprocessing=[SPACING_STEP, CT_STEP],
    roi_size=list(PHANTOM_SHAPE),
    steps=1000,
    batch_size=2,
    learning_rate=5e-3,
    n_train_phantoms=32,
    description="Demo only, trained on synthetic CT phantoms (MedXAILib.demo.samples.ct_phantom); not for clinical use.",
)

# a ResNet-10 with a 3^3 stem of stride 2 and no max-pool (a 5 mm lesion survives to the first block),
# instance norm (train and eval behave alike), and ReLUs that are not in place (safe for attribution hooks)
_RESNET = {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64], "spatial_dims": 3,
           "conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True, "num_classes": 2,
           "norm": ["instance", {"affine": True}], "act": "relu"}


def _lesion_classifier(name: str, title: str, channels: tuple[str, ...], intensity_step: dict[str, Any],
                       steps: int, description: str) -> DemoModel:
    """A lesion classifier: the ResNet above with one input channel per image channel."""
    return DemoModel(
        name=name,
        title=title,
        network="ResNet",
        args={**_RESNET, "n_input_channels": len(channels)},
        task="classification",
        class_names=["no lesion", "lesion"],
        channels=channels,
        preprocessing=[SPACING_STEP, intensity_step],
        steps=steps,
        batch_size=4,
        learning_rate=3e-3,
        n_train_phantoms=96,
        description=description,
    )


CLASSIFIER_CT = _lesion_classifier(
    "lesion_classifier_ct", "Liver lesion classifier (CT)", ("CT",), LIVER_STEP, steps=600,
    description="Demo only, trained on synthetic CT phantoms (MedXAILib.demo.samples.ct_phantom); not for clinical use.",
)

CLASSIFIER_PETCT = _lesion_classifier(
    "lesion_classifier_petct", "Liver lesion classifier (PET/CT)", ("CT", "PET"), PETCT_STEP, steps=300,
    description="Demo only, trained on synthetic PET/CT phantoms (MedXAILib.demo.samples.pet_ct_phantom); "
                "not for clinical use.",
)

DEMO_MODELS = {m.name: m for m in (SEGMENTER, CLASSIFIER_CT, CLASSIFIER_PETCT)}


def default_model_dir() -> Path:
    """``Resources/Models`` of the source tree this package lives in."""
    return Path(__file__).resolve().parents[3] / "Resources" / "Models"


# ------------------------------------------------------------------------------------------------
# Data


def segmenter_case(seed: int, train: bool = False) -> tuple[ImageVolume, np.ndarray]:
    """One phantom for the segmenter: the default phantom for evaluation; varied ones for training.

    Training phantoms draw (from `seed`) 0-3 lesions in liver, spleen, kidney or lung (liver three
    times as likely), a grid rotation of up to 8 degrees and noise of 10-20 HU.
    """
    if not train:
        volume, labels, _ = ct_phantom(seed)
        return volume, labels
    rng = np.random.default_rng([int(seed), 1])
    volume, labels, _ = ct_phantom(
        seed, n_lesions=int(rng.integers(0, 4)), lesion_organs=("liver", "liver", "liver", "spleen", "kidney", "lung"),
        rotation_deg=float(rng.uniform(-8.0, 8.0)), noise_hu=float(rng.uniform(10.0, 20.0)))
    return volume, labels


def classifier_case(seed: int, lesion: Optional[bool] = None, train: bool = False) -> tuple[ImageVolume, int]:
    """A two-channel (CT, PET) phantom and its label (1 = one liver lesion, 0 = none).

    The lesion is drawn from `seed` as :func:`~MedXAILib.demo.samples.ct_phantom` draws a liver lesion
    (radius 5-12 mm, contrast -70 to -35 HU, SUV 6-10); by default odd seeds have one. With and without the lesion, one seed gives the same anatomy and noise, so
    training pairs differ only in the lesion. Training phantoms are also rotated by up to 8 degrees.
    """
    label = int(seed) % 2 if lesion is None else int(bool(lesion))
    rng = np.random.default_rng([int(seed), 2])
    rotation = float(rng.uniform(-8.0, 8.0)) if train else 0.0
    ct, labels, info = ct_phantom(seed, n_lesions=label, lesion_organs=("liver",), rotation_deg=rotation)
    pet = pet_channel(labels, info)
    volume = ImageVolume(np.concatenate([ct.array, pet.array]), ct.affine, channel_names=["CT", "PET"],
                         meta={"source": f"classifier_case({seed})"})
    return volume, label


def _select(volume: ImageVolume, model: DemoModel) -> ImageVolume:
    index = [volume.channel_names.index(c) for c in model.channels] if volume.channel_names else list(
        range(len(model.channels)))
    return ImageVolume(volume.array[index], volume.affine, channel_names=list(model.channels))


# ------------------------------------------------------------------------------------------------
# Evaluation (through MedXAILib.load_model, exactly as a user runs the models)


def _run(adapter: Any, volume: ImageVolume) -> np.ndarray:
    import torch

    bound = adapter.bind(volume.affine, volume.shape)
    with torch.no_grad():
        x = torch.as_tensor(volume.array[np.newaxis], device=adapter.device)
        return bound(x)[0].float().cpu().numpy()


def _load(model: Any) -> Any:
    from ...model import load_model

    return load_model(model, device="cpu") if isinstance(model, (str, Path)) else model


def evaluate_segmenter(model: Any, seeds: Sequence[int] = SEG_EVAL_SEEDS) -> dict[str, Any]:
    """Dice per structure (mean over phantoms) of a segmenter on the default phantoms of `seeds`.

    Args:
        model: a loaded adapter, or a spec path to load.
        seeds: phantom seeds (``ct_phantom(seed)`` with its defaults: two liver lesions).

    Returns:
        ``{"dice": {class: mean Dice}, "dice_per_case": [[...], ...], "mean_dice_foreground": x,
        "seeds": [...]}``; background is left out of the mean.
    """
    adapter = _load(model)
    n = len(CLASS_NAMES)
    rows = []
    for seed in seeds:
        volume, labels = segmenter_case(int(seed))
        logits = _run(adapter, _select(volume, SEGMENTER))
        rows.append(dice_per_class(np.argmax(logits, axis=0), labels, n))
    table = np.array(rows)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(table, axis=0)
    dice = {name: round(float(v), 4) for name, v in zip(CLASS_NAMES, mean)}
    return {"dice": dice, "mean_dice_foreground": round(float(np.nanmean(mean[1:])), 4),
            "dice_per_case": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in table],
            "seeds": [int(s) for s in seeds]}


def evaluate_classifiers(models: dict[str, Any], seeds: Sequence[int] = CLS_EVAL_SEEDS) -> dict[str, dict[str, Any]]:
    """AUC and accuracy of lesion classifiers on :func:`classifier_case` phantoms of `seeds`.

    Args:
        models: ``{name: adapter or spec path}``; each name is a key of :data:`DEMO_MODELS` (its
            channels pick CT or CT + PET).
        seeds: phantom seeds (odd: lesion).

    Returns:
        ``{name: {"auc", "accuracy", "n", "n_positive", "seeds", "scores"}}`` with the lesion
        probability as score and argmax as decision.
    """
    import torch

    adapters = {name: _load(m) for name, m in models.items()}
    scores: dict[str, list[float]] = {name: [] for name in adapters}
    truth = []
    for seed in seeds:
        volume, label = classifier_case(int(seed))
        truth.append(label)
        for name, adapter in adapters.items():
            logits = _run(adapter, _select(volume, DEMO_MODELS[name]))
            scores[name].append(float(torch.softmax(torch.as_tensor(logits), dim=0)[1]))
    out = {}
    for name, s in scores.items():
        out[name] = {"auc": round(roc_auc(truth, s), 4),
                     "accuracy": round(accuracy(truth, [int(v > 0.5) for v in s]), 4),
                     "n": len(truth), "n_positive": int(sum(truth)), "seeds": [int(v) for v in seeds],
                     "scores": [round(v, 6) for v in s]}
    return out


# ------------------------------------------------------------------------------------------------
# Training


def _setup(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _build(model: DemoModel) -> Any:
    from monai.networks import nets

    return getattr(nets, model.network)(**model.args)


class _Optimiser:
    """Adam at the model's learning rate, cosine-annealed to a twentieth of it over `steps`; logs the
    loss every tenth of the run."""

    def __init__(self, net: Any, model: DemoModel, steps: int, log: Log) -> None:
        import torch

        self.optimiser = torch.optim.Adam(net.parameters(), lr=model.learning_rate)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimiser, T_max=steps,
                                                                   eta_min=model.learning_rate / 20)
        self.name, self.steps, self.log = model.name, steps, log

    def __call__(self, step: int, loss: Any) -> None:
        """One optimisation step on `loss` (step `step` of the run)."""
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        self.schedule.step()
        if (step + 1) % max(1, self.steps // 10) == 0:
            self.log(f"  {self.name}: step {step + 1}/{self.steps}, loss {loss.item():.3f}")


def _preprocess(model: DemoModel, batch: np.ndarray, affine: np.ndarray) -> Any:
    """Apply the spec's preprocessing in torch, exactly as the loader will (batch on one grid)."""
    import torch

    from ...model.preprocessing import Grid, Preprocessing

    steps = Preprocessing.from_config(model.preprocessing)
    grids = steps.grids(Grid(np.asarray(affine, np.float64), tuple(batch.shape[2:])))
    with torch.no_grad():
        return steps.apply(torch.as_tensor(batch), grids)


def _crop_starts(labels: np.ndarray, size: Sequence[int], rng: np.random.Generator, foreground: float,
                 where: dict[int, np.ndarray], lesion_boost: float = 1.0) -> tuple[int, int, int]:
    """Corner of a training crop: centred on a voxel of a random present class with probability
    `foreground` (classes equally likely, lesions `lesion_boost` times more), else anywhere."""
    shape = np.array(labels.shape)
    if rng.random() < foreground and where:
        classes = sorted(where)
        weights = np.array([lesion_boost if c == LESION else 1.0 for c in classes])
        cls = classes[int(rng.choice(len(classes), p=weights / weights.sum()))]
        flat = where[cls][int(rng.integers(len(where[cls])))]
        centre = np.array(np.unravel_index(flat, labels.shape))
    else:
        centre = np.array([int(rng.integers(n)) for n in shape])
    start = np.clip(centre - np.asarray(size) // 2, 0, np.maximum(shape - np.asarray(size), 0))
    return tuple(int(v) for v in start)  # type: ignore[return-value]


def train_segmenter(seed: int = 0, scale: float = 1.0, log: Log = print,
                    model: Optional[DemoModel] = None) -> tuple[Any, dict[str, Any]]:
    """Train :data:`SEGMENTER` on crops of a pool of training phantoms (seeds ``seed * 100_000 + i``).

    Every step takes ``batch_size`` crops of :data:`SEG_CROP` voxels; half of them are centred on a
    voxel of a random structure (liver, spleen, kidney, lung, bone and lesion equally likely), the
    others anywhere.
    """
    import torch
    from monai.losses import DiceCELoss

    model = model or SEGMENTER
    _setup(seed)
    n_pool = max(2, int(round(model.n_train_phantoms * scale)))
    steps = max(2, int(round(model.steps * scale)))
    started = time.perf_counter()
    seeds = [seed * 100_000 + i for i in range(n_pool)]
    pool = []
    for s in seeds:
        volume, labels = segmenter_case(s, train=True)
        x = _preprocess(model, volume.array[np.newaxis], volume.affine)[0]
        where = {c: np.flatnonzero(labels == c) for c in range(2, len(CLASS_NAMES))}  # organs, bone, lesion
        pool.append((x, torch.as_tensor(labels)[None], labels, {c: v for c, v in where.items() if len(v)}))
    log(f"  {model.name}: {n_pool} training phantoms in {time.perf_counter() - started:.0f} s")
    net = _build(model)
    optimise = _Optimiser(net, model, steps, log)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True,
                         weight=torch.as_tensor(SEG_CLASS_WEIGHTS, dtype=torch.float32))
    rng = np.random.default_rng([seed, 11])
    size = SEG_CROP
    net.train()
    for step in range(steps):
        xs, ys = [], []
        for i in rng.choice(n_pool, size=model.batch_size, replace=False):
            x, y, labels, where = pool[int(i)]
            a, b, c = _crop_starts(labels, size, rng, SEG_FOREGROUND, where, SEG_LESION_BOOST)
            xs.append(x[:, a : a + size[0], b : b + size[1], c : c + size[2]])
            ys.append(y[:, a : a + size[0], b : b + size[1], c : c + size[2]].long())
        optimise(step, loss_fn(net(torch.stack(xs)), torch.stack(ys)))
    elapsed = time.perf_counter() - started
    return net.eval(), {"train_seeds": [seeds[0], seeds[-1]], "n_train_phantoms": n_pool, "steps": steps,
                        "crop": list(size), "train_seconds": round(elapsed, 1)}


def train_classifiers(seed: int = 0, scale: float = 1.0, log: Log = print,
                      models: Optional[Sequence[DemoModel]] = None) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Train :data:`CLASSIFIER_CT` and :data:`CLASSIFIER_PETCT` (or `models`) on one pool of phantom pairs.

    The pool holds, for each seed ``seed * 100_000 + 50_000 + i``, the phantom with and without its
    liver lesion; every batch is half positive, half negative.
    """
    import torch

    _setup(seed)
    models = list(models) if models else [CLASSIFIER_CT, CLASSIFIER_PETCT]
    n_pool = max(1, int(round(models[0].n_train_phantoms * scale)))
    started = time.perf_counter()
    seeds = [seed * 100_000 + 50_000 + i for i in range(n_pool)]
    pairs = []
    for s in seeds:
        with_lesion, _ = classifier_case(s, lesion=True, train=True)
        without, _ = classifier_case(s, lesion=False, train=True)
        pairs.append((with_lesion, without))
    pool_seconds = time.perf_counter() - started
    log(f"  lesion classifiers: {n_pool} training phantom pairs in {pool_seconds:.0f} s")
    out = {}
    for model in models:
        began = time.perf_counter()
        steps = max(2, int(round(model.steps * scale)))
        torch.manual_seed(seed)
        data = {}
        for i, (pos, neg) in enumerate(pairs):
            for label, volume in ((1, pos), (0, neg)):
                v = _select(volume, model)
                data[(i, label)] = _preprocess(model, v.array[np.newaxis], v.affine)[0]
        net = _build(model)
        optimise = _Optimiser(net, model, steps, log)
        rng = np.random.default_rng([seed, 12])
        half = model.batch_size // 2
        net.train()
        for step in range(steps):
            pick = rng.choice(n_pool, size=min(half, n_pool), replace=False)  # pairs: only the lesion differs
            x = torch.stack([data[(int(i), 1)] for i in pick] + [data[(int(i), 0)] for i in pick])
            y = torch.as_tensor([1] * len(pick) + [0] * len(pick))
            optimise(step, torch.nn.functional.cross_entropy(net(x), y))
        elapsed = time.perf_counter() - began + pool_seconds / len(models)
        out[model.name] = (net.eval(), {"train_seeds": [seeds[0], seeds[-1]], "n_train_phantoms": 2 * n_pool,
                                        "steps": steps, "train_seconds": round(elapsed, 1)})
    return out


# ------------------------------------------------------------------------------------------------
# Writing: spec + weights, metrics JSON and model card


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    import monai
    import torch

    from ... import __version__

    return {"MedXAILib": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _save(model: DemoModel, net: Any, out: Path) -> Path:
    from ...model import save_spec_model

    return save_spec_model(net, model.network, model.args, out / f"{model.name}.json", **model.spec())


def _reproduce(seed: int, scale: float) -> str:
    extra = "" if scale == 1.0 else f" --scale {scale:g}"
    return f"python -m MedXAILib.demo.training --out Resources/Models --seed {seed}{extra}"


def _describe_intensity(model: DemoModel) -> str:
    step = model.preprocessing[-1]
    if step["kind"] == "scale_intensity_range" and step["clip"]:
        return (f"CT is mapped linearly from [{step['a_min']:g}, {step['a_max']:g}] HU to [0, 1] and clipped (a "
                "soft-tissue window: fat, air, lung and bone saturate and get no gradient; the hypodense lesion "
                "stands out).")
    if step["kind"] == "scale_intensity_range":
        return (f"CT is mapped linearly from [{step['a_min']:g}, {step['a_max']:g}] HU to [0, 1] without clipping "
                "(air, lung and bone keep their contrast and every voxel gets a gradient).")
    return (f"Channel-wise `(x - subtrahend) / divisor`: CT (HU + {-step['subtrahend'][0]:g}) / {step['divisor'][0]:g} "
            f"(the [-200, 300] HU window, unclipped), PET SUV / {step['divisor'][1]:g}.")


def _write_card(model: DemoModel, out: Path, metrics: dict[str, Any], train: dict[str, Any], seed: int,
                scale: float) -> Path:
    weights = out / f"{model.name}.pt"
    n_params = train.get("n_parameters", 0)
    lines = [f"# {model.title} (`{model.name}`)", "",
             f"{model.description} Spec `{model.name}.json`, weights `{model.name}.pt` "
             f"({weights.stat().st_size / 1024:.0f} KiB, {n_params:,} parameters, sha256 `{_sha256(weights)[:16]}…`).",
             "Load it with `MedXAILib.load_model(\"Resources/Models/" + model.name + ".json\")` or "
             f"`medxai explain --model Resources/Models/{model.name}.json ...`.", "",
             "## Task", ""]
    if model.task == "segmentation":
        lines += [f"Segmentation of the CT phantom into {len(model.class_names)} classes: "
                  + ", ".join(f"{i} {n}" for i, n in enumerate(model.class_names)) + ". Input: one CT channel in HU.",
                  ""]
    else:
        lines += ["Classification of a whole " + " + ".join(model.channels) + " phantom: class 0 "
                  "`no lesion`, class 1 `lesion` (one spherical liver lesion present). Input channels: "
                  + ", ".join(f"{i} {c}" + (" (HU)" if c == "CT" else " (SUV)") for i, c in enumerate(model.channels))
                  + ".", ""]
    lines += ["## Data", ""]
    if model.task == "segmentation":
        lines += [
            f"Training: {train['n_train_phantoms']} phantoms `MedXAILib.demo.training.demo_models.segmenter_case(s, "
            f"train=True)`, seeds {train['train_seeds'][0]} to {train['train_seeds'][1]}: "
            "`MedXAILib.demo.samples.ct_phantom(s, ...)` (96 x 96 x 64 voxels of 2 x 2 x 3 mm) with 0-3 lesions "
            "(liver 3x as likely as spleen, kidney or lung; radius 3-12 mm), grid rotations of up to 8 degrees "
            "about S and noise of 10-20 HU, all drawn from the seed.",
            f"Evaluation: the default phantoms `ct_phantom(s)` (two liver lesions each, no rotation, 15 HU noise) "
            f"for the held-out seeds {metrics['seeds'][0]} to {metrics['seeds'][-1]}.", ""]
    else:
        lines += [
            f"Training: {train['n_train_phantoms'] // 2} pairs `MedXAILib.demo.training.demo_models.classifier_case(s, "
            f"lesion=True/False, train=True)`, seeds {train['train_seeds'][0]} to {train['train_seeds'][1]}: "
            "the same phantom (anatomy and noise) with and without one liver lesion (drawn as `ct_phantom` "
            "does: radius 5-12 mm, CT contrast -70 to -35 HU, SUV 6-10), grid rotations of up to 8 degrees; PET from "
            "`MedXAILib.demo.samples.pet_channel` (6 mm PSF, Poisson noise) on the CT grid.",
            f"Evaluation: `classifier_case(s)` for the held-out seeds {metrics['seeds'][0]} to {metrics['seeds'][-1]} "
            f"({metrics['n_positive']} with a lesion: the odd seeds; {metrics['n'] - metrics['n_positive']} "
            "without), independent phantoms, no rotation.", ""]
    lines += ["## Architecture", "",
              f"`monai.networks.nets.{model.network}` with arguments:", "", "```json",
              json.dumps(model.args, indent=2), "```", ""]
    if model.roi_size:
        lines += [f"Inference: sliding window with `roi_size` {model.roi_size} (the phantom grid, so one window "
                  "on the phantom), overlap 0.25.", ""]
    lines += ["## Preprocessing (in the spec; differentiable, run by MedXAILib)", "", "```json",
              json.dumps(model.preprocessing, indent=2), "```", "",
              "The `spacing` step is a no-op on the phantom grid and resamples other volumes to 2 x 2 x 3 mm. "
              + _describe_intensity(model), ""]
    lines += ["## Training", "",
              f"Adam, learning rate {model.learning_rate:g} with cosine decay to 1/20 of it, "
              f"{train['steps']} steps of batch {model.batch_size}"
              + (" (pairs: the same phantoms with and without their lesion; whole volumes)"
                 if model.task == "classification" else
                 f" crops of {SEG_CROP[0]} x {SEG_CROP[1]} x {SEG_CROP[2]} voxels ({SEG_FOREGROUND:.0%} centred on a "
                 f"voxel of a random structure, lesions {SEG_LESION_BOOST:g} times as likely as one organ; the "
                 "others anywhere)")
              + ", loss " + (f"Dice + cross-entropy (MONAI `DiceCELoss(batch=True)`, class weights "
                             f"{list(SEG_CLASS_WEIGHTS)})" if model.task == "segmentation" else "cross-entropy") + ". "
              f"CPU, 2 threads, `torch.manual_seed({seed})`, `torch.use_deterministic_algorithms(True)`. "
              f"Training took {train['train_seconds']:.0f} s (including drawing the phantoms) on "
              f"{platform.machine()} with " + ", ".join(f"{k} {v}" for k, v in train["versions"].items()) + ".",
              "", "## Metrics on held-out phantoms", ""]
    if model.task == "segmentation":
        lines += ["| structure | Dice |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in metrics["dice"].items()]
        lines += [f"| **mean (foreground)** | **{metrics['mean_dice_foreground']:.3f}** |", "",
                  f"Dice per structure: mean over the {len(metrics['seeds'])} phantoms of the argmax label "
                  "map against the phantom's labels, on the phantom grid."]
    else:
        lines += ["| metric | value |", "|---|---|", f"| ROC AUC | {metrics['auc']:.3f} |",
                  f"| accuracy (argmax) | {metrics['accuracy']:.3f} |", f"| cases | {metrics['n']} |", "",
                  "AUC from the rank statistic of the lesion probability (`MedXAILib.demo.training.metrics.roc_auc`)."]
    lines += [f"The numbers are also in `{model.name}.metrics.json`; `Testing/Lib/test_demo_models.py` checks that "
              "the shipped weights reproduce them.", "",
              "## Reproduce", "", "```bash", _reproduce(seed, scale), "```", "",
              "(also `medxai train-demo --out Resources/Models --seed " + str(seed) + "`). The run is deterministic: "
              "on the same platform, thread count and library versions it gives the same weights; elsewhere "
              "floating-point differences may change the last digits of the metrics.", "",
              "## Limitations", "",
              "Synthetic data only: simple shapes, unenhanced HU, no real anatomy or scanner. It is meant for "
              "demonstrating and testing explanation methods (its ground truth is known), never for patients.", ""]
    path = out / f"{model.name}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def train_all(out: Path | str | None = None, seed: int = 0, models: Optional[Sequence[str]] = None,
              scale: float = 1.0, log: Log = print) -> dict[str, dict[str, Any]]:
    """Train, save, evaluate and document the demo models into `out` (default ``Resources/Models``).

    Args:
        out: output folder (created if missing).
        seed: 0-9; picks the training phantoms and the initial weights.
        models: names from :data:`DEMO_MODELS` (default: all).
        scale: multiplies the number of steps and training phantoms (e.g. 0.05 for a smoke test;
            the evaluation sets stay the same unless ``scale < 1``, which then uses a fifth of them).

    Returns:
        ``{name: metrics}``.
    """
    import torch

    if not 0 <= int(seed) <= MAX_TRAIN_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_TRAIN_SEED} (training seeds are seed * 100000 + i)")
    names = list(models) if models else list(DEMO_MODELS)
    unknown = [n for n in names if n not in DEMO_MODELS]
    if unknown:
        raise ValueError(f"unknown demo model(s) {unknown}; known: {', '.join(DEMO_MODELS)}")
    out = Path(out) if out is not None else default_model_dir()
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    seg_seeds = SEG_EVAL_SEEDS if scale >= 1 else SEG_EVAL_SEEDS[:2]
    cls_seeds = CLS_EVAL_SEEDS if scale >= 1 else CLS_EVAL_SEEDS[:4]
    results: dict[str, dict[str, Any]] = {}
    trained: dict[str, tuple[Any, dict[str, Any]]] = {}
    try:
        if SEGMENTER.name in names:
            log(f"Training {SEGMENTER.name} ...")
            trained[SEGMENTER.name] = train_segmenter(seed, scale, log)
        if CLASSIFIER_CT.name in names or CLASSIFIER_PETCT.name in names:
            log("Training the lesion classifiers ...")
            chosen = [DEMO_MODELS[n] for n in (CLASSIFIER_CT.name, CLASSIFIER_PETCT.name) if n in names]
            trained.update(train_classifiers(seed, scale, log, chosen))
        specs = {}
        for name, (net, train) in trained.items():
            train["n_parameters"] = int(sum(p.numel() for p in net.parameters()))
            train["versions"] = _versions()
            specs[name] = _save(DEMO_MODELS[name], net, out)
        log("Evaluating on held-out phantoms ...")
        if SEGMENTER.name in specs:
            results[SEGMENTER.name] = evaluate_segmenter(specs[SEGMENTER.name], seg_seeds)
        classifiers = {n: specs[n] for n in (CLASSIFIER_CT.name, CLASSIFIER_PETCT.name) if n in specs}
        if classifiers:
            results.update(evaluate_classifiers(classifiers, cls_seeds))
        for name, metrics in results.items():
            model, train = DEMO_MODELS[name], trained[name][1]
            record = {"model": name, "metrics": metrics, "training": train, "seed": int(seed), "scale": scale,
                      "reproduce": _reproduce(seed, scale),
                      "weights_sha256": _sha256(out / f"{name}.pt")}
            (out / f"{name}.metrics.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            _write_card(model, out, metrics, train, seed, scale)
            summary = (f"Dice {metrics['dice']}" if model.task == "segmentation"
                       else f"AUC {metrics['auc']:.3f}, accuracy {metrics['accuracy']:.3f}")
            log(f"  {name}: {summary}; trained in {train['train_seconds']:.0f} s")
    finally:
        torch.set_num_threads(previous_threads)
    return results
