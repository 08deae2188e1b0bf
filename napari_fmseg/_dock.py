"""The fmseg dock: one dock widget with a tab per tool (Segment, In-context, Uncertainty, Adapt).

One dock instead of four: four docks stacked their controls (a 1242-px window grew to
3182 px on a 1000-px screen). Each tab scrolls on its own when the window is too short, so
the dock never makes the window taller. The dock owns the one
:class:`~._support.SupportPanel` of the In-context and Uncertainty tools and shows it in
whichever of them is in front: the clinician builds the support set once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from ._adapter_widget import AdapterWidget
from ._incontext_widget import InContextWidget
from ._support import SupportPanel
from ._uncertainty_widget import UncertaintyWidget
from ._widget import SegmentWidget

if TYPE_CHECKING:
    import napari

    from fmseg.registry import ModelLoader

TIPS = {
    "Segment": "prompt a foundation model with boxes and clicks, propagate, commit",
    "In-context": "segment a volume from a support set of a few annotated slices",
    "Uncertainty": "K plausible segmentations from the same support set, and their spread",
    "Adapt": "train a small adapter on annotated slices, then apply it",
}


def _scrolled(widget: QWidget) -> QScrollArea:
    """``widget`` in a frameless scroll area: a short window scrolls the tab, never grows.

    Space left over goes below the controls, not between them.
    """
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(widget)
    layout.addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(page)
    return area


class FmsegDock(QTabWidget):
    """The fmseg tools in one dock widget, a tab each.

    Args:
        viewer: The napari viewer (npe2 passes it).
        load: How every tool builds its networks (None: :func:`fmseg.registry.load_model`,
            the real weights; :func:`fmseg.registry.load_tiny` in tests and demos).
        session_factory: The Segment tool's session factory (see :class:`SegmentWidget`).
        backend_factory: The In-context tool's backend factory.
        sampler_factory: The Uncertainty tool's sampler factory.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        load: ModelLoader | None = None,
        session_factory: Callable[..., Any] | None = None,
        backend_factory: Callable[..., Any] | None = None,
        sampler_factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.panel = SupportPanel(viewer)
        self.segment = SegmentWidget(viewer, load=load, session_factory=session_factory)
        self.incontext = InContextWidget(
            viewer, load=load, backend_factory=backend_factory, panel=self.panel
        )
        self.uncertainty = UncertaintyWidget(
            viewer, load=load, sampler_factory=sampler_factory, panel=self.panel
        )
        self.adapt = AdapterWidget(viewer, load=load)
        self.tools = {
            "Segment": self.segment,
            "In-context": self.incontext,
            "Uncertainty": self.uncertainty,
            "Adapt": self.adapt,
        }
        for name, tool in self.tools.items():
            self.setTabToolTip(self.addTab(_scrolled(tool.native), name), TIPS[name])
        self.currentChanged.connect(self._on_tab)
        self._on_tab(self.currentIndex())

    @property
    def busy(self) -> bool:
        """True while any tool's work runs."""
        return any(tool.busy for tool in self.tools.values())

    def show_tool(self, name: str) -> Any:
        """Bring the tool ``name`` ("Segment", "In-context", "Uncertainty", "Adapt") to front."""
        self.setCurrentIndex(list(self.tools).index(name))
        return self.tools[name]

    def _on_tab(self, index: int) -> None:
        tool = list(self.tools.values())[index] if index >= 0 else None
        if isinstance(tool, InContextWidget | UncertaintyWidget):
            tool.show_panel()
