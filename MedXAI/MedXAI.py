import logging

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *

# Keep this file importable at Slicer start-up: torch and monai are imported only when the user
# first applies a method (see docs/adr and DESIGN.md, section 1, import rules).


#
# MedXAI
#


class MedXAI(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedXAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Explainable AI")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedXAI developers"]
        self.parent.helpText = _("""
Explain what a MONAI/PyTorch model sees in a CT, MRI or PET volume: attribution volumes shown as
colour-mapped layers over the image, segmentation-boundary saliency, per-structure relevance
statistics and counterfactual volumes.
See the <a href="https://github.com/medxai/SlicerMedXAI">MedXAI documentation</a>.
""")
        self.parent.acknowledgementText = _("""
MedXAI builds on 3D Slicer, MONAI, PyTorch and Captum. The module layout follows the scripted module
template of 3D Slicer, originally developed by Jean-Christophe Fillion-Robin, Kitware Inc.,
Andras Lasso, PerkLab, and Steve Pieper, Isomics, Inc.
""")


#
# MedXAIWidget
#


class MedXAIWidget(ScriptedLoadableModuleWidget):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        self.logic = MedXAILogic()

        # Placeholder until the module GUI (Resources/UI/MedXAI.ui) arrives.
        infoLabel = qt.QLabel(_(
            "The MedXAI module GUI is coming soon.<br><br>"
            "Meanwhile, compute attribution volumes with the <b>medxai</b> command-line tool "
            "(run <tt>medxai --help</tt>) and load the resulting NRRD/NIfTI files into Slicer "
            "as volumes to show them over the image."
        ))
        infoLabel.wordWrap = True
        infoLabel.textFormat = qt.Qt.RichText
        self.layout.addWidget(infoLabel)

        # Add vertical spacer
        self.layout.addStretch(1)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        pass


#
# MedXAILogic
#


class MedXAILogic(ScriptedLoadableModuleLogic):
    """This class should implement all the actual
    computation done by your module.  The interface
    should be such that other python code can import
    this class and make use of the functionality without
    requiring an instance of the Widget.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)


#
# MedXAITest
#


class MedXAITest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_MedXAILibImports()

    def test_MedXAILibImports(self):
        """The library shipped beside the module (qt-scripted-modules/MedXAILib) imports."""
        self.delayDisplay("Starting the test")

        import MedXAILib

        self.assertTrue(hasattr(MedXAILib, "__version__"))
        logging.info(f"MedXAILib {MedXAILib.__version__} loaded from {MedXAILib.__file__}")

        logic = MedXAILogic()
        self.assertIsNotNone(logic)

        self.delayDisplay("Test passed")
