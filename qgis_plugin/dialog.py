"""The dialog: it collects a :class:`~.params.CaptionParams`, checks it against the project and the backend, and
hands it over (the plugin runs it).

Two or more raster layers, one per date, in time order, with their dates (prefilled from the rasters' metadata or
names, defaulting to two different layers in date or name order); the area is the rasters' overlap, the map extent,
a polygon layer (optionally its selection) or a rectangle drawn on the map; the backend token goes to QGIS's
authentication database once the backend took it (or stays in memory for this session). Run first asks the backend
(which must answer as a CCExpert backend) and shows the tile count and an estimate of the time from the backend's
measured speed; Start then runs. The choices are remembered once Run found them working. Status lines have a fixed
height and scroll, so nothing moves under the analyst's pointer and nothing is cut. A backend on this machine can
be started from here (:mod:`.local_backend`); Help shows the README's plugin section inside QGIS.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsUnitTypes,
)
from qgis.gui import QgsDoubleSpinBox, QgsFileWidget, QgsMapLayerComboBox, QgsMapToolExtent
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpinBox,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .auth import is_session_token, keep_for_session, load_token, store_token, unlocked
from .backend_client import BackendClient
from .errors import CaptionRunError, TokenNeeded
from .help import help_text
from .job import RunPlan, model_words, plan_job
from .layer_dates import in_time_order, layer_date, stacking_order
from .local_backend import LocalBackend, LocalBackendSettings
from .params import (
    AreaMode,
    CaptionParams,
    check_dates,
    job_from_params,
    parse_backend_urls,
    parse_bands,
)
from .qgis_compat import DEGREES, POLYGON_LAYERS, RASTER_LAYERS, project
from .shared_modules import run_contract

_AREA_LABELS = {
    AreaMode.OVERLAP: "Where every raster has pixels",
    AreaMode.CANVAS: "The map canvas extent",
    AreaMode.LAYER: "The polygons of a layer",
    AreaMode.RECTANGLE: "A rectangle drawn on the map",
}
_VALUE_LIMIT = 1e12
#: Decimals a number field keeps: enough for any resolution or value range typed (0.125 stays 0.125).
EXACT_DECIMALS = 9
#: Lines a status line shows (a longer message scrolls: nothing is cut).
STATUS_LINES = 3
_ERROR_STYLE = "color: #b00020"
#: Where the dates the analyst typed are remembered, by raster source (so they survive a new session's layer ids).
TYPED_DATES_KEY = "ccexpert/typed_dates"
#: The token field's hint when no token is kept (Bandit takes a name with "token" for a secret).
NO_TOKEN = "none (a loopback backend without --token-file)"  # nosec B105


class StatusLine(QTextBrowser):
    """A status of :data:`STATUS_LINES` lines whatever it says: the layout never reflows, and a longer message
    scrolls rather than being cut."""

    def __init__(self) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.viewport().setAutoFillBackground(False)
        document = self.document()
        if document is not None:  # a label's margins, so that three lines fit without a scroll bar
            document.setDocumentMargin(1)
        self.setFixedHeight(self.fontMetrics().lineSpacing() * STATUS_LINES + 8)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def text(self) -> str:
        """What it says."""
        return self.toPlainText()

    def setText(self, text: str) -> None:  # noqa: N802 (QLabel's name, which it stands in for)
        """Say ``text`` (plain text, from its first line)."""
        self.setPlainText(text)


def _say(line: StatusLine, text: str, error: bool = False) -> None:
    line.setStyleSheet(_ERROR_STYLE if error else "")
    line.setText(text)


class ExactSpinBox(QgsDoubleSpinBox):
    """A number field that keeps what was typed (up to :data:`EXACT_DECIMALS` decimals) and shows no trailing
    zeros: 0.125 is shown, saved and used as 0.125, not rounded to 0.13."""

    def __init__(self) -> None:
        super().__init__()
        self.setDecimals(EXACT_DECIMALS)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt's name)
        """The value in the locale's digits, without trailing zeros."""
        text = self.locale().toString(value, "f", self.decimals())
        point = self.locale().decimalPoint()
        return text.rstrip("0").rstrip(point) if point in text else text


class KeepToken(enum.Enum):
    """Where a token the backend took is kept."""

    STORED = "in QGIS's authentication database"
    SESSION = "for this QGIS session only"


