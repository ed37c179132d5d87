"""The dialog: it collects a :class:`~.params.CaptionParams`, checks it against the project and the backend, and
hands it over (the plugin runs it).

Two or more raster layers, one per date, in time order, with their dates (prefilled from the rasters' metadata or
names, defaulting to two different layers in date or name order); the area is the rasters' overlap, the map extent,
a polygon layer (optionally its selection) or a rectangle drawn on the map; the backend token goes to QGIS's
authentication database. Run first asks the backend (which must answer as a CCExpert backend) and shows the tile
count and an estimate of the time from the backend's measured speed; Start then runs. Status lines have a fixed
height, so nothing moves under the analyst's pointer as messages change. A backend on this machine can be started
from here (:mod:`.local_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qgis.core import QgsMapLayer, QgsRasterLayer, QgsRectangle
from qgis.gui import QgsDoubleSpinBox, QgsFileWidget, QgsMapLayerComboBox, QgsMapToolExtent
from qgis.PyQt.QtCore import Qt, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .auth import load_token, store_token
from .backend_client import BackendClient
from .errors import CaptionRunError
from .job import RunPlan, model_words, plan_job
from .layer_dates import in_time_order, layer_date
from .local_backend import LocalBackend, LocalBackendSettings
from .params import (
    AreaMode,
    CaptionParams,
    check_dates,
    date_roles,
    job_from_params,
    parse_backend_urls,
    parse_bands,
)
from .qgis_compat import POLYGON_LAYERS, RASTER_LAYERS, project
from .shared_modules import grid as tiling

#: The README's section on the plugin.
HELP_URL = "https://github.com/ccexpert/ccexpert#qgis-plugin"
_AREA_LABELS = {
    AreaMode.OVERLAP: "Where every raster has pixels",
    AreaMode.CANVAS: "The map canvas extent",
    AreaMode.LAYER: "The polygons of a layer",
    AreaMode.RECTANGLE: "A rectangle drawn on the map",
}
_VALUE_LIMIT = 1e12
#: Lines a status label holds (longer messages are cut; the tooltip has them whole).
STATUS_LINES = 3
_ERROR_STYLE = "color: #b00020"


def _status_label() -> QLabel:
    """A label of :data:`STATUS_LINES` lines whatever it says: the layout never reflows."""
    label = QLabel()
    label.setWordWrap(True)
    label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setFixedHeight(label.fontMetrics().lineSpacing() * STATUS_LINES + 4)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    return label


def _say(label: QLabel, text: str, error: bool = False) -> None:
    label.setStyleSheet(_ERROR_STYLE if error else "")
    label.setText(text)
    label.setToolTip(text)


@dataclass
class DateRow:
    """One date of the run: its raster layer and its date as typed (prefilled from the layer)."""

    combo: QgsMapLayerComboBox
    date: QLineEdit
    label: QLabel
    remove: QToolButton
    #: What was prefilled, so that a date the analyst typed is never overwritten.
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
        self.status_label = _status_label()
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
        group.setLayout(layout)
        for _ in range(2):
            self.add_date_row()
        return group

    def add_date_row(self, layer: QgsMapLayer | None = None) -> DateRow:
        """A row for one more date (the layer after the last row's, by default)."""
        combo = QgsMapLayerComboBox()
        combo.setFilters(RASTER_LAYERS)
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
        combo.layerChanged.connect(lambda chosen: self._prefill(row, chosen))
        if layer is None and index > 0:
            rasters = in_time_order(self._raster_layers())
            previous = self.date_rows[index - 1].combo.currentLayer()
            later = rasters[rasters.index(previous) + 1:] if previous in rasters else []
            layer = later[0] if later else None
        if layer is not None:
            combo.setLayer(layer)
        self._prefill(row, combo.currentLayer())
        self._label_rows()
        return row

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
        for row, role in zip(self.date_rows, date_roles(len(self.date_rows))):
            row.label.setText(role.capitalize())
            row.remove.setEnabled(len(self.date_rows) > 2)

    def _prefill(self, row: DateRow, layer: QgsMapLayer | None) -> None:
        """The layer's date in its row, unless the analyst typed one there."""
        if row.date.text().strip() and row.date.text() != row.prefilled:
            return
        found = layer_date(layer) if isinstance(layer, QgsRasterLayer) else None
        row.prefilled = "" if found is None else str(found)
        row.date.setText(row.prefilled)

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
        self.tile_size.setRange(16, 4096)
        self.tile_size.setSuffix(" px")
        self.overlap = QLineEdit()
        self.overlap.setPlaceholderText("pixels (32) or percent (10%)")
        size_row = QHBoxLayout()
        size_row.addWidget(self.tile_size)
        size_row.addWidget(QLabel("overlap"))
        size_row.addWidget(self.overlap)
        form.addRow("Tile size", size_row)
        self.resample = QCheckBox("Resample to")
        self.resolution = QgsDoubleSpinBox()
        self.resolution.setRange(0.01, 10000)
        self.resolution.setDecimals(2)
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
        self.range_min, self.range_max = QgsDoubleSpinBox(), QgsDoubleSpinBox()
        for box in (self.range_min, self.range_max):
            box.setRange(-_VALUE_LIMIT, _VALUE_LIMIT)
            box.setDecimals(3)
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
        group.setLayout(form)
        return group

    def _backend_group(self) -> QGroupBox:
        group, form = QGroupBox("Backend"), QFormLayout()
        self.backend_url = QLineEdit()
        self.backend_url.setPlaceholderText("http://127.0.0.1:8000 (ccexpert serve); several of one model: a, b, …")
        form.addRow("URLs", self.backend_url)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("none (a loopback backend without --token-file)")
        form.addRow("Token", self.token)
        self.in_flight = QSpinBox()
        self.in_flight.setRange(0, 64)
        self.in_flight.setSpecialValueText("automatic (three model batches queued)")
        self.in_flight.setSuffix(" per backend")
        form.addRow("Requests in flight", self.in_flight)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        form.addRow("", self.test_button)
        self.connection_label = _status_label()
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
        in date or name order. Every status line starts empty."""
        current = project()
        remembered = [current.mapLayer(layer_id) for layer_id in params.layer_ids]
        layers: list[QgsMapLayer | None] = [layer for layer in remembered if isinstance(layer, QgsRasterLayer)]
        typed = list(params.dates) if len(layers) == len(params.layer_ids) else []
        if len(layers) < 2 or len(set(layers)) < len(layers):
            layers, typed = list(in_time_order(self._raster_layers())[:2]), []
        layers += [None] * (2 - len(layers))
        while len(self.date_rows) > max(2, len(layers)):
            self.remove_date_row(self.date_rows[-1])
        while len(self.date_rows) < len(layers):
            self.add_date_row()
        for index, (row, layer) in enumerate(zip(self.date_rows, layers)):
            if layer is not None:
                row.combo.setLayer(layer)
            if index < len(typed) and typed[index]:
                row.date.setText(typed[index])
            else:
                row.prefilled = ""
                row.date.clear()
                self._prefill(row, row.combo.currentLayer())
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
        self.backend_url.setText(params.backend_url)
        self.in_flight.setValue(params.in_flight)
        self.auth_config_id = params.auth_config_id
        self.output.setFilePath(params.output)
        self.layer_name.setText(params.layer_name)
        local = LocalBackendSettings.load()
        self.local_command.setText(local.command)
        self.local_model.setFilePath(local.model)
        self._backend_changed()
        _say(self.status_label, "")
        try:
            self.token.setText(load_token(params.auth_config_id))
        except CaptionRunError as error:
            _say(self.connection_label, str(error), True)

    def params(self) -> CaptionParams:
        """The parameters shown, checked; raises :class:`CaptionRunError` with what to correct."""
        roles = date_roles(len(self.date_rows))
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
        check_dates(typed, [f"{role} ({layer.name()})" for role, layer in zip(roles, layers)])
        mode = list(AreaMode)[max(0, self.area_buttons.checkedId())]
        area_layer = self.area_layer_combo.currentLayer()
        if mode == AreaMode.LAYER and area_layer is None:
            raise CaptionRunError("choose the polygon layer of the area")
        if mode == AreaMode.RECTANGLE and self._rectangle is None:
            raise CaptionRunError("draw the rectangle on the map first (Draw on map)")
        overlap = self.overlap.text().strip() or "0"
        try:
            tiling.parse_overlap(overlap, self.tile_size.value())
        except ValueError as error:
            raise CaptionRunError(str(error)) from None
        value_range = (self.range_min.value(), self.range_max.value()) if self.fixed_range.isChecked() else None
        if value_range is not None and not value_range[0] < value_range[1]:
            raise CaptionRunError("values: the first number must be below the second")
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
            rectangle_crs=crs, tile_size=self.tile_size.value(), overlap=overlap,
            resolution=self.resolution.value() if self.resample.isChecked() else None,
            bands=parse_bands(self.bands.text()), value_range=value_range,
            backend_url=", ".join(urls), in_flight=self.in_flight.value(), auth_config_id=self.auth_config_id,
            output=self._gpkg_path(), layer_name=self.layer_name.text().strip() or "captions",
            batch_size=self.batch_size.value(),
        )

    def _gpkg_path(self) -> str:
        path = self.output.filePath().strip()
        return path if path.lower().endswith(".gpkg") else path + ".gpkg"

    # -- actions --------------------------------------------------------------------------------------------------

    def request_run(self) -> None:
        """Run: check the choices, that each backend answers as a CCExpert backend, count the tiles and time one
        request; the dialog stays open with the count and the estimate, and Start (the same button) runs them.
        Anything changed in between is checked again."""
        try:
            params = self.params()
            token = self.token.text().strip()
            if token or self.auth_config_id:
                self.auth_config_id = store_token(token, self.auth_config_id)
                params = replace(params, auth_config_id=self.auth_config_id)
        except CaptionRunError as error:
            self._unchecked(str(error))
            return
        params.save()
        if self._checked is not None and self._checked.params == params:
            self.accept()
            self.run_requested.emit(params)
            return
        _say(self.status_label, "Checking the backend and counting the tiles…")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            checked = self._check(params, token)
        except CaptionRunError as error:
            self._unchecked(str(error))
            return
        finally:
            QApplication.restoreOverrideCursor()
        self._checked = checked
        self.run_button.setText("Start")
        _say(self.status_label, f"{checked.plan.describe()}. Press Start to run.")

    def _check(self, params: CaptionParams, token: str) -> _Checked:
        urls = parse_backend_urls(params.backend_url)
        clients = [BackendClient(url, token, retries=0) for url in urls]
        infos = [client.info() for client in clients]
        _say(self.connection_label, self._describe(list(zip(urls, infos))))
        canvas = self.iface.mapCanvas()
        job = job_from_params(params, project(), canvas.extent(), canvas.mapSettings().destinationCrs(), token)
        return _Checked(params, plan_job(job, clients[0], len(clients)))

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
                info = BackendClient(url, self.token.text(), retries=0).info()
            except CaptionRunError as error:
                lines.append(f"✗ {error}")
                failed = True
                continue
            lines.append(self._describe([(url, info)], len(urls) > 1))
        _say(self.connection_label, "\n".join(lines), failed)

    def open_help(self) -> None:
        """The README's section on the plugin, in the browser."""
        QDesktopServices.openUrl(QUrl(HELP_URL))

    def start_local_backend(self) -> None:
        """Start ``ccexpert serve`` here with the command and model shown (remembered for next time); once it
        answers, its URL goes into the URL field. Without a command, say how to start one."""
        settings = LocalBackendSettings(self.local_command.text().strip(), self.local_model.filePath().strip())
        settings.save()
        try:
            url = self.local_backend.start(settings)
        except CaptionRunError as error:
            _say(self.connection_label, f"✗ {error}", True)
            return
        _say(self.connection_label, f"Starting the local backend at {url} (loading its model)…")

    def _local_backend_ready(self, url: str) -> None:
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
        self.rectangle_label.setText(
            f"{rectangle.width():.6g} × {rectangle.height():.6g} map units at "
            f"({rectangle.xMinimum():.6g}, {rectangle.yMinimum():.6g})"
        )
