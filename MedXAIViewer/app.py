"""The web page: trame-slicer's slice and 3D views of the scene, the display panel, the tables.

One server shows one result folder (or, for a cohort, one case at a time) to every page that connects:
trame keeps one state, so people in a review meeting who open the same address see the same picture.
Views are trame-slicer's remote-controlled areas (``register_rca_factories``): Slicer's own slice logic and
displayable managers render on the server (off screen) and the page receives images.

The scene is loaded before the server starts (so the first page gets its first image at once), released
when the last page closes (:meth:`ViewerApp.on_last_page_closed`) and loaded again when a page connects.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

from trame.app import get_server
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
from trame_slicer.app.ui.slider import Slider
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import RemoteViewFactory
from trame_slicer.views import (Layout, LayoutDirection, NoScheduleRendering, SliceView, ThreeDView,
                                ViewLayoutDefinition, ViewType)
from vtkmodules.vtkCommonCore import vtkObject
from wslink.websocket import LinkProtocol

from MedXAILib.errors import MedXAIError, first_line

from .folder import ResultFolder, scan_folder, score_column
from .routes import add_routes
from .scene import SLICE_VIEWS, STATISTIC_COLUMNS, DisplaySettings, ViewerScene, provenance_rows

__all__ = ["ViewerApp", "COLORMAPS", "LAYOUT_NAME"]

COLORMAPS = ("auto", "diverging", "sequential")  # as the Slicer module's colour map choice
LAYOUT_NAME = "MedXAI"
_STYLE = """
.medxai-view-label { position: absolute; top: 4px; right: 8px; z-index: 2; color: #fff; font: 600 12px sans-serif;
  padding: 1px 6px; border-radius: 3px; pointer-events: none; }