def ask_where_to_keep(parent: QWidget) -> KeepToken | None:
    """Ask, before QGIS asks for its master password, where to keep a token (None: the analyst canceled)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Keep the backend token")
    box.setText("The backend took the token. Where should QGIS keep it?")
    box.setInformativeText(
        "QGIS keeps passwords and tokens in its authentication database, encrypted with a master password: to "
        "store the token there, QGIS now asks for that password (the first time, it asks you to choose one). "
        "Kept for this session only, the token is forgotten when QGIS closes."
    )
    stored = box.addButton("Store it", QMessageBox.ButtonRole.AcceptRole)
    session = box.addButton("This session only", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(stored)
    box.exec()
    clicked = box.clickedButton()
    return KeepToken.STORED if clicked is stored else KeepToken.SESSION if clicked is session else None


def _typed_dates(settings: QgsSettings | None = None) -> dict[str, str]:
    try:
        remembered = json.loads(str((settings or QgsSettings()).value(TYPED_DATES_KEY, "{}")))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in remembered.items()} if isinstance(remembered, dict) else {}


def _source(layer: QgsMapLayer | None) -> str:
    return layer.source() if isinstance(layer, QgsRasterLayer) else ""


class HelpDialog(QDialog):
    """The README's plugin section, with its screenshots, in QGIS (no browser, no network)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("CCExpert — help")
        text, folder = help_text()
        self.browser = QTextBrowser()
        self.browser.setSearchPaths([str(folder)])
        self.browser.setOpenExternalLinks(True)
        self.browser.setMarkdown(text)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(900, 700)


@dataclass
class DateRow:
    """One date of the run: its raster layer and its date as typed (prefilled from the layer)."""

    combo: QgsMapLayerComboBox
    date: QLineEdit
    label: QLabel
    remove: QToolButton
    #: The layer the date belongs to (its source): a date goes with its raster, not with the row.
    source: str = ""
    #: What that raster says of its date, so that a date the analyst typed is told apart and remembered.
    prefilled: str = ""


@dataclass(frozen=True)
class _Checked:
    """What Run found: the choices it checked and what the run will do."""

    params: CaptionParams
    plan: RunPlan


