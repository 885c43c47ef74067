"""MedXAIRuntime and the module widget inside Slicer: real Qt widgets, timers and MRML.

What pytest cannot reach (Testing/Runtime runs without Qt): the generated parameter form with real
Qt widgets, the SubprocessRunner driven by qt.QTimer and the application event loop, and the module
widget built from Resources/UI/MedXAI.ui. Run with ctest (py_MedXAIRuntimeTest) or in Slicer's
Python console::

    import slicer.testing, sys
    sys.path.append("<source>/MedXAI/Testing/Python")
    slicer.testing.runUnitTest(["<source>/MedXAI/Testing/Python"], "MedXAIRuntimeTest")
"""

import time
import unittest

import slicer

import MedXAILib
from MedXAIRuntime import dependencies, forms, runners


class MedXAIRuntimeTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_parameter_form_for_every_method(self):
        """Each method's form is built from its dataclass and gives back valid values."""
        import qt

        container = qt.QWidget()
        container.setLayout(qt.QVBoxLayout())
        changes = []
        form = forms.ParameterForm(container, onChanged=lambda: changes.append(1))
        for info in MedXAILib.METHODS:
            specs = MedXAILib.param_specs(info.params)
            defaults = forms.valuesForMethod(info.params, {})
            form.build(specs, defaults)
            self.assertEqual(set(form.widgets), {s.name for s in specs})
            self.assertEqual(form.values(), defaults, info.name)
            MedXAILib.make_params(info.params, form.values())
        self.assertEqual(changes, [], "building and setting values must not report user changes")

        info = MedXAILib.METHODS.get("integrated_gradients")
        form.build(MedXAILib.param_specs(info.params), forms.valuesForMethod(info.params, {"n_steps": 64}))
        self.assertEqual(form.values()["n_steps"], 64)
        form.widgets["n_steps"].value = 100  # as if the user typed it
        self.assertEqual(form.values()["n_steps"], 100)
        self.assertEqual(len(changes), 1)
        form.widgets["baseline"].currentIndex = form.specs[1].choices.index("zeros")
        self.assertEqual(form.values()["baseline"], "zeros")
        form.clear()
        self.assertEqual(form.values(), {})

    def test_module_widget_builds_from_the_ui_file(self):
        """The module GUI loads without torch being imported, the method form follows the method, and the nnU-Net
        options and the Cohort QA section follow the parameter node."""
        widget = slicer.util.getModuleWidget("MedXAI")  # creates the widget (setup) if needed
        widget.enter()
        ui = widget.ui
        self.assertGreater(ui.methodComboBox.count, len(MedXAILib.METHODS))  # methods + family headers
        parameterNode = widget.logic.getParameterNode()
        parameterNode.method = "saliency"
        slicer.app.processEvents()
        self.assertEqual(ui.methodComboBox.itemData(ui.methodComboBox.currentIndex), "saliency")
        self.assertEqual(set(widget._form.widgets), {s.name for s in MedXAILib.param_specs(MedXAILib.METHODS.get("saliency").params)})
        self.assertFalse(ui.applyButton.enabled, "no input volume and no model: Apply must be disabled")
        parameterNode.modelPath = ""
        self.assertTrue(ui.nnunetOptionsGroupBox.isHidden(), "no nnU-Net model: no nnU-Net options")
        self.assertTrue(ui.cohortCollapsibleButton.collapsed)
        parameterNode.cohortFolder = "/data/qa"
        self.assertEqual(ui.cohortFolderPathLineEdit.currentPath, "/data/qa")
        self.assertTrue(ui.cohortOpenButton.enabled)
        parameterNode.cohortFolder = ""
        self.assertFalse(ui.cohortOpenButton.enabled, "no cohort folder: nothing to open")

    def test_subprocess_runner_with_the_qt_timer(self):
        """The background runner (``python -m MedXAILib.runs``) polls with qt.QTimer and Slicer's event loop keeps running."""
        if not dependencies.dependenciesReady():
            self.skipTest("torch and MONAI are not installed in Slicer's Python")
        import tempfile
        from pathlib import Path

        import numpy as np
        import torch
        from monai.networks.nets import Classifier

        from MedXAILib import ImageVolume, Target
        from MedXAILib.model import save_spec_model
        from MedXAIRuntime.jobs import explainRequest

        shape = (16, 16, 8)
        args = {"in_shape": [1, *shape], "classes": 2, "channels": [4], "strides": [2]}
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            spec = save_spec_model(Classifier(**args), "Classifier", args, Path(folder) / "m.json",
                                   task="classification", in_channels=1)
            image = ImageVolume(np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
            request = explainRequest(image, str(spec), "saliency", target=Target(class_index=1))
            progress, outcomes = [], []
            runner = runners.SubprocessRunner()
            runner.start(request, lambda f, m, s: progress.append(f), outcomes.append)
            deadline = time.monotonic() + 300
            while not outcomes and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.02)
        self.assertTrue(outcomes and outcomes[0].attribution is not None, outcomes and outcomes[0].log)
        self.assertEqual(progress[-1], 1.0)
        self.assertEqual(outcomes[0].attribution.array.shape, (1, *shape))