.medxai-legend-labels { display: flex; justify-content: space-between; font-size: 12px; }
.medxai-table td, .medxai-table th { font-size: 12px !important; height: 26px !important; padding: 0 8px !important; }
.medxai-provenance td:last-child { font-family: monospace; word-break: break-all; }
"""
_VIEW_COLOURS = {"Red": "#F34A33", "Yellow": "#EFD64D", "Green": "#6DAD4A", "3D": "#7F7FB2"}


def _layout() -> Layout:
    axial, sagittal = ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view()
    coronal, threed = ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.threed_view()
    return Layout(LayoutDirection.Horizontal, [Layout(LayoutDirection.Vertical, [axial, coronal]),
                                              Layout(LayoutDirection.Vertical, [threed, sagittal])])


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


class _PageCounter(LinkProtocol):
    """Counts the pages connected over the websocket; calls back when the first opens and the last closes."""

    def __init__(self, app: "ViewerApp") -> None:
        super().__init__()
        self._app = app
        self.pages: set[str] = set()

    def onConnect(self, request: Any, client_id: str) -> None:
        first = not self.pages
        self.pages.add(client_id)
        if first:
            self._app.on_first_page_opened()

    def onClose(self, client_id: str) -> None:
        self.pages.discard(client_id)
        if not self.pages:
            self._app.on_last_page_closed()


class ViewerApp:
    """The viewer of one result folder `root` (a trame application; :meth:`start` serves it).

    Args:
        root: the folder given to ``medxai view``; nothing outside it is read or served.
        server: a trame server (default: a new one named ``medxai-viewer``).
    """

    def __init__(self, root: Path, server: Any = None) -> None:
        self.root = Path(root).resolve()
        self.server = server or get_server("medxai-viewer", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.top: ResultFolder = scan_folder(self.root)
        self.folder: ResultFolder = self.top
        self.case: Optional[str] = None
        self.settings = DisplaySettings()

        vtkObject.GlobalWarningDisplayOff()  # VTK's notes on trame-slicer internals (X display probe, deprecations)
        self.slicer = SlicerApp()
        self._register_view_factories()
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_NAME, _layout())
        self.layout_manager.set_layout(LAYOUT_NAME)
        self.viewer_scene = ViewerScene(self.slicer.scene)  # the views exist now: they are the baseline
        self.pages = _PageCounter(self)
        self.server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(self.pages))
        self.ctrl.on_server_bind.add(lambda web_server: add_routes(web_server.app, self._folder_root, self.status))

        self.state.update({
            "title": self.root.name, "case_id": "", "problems": [], "attribution_items": [], "attribution": None,
            "colormap": self.settings.colormap, "colormap_items": list(COLORMAPS),
            "opacity": self.settings.opacity, "symmetric": self.settings.symmetric,
            "threshold": self.settings.threshold, "window": self.settings.window, "outlines": True, "legend": {},
            "stats_headers": [], "stats_rows": [], "provenance_rows": [], "cohort_headers": [], "cohort_rows": [],
            "links": [],
            "is_cohort": self.top.is_cohort, "tab": "stats",
        })
        self.state.change("attribution")(self._on_attribution)
        self.state.change("colormap", "opacity", "symmetric", "threshold", "window")(self._on_display)
        self.state.change("outlines")(self._on_outlines)
        self._build_ui()
        if self.top.is_cohort:
            self._publish_cohort()
            first = next((row for row in self.top.cohort if row.folder is not None), None)
            if first is not None:
                self.open_case(first.case)
            else:
                self._load(self.top)
        else:
            self._load(self.top)

    def _register_view_factories(self) -> None:
        """trame-slicer's remote (RCA) slice and 3D view factories, with views that do not render while built.

        ``register_rca_factories`` builds views that render on every change until the factory hands them to
        the page's scheduler: about 250 renders and 4 s of start-up here. Built with trame-slicer's
        ``NoScheduleRendering`` instead, a view renders first when a page shows it.
        """
        for view_class, view_type, populate in ((SliceView, ViewType.SLICE_VIEW, self._slice_view_ui),
                                                (ThreeDView, ViewType.THREE_D_VIEW, self._threed_view_ui)):
            def build(scene: Any, app_logic: Any, name: str, _class: Any = view_class) -> Any:
                return _class(scene, app_logic, name, scheduled_render_strategy=NoScheduleRendering())

            self.slicer.view_manager.register_factory(
                RemoteViewFactory(self.server, build, view_type, populate_view_ui_f=populate, target_fps=30.0,
                                  blur_fps=10.0, interactive_quality=50))

    # -- loading and state ---------------------------------------------------------------------------

    def _folder_root(self) -> Path:
        return self.root

    def _load(self, folder: ResultFolder) -> None:
        """Load `folder` into the scene and show its first attribution with the current settings."""
        self.folder = folder
        self.viewer_scene.load(folder)
        items = [{"title": a.label, "value": i} for i, a in enumerate(folder.attributions)]
        prefix = "" if folder.root == self.root else folder.root.relative_to(self.root).as_posix() + "/"
        with self.state:
            self.state.attribution_items = items
            self.state.links = [{"title": name, "href": f"files/{prefix}{name}"} for name in folder.links]
            self.state.outlines = True
            self.state.attribution = 0 if items else None
        self._reset_views()
        self._show(0 if items else None)  # directly: the state may already hold 0 (no change to react to)

    def _show(self, index: Optional[int]) -> None:
        if index is None:
            self._publish()
            return
        try:
            self.viewer_scene.show(int(index), self.settings)
        except Exception as error:  # noqa: BLE001 - whatever a file does, the page says so and the server goes on
            name = self.folder.attributions[int(index)].path.name
            self.viewer_scene.problems.append(f"{name}: {first_line(error)}")
        self._publish()

    def _publish(self) -> None:
        """Push the legend, tables, provenance and problems of what the scene shows to the page."""
        scene = self.viewer_scene
        try:
            table = scene.statistics()
        except Exception as error:  # noqa: BLE001 - the map is still shown without its table
            table = {}
            scene.problems.append(f"per-structure statistics: {first_line(error)}")
        columns = [c for c in STATISTIC_COLUMNS if c in table]
        rows = [{c: _format(table[c][i]) for c in columns} for i in range(len(table.get("structure", [])))]
        with self.state:
            self.state.legend = scene.legend()
            self.state.stats_headers = columns
            self.state.stats_rows = rows
            self.state.provenance_rows = provenance_rows(scene.provenance())
            # the page names files by their place in the folder, never by the server's paths
            self.state.problems = [p.replace(f"{self.root}{os.sep}", "").replace(str(self.root), ".")
                                   for p in dict.fromkeys(scene.problems)]
            self.state.case_id = self.case or ""

    def _publish_cohort(self) -> None:
        score = score_column(self.top.cohort_columns)
        rest = [c for c in self.top.cohort_columns if c not in ("case", "case_id", "id", "structure", "error", "rank")]
        extra = list(dict.fromkeys([c for c in (score, "status") if c in rest] + rest))[:4]  # the ranking score first
        headers = ["rank", "case", "structure", *extra, "error"]
        rows = []
        for rank, row in enumerate(self.top.cohort, start=1):
            values = {"rank": str(rank), "case": row.case, "structure": row.structure, "error": row.error}
            values.update({c: _format(_maybe_number(row.values.get(c, ""))) for c in extra})
            rows.append({"cells": [values[h] for h in headers], "case": row.case, "openable": row.folder is not None})
        with self.state:
            self.state.cohort_headers = headers
            self.state.cohort_rows = rows
            self.state.tab = "cohort"

    def open_case(self, case: str) -> None:
        """Show the cohort case `case` (a folder ``cases/<case>/`` of the top folder)."""
        row = next((r for r in self.top.cohort if r.case == case), None)
        if row is None or row.folder is None:
            self.viewer_scene.problems.append(f"case {case}: its folder is missing")
            self._publish()
            return
        self.case = case
        folder = scan_folder(row.folder)
        folder.problems = [*self.top.problems, *folder.problems]
        self._load(folder)

    # -- state callbacks -----------------------------------------------------------------------------

    def _on_attribution(self, attribution: Any = None, **_: Any) -> None:
        if attribution is not None and attribution != self.viewer_scene.current:
            self._show(attribution)

    def _on_display(self, colormap: str = "auto", opacity: float = 0.5, symmetric: bool = True,
                    threshold: float = 95.0, window: float = 99.9, **_: Any) -> None:
        self.settings = DisplaySettings(colormap if colormap in COLORMAPS else "auto",
                                        min(1.0, max(0.0, float(opacity))), bool(symmetric),
                                        min(99.9, max(0.0, float(threshold))), min(100.0, max(90.0, float(window))))
        try:
            self.viewer_scene.apply(self.settings)
        except MedXAIError as error:
            self.viewer_scene.problems.append(first_line(error))
        self._publish()

    def _on_outlines(self, outlines: bool = True, **_: Any) -> None:
        self.viewer_scene.set_outlines(bool(outlines))

    def _reset_views(self) -> None:
        """Fit every view to the data; the 3D view from the front-left and above, as a reviewer would turn it."""
        for view in self.slicer.view_manager.get_views():
            view.reset_view()
        for view in self.slicer.view_manager.get_threed_views():
            camera = view.renderer().GetActiveCamera()
            camera.Azimuth(30)
            camera.Elevation(25)
            camera.OrthogonalizeViewUp()
            view.renderer().ResetCamera()
            camera.Zoom(1.4)
            view.schedule_render()

    def focus(self) -> None:
        self.viewer_scene.focus()

    def on_first_page_opened(self) -> None:
        if self.viewer_scene.folder is None:  # released when the last page closed: load again
            self._load(self.folder)
        else:
            self._reset_views()  # the views have their page's size now
            self.viewer_scene.focus()

    def on_last_page_closed(self) -> None:
        self.viewer_scene.release()

    def status(self) -> dict[str, Any]:
        """What ``/status`` answers (see :mod:`MedXAIViewer.routes`)."""
        views = {}
        for tag in SLICE_VIEWS:
            node = self.slicer.scene.GetSingletonNode(tag, "vtkMRMLSliceNode")
            if node is not None:
                matrix = node.GetXYToRAS()
                views[tag] = {"xy_to_ras": [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
                              "dimensions": list(node.GetDimensions())}
        return {"pages": len(self.pages.pages), "loaded": self.viewer_scene.folder is not None,
                "nodes": self.viewer_scene.added_nodes, "case": self.case or "", "attribution": self.state.attribution,
                "problems": list(self.state.problems), "views": views}

    # -- the page ------------------------------------------------------------------------------------

    def _view_label(self, tag: str, text: str) -> None:
        html.Div(text, classes="medxai-view-label", style=f"background: {_VIEW_COLOURS.get(tag, '#555')}cc",
                 raw_attrs=[f'data-view="{tag}"'])

    def _slice_view_ui(self, server: Any, view_id: str, view: SliceView) -> None:
        tag = view.get_singleton_tag()
        self._view_label(tag, f"{SLICE_VIEWS.get(tag, tag)} ({tag})")
        with html.Div(style="position: absolute; bottom: 0; left: 0; width: 100%; z-index: 2"):
            Slider(typed_state=connect_slice_view_slider_to_state(server, view), theme="dark", density="compact",
                   classes="mx-2", raw_attrs=[f'data-slider="{tag}"'])

    def _threed_view_ui(self, server: Any, view_id: str, view: Any) -> None:
        self._view_label("3D", "3D")

    def _build_ui(self) -> None:
        with VAppLayout(self.server, full_height=True) as layout:
            client.Style(_STYLE)
            with v3.VAppBar(density="compact", color="#263238", theme="dark"):
                v3.VAppBarTitle("MedXAI viewer: {{ title }}")
                v3.VChip("case {{ case_id }}", v_if="case_id", id="case-chip", classes="mr-2", color="amber")
                v3.VChip("{{ problems.length }} problem(s)", v_if="problems.length", color="red", classes="mr-2",
                         id="problem-chip")
            with v3.VNavigationDrawer(permanent=True, width=330):
                with v3.VContainer(classes="pa-3"):
                    v3.VSelect(id="attribution-select", label="Attribution: method · model · structure",
                               v_model=("attribution",), items=("attribution_items",), item_title="title",
                               item_value="value", density="compact", hide_details=True, classes="mb-3")
                    v3.VSelect(id="colormap-select", label="Colour map", v_model=("colormap",),
                               items=("colormap_items",), density="compact", hide_details=True, classes="mb-1")
                    v3.VSwitch(id="symmetric-switch", label="Symmetric window around 0", v_model=("symmetric",),
                               density="compact", hide_details=True, color="primary")
                    html.Div("Window: ± percentile {{ window }} of |a| (100: max), beyond saturates",
                             classes="text-caption", v_if="symmetric")
                    v3.VSlider(id="window-slider", v_model=("window",), min=90, max=100, step=0.1, v_if="symmetric",
                               density="compact", hide_details=True, color="primary")
                    html.Div("Threshold: hide |a| below percentile {{ threshold }}", classes="text-caption")
                    v3.VSlider(id="threshold-slider", v_model=("threshold",), min=0, max=99.9, step=0.1,
                               density="compact", hide_details=True, color="primary")
                    html.Div("Opacity {{ opacity }}", classes="text-caption")
                    v3.VSlider(id="opacity-slider", v_model=("opacity",), min=0, max=1, step=0.05,
                               density="compact", hide_details=True, color="primary")
                    v3.VSwitch(id="outlines-switch", label="Segment outlines", v_model=("outlines",),
                               density="compact", hide_details=True, color="primary")
                    v3.VBtn("Slices through the focus", id="focus-button", click=self.focus, size="small",
                            variant="tonal", block=True, classes="mb-3",
                            title="the target voxel of the explanation, or the map's peak")
                    with html.Div(id="legend", v_if="legend.png"):
                        html.Div("{{ legend.label }}", classes="text-body-2 mb-1", id="legend-label")
                        html.Div("{{ legend.table }}", classes="text-caption font-weight-bold")
                        html.Img(src=("legend.png",), style="width: 100%; height: 16px; display: block;",
                                 id="legend-bar")
                        with html.Div(classes="medxai-legend-labels"):
                            html.Span("{{ legend.lo.toPrecision(3) }}", id="legend-lo")
                            html.Span("0", v_if="legend.lo < 0 && legend.hi > 0")
                            html.Span("{{ legend.hi.toPrecision(3) }}", id="legend-hi")
                        html.Div("transparent: |a| < {{ legend.threshold.toPrecision(3) }}",
                                 v_if="legend.threshold > 0", classes="text-caption", id="legend-threshold")
                    with html.Div(v_if="links.length", classes="mt-3"):
                        html.Div("Files", classes="text-caption font-weight-bold")
                        html.A("{{ link.title }}", v_for="link in links", key="link.href", href=("link.href",),
                               target="_blank", classes="d-block text-body-2")
            with v3.VMain():
                with v3.VContainer(fluid=True, classes="pa-1"):
                    with html.Div(id="problems", v_if="problems.length"):
                        v3.VAlert("{{ problem }}", v_for="problem in problems", key="problem", type="error",
                                  density="compact", variant="tonal", classes="mb-1 problem")
                    with html.Div(style="height: 58vh; position: relative;", id="views"):
                        self.layout_manager.initialize_layout_grid(layout)
                    with v3.VTabs(v_model=("tab",), density="compact"):
                        v3.VTab("Per-structure statistics", value="stats", id="tab-stats")
                        v3.VTab("Provenance", value="provenance", id="tab-provenance")
                        v3.VTab("Cohort QA", value="cohort", v_if="is_cohort", id="tab-cohort")
                    with v3.VWindow(v_model=("tab",)):
                        with v3.VWindowItem(value="stats"):
                            html.Div("No segmentation in this folder: no per-structure table.",
                                     v_if="!stats_rows.length", classes="text-body-2 pa-2")
                            with v3.VTable(density="compact", classes="medxai-table", id="stats-table",
                                           v_if="stats_rows.length", height="28vh", fixed_header=True):
                                with html.Thead(), html.Tr():
                                    html.Th("{{ h }}", v_for="h in stats_headers", key="h")
                                with html.Tbody():
                                    with html.Tr(v_for="row in stats_rows", key="row.structure"):
                                        html.Td("{{ row[h] }}", v_for="h in stats_headers", key="h")
                        with v3.VWindowItem(value="provenance"):
                            with v3.VTable(density="compact", classes="medxai-table medxai-provenance",
                                           id="provenance-table", height="28vh", fixed_header=True):
                                with html.Tbody():
                                    with html.Tr(v_for="row in provenance_rows", key="row.key"):
                                        html.Td("{{ row.key }}", style="white-space: nowrap")
                                        html.Td("{{ row.value }}")
                        with v3.VWindowItem(value="cohort"):
                            with v3.VTable(density="compact", classes="medxai-table", id="cohort-table",
                                           height="28vh", fixed_header=True):
                                with html.Thead(), html.Tr():
                                    html.Th("{{ h }}", v_for="h in cohort_headers", key="h")
                                with html.Tbody():
                                    with html.Tr(v_for="row in cohort_rows", key="row.case + row.cells.join()",
                                                 click=(self.open_case, "[row.case]"),
                                                 style=("row.openable ? 'cursor: pointer' : 'opacity: 0.6'",),
                                                 classes=("row.case === case_id ? 'bg-amber-lighten-4' : ''",),
                                                 raw_attrs=[':data-case="row.case"']):
                                        html.Td("{{ cell }}", v_for="(cell, i) in row.cells", key="i")
        self.ui = layout

    # -- serving -------------------------------------------------------------------------------------

    def start(self, host: str, port: int, on_ready: Any = None) -> None:
        """Serve on `host`:`port` until stopped (Ctrl-C or SIGTERM); `on_ready(url)` once listening."""
        def ready(**_: Any) -> None:
            url = f"http://{host if ':' not in host else '[' + host + ']'}:{self.server.port}/"
            if on_ready is not None:
                on_ready(url)

        self.ctrl.on_server_ready.add(ready)
        argv = sys.argv[:]
        sys.argv[1:] = []  # trame also parses the command line: it must not read medxai's options
        try:
            self.server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0,
                              disable_logging=True)
        finally:
            sys.argv[:] = argv


def _maybe_number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
