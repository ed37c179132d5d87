"""The review panel: step through a captions layer's tiles, see each tile's two dates side by side at full resolution
with the model's caption and change polygons, and accept, correct or skip the caption.

The images are the very pixels the run captioned (:mod:`.review_pixels` rebuilds its grid and 8-bit mapping from
the layer's stored run options); the rasters are found among the project's layers by the names the run stored, or
picked by the analyst. A review is saved at once into the GeoPackage's review fields (:mod:`.review_store`); the
model's caption stays, and runs never overwrite a review. After each review the layer's calibration is fitted again
(:mod:`.calibration_gpkg`: ``p_right`` for every tile once enough are reviewed), and the panel says how many of the
unreviewed changed tiles are likely wrong. The search field ranks the tiles for a query in words (the bundled search,
as QGIS's locator bar and ``ccexpert search`` do). The map canvas follows the current tile, outlined by a rubber
band (the layer's selection is the analyst's own). The dock opens wide enough for both tiles, with the keyboard
focus, at the tile where the analyst stopped (remembered per layer, across sessions too); what was last saved is
said apart from what concerns the tile shown.

Keys (while the panel has the focus): A accept, E edit (Enter saves, Escape cancels), N no change, S or → skip,
← back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import qgis.core as _core
from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsRubberBand
from qgis.PyQt.QtCore import QPointF, QSize, Qt
from qgis.PyQt.QtGui import QCloseEvent, QColor, QImage, QKeySequence, QPainter, QPaintEvent, QPen, QPolygonF
from qgis.PyQt.QtWidgets import (
    QAction,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QScrollArea,
    QShortcut,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .calibration_gpkg import refit
from .errors import CaptionRunError
from .job import RasterInput
from .qgis_compat import POLYGON_GEOMETRY
from .review_pixels import RunPixels, missing_option
from .review_store import (
    NO_CHANGE_CAPTION,
    CaptionsFile,
    Order,
    ReviewItem,
    Verdict,
    found,
    has_changes,
    interval_dates,
    ordered,
    read_items,
    read_options,
    review_of,
    run_of,
    save_review,
    tile_changes,
    trust_note,
    with_p_right,
)
from .shared_modules import grid as tiling
from .shared_modules import run_contract, schema

#: A coordinate transform's failure (declared by SIP at run time: the stubs lack it).
_TransformError: type[Exception] = _core.QgsCsException  # type: ignore[attr-defined]
TITLE = "CCExpert — review captions"
#: Change polygons: a colour the layer's palette does not use, over a dark halo so that it shows on any ground.
CHANGE_COLOUR = QColor("#ffd400")
HALO_COLOUR = QColor(0, 0, 0, 170)
#: Message colours: a problem that keeps the images from showing, and a note.
ERROR_STYLE = "color: #b00020"
NOTE_STYLE = "color: #8a5a00"
#: How much room the canvas leaves around the current tile, as a share of its size.
CANVAS_MARGIN = 0.25
#: The current tile on the map: an outline (no fill), in a colour the layer's style does not use.
HIGHLIGHT_COLOUR = QColor("#00c8ff")
HIGHLIGHT_WIDTH = 3
#: Where the tile each layer was left at is remembered (by the layer's source), so a reopened dock goes on there.
POSITIONS_KEY = "ccexpert/review_positions"
_NOT_FOUND = "(not in the project)"


def zoom_to_tile(canvas, project: QgsProject, layer: QgsVectorLayer, extent: QgsRectangle) -> None:
    """Show a tile (its footprint in the layer's CRS) on the map canvas, with a margin around it."""
    destination = canvas.mapSettings().destinationCrs()
    if destination.isValid() and destination != layer.crs():
        try:
            extent = QgsCoordinateTransform(layer.crs(), destination, project).transformBoundingBox(extent)
        except _TransformError:  # a tile the canvas's CRS cannot show: leave the map where it is
            return
    margin = max(extent.width(), extent.height()) * CANVAS_MARGIN
    canvas.setExtent(QgsRectangle(extent.xMinimum() - margin, extent.yMinimum() - margin,
                                  extent.xMaximum() + margin, extent.yMaximum() + margin))
    canvas.refresh()


def image_of(rgb: np.ndarray) -> QImage:
    """An H×W×3 uint8 array as a QImage that owns its pixels."""
    height, width, _ = rgb.shape
    data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return QImage(data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def pixels_of(image: QImage) -> np.ndarray:
    """A QImage's pixels as an H×W×3 uint8 array."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    bits = rgb.constBits()
    assert bits is not None  # a null image has none; callers pass shown images
    rows = np.frombuffer(bits.asstring(rgb.sizeInBytes()), np.uint8).reshape(rgb.height(), rgb.bytesPerLine())
    return rows[:, : 3 * rgb.width()].reshape(rgb.height(), rgb.width(), 3).copy()


class TileView(QWidget):
    """One date of a tile at full resolution (a screen pixel per raster pixel), change polygons drawn over it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._polygons: list[QPolygonF] = []
        self.show_polygons = True
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)

    def set_tile(self, rgb: np.ndarray | None, polygons: Sequence[QPolygonF] = ()) -> None:
        """Show a tile's pixels (None: nothing) with polygons in the tile's pixel coordinates."""
        self._image = None if rgb is None else image_of(rgb)
        self._polygons = list(polygons)
        self.setFixedSize(self.sizeHint())
        self.update()

    def image(self) -> QImage | None:
        """The tile as shown, without the polygons."""
        return self._image

    def polygons(self) -> list[QPolygonF]:
        """The change polygons drawn over the tile (pixel coordinates)."""
        return list(self._polygons) if self.show_polygons else []

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """The image's size: one screen pixel per pixel."""
        return QSize(0, 0) if self._image is None else self._image.size()

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802
        """The pixels, then the change outlines over them."""
        if self._image is None:
            return
        painter = QPainter(self)
        painter.drawImage(0, 0, self._image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for colour, width in ((HALO_COLOUR, 4.0), (CHANGE_COLOUR, 2.0)):
            painter.setPen(QPen(colour, width))
            for polygon in self.polygons():
                painter.drawPolygon(polygon)
        painter.end()


class ReviewPanel(QgsDockWidget):
    """The dock: a captions layer's tiles one by one, in the chosen order, reviewed into its GeoPackage."""

    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__(TITLE, parent)
        self.setObjectName("CCExpertReviewPanel")
        self.iface = iface
        project = QgsProject.instance()
        assert project is not None  # QGIS makes it at start
        self.project: QgsProject = project
        self._layer: QgsVectorLayer | None = None
        self._file: CaptionsFile | None = None
        self._options: dict[str, str] = {}
        self._dates: run_contract.StoredRun | None = None
        self._all: list[ReviewItem] = []
        self._items: list[ReviewItem] = []
        self._index = 0
        self._pixels: RunPixels | None = None
        self._has_changes = False
        self._raster_combos: list[QComboBox] = []
        self._highlight: QgsRubberBand | None = None
        self._build()
        for signal in (self.project.layersAdded, self.project.layersRemoved):
            signal.connect(self._layers_changed)
        self.refresh_layers()

    # -- building -------------------------------------------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        top = QFormLayout()
        layer_row = QHBoxLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("A captions layer of the project (from caption-region or this plugin)")
        self.layer_combo.currentIndexChanged.connect(self._layer_chosen)
        self.reload_button = QToolButton()
        self.reload_button.setIcon(QgsApplication.getThemeIcon("/mActionRefresh.svg"))
        self.reload_button.setToolTip("Read the layer's tiles again (a run may have added some)")
        self.reload_button.clicked.connect(self.reload)
        layer_row.addWidget(self.layer_combo, 1)
        layer_row.addWidget(self.reload_button)
        top.addRow("Captions layer", layer_row)
        order_row = QHBoxLayout()
        self.order_combo = QComboBox()
        for order in Order:
            self.order_combo.addItem(order.value, order)
        self.order_combo.currentIndexChanged.connect(self._reorder)
        self.unreviewed_only = QCheckBox("Not reviewed yet only")
        self.unreviewed_only.toggled.connect(self._reorder)
        order_row.addWidget(self.order_combo, 1)
        order_row.addWidget(self.unreviewed_only)
        top.addRow("Order", order_row)
        self.search_line = QLineEdit()
        self.search_line.setClearButtonEnabled(True)
        self.search_line.setPlaceholderText("demolished houses, new roads 2021, trees 2018..2021, unchanged…")
        self.search_line.setToolTip("Only the tiles that match, best first: words and their variants (houses finds "
                                    "buildings and villas), dates and ranges, changed / unchanged, corrected…")
        self.search_line.textChanged.connect(self._reorder)
        top.addRow("Search", self.search_line)
        layout.addLayout(top)
        self.rasters_group = QGroupBox("Rasters the run read")
        self.rasters_form = QFormLayout(self.rasters_group)
        layout.addWidget(self.rasters_group)
        self.message = QLabel()
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self.header = QLabel()
        self.facts = QLabel()
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        font = self.caption.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.25)
        self.caption.setFont(font)
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reviewed = QLabel()
        self.reviewed.setWordWrap(True)
        for label in (self.header, self.facts, self.caption, self.reviewed):
            layout.addWidget(label)
        layout.addWidget(self._images(), 1)  # the room the dock has goes to the images
        self.polygons_check = QCheckBox("Show the change polygons")
        self.polygons_check.setChecked(True)
        self.polygons_check.toggled.connect(self._toggle_polygons)
        layout.addWidget(self.polygons_check)
        layout.addWidget(self._edit_row())
        layout.addLayout(self._buttons())
        self.saved = QLabel()
        self.saved.setWordWrap(True)
        self.saved.setToolTip("What was last saved into the GeoPackage")
        layout.addWidget(self.saved)
        self.progress = QLabel()
        layout.addWidget(self.progress)
        self.trust = QLabel()
        self.trust.setWordWrap(True)
        self.trust.setToolTip("p_right: the probability that a caption is right, fitted on this layer's reviews "
                              "(accepted: right, corrected: wrong), per interval; refitted after each review")
        layout.addWidget(self.trust)
        body.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # the keys work as soon as the dock opens
        self.setWidget(body)
        self._shortcuts(body)

    def _images(self) -> QScrollArea:
        images = QWidget()
        row = QHBoxLayout(images)
        self.before_title, self.after_title = QLabel(), QLabel()
        self.before_view, self.after_view = TileView(), TileView()
        for title, view in ((self.before_title, self.before_view), (self.after_title, self.after_view)):
            column = QVBoxLayout()
            column.addWidget(title)
            column.addWidget(view)
            column.addStretch(1)
            row.addLayout(column)
        row.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(images)
        scroll.setWidgetResizable(True)
        scroll.setMinimumHeight(200)
        scroll.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.images_scroll = scroll
        return scroll

    def _edit_row(self) -> QWidget:
        self.edit_row = QWidget()
        row = QHBoxLayout(self.edit_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.edit_line = QLineEdit()
        self.edit_line.setPlaceholderText("the caption this tile should have")
        self.edit_line.returnPressed.connect(self.save_edit)
        cancel = QShortcut(QKeySequence("Escape"), self.edit_line)
        cancel.setContext(Qt.ShortcutContext.WidgetShortcut)
        cancel.activated.connect(self.cancel_edit)
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Save the caption as the analyst's correction (Enter)")
        self.save_button.clicked.connect(self.save_edit)
        row.addWidget(self.edit_line, 1)
        row.addWidget(self.save_button)
        self.edit_row.hide()
        return self.edit_row

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.previous_button = QPushButton("◀ Back (←)")
        self.accept_button = QPushButton("Accept (A)")
        self.edit_button = QPushButton("Edit (E)")
        self.no_change_button = QPushButton("No change (N)")
        self.skip_button = QPushButton("Skip (S) ▶")
        tips = {
            self.previous_button: "The previous tile",
            self.accept_button: "The model's caption is right: review_status accepted",
            self.edit_button: "Type the right caption: review_status corrected, with your caption",
            self.no_change_button: f"Nothing changed here: your caption “{NO_CHANGE_CAPTION}”",
            self.skip_button: "The next tile, leaving this one as it is",
        }
        for button, slot in ((self.previous_button, self.back), (self.accept_button, self.accept),
                             (self.edit_button, self.start_edit), (self.no_change_button, self.no_change),
                             (self.skip_button, self.skip)):
            button.setToolTip(tips[button])
            button.clicked.connect(slot)
            row.addWidget(button)
        return row

    def _shortcuts(self, body: QWidget) -> None:
        # Shortcuts of the panel's widgets only: typing in QGIS elsewhere (or in the caption box) is left alone.
        for keys, slot in (("A", self.accept), ("E", self.start_edit), ("N", self.no_change), ("S", self.skip),
                           ("Right", self.skip), ("Left", self.back)):
            shortcut = QShortcut(QKeySequence(keys), body)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(slot)

    # -- the layer ------------------------------------------------------------------------------------------------

    def _layers_changed(self, *_: object) -> None:
        self.refresh_layers()

    def refresh_layers(self) -> None:
        """List the project's captions layers (keeping the one chosen, if still there) and the raster choices."""
        current = self.layer_combo.currentData()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in self.project.mapLayers().values():
            if isinstance(layer, QgsVectorLayer) and CaptionsFile.of(layer) is not None:
                self.layer_combo.addItem(layer.name(), layer.id())
        index = self.layer_combo.findData(current)
        self.layer_combo.setCurrentIndex(index if index >= 0 else 0 if self.layer_combo.count() else -1)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentData() != current:
            self._layer_chosen()
        else:
            self._fill_raster_combos()

    def set_layer(self, layer: QgsVectorLayer) -> None:
        """Review this layer (it must be in the project), from the tile where it was left."""
        index = self.layer_combo.findData(layer.id())
        if index < 0:
            raise ValueError(f"{layer.name()} is not a captions layer of the project")
        if index != self.layer_combo.currentIndex():
            self.layer_combo.setCurrentIndex(index)
        elif self._layer is None or self._layer.id() != layer.id():
            self._layer_chosen()

    def search(self, query: str) -> None:
        """Step through the tiles that match ``query`` (empty: all, in the chosen order)."""
        self.search_line.setText(query)

    def show_tile(self, layer: QgsVectorLayer, fid: int) -> None:
        """Show this feature of ``layer`` (searched for elsewhere: the locator bar): the layer is chosen, and the
        search and the unreviewed filter are cleared where they hide the feature."""
        if self._layer is None or layer.id() != self._layer.id():
            self.set_layer(layer)
        if not any(item.fid == fid for item in self._items):
            self.search_line.blockSignals(True)
            self.search_line.clear()
            self.search_line.blockSignals(False)
            self.set_order(self.order_combo.currentData(), unreviewed_only=False)
        index = next((k for k, item in enumerate(self._items) if item.fid == fid), None)
        if index is None:
            raise ValueError(f"{layer.name()} has no feature {fid} (its filter may hide it)")
        self._index = index
        self._show()

    def set_order(self, order: Order, unreviewed_only: bool = False) -> None:
        """Step through the tiles in this order (from the first)."""
        self.unreviewed_only.blockSignals(True)
        self.unreviewed_only.setChecked(unreviewed_only)
        self.unreviewed_only.blockSignals(False)
        self.order_combo.setCurrentIndex(self.order_combo.findData(order))
        self._reorder()

    def _layer_chosen(self) -> None:
        self._drop_pixels()
        layer_id = self.layer_combo.currentData()
        layer = self.project.mapLayer(layer_id) if layer_id else None
        self._layer = layer if isinstance(layer, QgsVectorLayer) else None
        self._file = None if self._layer is None else CaptionsFile.of(self._layer)
        self._options = {} if self._file is None else read_options(self._file)
        self._dates = run_of(self._options) if missing_option(self._options) is None else None
        self._has_changes = self._file is not None and has_changes(self._file)
        self.polygons_check.setVisible(self._has_changes)
        self._build_raster_rows()
        self.reload()

    def reload(self) -> None:
        """Read the layer's tiles again and go on from the tile where the layer was left (else the first)."""
        self._all = [] if self._layer is None else read_items(self._layer)
        self._reorder(resume=True)

    def _reorder(self, *_: object, resume: bool = False) -> None:
        """Step through the tiles in the chosen order (and search) from the first, or, to ``resume``, from the
        tile where the layer was left."""
        order = self.order_combo.currentData()
        query = self.search_line.text().strip()
        note = ""
        if query:
            try:
                self._items = found(self._all, query, self.unreviewed_only.isChecked())
                note = f"{len(self._items)} tiles match “{query}”, best first."
            except ValueError as error:
                self._items = []
                note = str(error)
        else:
            self._items = ordered(self._all, order if isinstance(order, Order) else Order.MOST_UNCERTAIN,
                                  self.unreviewed_only.isChecked())
        self._index = 0
        left_at = self._positions().get(self._layer.source()) if resume and self._layer is not None else None
        if left_at is not None:
            key = (left_at[0], left_at[1])
            self._index = next((k for k, item in enumerate(self._items) if (item.tile_id, item.interval) == key), 0)
        self._show(note)

    @staticmethod
    def _positions() -> dict[str, list]:
        try:
            positions = json.loads(str(QgsSettings().value(POSITIONS_KEY, "{}")))
        except ValueError:
            return {}
        return positions if isinstance(positions, dict) else {}

    def _remember_position(self, item: ReviewItem) -> None:
        """The tile shown is where the layer was left, should the dock open again (in this session or another)."""
        if self._layer is None:
            return
        positions = self._positions()
        positions[self._layer.source()] = [item.tile_id, item.interval]
        QgsSettings().setValue(POSITIONS_KEY, json.dumps(positions))

    # -- the rasters ----------------------------------------------------------------------------------------------

    def _build_raster_rows(self) -> None:
        while self.rasters_form.rowCount():
            self.rasters_form.removeRow(0)
        self._raster_combos = []
        dates = [] if self._dates is None else self._dates.dates
        for index, date in enumerate(dates):
            combo = QComboBox()
            combo.setToolTip(f"The raster the run read as {date.name}: found by its name, or pick it")
            combo.currentIndexChanged.connect(self._rasters_changed)
            label = date.label or (("Before", "After")[index] if len(dates) == 2 else f"Date {index + 1}")
            self.rasters_form.addRow(f"{label} ({date.name})", combo)
            self._raster_combos.append(combo)
        self.rasters_group.setVisible(bool(dates))
        self._fill_raster_combos()

    def _fill_raster_combos(self) -> None:
        """Each date's choices: the project's raster layers; kept where chosen, else the one named as the run's."""
        rasters = [layer for layer in self.project.mapLayers().values()
                   if isinstance(layer, QgsRasterLayer) and layer.providerType() == "gdal"]
        dates = [] if self._dates is None else self._dates.dates
        changed = False
        for combo, date in zip(self._raster_combos, dates):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(_NOT_FOUND, None)
            for layer in rasters:
                combo.addItem(f"{layer.name()} — {RasterInput.from_source(layer.source()).name}", layer.id())
            index = combo.findData(current) if current else -1
            if index < 0:
                named = [layer.id() for layer in rasters if RasterInput.from_source(layer.source()).name == date.name]
                index = combo.findData(named[0]) if named else 0
            combo.setCurrentIndex(index)
            combo.blockSignals(False)
            changed |= combo.currentData() != current
        if changed:
            self._rasters_changed()

    def pick_raster(self, date_index: int, layer: QgsRasterLayer) -> None:
        """Use ``layer`` for the run's date ``date_index`` (0 is the first)."""
        self._raster_combos[date_index].setCurrentIndex(self._raster_combos[date_index].findData(layer.id()))

    def _rasters_changed(self) -> None:
        self._drop_pixels()
        self._show()

    def _raster(self, index: int) -> RasterInput:
        """The raster chosen for date ``index``; raises with what to do where there is none."""
        assert self._dates is not None
        date = self._dates.dates[index]
        layer_id = self._raster_combos[index].currentData() if index < len(self._raster_combos) else None
        layer = self.project.mapLayer(layer_id) if layer_id else None
        if not isinstance(layer, QgsRasterLayer):
            raise CaptionRunError(
                f"The run read {date.name} ({self._dates.role(index)}): there is no raster layer of that name in the "
                "project. Add it to the project, or pick the raster the run read under 'Rasters the run read'."
            )
        return RasterInput.from_source(layer.source())

    def _run_pixels(self) -> RunPixels:
        if self._pixels is None:
            key = None if self._layer is None else missing_option(self._options)
            if self._layer is None or self._file is None or self._dates is None or key is not None:
                table = "its options table" if self._file is None else self._file.options_table
                raise CaptionRunError(
                    f"This layer does not record its run's options ({key} is missing from {table}), so its tiles "
                    "cannot be shown as the run read them. The captions can still be reviewed."
                )
            extents = [item.extent for item in self._all]
            bounds = (min(e.xMinimum() for e in extents), min(e.yMinimum() for e in extents),
                      max(e.xMaximum() for e in extents), max(e.yMaximum() for e in extents))
            self._pixels = RunPixels(self._options, self._raster(0), self._dates.role(0),
                                     {item.tile_id for item in self._all}, bounds)
        return self._pixels

    def _drop_pixels(self) -> None:
        if self._pixels is not None:
            self._pixels.close()
            self._pixels = None

    # -- the current tile -----------------------------------------------------------------------------------------

    def current(self) -> ReviewItem | None:
        """The tile shown (None: no layer, or no tiles)."""
        return self._items[self._index] if 0 <= self._index < len(self._items) else None

    def items(self) -> list[ReviewItem]:
        """The tiles in the order the panel steps through them."""
        return list(self._items)

    def _show(self, note: str = "") -> None:
        item = self.current()
        for widget in (self.accept_button, self.edit_button, self.no_change_button, self.skip_button,
                       self.previous_button):
            widget.setEnabled(item is not None)
        self.cancel_edit()
        if item is None:
            self._clear(" ".join(part for part in (note, self._empty_reason()) if part))
            return
        self.accept_button.setEnabled(bool(item.caption))
        self.previous_button.setEnabled(self._index > 0)
        dated = item.date_before or item.date_after
        dates = f" · {item.date_before or '?'} → {item.date_after or '?'}" if dated else ""
        interval = f" · interval {item.interval}" if item.interval else ""
        self.header.setText(f"Tile {item.tile_id}{interval}{dates} — {self._index + 1} of {len(self._items)}")
        self.facts.setText(self._facts(item))
        self.caption.setText(item.caption or f"no caption ({item.status.replace('_', ' ')})")
        self.reviewed.setText(self._review_words(item))
        self._show_images(item, note)
        self._follow(item)
        self._remember_position(item)
        self._show_progress()

    def _facts(self, item: ReviewItem) -> str:
        if item.status != schema.CAPTIONED:
            return item.status.replace("_", " ")
        facts = ["changed" if item.change_detected else "no change"]
        if item.confidence is not None:
            facts.append(f"confidence {item.confidence:.2f}")
        if item.p_right is not None:
            facts.append(f"p_right {item.p_right:.2f}")
        if item.change_kind:
            facts.append(item.change_kind)
        return " · ".join(facts)

    @staticmethod
    def _review_words(item: ReviewItem) -> str:
        if not item.review_status:
            return "Not reviewed yet."
        when = f" ({item.reviewed_at})" if item.reviewed_at else ""
        if item.review_status == schema.CORRECTED:
            return f"Reviewed{when}: corrected to “{item.reviewed_caption}”."
        return f"Reviewed{when}: {item.review_status}."

    def _empty_reason(self) -> str:
        if self.layer_combo.count() == 0:
            return ("No captions layer in the project: open the GeoPackage of a run (its 'captions' layer), or run "
                    "'Caption changes between two rasters…'.")
        if self._layer is None:
            return "Choose a captions layer."
        if not self._all:
            return f"The layer {self._layer.name()} has no tiles yet."
        if self.search_line.text().strip():
            return "No tile matches the search."
        return f"All {len(self._all)} tiles of {self._layer.name()} are reviewed (untick 'Not reviewed yet only')."

    def _clear(self, message: str) -> None:
        for label in (self.header, self.facts, self.caption, self.reviewed, self.before_title, self.after_title):
            label.clear()
        for view in (self.before_view, self.after_view):
            view.set_tile(None)
        self._say(message)
        self._show_progress()

    def _show_images(self, item: ReviewItem, note: str) -> None:
        notes = [note] if note else []
        try:
            pixels = self._run_pixels()
            assert self._dates is not None and self._file is not None
            first, second = interval_dates(self._dates, item)
            tile = pixels.tile(item.tile_id, (item.extent.xMinimum(), item.extent.yMinimum(),
                                              item.extent.xMaximum(), item.extent.yMaximum()))
            rasters = [self._raster(index) for index in (first, second)]
            images = [pixels.read(raster, self._dates.role(index), tile)
                      for raster, index in zip(rasters, (first, second))]
        except CaptionRunError as error:
            for view in (self.before_view, self.after_view):
                view.set_tile(None)
            self.before_title.clear()
            self.after_title.clear()
            self._say(" ".join([str(error), *notes]), error=True)
            return
        polygons = self._polygons(item, pixels, tile) if self._has_changes else []
        for view, title, raster, index, rgb in zip(
            (self.before_view, self.after_view), (self.before_title, self.after_title), rasters, (first, second),
            images,
        ):
            date = self._dates.dates[index]
            title.setText(f"{date.label or self._dates.role(index).lower()} — {raster.name}")
            view.show_polygons = self.polygons_check.isChecked()
            view.set_tile(rgb, polygons)
            if raster.name != date.name:
                notes.append(f"{self._dates.role(index)} is {raster.name}, picked by you: the run read {date.name}.")
        notes.extend(pixels.notices)
        pixels.notices.clear()
        if self._has_changes and not polygons and item.changed:
            notes.append("The model marked no changed places on this tile.")
        self._say(" ".join(notes))

    def _polygons(self, item: ReviewItem, pixels: RunPixels, tile: tiling.Tile) -> list[QPolygonF]:
        assert self._file is not None
        inverse = tiling.invert_transform(pixels.grid.transform)
        shapes = []
        for polygon in tile_changes(self._file, item.tile_id, item.interval):
            for ring in polygon:
                points = [tiling.pixel_to_geo(inverse, x, y) for x, y in ring]
                shapes.append(QPolygonF([QPointF(col - tile.x, row - tile.y) for col, row in points]))
        return shapes

    def _toggle_polygons(self, shown: bool) -> None:
        for view in (self.before_view, self.after_view):
            view.show_polygons = shown
            view.update()

    def _follow(self, item: ReviewItem) -> None:
        """Zoom the map canvas to the tile and outline it with a rubber band (the layer's selection stays the
        analyst's)."""
        canvas = self.iface.mapCanvas()
        if canvas is None or self._layer is None:
            return
        if self._highlight is None:
            self._highlight = QgsRubberBand(canvas, POLYGON_GEOMETRY)
            self._highlight.setFillColor(QColor(0, 0, 0, 0))
            self._highlight.setStrokeColor(HIGHLIGHT_COLOUR)
            self._highlight.setWidth(HIGHLIGHT_WIDTH)
        self._highlight.setToGeometry(QgsGeometry.fromRect(item.extent), self._layer)
        self._highlight.show()
        zoom_to_tile(canvas, self.project, self._layer, item.extent)

    def highlighted(self) -> QgsGeometry | None:
        """The outline the map shows around the current tile (in the map's CRS), None when none is shown."""
        if self._highlight is None or not self._highlight.isVisible():
            return None
        return self._highlight.asGeometry()

    def fit_tiles(self) -> None:
        """Make the dock wide enough for the two tiles side by side (QGIS opens docks narrower)."""
        images = self.images_scroll.widget()
        if images is None:
            return
        body = self.widget()
        if body is not None and body.layout() is not None:
            body.layout().activate()
        # Room for a vertical scroll bar too: a tall caption may bring one, which must not hide the second tile.
        bar = self.images_scroll.verticalScrollBar()
        spare = 0 if bar is None or bar.isVisible() else bar.sizeHint().width()
        wanted = self.width() - self.images_scroll.viewport().width() + images.sizeHint().width() + spare
        if wanted <= self.width():
            return
        main = self.iface.mainWindow()
        docked = isinstance(main, QMainWindow) and not self.isFloating() and \
            main.dockWidgetArea(self) != Qt.DockWidgetArea.NoDockWidgetArea
        if docked:
            main.resizeDocks([self], [wanted], Qt.Orientation.Horizontal)
        else:
            self.resize(wanted, self.height())

    def _show_progress(self) -> None:
        reviewed = sum(1 for item in self._all if item.review_status)
        self.progress.setText(f"{reviewed} of {len(self._all)} tiles reviewed" if self._all else "")
        self.trust.setText(trust_note(self._all) if self._all else "")

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(ERROR_STYLE if error else NOTE_STYLE)
        self.message.setVisible(bool(text))

    # -- reviewing ------------------------------------------------------------------------------------------------

    def accept(self) -> None:
        """The model's caption is right."""
        self._review(Verdict.ACCEPT)

    def no_change(self) -> None:
        """Nothing changed on this tile."""
        self._review(Verdict.NO_CHANGE)

    def start_edit(self) -> None:
        """Open the caption box with the caption shown, for the analyst to correct."""
        item = self.current()
        if item is None:
            return
        self.edit_line.setText(item.shown_caption or "")
        self.edit_row.show()
        self.edit_line.setFocus()
        self.edit_line.selectAll()

    def save_edit(self) -> None:
        """Save the caption box's text as the analyst's caption."""
        if self.edit_row.isVisible():
            self._review(Verdict.EDIT, self.edit_line.text())

    def cancel_edit(self) -> None:
        """Close the caption box without saving."""
        if self.edit_row.isVisible():
            self.edit_row.hide()
            self.widget().setFocus()

    def skip(self) -> None:
        """The next tile, this one left as it is."""
        self._step(1)

    def back(self) -> None:
        """The previous tile."""
        self._step(-1)

    def _step(self, delta: int) -> None:
        if not self._items:
            return
        target = self._index + delta
        if not 0 <= target < len(self._items):
            self._say("That was the last tile." if delta > 0 else "This is the first tile.")
            return
        self._index = target
        self._show()

    def _review(self, verdict: Verdict, text: str = "") -> None:
        item = self.current()
        if item is None or self._file is None:
            return
        try:
            status, caption = review_of(item, verdict, text)
            saved = save_review(self._file, item, status, caption)
        except CaptionRunError as error:
            self._say(str(error), error=True)
            return
        self._items[self._index] = saved
        self._all = [saved if other.fid == saved.fid else other for other in self._all]
        self.saved.setText(f"Saved: {item.tile_id} {status}." + self._refit())  # apart from the next tile's notes
        if self._layer is not None:
            if not self._layer.isEditable():  # the layer reads what another connection wrote once reloaded
                self._layer.reload()
            self._layer.triggerRepaint()
        if self._index + 1 < len(self._items):
            self._index += 1
            self._show()
        else:
            self._show("That was the last tile.")

    def _refit(self) -> str:
        """Fit p_right again on the layer's reviews (the order stays as it is: choose it again to re-sort); what
        to add to the message."""
        if self._file is None or self._layer is None:
            return ""
        try:
            done = refit(self._file)
        except CaptionRunError as error:
            return f" {error}"
        if not done.written:
            return ""
        self._all = with_p_right(self._all, done.calibration)
        by_fid = {item.fid: item for item in self._all}
        self._items = [by_fid.get(item.fid, item) for item in self._items]
        if "p_right" not in self._layer.fields().names():  # the fit added the field: QGIS reads it once told
            provider = self._layer.dataProvider()
            if provider is not None:
                provider.reloadData()
            self._layer.updateFields()
        if done.calibration is None:
            return " p_right cleared: too few reviews are left."
        return f" p_right fitted on {done.reviews} reviews."

    def closeEvent(self, event: QCloseEvent | None) -> None:  # noqa: N802 (Qt's name)
        """Let go of the rasters while the panel is closed (they are opened again when it shows a tile), and of the
        tile's outline on the map."""
        self._drop_pixels()
        if self._highlight is not None:
            self._highlight.hide()
        super().closeEvent(event)

    def unload(self) -> None:
        """Disconnect from the project, close the rasters and take the outline off the map (the plugin is
        unloading)."""
        for signal in (self.project.layersAdded, self.project.layersRemoved):
            signal.disconnect(self._layers_changed)
        self._drop_pixels()
        if self._highlight is not None:
            canvas = self.iface.mapCanvas()
            scene = canvas.scene() if canvas is not None else None
            if scene is not None:
                scene.removeItem(self._highlight)
            self._highlight = None


class ReviewEntry:
    """The "Review captions…" action in the plugin's menu and on the toolbar, and the dock it opens (made on first
    use)."""

    def __init__(self, iface, menu: str) -> None:
        self.iface, self.menu = iface, menu
        self.panel: ReviewPanel | None = None
        self.action = QAction(QgsApplication.getThemeIcon("/mActionFormView.svg"), "Review captions…",
                              iface.mainWindow())
        self.action.setToolTip("CCExpert: check each tile's caption against its two dates, accept or correct it")
        self.action.triggered.connect(self.show_panel)
        iface.addToolBarIcon(self.action)
        iface.addPluginToRasterMenu(menu, self.action)

    def show_panel(self) -> ReviewPanel:
        """Open the dock (on the right) wide enough for two tiles, with the keyboard focus, on the current layer if
        it is a captions layer, at the tile where that layer was left."""
        if self.panel is None:
            self.panel = ReviewPanel(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.panel)
        active = self.iface.activeLayer()
        if isinstance(active, QgsVectorLayer) and CaptionsFile.of(active) is not None:
            self.panel.set_layer(active)
        self.panel.show()
        self.panel.raise_()
        self.panel.fit_tiles()
        body = self.panel.widget()
        if body is not None:
            body.setFocus(Qt.FocusReason.OtherFocusReason)
        return self.panel

    def unload(self) -> None:
        """Remove the action and the dock."""
        self.iface.removePluginRasterMenu(self.menu, self.action)
        self.iface.removeToolBarIcon(self.action)
        self.action.deleteLater()
        if self.panel is not None:
            self.panel.unload()
            self.iface.removeDockWidget(self.panel)
            self.panel.deleteLater()
            self.panel = None
