"""MedXAIRuntime: services of the Slicer application for the MedXAI module (layer L2).

Modules (import the one you need, e.g. ``from MedXAIRuntime import runners``):

- ``dependencies``: what MedXAILib needs and is missing, asked once on the first Apply;
  ``installer``: installs it in a child process (``python -m MedXAIRuntime.installer``, run by the
  same ``SubprocessRunner`` as explanations, with progress and Cancel): torch the way the PyTorch
  extension does (light-the-torch, never plain pip), the rest with pip under a constraints file that
  pins the installed torch (and Slicer's numpy and SimpleITK); a failure says pip's reason.
- ``devices``: the compute devices to offer (auto, CPU, each CUDA GPU with name and memory), listed
  by a child process (``python -m MedXAIRuntime.devices``) so CUDA is never initialised in Slicer.
- ``process``: Qt-free subprocess plumbing: JSON-lines progress parsing, a line reader on a thread,
  and stopping a whole process tree (at once, the kill finishing on a thread, for the GUI).
- ``modelPaths``: model paths stored relative to the scene's folder, shipped demo models by name.
- ``jobs``: Qt-free runs: every computation with a model is one :class:`MedXAILib.runs.RunRequest`
  (:func:`~MedXAIRuntime.jobs.explainRequest`, :func:`~MedXAIRuntime.jobs.analysisRequest`), run in
  process (:func:`~MedXAIRuntime.jobs.runInProcess`) or as ``python -m MedXAILib.runs FOLDER``
  (:class:`~MedXAIRuntime.jobs.RunJob`: request folder, progress, result read back, folder removed).
- ``runners``: :class:`~MedXAIRuntime.runners.InProcessRunner` and
  :class:`~MedXAIRuntime.runners.SubprocessRunner`, the two ways the widget runs a request, with
  progress and cancel (the subprocess one is polled with a ``qt.QTimer`` and never blocks), and
  :func:`~MedXAIRuntime.runners.chooseRunMode` for the automatic choice.
- ``forms``: the method parameter form generated from a parameter dataclass
  (:func:`MedXAILib.params.param_specs`), and the JSON kept in the parameter node.
- ``targets``: target kinds and the geometry that turns an ROI or a point into voxel indices.
- ``views``: application-level display (3D volume rendering of a result).
- ``demo``: the built-in demo (a CT + PET phantom drawn by ``python -m MedXAIRuntime.demo`` and the
  shipped demo models) behind the Model section's Load demo and the Sample Data entries.

Rules (DESIGN.md, section 1): Slicer imports this package when it loads the module, before torch
or MONAI may be installed, so nothing here imports torch, MONAI or a heavy MedXAILib module at
module level. Qt is imported inside the functions that need it, which keeps the command-line,
parsing and process code testable with plain pytest (``Testing/Runtime``).
"""

__all__ = ["dependencies", "installer", "devices", "process", "jobs", "runners", "forms", "targets", "views", "demo",
           "modelPaths"]
