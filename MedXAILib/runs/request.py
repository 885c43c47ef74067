"""What one run is: :class:`RunRequest` in, :class:`RunResult` out.

A request holds everything a run needs and nothing that ties it to the process that made it: the
input volume (or the files to read it from), the model's path, the kind's JSON arguments, arrays on
the image grid (masks, attribution maps), the target, the device, the seed and whether a MONAI
bundle may run code. It is the unit of work of the Slicer module's background jobs and of a cohort
case alike: written into a folder (:mod:`MedXAILib.runs.folder`), any worker can run it.

Light: numpy and MedXAILib's light core only.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from ..errors import InputError
from ..io.jsondata import json_safe
from ..target import Target
from ..volume import ImageVolume

__all__ = ["RunKind", "RunRequest", "RunResult", "MODEL_OPTIONS", "check_model_options", "target_to_json",
           "target_from_json"]

#: The keyword arguments of :func:`MedXAILib.load_model` a request may carry (JSON values): what a user chose
#: beside the model's path (nnU-Net folds, configuration, checkpoint and mirroring; the structure that picks a
#: TotalSegmentator part; bundle overrides; the sliding-window and preprocessing overrides). Kept here, not
#: read off ``load_model``, so that a request is made without importing torch; a test holds the two in step.
MODEL_OPTIONS = ("task", "class_names", "in_channels", "roi_size", "preprocessing", "output_activation", "overlap",
                 "blend_mode", "padding_mode", "pad_divisible", "bundle_overrides", "folds", "configuration",
                 "checkpoint", "mirroring", "structure")


def check_model_options(options: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """`options` as a plain dict of JSON values, every name one of :data:`MODEL_OPTIONS`.

    Raises:
        InputError: an unknown name (the message names the closest one).
    """
    checked = {}
    for name, value in dict(options or {}).items():
        if name not in MODEL_OPTIONS:
            close = difflib.get_close_matches(str(name), MODEL_OPTIONS, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; use {', '.join(MODEL_OPTIONS)}"
            raise InputError(f"unknown model option {name!r}{hint}")
        checked[name] = value
    try:  # a request folder holds them as JSON: anything else (NaN, objects) is refused here, not at the worker
        json.dumps(checked, allow_nan=False, default=_plain)
    except (TypeError, ValueError) as error:
        raise InputError(f"model options must be JSON values (numbers, text, lists, mappings): {error}") from None
    return json_safe(checked)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values (for the JSON check); anything else is refused."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


class RunKind(str, enum.Enum):
    """The kinds of run; the value is what ``request.json`` holds.

    Arguments (``RunRequest.arguments``) by kind:

    - ``explain``: ``method``, ``params``, optional ``memory_budget``, ``mixed_precision``;
    - ``boundary_uncertainty``: ``class_index``, ``flips``, ``n_dropout``;
    - ``evaluate``: ``metrics``, ``metric_params``, ``method``, ``method_params``, ``provenance``
      (of the attribution in ``arrays["attribution"]``);
    - ``compare_methods``: ``methods``, ``metrics``, ``method_params``, ``metric_params``;
    - ``counterfactual``: ``goal`` (the fields of :class:`~MedXAILib.counterfactual.Goal`), ``generator``,
      ``params``, ``bounds``;
    - ``qa_case``: ``structures`` (``"all"`` or names), ``options`` (the fields of
      :class:`~MedXAILib.analysis.qa.QAOptions`); ``arrays["reference"]`` an optional reference
      segmentation (evaluation only), or ``reference_file`` to read it from (a cohort case).
    """

    explain = "explain"
    boundary_uncertainty = "boundary_uncertainty"
    evaluate = "evaluate"
    compare_methods = "compare_methods"
    counterfactual = "counterfactual"
    qa_case = "qa_case"

    @classmethod
    def of(cls, value: Any) -> "RunKind":
        """`value` (a member or its string) as a member.

        Raises:
            InputError: an unknown kind (the message names the closest one).
        """
        try:
            return cls(getattr(value, "value", value))
        except ValueError:
            names = [kind.value for kind in cls]
            close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; use one of {', '.join(names)}"
            raise InputError(f"unknown run kind {value!r}{hint}") from None


@dataclass
class RunRequest:
    """One run: a kind of analysis of one input with one model.

    Attributes:
        kind: what to run (:class:`RunKind`, or its string).
        image: the input, one channel per input volume, on the first volume's grid. None when
            `image_files` names the files instead (a cohort planner leaves reading to the worker).
        model_path: TorchScript file, exported program, MONAI bundle folder, model spec JSON, nnU-Net v2
            folder or ``totalsegmentator:TASK``.
        model_options: keyword arguments of :func:`MedXAILib.load_model` (:data:`MODEL_OPTIONS`), JSON
            values: ``{"folds": [0, 1], "mirroring": False}``.
        arguments: the kind's keyword arguments that are JSON values (see :class:`RunKind`).
        arrays: the kind's arguments that are arrays on the image grid, (I, J, K) or (C, I, J, K):
            ``mask`` (reference structure), ``attribution`` (the map to evaluate), ``region``
            (where a counterfactual may change the input).
        target: what is explained or evaluated; a ``mask`` or ``boundary`` target carries its mask.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds every random draw (a cohort gives each case its own).
        trust_bundle: let a MONAI bundle's config run code.
        image_files: image files (one per channel, resampled onto the first) read when `image` is None.

    Raises:
        InputError: an unknown kind or model option, no image, or an array that is not on the image grid.
    """

    kind: RunKind | str
    image: Optional[ImageVolume]
    model_path: str
    arguments: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    target: Optional[Target] = None
    device: str = "auto"
    seed: int = 0
    trust_bundle: bool = False
    image_files: tuple[str, ...] = ()
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = RunKind.of(self.kind)
        self.model_options = check_model_options(self.model_options)
        self.model_path = str(self.model_path)
        self.image_files = tuple(str(p) for p in self.image_files)
        self.arguments = dict(self.arguments or {})
        self.arrays = {str(k): np.asarray(v) for k, v in (self.arrays or {}).items()}
        if self.image is None and not self.image_files:
            raise InputError("a run request needs the input image (or the files to read it from)")
        if self.image is not None:
            self.check_grid(self.image)

    def check_grid(self, image: ImageVolume) -> None:
        """Refuse arrays (and a target mask) that are not on `image`'s grid.

        Raises:
            InputError: names the array and both shapes.
        """
        arrays = dict(self.arrays)
        if self.target is not None and self.target.mask is not None:
            arrays["target mask"] = np.asarray(self.target.mask)
        for name, array in arrays.items():
            if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != image.shape:
                raise InputError(f"the run's '{name}' array has shape {array.shape}, not the image grid "
                                 f"{image.shape}; resample it onto the input first")

    @property
    def voxel_count(self) -> int:
        """Voxels of all channels together (what the run's weight scales with); 0 before the image is read."""
        if self.image is None:
            return 0
        i, j, k = self.image.shape
        return int(i) * int(j) * int(k) * self.image.n_channels

    def resolved_image(self) -> ImageVolume:
        """The input volume: `image`, or `image_files` read now (SimpleITK is imported here only)."""
        if self.image is not None:
            return self.image
        from ..io import read_image, read_images

        files = list(self.image_files)
        image = read_image(files[0]) if len(files) == 1 else read_images(files)
        self.check_grid(image)
        return image


@dataclass
class RunResult:
    """What a run produced: named volumes on the input grid and JSON data (tables, metrics, provenance).

    Attributes:
        volumes: e.g. ``attribution`` (explain), ``probability``/``entropy``/``variance``
            (boundary uncertainty), ``counterfactual``/``difference``.
        data: JSON values only (mappings, lists, numbers, strings, None).
        warnings: caveats to show the user (the ``done`` line's ``warnings``).
    """

    volumes: dict[str, ImageVolume] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def attribution(self) -> Any:
        """An ``explain`` run's :class:`~MedXAILib.attribution.Attribution` (the map and its provenance).

        Raises:
            InputError: the result holds no attribution volume.
        """
        from ..attribution import Attribution

        volume = self.volumes.get("attribution")
        if volume is None:
            raise InputError("the run's result holds no attribution volume")
        return Attribution(array=volume.array, affine=volume.affine, provenance=dict(self.data.get("provenance") or {}))


def target_to_json(target: Optional[Target]) -> tuple[Optional[dict[str, Any]], dict[str, np.ndarray]]:
    """A :class:`~MedXAILib.target.Target` as JSON fields plus its array fields (the mask), kept apart."""
    if target is None:
        return None, {}
    fields: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(target):
        value = getattr(target, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            fields[f.name] = json_safe(value)
    return fields, arrays


def target_from_json(fields: Optional[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]) -> Optional[Target]:
    """The inverse of :func:`target_to_json` (JSON lists become the tuples of boxes, voxels and bands)."""
    if fields is None:
        return None
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    values.update(arrays)
    return Target(**values)