class CaptionDialog(QDialog):
    """Emits ``run_requested`` with the collected parameters once Run has checked them and Start is pressed."""

    run_requested = pyqtSignal(object)

    def __init__(
        self, iface, params: CaptionParams, parent: QWidget | None = None, local_backend: LocalBackend | None = None,
    ) -> None:
        super().__init__(parent)
        self.iface = iface
        self.setWindowTitle("CCExpert — caption what changed between dates")
        self._rectangle: tuple[QgsRectangle, str] | None = None
        self._previous_tool = None
        self._extent_tool: QgsMapToolExtent | None = None
        self._checked: _Checked | None = None
        #: Dates the analyst typed, by raster source (remembered once a Run worked).
        self.typed_dates = _typed_dates()
        #: Asks where to keep a token before QGIS asks for its master password (tests answer it themselves).
        self.ask_where_to_keep = ask_where_to_keep
        self.help_dialog: HelpDialog | None = None
        self._starting: LocalBackendSettings | None = None
        self.local_backend = local_backend or LocalBackend(self)
        self.local_backend.ready.connect(self._local_backend_ready)
        self.local_backend.failed.connect(lambda message: _say(self.connection_label, f"✗ {message}", True))
        self.date_rows: list[DateRow] = []
        columns = QHBoxLayout()
        left, right = QVBoxLayout(), QVBoxLayout()
        for group in (self._rasters_group(), self._area_group(), self._output_group()):
            left.addWidget(group)
        for group in (self._tiles_group(), self._backend_group(), self._local_group()):
            right.addWidget(group)
        left.addStretch(1)
        right.addStretch(1)
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(columns)
        self.status_label = StatusLine()
        layout.addWidget(self.status_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close | QDialogButtonBox.StandardButton.Help)
        self.run_button = buttons.addButton("Run", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.request_run)
        buttons.rejected.connect(self.reject)
        buttons.helpRequested.connect(self.open_help)
        self.help_button = buttons.button(QDialogButtonBox.StandardButton.Help)
        layout.addWidget(buttons)
        self.set_params(params)

    # -- building -------------------------------------------------------------------------------------------------

    def _rasters_group(self) -> QGroupBox:
        group = QGroupBox("Dates (raster layers in time order)")
        layout = QVBoxLayout()
        self.rows_layout = QGridLayout()
        layout.addLayout(self.rows_layout)
        self.add_date_button = QPushButton("Add a date")
        self.add_date_button.setToolTip("A series: each date is captioned against the one before it")
        self.add_date_button.clicked.connect(lambda: self.add_date_row())
        add_row = QHBoxLayout()
        add_row.addWidget(self.add_date_button)
        add_row.addWidget(QLabel("Dates label the features and drive the Temporal Controller."), 1)
        layout.addLayout(add_row)
        self.first_to_last = QCheckBox("Also compare the first date with the last")
        self.first_to_last.setToolTip("A series of three or more dates: one more caption per tile, from the first "
                                      "date to the last (what changed over the whole series)")
        layout.addWidget(self.first_to_last)
        group.setLayout(layout)
        for _ in range(2):
            self.add_date_row()
        return group

    def add_date_row(self, layer: QgsMapLayer | None = None) -> DateRow:
        """A row for one more date: by default the next raster in time order that no other row has (none where
        every raster is taken: a row never repeats another's layer)."""
        combo = QgsMapLayerComboBox()
        combo.setFilters(RASTER_LAYERS)
        combo.setAllowEmptyLayer(True)
        date = QLineEdit()
        date.setPlaceholderText("date: 2016, 2016-05 or 2016-05-12")
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("Remove this date")
        row = DateRow(combo, date, QLabel(), remove)
        index = len(self.date_rows)
        self.date_rows.append(row)
        self.rows_layout.addWidget(row.label, index, 0)
        self.rows_layout.addWidget(combo, index, 1)
        self.rows_layout.addWidget(date, index, 2)
        self.rows_layout.addWidget(remove, index, 3)
        self.rows_layout.setColumnStretch(1, 3)
        self.rows_layout.setColumnStretch(2, 1)
        remove.clicked.connect(lambda: self.remove_date_row(row))
        if layer is None and index > 0:
            layer = self._next_free_raster(self.date_rows[index - 1].combo.currentLayer())
        combo.setLayer(layer)
        self._fill_date(row, combo.currentLayer())
        combo.layerChanged.connect(lambda chosen: self._layer_changed(row, chosen))
        self._label_rows()
        return row

    def _next_free_raster(self, previous: QgsMapLayer | None) -> QgsRasterLayer | None:
        """The first raster after ``previous`` in time order that no row has, else any that no row has."""
        rasters = in_time_order(self._raster_layers(), stacking_order(project()))
        taken = {row.combo.currentLayer() for row in self.date_rows}
        later = rasters[rasters.index(previous) + 1:] if previous in rasters else rasters
        free = [layer for layer in later if layer not in taken] or [layer for layer in rasters if layer not in taken]
        return free[0] if free else None

    def remove_date_row(self, row: DateRow) -> None:
        """Take a date out of the series (two stay)."""
        if len(self.date_rows) <= 2:
            return
        self.date_rows.remove(row)
        for widget in (row.label, row.combo, row.date, row.remove):
            self.rows_layout.removeWidget(widget)
            widget.deleteLater()
        for index, kept in enumerate(self.date_rows):
            for column, cell in enumerate((kept.label, kept.combo, kept.date, kept.remove)):
                self.rows_layout.addWidget(cell, index, column)
        self._label_rows()

    def _label_rows(self) -> None:
        for row, role in zip(self.date_rows, run_contract.date_roles(len(self.date_rows))):
            row.label.setText(role.capitalize())
            row.remove.setEnabled(len(self.date_rows) > 2)
        if hasattr(self, "first_to_last"):  # the rows of the group being built come before the check box
            self.first_to_last.setEnabled(len(self.date_rows) > 2)

    def _layer_changed(self, row: DateRow, layer: QgsMapLayer | None) -> None:
        """Another raster in a row: its date goes with the raster it was for, and the row shows the new one's."""
        self._remember_typed(row)
        self._fill_date(row, layer)

    def _remember_typed(self, row: DateRow) -> None:
        """A date the analyst typed for a raster (one that differs from what the raster says) is kept for it."""
        typed = row.date.text().strip()
        if not row.source or typed == row.prefilled:
            return
        if typed:
            self.typed_dates[row.source] = typed
        else:  # cleared: the raster's own date again next time
            self.typed_dates.pop(row.source, None)

    def _fill_date(self, row: DateRow, layer: QgsMapLayer | None) -> None:
        """The row's date for ``layer``: the one the analyst typed for it, else what the raster says, else none."""
        row.source = _source(layer)
        found = layer_date(layer) if isinstance(layer, QgsRasterLayer) else None
        row.prefilled = "" if found is None else str(found)
        row.date.setText(self.typed_dates.get(row.source, row.prefilled))

    def _save_typed_dates(self, settings: QgsSettings | None = None) -> None:
        for row in self.date_rows:
            self._remember_typed(row)
        (settings or QgsSettings()).setValue(TYPED_DATES_KEY, json.dumps(self.typed_dates, sort_keys=True))

    @staticmethod
    def _raster_layers() -> list[QgsRasterLayer]:
        return [layer for layer in project().mapLayers().values() if isinstance(layer, QgsRasterLayer)]

    def _area_group(self) -> QGroupBox:
        group, layout = QGroupBox("Area"), QVBoxLayout()
        self.area_buttons = QButtonGroup(self)
        self.area_radios: dict[AreaMode, QRadioButton] = {}
        for index, mode in enumerate(AreaMode):
            radio = QRadioButton(_AREA_LABELS[mode])
            self.area_buttons.addButton(radio, index)
            self.area_radios[mode] = radio
            layout.addWidget(radio)
            if mode == AreaMode.LAYER:
                row = QHBoxLayout()
                self.area_layer_combo = QgsMapLayerComboBox()
                self.area_layer_combo.setFilters(POLYGON_LAYERS)
                self.selected_only = QCheckBox("Selected features only")
                row.addWidget(self.area_layer_combo, 2)
                row.addWidget(self.selected_only, 1)
                layout.addLayout(row)
            elif mode == AreaMode.RECTANGLE:
                row = QHBoxLayout()
                self.draw_button = QPushButton("Draw on map")
                self.draw_button.clicked.connect(self.start_drawing)
                self.rectangle_label = QLabel("no rectangle yet")
                row.addWidget(self.draw_button)
                row.addWidget(self.rectangle_label, 1)
                layout.addLayout(row)
        group.setLayout(layout)
        return group

    def _tiles_group(self) -> QGroupBox:
        group, form = QGroupBox("Tiles"), QFormLayout()
        self.tile_size = QSpinBox()
        self.tile_size.setRange(32, 4096)
        self.tile_size.setSuffix(" px")
        self.overlap = QLineEdit()
        self.overlap.setPlaceholderText("pixels (32) or percent (10%)")
        size_row = QHBoxLayout()
        size_row.addWidget(self.tile_size)
        size_row.addWidget(QLabel("overlap"))
        size_row.addWidget(self.overlap)
        form.addRow("Tile size", size_row)
        self.resample = QCheckBox("Resample to")
        self.resolution = ExactSpinBox()
        self.resolution.setRange(1e-6, 10000)
        self.resolution.setSuffix(" m/px")
        self.resample.toggled.connect(self.resolution.setEnabled)
        resolution_row = QHBoxLayout()
        resolution_row.addWidget(self.resample)
        resolution_row.addWidget(self.resolution, 1)
        form.addRow("Resolution", resolution_row)
        self.bands = QLineEdit()
        self.bands.setPlaceholderText("the first three (or e.g. 4,3,2 — one band for grey)")
        form.addRow("Bands", self.bands)
        self.fixed_range = QCheckBox("Map")
        self.range_min, self.range_max = ExactSpinBox(), ExactSpinBox()
        for box in (self.range_min, self.range_max):
            box.setRange(-_VALUE_LIMIT, _VALUE_LIMIT)
            self.fixed_range.toggled.connect(box.setEnabled)
        range_row = QHBoxLayout()
        for widget in (self.fixed_range, self.range_min, QLabel("…"), self.range_max, QLabel("to 0…255")):
            range_row.addWidget(widget)
        form.addRow("Values", range_row)
        form.addRow("", QLabel("Unchecked: data that is not 8-bit is stretched from its 2–98 % range."))
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 256)
        self.batch_size.setSuffix(" pairs per request")
        form.addRow("Batch size", self.batch_size)
        self.max_tiles = QSpinBox()
        self.max_tiles.setRange(1, 2_000_000_000)
        self.max_tiles.setGroupSeparatorShown(True)
        self.max_tiles.setSuffix(" tiles at most")
        self.max_tiles.setToolTip("An area that needs more tiles is refused before anything is read (a mistyped "
                                  "resolution can ask for billions)")
        form.addRow("Tile limit", self.max_tiles)
        group.setLayout(form)
        return group

    def _backend_group(self) -> QGroupBox:
        group, form = QGroupBox("Backend"), QFormLayout()
        self.backend_url = QLineEdit()
        self.backend_url.setPlaceholderText("http://127.0.0.1:8000 (ccexpert serve); several of one model: a, b, …")
        form.addRow("URLs", self.backend_url)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText(NO_TOKEN)
        form.addRow("Token", self.token)
        self.in_flight = QSpinBox()
        self.in_flight.setRange(0, 64)
        self.in_flight.setSpecialValueText("automatic (three model batches queued)")
        self.in_flight.setSuffix(" per backend")
        form.addRow("Requests in flight", self.in_flight)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        form.addRow("", self.test_button)
        self.connection_label = StatusLine()
        form.addRow(self.connection_label)
        # What the status said was about these values: it goes once they change.
        for field in (self.backend_url, self.token):
            field.textChanged.connect(self._backend_changed)
        group.setLayout(form)
        return group

    def _local_group(self) -> QGroupBox:
        group, form = QGroupBox("Local backend"), QFormLayout()
        group.setToolTip("ccexpert serve on this machine, started and stopped by QGIS")
        self.local_command = QLineEdit()
        self.local_command.setPlaceholderText("/path/to/ccexpert/.venv/bin/ccexpert serve --port 8000")
        form.addRow("Command", self.local_command)
        self.local_model = QgsFileWidget()
        self.local_model.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        model_field = self.local_model.lineEdit()
        if model_field is not None:
            model_field.setPlaceholderText("the demo model (trained on synthetic scenes only)")
        form.addRow("Model folder", self.local_model)
        self.start_local_button = QPushButton("Start local backend")
        self.start_local_button.setToolTip("Runs the command; QGIS stops the backend when it closes")
        self.start_local_button.clicked.connect(self.start_local_backend)
        form.addRow("", self.start_local_button)
        group.setLayout(form)
        return group

    def _output_group(self) -> QGroupBox:
        group, form = QGroupBox("Output"), QFormLayout()
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        form.addRow("GeoPackage", self.output)
        self.layer_name = QLineEdit()
        form.addRow("Layer name", self.layer_name)
        form.addRow("", QLabel("Running again with the same output resumes: finished tiles are skipped."))
        group.setLayout(form)
        return group

    # -- parameters in and out ------------------------------------------------------------------------------------

    def set_params(self, params: CaptionParams) -> None:
        """Show ``params``; remembered layers that are not in the project give way to two different raster layers
        in time order (each with the date typed for it before, else its own). Every status line starts empty; the
        token stays in the authentication database (reading it may ask for the master password: only a backend
        that wants it makes the dialog read it)."""
        current = project()
        remembered = [current.mapLayer(layer_id) for layer_id in params.layer_ids]
        layers: list[QgsMapLayer | None] = [layer for layer in remembered if isinstance(layer, QgsRasterLayer)]
        if len(layers) == len(params.layer_ids):
            for layer, typed in zip(layers, params.dates):
                found = layer_date(layer) if isinstance(layer, QgsRasterLayer) else None
                if typed and typed != ("" if found is None else str(found)):
                    self.typed_dates[_source(layer)] = typed
        if len(layers) < 2 or len(set(layers)) < len(layers):
            layers = list(in_time_order(self._raster_layers(), stacking_order(current))[:2])
        layers += [None] * (2 - len(layers))
        while len(self.date_rows) > max(2, len(layers)):
            self.remove_date_row(self.date_rows[-1])
        while len(self.date_rows) < len(layers):
            self.add_date_row()
        for row, layer in zip(self.date_rows, layers):
            row.combo.blockSignals(True)
            row.combo.setLayer(layer)
            row.combo.blockSignals(False)
            self._fill_date(row, row.combo.currentLayer())
        area_layer = current.mapLayer(params.area_layer_id) if params.area_layer_id else None
        if area_layer is not None:
            self.area_layer_combo.setLayer(area_layer)
        self.area_radios[params.area_mode].setChecked(True)
        self.selected_only.setChecked(params.selected_only)
        if params.rectangle is not None:
            self._set_rectangle(QgsRectangle(*params.rectangle), params.rectangle_crs)
        self.tile_size.setValue(params.tile_size)
        self.overlap.setText(params.overlap)
        self.resample.setChecked(params.resolution is not None)
        self.resolution.setEnabled(params.resolution is not None)
        self.resolution.setValue(params.resolution or 1.0)
        self.bands.setText("" if params.bands is None else ",".join(map(str, params.bands)))
        self.fixed_range.setChecked(params.value_range is not None)
        low, high = params.value_range or (0.0, 255.0)
        self.range_min.setValue(low)
        self.range_max.setValue(high)
        for box in (self.range_min, self.range_max):
            box.setEnabled(params.value_range is not None)
        self.batch_size.setValue(params.batch_size)
        self.max_tiles.setValue(params.max_tiles)
        self.first_to_last.setChecked(params.first_to_last)
        self.backend_url.setText(params.backend_url)
        self.in_flight.setValue(params.in_flight)
        self.auth_config_id = params.auth_config_id
        self.token.clear()
        self.token.setPlaceholderText(self._token_placeholder())
        self.output.setFilePath(params.output)
        self.layer_name.setText(params.layer_name)
        local = LocalBackendSettings.load()
        self.local_command.setText(local.command)
        self.local_model.setFilePath(local.model)
        self._backend_changed()
        _say(self.status_label, "")

    def _token_placeholder(self) -> str:
        if not self.auth_config_id:
            return NO_TOKEN
        if is_session_token(self.auth_config_id):
            return "the token given earlier in this session (type another to replace it)"
        return "the token kept in QGIS's authentication database (type another to replace it)"

    def params(self) -> CaptionParams:
        """The parameters shown, checked; raises :class:`CaptionRunError` with what to correct."""
        roles = run_contract.date_roles(len(self.date_rows))
        layers: list[QgsRasterLayer] = []
        for row, role in zip(self.date_rows, roles):
            layer = row.combo.currentLayer()
            if not isinstance(layer, QgsRasterLayer):
                raise CaptionRunError(f"choose the {role} raster layer")
            layers.append(layer)
        for index, layer in enumerate(layers):
            if layer in layers[:index]:
                first = roles[layers.index(layer)]
                raise CaptionRunError(
                    f"{first} and {roles[index]} are the same layer ('{layer.name()}'): choose a different raster "
                    "for each date"
                )
        typed = tuple(row.date.text().strip() for row in self.date_rows)
        check_dates(typed, [layer.name() for layer in layers])
        mode = list(AreaMode)[max(0, self.area_buttons.checkedId())]
        area_layer = self.area_layer_combo.currentLayer()
        if mode == AreaMode.LAYER and area_layer is None:
            raise CaptionRunError("choose the polygon layer of the area")
        if mode == AreaMode.RECTANGLE and self._rectangle is None:
            raise CaptionRunError("draw the rectangle on the map first (Draw on map)")
        overlap = self.overlap.text().strip() or "0"
        value_range = (self.range_min.value(), self.range_max.value()) if self.fixed_range.isChecked() else None
        resolution = self.resolution.value() if self.resample.isChecked() else None
        bands = parse_bands(self.bands.text())
        try:  # the run's own checks, before anything is opened
            run_contract.RunSettings(
                tile_size=self.tile_size.value(), overlap=overlap, bands=bands, value_range=value_range,
                resolution=resolution, batch_size=self.batch_size.value(), max_tiles=self.max_tiles.value(),
            ).check()
        except run_contract.RunRefused as error:
            raise CaptionRunError(str(error)) from None
        if not self.output.filePath().strip():
            raise CaptionRunError("choose the output GeoPackage")
        urls = parse_backend_urls(self.backend_url.text())
        rectangle, crs = self._rectangle or (None, "")
        return CaptionParams(
            layer_ids=tuple(layer.id() for layer in layers), dates=typed, area_mode=mode,
            area_layer_id=area_layer.id() if area_layer is not None else "",
            selected_only=self.selected_only.isChecked(),
            rectangle=None if rectangle is None else (
                rectangle.xMinimum(), rectangle.yMinimum(), rectangle.xMaximum(), rectangle.yMaximum()
            ),
            rectangle_crs=crs, tile_size=self.tile_size.value(), overlap=overlap, resolution=resolution, bands=bands,
            value_range=value_range,
            backend_url=", ".join(urls), in_flight=self.in_flight.value(), auth_config_id=self.auth_config_id,
            output=self._gpkg_path(), layer_name=self.layer_name.text().strip() or "captions",
            batch_size=self.batch_size.value(), first_to_last=self.first_to_last.isChecked(),
            max_tiles=self.max_tiles.value(),
        )

    def _gpkg_path(self) -> str:
        path = self.output.filePath().strip()
        return path if path.lower().endswith(".gpkg") else path + ".gpkg"

    # -- actions --------------------------------------------------------------------------------------------------

    def request_run(self) -> None:
        """Run: check the choices, that each backend answers as a CCExpert backend (and takes the token), count the
        tiles and time one request; the dialog stays open with the count and the estimate, and Start (the same
        button) runs them. Only then are the choices remembered and a new token kept. Anything changed in between
        is checked again."""
        try:
            params = self.params()
        except CaptionRunError as error:
            self._unchecked(str(error))
            return
        if self._checked is not None and self._checked.params == params:
            self.accept()
            self.run_requested.emit(params)
            return
        _say(self.status_label, "Checking the backend and counting the tiles…")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            checked = self._check(params)
        except CaptionRunError as error:
            self._unchecked(str(error))
            return
        finally:
            QApplication.restoreOverrideCursor()
        try:
            params = self._keep_token(checked.params)
        except CaptionRunError as error:
            self._unchecked(str(error))
            return
        params.save()
        self._save_typed_dates()
        self._checked = replace(checked, params=params)
        self.run_button.setText("Start")
        plan = checked.plan
        then = "Press Start to run." if plan.pairs else "Start shows the output on the map."
        _say(self.status_label, f"{plan.describe()}. {then}")

    def _infos(self, urls: tuple[str, ...]) -> tuple[list[BackendClient], list[dict], str]:
        """Each backend's ``/v1/info`` with the token shown; where the field is empty and a backend wants a token,
        with the one kept (read only then: reading it may make QGIS ask for its master password). Returns the
        clients, their answers and the token they took."""
        token = self.token.text().strip()
        try:
            clients = [BackendClient(url, token, retries=0) for url in urls]
            return clients, [client.info() for client in clients], token
        except TokenNeeded:
            if token or not self.auth_config_id:
                raise
        _say(self.status_label, "The backend wants its token: reading the one kept in QGIS's authentication "
                                "database (QGIS may ask for its master password to open it)…")
        self.status_label.repaint()
        token = load_token(self.auth_config_id)
        clients = [BackendClient(url, token, retries=0) for url in urls]
        return clients, [client.info() for client in clients], token

    def _check(self, params: CaptionParams) -> _Checked:
        urls = parse_backend_urls(params.backend_url)
        clients, infos, token = self._infos(urls)
        _say(self.connection_label, self._describe(list(zip(urls, infos))))
        canvas = self.iface.mapCanvas()
        job = job_from_params(params, project(), canvas.extent(), canvas.mapSettings().destinationCrs(), token)
        return _Checked(params, plan_job(job, clients[0], len(clients)))

    def _keep_token(self, params: CaptionParams) -> CaptionParams:
        """A token typed here, which the backend has just taken, kept where the analyst wants it: in QGIS's
        authentication database (asked first where QGIS will want its master password), or for this session."""
        token = self.token.text().strip()
        if not token:
            return params
        if is_session_token(self.auth_config_id) and load_token(self.auth_config_id) == token:
            return params
        where = KeepToken.STORED if unlocked() else self.ask_where_to_keep(self)
        if where is None:
            raise CaptionRunError("the token was not kept: press Run again and choose where to keep it")
        if where is KeepToken.STORED:
            previous = "" if is_session_token(self.auth_config_id) else self.auth_config_id
            self.auth_config_id = store_token(token, previous)
        else:
            self.auth_config_id = keep_for_session(token)
        return replace(params, auth_config_id=self.auth_config_id)

    def _unchecked(self, message: str = "") -> None:
        """Back to Run: what was checked no longer holds (or failed: ``message`` says why)."""
        self._checked = None
        self.run_button.setText("Run")
        _say(self.status_label, message, bool(message))

    def _backend_changed(self) -> None:
        _say(self.connection_label, "")
        self._unchecked()

    @staticmethod
    def _describe(answers: list[tuple[str, dict]], several: bool = False) -> str:
        """What each backend serves, in words: the model's name and what to know about it, then its id."""
        lines = []
        for url, info in answers:
            limits = info.get("limits", {})
            where = f"{url}: " if several or len(answers) > 1 else ""
            lines.append(
                f"✓ {where}{model_words(info)} — id {info.get('model_id')}, on {info.get('device')} "
                f"({info.get('dtype')}), up to {limits.get('max_pairs_per_request', '?')} pairs per request, "
                f"API v{info.get('api_version')}, ccexpert {info.get('version')}"
            )
        return "\n".join(lines)

    def test_connection(self) -> None:
        """Ask each backend for ``/v1/info`` with the URLs and token shown; say what each answered."""
        try:
            urls = parse_backend_urls(self.backend_url.text())
        except CaptionRunError as error:
            _say(self.connection_label, f"✗ {error}", True)
            return
        lines, failed = [], False
        for url in urls:
            try:
                _, (info,), _ = self._infos((url,))
            except CaptionRunError as error:
                lines.append(f"✗ {error}")
                failed = True
                continue
            lines.append(self._describe([(url, info)], len(urls) > 1))
        _say(self.connection_label, "\n".join(lines), failed)

    def open_help(self) -> HelpDialog:
        """The README's section on the plugin, in a window of its own (no browser or network needed)."""
        if self.help_dialog is None:
            self.help_dialog = HelpDialog(self)
        self.help_dialog.show()
        self.help_dialog.raise_()
        return self.help_dialog

    def start_local_backend(self) -> None:
        """Start ``ccexpert serve`` here with the command and model shown (remembered once it answers); once it
        answers, its URL goes into the URL field. Without a command, say how to start one."""
        settings = LocalBackendSettings(self.local_command.text().strip(), self.local_model.filePath().strip())
        try:
            url = self.local_backend.start(settings)
        except CaptionRunError as error:
            _say(self.connection_label, f"✗ {error}", True)
            return
        self._starting = settings
        _say(self.connection_label, f"Starting the local backend at {url} (loading its model)…")

    def _local_backend_ready(self, url: str) -> None:
        if self._starting is not None:
            self._starting.save()
        self.backend_url.setText(url)
        self.token.clear()
        self.test_connection()

    def start_drawing(self) -> None:
        """Hide the dialog while the analyst drags a rectangle on the map canvas."""
        canvas = self.iface.mapCanvas()
        self._previous_tool = canvas.mapTool()
        self._extent_tool = QgsMapToolExtent(canvas)
        self._extent_tool.extentChanged.connect(self._rectangle_drawn)
        canvas.setMapTool(self._extent_tool)
        self.hide()

    def _rectangle_drawn(self, rectangle: QgsRectangle) -> None:
        if rectangle.isEmpty():  # a click without a drag: keep drawing
            return
        canvas = self.iface.mapCanvas()
        self._set_rectangle(rectangle, canvas.mapSettings().destinationCrs().toWkt())
        canvas.unsetMapTool(self._extent_tool)
        if self._previous_tool is not None:
            canvas.setMapTool(self._previous_tool)
        self.area_radios[AreaMode.RECTANGLE].setChecked(True)
        self.show()
        self.raise_()

    def _set_rectangle(self, rectangle: QgsRectangle, crs_wkt: str) -> None:
        self._rectangle = (rectangle, crs_wkt)
        self.rectangle_label.setText(rectangle_words(rectangle, QgsCoordinateReferenceSystem.fromWkt(crs_wkt)))


def rectangle_words(rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> str:
    """``140 × 190 m from (431010, 4828800)``: plain digits (never 4.83e+06), as many decimals as the unit needs."""
    degrees = crs.isValid() and crs.mapUnits() == DEGREES
    unit = "°" if degrees else (QgsUnitTypes.toAbbreviatedString(crs.mapUnits()) if crs.isValid() else "")

    def number(value: float) -> str:
        return f"{value:.{6 if degrees else 2}f}".rstrip("0").rstrip(".")

    return (f"{number(rectangle.width())} × {number(rectangle.height())} {unit or 'map units'} from "
            f"({number(rectangle.xMinimum())}, {number(rectangle.yMinimum())})")
