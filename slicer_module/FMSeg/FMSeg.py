"""FMSeg: foundation-model segmentation in 3D Slicer, over the shared fmseg core.

Slicer's scripted-module layout: :class:`FMSeg` (module), :class:`FMSegParameterNode`,
:class:`FMSegWidget` (thin: binds ``Resources/UI/FMSeg.ui``, runs work in a background thread)
and :class:`FMSegTest`. The computation is ``FMSegLib.logic.FMSegLogic``, which needs fmseg and
torch; this file imports it only once they are installed (the "Install fmseg" button), so the
module always loads.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated

import qt
import slicer
from FMSegLib import choices, install
from slicer import (
    vtkMRMLMarkupsClosedCurveNode,
    vtkMRMLMarkupsCurveNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

POLL_MS = 100


class FMSeg(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("FMSeg")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["fmseg developers"]
        self.parent.helpText = _(
            "Foundation-model segmentation: Markups prompts (points, ROI) to segments, "
            "propagation, in-context segmentation from example segments, uncertainty samples "
            "and few-shot adapters. See docs/slicer.md in the fmseg repository."
        )
        self.parent.acknowledgementText = _(
            "Built on LiteMedSAM (Apache-2.0) and fmseg's in-context and Tyche-type networks."
        )


@parameterNodeWrapper
class FMSegParameterNode:
    """Everything the user chose; saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentName: str = "fmseg"
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    roi: vtkMRMLMarkupsROINode
    scribble: vtkMRMLMarkupsCurveNode
    lasso: vtkMRMLMarkupsClosedCurveNode
    view: Annotated[str, Choice(list(choices.VIEWS))] = "axial"
    propagate: bool = False
    supportSegment: str = ""
    backend: Annotated[str, Choice(list(choices.BACKENDS))] = "auto"
    sampler: Annotated[str, Choice(list(choices.SAMPLERS))] = "tyche-small"
    samples: Annotated[int, WithinRange(2, 32)] = 8
    adapterBase: Annotated[str, Choice(list(choices.ADAPTER_BASES))] = "litemedsam"
    adapterMethod: Annotated[str, Choice(list(choices.ADAPTER_METHODS))] = "spatial-adapter"
    adapterSteps: Annotated[int, WithinRange(1, 5000)] = 200
    # fmseg.adapters.facade.CPU_TIME_LIMIT (this module loads before fmseg is installed);
    # tests/slicer/test_adapters.py checks they agree. 0: no limit.
    adapterTimeLimit: Annotated[float, WithinRange(0, 86400)] = 60.0
    adapterWholeVolume: bool = False
    adapterPath: Path


class FMSegParameterLogic(ScriptedLoadableModuleLogic):
    """Finds the module's parameter node (usable before fmseg is installed)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleName = "FMSeg"

    def getParameterNode(self) -> FMSegParameterNode:
        """The scene's FMSeg parameter node, made if missing."""
        return FMSegParameterNode(super().getParameterNode())


class FMSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: reads the parameter node, calls the Logic, polls background work."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None  # FMSegLib.logic.FMSegLogic, once fmseg is installed
        self._parameterNode: FMSegParameterNode | None = None
        self._guiTag = None
        self._task = None
        self._onDone = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)

    def setup(self) -> None:
        """Load the .ui file and connect the buttons."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FMSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for button, slot in (
            (self.ui.installButton, self.onInstall),
            (self.ui.segmentButton, self.onSegment),
            (self.ui.newObjectButton, self.onNewObject),
            (self.ui.undoButton, self.onUndo),
            (self.ui.editSegmentButton, self.onEditSegment),
            (self.ui.undoStepButton, self.onUndoStep),
            (self.ui.redoStepButton, partial(self.onUndoStep, redo=True)),
            (self.ui.addSupportButton, self.onAddSupport),
            (self.ui.clearSupportButton, self.onClearSupport),
            (self.ui.incontextButton, self.onInContext),
            (self.ui.correctSliceButton, self.onCorrectSlice),
            (self.ui.addCorrectedButton, self.onAddCorrected),
            (self.ui.suggestButton, self.onSuggest),
            (self.ui.sampleButton, self.onSample),
            (self.ui.addTrainingButton, self.onAddTraining),
            (self.ui.clearTrainingButton, self.onClearTraining),
            (self.ui.trainButton, self.onTrainAdapter),
            (self.ui.applyAdapterButton, self.onApplyAdapter),
            (self.ui.cancelButton, self.onCancel),
        ):
            button.connect("clicked(bool)", lambda _checked, slot=slot: slot())
        combo = self.ui.backendComboBox  # corrections need a backend that takes clicks
        combo.connect("currentIndexChanged(int)", lambda _i: self._setBusy(self._task is not None))
        self._updateInstallState()
        self._setBusy(False)
        self.initializeParameterNode()

    # -- parameter node (as in Slicer's template) ----------------------------------------
    def cleanup(self) -> None:
        """Stop polling and observing when the module is destroyed."""
        self.onCancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens another module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiTag)
            self._guiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is closing: drop the parameter node and the Logic's state."""
        self.setParameterNode(None)
        self.logic = None

    def onSceneEndClose(self, caller, event) -> None:
        """The scene closed: make a new parameter node if the module is shown."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and select the first volume."""
        self.setParameterNode(FMSegParameterLogic().getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, node: FMSegParameterNode | None) -> None:
        """Bind the GUI to a parameter node (``SlicerParameterName`` properties in the .ui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiTag)
        self._parameterNode = node
        if self._parameterNode:
            self._guiTag = self._parameterNode.connectGui(self.ui)

    # -- installation (main thread, on the user's click only) ------------------------------
    def _updateInstallState(self) -> None:
        ready = install.core_installed()
        self.ui.installButton.visible = not ready
        self.ui.statusLabel.text = _("Ready.") if ready else _("Click 'Install fmseg' first.")

    def onInstall(self) -> None:
        """Install PyTorch (PyTorch extension) and fmseg's core into Slicer's Python."""
        with slicer.util.tryWithErrorDisplay(_("Installing fmseg failed."), waitCursor=True):
            if not install.torch_installed():
                import PyTorchUtils  # the PyTorch extension, this extension's dependency

                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                    return
            constraints = Path(tempfile.mkdtemp()) / "fmseg-constraints.txt"
            constraints.write_text((install.torch_pin() or "") + "\n")
            for args in install.pip_commands(constraints):
                slicer.util.pip_install(args)
        self._updateInstallState()

    def _ensureLogic(self):
        if self.logic is None:
            if not install.core_installed():
                raise RuntimeError(_("fmseg is not installed: click 'Install fmseg'."))
            from FMSegLib.logic import FMSegLogic

            self.logic = FMSegLogic(slicer.mrmlScene)
        return self.logic

    # -- background work ------------------------------------------------------------------
    def _setBusy(self, busy: bool) -> None:
        self.ui.cancelButton.enabled = busy
        self.ui.progressBar.visible = busy
        for name in ("segmentButton", "incontextButton", "sampleButton", "trainButton"):
            getattr(self.ui, name).enabled = not busy
        self.ui.suggestButton.enabled = not busy
        self.ui.applyAdapterButton.enabled = not busy
        clicks = self.ui.backendComboBox.currentText in choices.CLICK_BACKENDS
        for name in ("correctSliceButton", "addCorrectedButton"):
            getattr(self.ui, name).enabled = clicks and not busy

    def _start(self, name: str, work, onDone) -> None:
        from FMSegLib.worker import BackgroundTask

        self._task, self._onDone = BackgroundTask(work, name).start(), onDone
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Running {name}...").format(name=name)
        self._setBusy(True)
        self._timer.start()

    def _poll(self) -> None:
        """QTimer slot (main thread): show progress; write results once the work is done."""
        for step in self._task.poll():
            self.ui.progressBar.maximum = max(step.total, 1)
            self.ui.progressBar.value = step.done
            self.ui.statusLabel.text = step.message
        if not self._task.done:
            return
        self._timer.stop()
        self._setBusy(False)
        task, self._task = self._task, None
        if task.cancelled:
            self.ui.statusLabel.text = _("Cancelled.")
        elif task.error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(str(task.error))
        else:
            self.ui.statusLabel.text = _("Done.")  # onDone may say more
            with slicer.util.tryWithErrorDisplay(_("Could not store the result.")):
                self._onDone(task.result)

    def onCancel(self) -> None:
        """Ask the running work to stop at its next step."""
        if self._task is not None:
            self._task.cancel()

    def _action(self, message: str):
        return slicer.util.tryWithErrorDisplay(message, waitCursor=True)

    # -- actions: read on the main thread, work in the thread, write in _poll --------------
    def onSegment(self) -> None:
        """Segment the prompted slice (and propagate it, if asked) into the segment."""
        with self._action(_("Segmentation failed.")):
            self._start("segment", *self._promptedWork(self._parameterNode.segmentName))

    def _promptedWork(self, name: str, adapter=None):
        """(work, write) of the prompt path into segment ``name``, with a box-head adapter."""
        logic, p = self._ensureLogic(), self._parameterNode
        volume = p.inputVolume
        prompts = logic.read_prompts(
            volume, p.view, p.positivePoints, p.negativePoints, p.roi, [p.scribble], p.lasso
        )
        data = logic.read_volume(volume)
        if p.propagate:
            work = logic.propagate_iter(data, prompts, adapter)
            return work, partial(logic.write_segment, p.segmentation, name, volume_node=volume)
        work = logic.segment_slice_iter(data, prompts, adapter)
        return work, partial(logic.write_slice, p.segmentation, name, volume, prompts)

    def onNewObject(self) -> None:
        """Forget the prompts of the working object."""
        with self._action(_("Failed.")):
            self._ensureLogic().new_object(self._parameterNode.inputVolume)

    def onUndo(self) -> None:
        """Restore the segmentation as before the last write."""
        with self._action(_("Undo failed.")):
            if not self._ensureLogic().undo(self._parameterNode.segmentation):
                self.ui.statusLabel.text = _("Nothing to undo.")

    def onEditSegment(self) -> None:
        """Make the segment the working object (Segment then edits it)."""
        logic, p = self._ensureLogic(), self._parameterNode
        with self._action(_("Could not edit the segment.")):
            mask = logic.read_segment(p.segmentation, p.segmentName, p.inputVolume)
            work = logic.start_from_mask_iter(logic.read_volume(p.inputVolume), mask)
            self._start("edit segment", work, self._saying(lambda n: f"Editing {n} voxels."))

    def onUndoStep(self, redo: bool = False) -> None:
        """Undo (redo) the working object's last step; the segment shows the object."""
        logic, p = self._ensureLogic(), self._parameterNode
        with self._action(_("Undo failed.")):
            step = logic.step_history(p.inputVolume, redo)
            if step is None:
                self.ui.statusLabel.text = _("Nothing to redo.") if redo else _("Nothing to undo.")
                return
            logic.write_segment(p.segmentation, p.segmentName, step[1], p.inputVolume)
            self.ui.statusLabel.text = ("Redid " if redo else "Undid ") + step[0] + "."

    def onAddSupport(self) -> None:
        """Add slices of a segment (and the input volume) to the support set."""
        with self._action(_("Could not add the support.")):
            logic, p = self._ensureLogic(), self._parameterNode
            name = p.supportSegment or p.segmentName
            n = logic.add_support(p.inputVolume, p.segmentation, name, p.view)
            self._showSupport(_("Added {n} slices of '{name}'.").format(n=n, name=name))

    def onClearSupport(self) -> None:
        """Empty the support set."""
        if self.logic is not None:
            self.logic.support.clear()
            self.logic.support.names.clear()
        self._showSupport(_("Support set cleared."))

    def _showSupport(self, message: str) -> None:
        support = self.logic.support if self.logic is not None else []
        self.ui.supportLabel.text = _("{n} support slices").format(n=len(support))
        self.ui.statusLabel.text = message

    def onInContext(self) -> None:
        """Segment the input volume from the support set."""
        with self._action(_("In-context segmentation failed.")):
            logic, p = self._ensureLogic(), self._parameterNode
            volume = p.inputVolume
            axis = logic.view_axis(volume, p.view)
            work = logic.incontext_iter(logic.read_volume(volume), axis, p.backend)
            write = partial(
                logic.write_incontext, segmentation_node=p.segmentation, volume_node=volume
            )
            self._start("in-context", work, self._saying(write, logic.incontext_summary))

    def onSuggest(self) -> None:
        """Rank the unannotated slices; the view of the chosen orientation shows the best."""
        from FMSegLib.suggest import suggest_iter, write_suggestion

        with self._action(_("Suggestion failed.")):
            logic, p = self._ensureLogic(), self._parameterNode
            axis = logic.view_axis(p.inputVolume, p.view)
            work = suggest_iter(logic, logic.read_volume(p.inputVolume), axis, p.backend)
            write = partial(write_suggestion, volume_node=p.inputVolume, view=p.view)
            self._start("next slice", work, self._saying(write))

    def _saying(self, write, describe=None):
        """A write step that then shows its message (or ``describe(result)``) as the status."""

        def done(result) -> None:
            said = write(result)
            self.ui.statusLabel.text = describe(result) if describe else said

        return done

    def onCorrectSlice(self) -> None:
        """Correct the clicked slice of the in-context result with the points above."""
        with self._action(_("Correction failed.")):
            logic, p = self._ensureLogic(), self._parameterNode
            volume = p.inputVolume
            clicks = logic.read_clicks(volume, p.view, p.positivePoints, p.negativePoints)
            work = logic.correct_slice_iter(
                logic.read_volume(volume), clicks, p.supportSegment or None
            )
            write = partial(
                logic.write_correction, segmentation_node=p.segmentation, volume_node=volume
            )
            self._start("correction", work, self._saying(write))

    def onAddCorrected(self) -> None:
        """Add the corrected slice to the support set; segment the slices around it again."""
        with self._action(_("Could not add the corrected slice.")):
            logic, p = self._ensureLogic(), self._parameterNode
            volume = p.inputVolume
            update = logic.add_corrected_slice(volume, p.segmentation)
            self._showSupport(_("Slice {i} added.").format(i=update.index))
            if update.slices:
                work = logic.resegment_iter(logic.read_volume(volume), update)
                write = partial(
                    logic.write_resegmented, update=update, segmentation_node=p.segmentation,
                    volume_node=volume,
                )  # fmt: skip
                self._start("update", work, self._saying(write))

    def onSample(self) -> None:
        """Draw plausible segmentations: a sequence, a mean and a disagreement map (shown)."""
        with self._action(_("Sampling failed.")):
            logic, p = self._ensureLogic(), self._parameterNode
            from FMSegLib.uncertainty import write_and_show

            volume = p.inputVolume
            axis = logic.view_axis(volume, p.view)
            work = logic.sample_iter(logic.read_volume(volume), axis, p.sampler, p.samples)
            write = partial(write_and_show, scene=logic.scene, volume_node=volume)
            self._start("sampling", work, self._saying(write))

    def _segmentArgs(self) -> tuple:
        p = self._parameterNode
        return p.inputVolume, p.segmentation, p.segmentName, p.view, p.adapterWholeVolume

    def onAddTraining(self) -> None:
        """Add the segment above (on the input volume) to the adapter's training set."""
        with self._action(_("Could not add the segment.")):
            n = self._ensureLogic().add_training(*self._segmentArgs())
            self._showTraining(_("Added '{name}'.").format(name=self._parameterNode.segmentName), n)

    def onClearTraining(self) -> None:
        """Empty the adapter's training set."""
        if self.logic is not None:
            self.logic.training.clear()
        self._showTraining(_("Training set cleared."), 0)

    def _showTraining(self, message: str, n: int) -> None:
        self.ui.trainingLabel.text = _("{n} training segments").format(n=n)
        self.ui.statusLabel.text = message

    def onTrainAdapter(self) -> None:
        """Train an adapter on the training set (or the segment above); save it to the file."""
        with self._action(_("Adapter training failed.")):
            logic, p = self._ensureLogic(), self._parameterNode
            data = list(logic.training) or [logic.read_annotation(*self._segmentArgs())]
            work = logic.train_adapter_iter(
                data, str(p.adapterPath or ""), p.adapterBase, p.adapterMethod, p.adapterSteps,
                time_limit=p.adapterTimeLimit,
            )  # fmt: skip
            self._start("adapter training", work, self._showTrained)

    def _showTrained(self, trained) -> None:
        self.ui.statusLabel.text = trained.summary()

    def onApplyAdapter(self) -> None:
        """Segment the input volume with the adapter file into '<segment> (adapter)'.

        Box-head adapters follow the prompt path (ROI and points, propagation if checked).
        """
        with self._action(_("Applying the adapter failed.")):
            logic, p = self._ensureLogic(), self._parameterNode
            volume, name = p.inputVolume, f"{p.segmentName} (adapter)"
            adapter = logic.read_adapter(str(p.adapterPath or ""), p.adapterBase)
            if adapter.prompted:
                self._start("adapter", *self._promptedWork(name, adapter))
                return
            axis = logic.view_axis(volume, p.view)
            work = logic.apply_adapter_iter(logic.read_volume(volume), adapter, axis)
            write = partial(logic.write_segment, p.segmentation, name, volume_node=volume)
            self._start("adapter", work, write)


class FMSegTest(ScriptedLoadableModuleTest):
    """The module's round trip inside Slicer (tiny random-weight models: no download)."""

    def setUp(self):
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run every test."""
        self.setUp()
        self.test_RoundTrip()

    def test_RoundTrip(self):
        """Oblique volume -> segment, undo, in-context, uncertainty, adapter (FMSegLib.selftest)."""
        if not install.core_installed():
            self.skipTest("fmseg is not installed (click 'Install fmseg')")
        from FMSegLib import selftest

        self.delayDisplay("Starting the FMSeg round trip")
        selftest.round_trip(slicer.mrmlScene, say=self.delayDisplay)
        self.delayDisplay("Test passed")
