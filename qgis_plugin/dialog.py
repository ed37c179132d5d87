"""The dialog: it collects a :class:`~.params.CaptionParams` and nothing else (the plugin runs it).

Layer combos list raster layers only; the area is the rasters' overlap, the map extent, a polygon layer (optionally
its selection) or a rectangle drawn on the map; the backend token goes to QGIS's authentication database.
"""

from __future__ import annotations

from dataclasses import replace

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.gui import QgsDoubleSpinBox, QgsFileWidget, QgsMapLayerComboBox, QgsMapToolExtent
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QButtonGroup, QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
    QPushButton, QRadioButton, QSpinBox, QVBoxLayout, QWidget,
)

from .auth import load_token, store_token
from .backend_client import BackendClient
from .errors import CaptionRunError
from .params import AreaMode, CaptionParams, parse_backend_urls, parse_bands
from .shared_modules import grid as tiling

_AREA_LABELS = {
    AreaMode.OVERLAP: "Where both rasters overlap",
    AreaMode.CANVAS: "The map canvas extent",
    AreaMode.LAYER: "The polygons of a layer",
    AreaMode.RECTANGLE: "A rectangle drawn on the map",
}
_VALUE_LIMIT = 1e12


class CaptionDialog(QDialog):
    """Emits ``run_requested`` with the collected parameters when the analyst presses Run."""

    run_requested = pyqtSignal(object)

    def __init__(self, iface, params: CaptionParams, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.setWindowTitle("CCExpert — caption changes between two rasters")
        self._rectangle: tuple[QgsRectangle, str] | None = None
        self._previous_tool = None
        self._extent_tool: QgsMapToolExtent | None = None
        layout = QVBoxLayout(self)
        for group in (self._rasters_group(), self._area_group(), self._tiles_group(), self._backend_group(),
                      self._output_group()):
            layout.addWidget(group)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.run_button = buttons.addButton("Run", QDialogButtonBox.AcceptRole)
        buttons.accepted.connect(self.request_run)
        buttons.rejected.connect(self.reject)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b00020")
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)
        self.set_params(params)

    # -- building -------------------------------------------------------------------------------------------------

    def _rasters_group(self) -> QGroupBox:
        group, form = QGroupBox("Rasters"), QFormLayout()
        self.before_combo, self.after_combo = QgsMapLayerComboBox(), QgsMapLayerComboBox()
        self.before_date, self.after_date = QLineEdit(), QLineEdit()
        for combo, date, role in ((self.before_combo, self.before_date, "Before"),
                                  (self.after_combo, self.after_date, "After")):
            combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
            date.setPlaceholderText("date, for labels (optional)")
            row = QHBoxLayout()
            row.addWidget(combo, 3)
            row.addWidget(date, 1)
            form.addRow(role, row)
        group.setLayout(form)
        return group

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
                self.area_layer_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
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
        self.batch_size.setSuffix(" tiles per request")
        form.addRow("Batch size", self.batch_size)
        group.setLayout(form)
        return group

    def _backend_group(self) -> QGroupBox:
        group, form = QGroupBox("Backend"), QFormLayout()
        self.backend_url = QLineEdit()
        self.backend_url.setPlaceholderText("http://127.0.0.1:8000 (ccexpert serve); several of one model: a, b, …")
        form.addRow("URLs", self.backend_url)
        self.in_flight = QSpinBox()
        self.in_flight.setRange(0, 64)
        self.in_flight.setSpecialValueText("automatic (three model batches queued)")
        self.in_flight.setSuffix(" per backend")
        form.addRow("Requests in flight", self.in_flight)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.Password)
        self.token.setPlaceholderText("none (a loopback backend without --token-file)")
        form.addRow("Token", self.token)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.connection_label = QLabel()
        self.connection_label.setWordWrap(True)
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addWidget(self.connection_label, 1)
        form.addRow("", test_row)
        group.setLayout(form)
        return group

    def _output_group(self) -> QGroupBox:
        group, form = QGroupBox("Output"), QFormLayout()
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        form.addRow("GeoPackage", self.output)
        self.layer_name = QLineEdit()
        form.addRow("Layer name", self.layer_name)
        form.addRow("", QLabel("Running again with the same output resumes: finished tiles are skipped."))
        group.setLayout(form)
        return group

    # -- parameters in and out ------------------------------------------------------------------------------------

    def set_params(self, params: CaptionParams) -> None:
        """Show ``params`` (layers that are not in the project are left to the combos' defaults)."""
        project = QgsProject.instance()
        for combo, layer_id in ((self.before_combo, params.before_layer_id), (self.after_combo, params.after_layer_id),
                                (self.area_layer_combo, params.area_layer_id)):
            layer = project.mapLayer(layer_id) if layer_id else None
            if layer is not None:
                combo.setLayer(layer)
        self.before_date.setText(params.before_date)
        self.after_date.setText(params.after_date)
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
        try:
            self.token.setText(load_token(params.auth_config_id))
        except CaptionRunError as error:
            self.connection_label.setText(str(error))
        self.output.setFilePath(params.output)
        self.layer_name.setText(params.layer_name)

    def params(self) -> CaptionParams:
        """The parameters shown, checked; raises :class:`CaptionRunError` with what to correct."""
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if not isinstance(before, QgsRasterLayer) or not isinstance(after, QgsRasterLayer):
            raise CaptionRunError("choose a BEFORE and an AFTER raster layer")
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
            before_layer_id=before.id(), after_layer_id=after.id(), before_date=self.before_date.text().strip(),
            after_date=self.after_date.text().strip(), area_mode=mode,
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
        """Collect, keep the token in the authentication database, remember the choices, hand them over."""
        try:
            params = self.params()
            token = self.token.text().strip()
            if token or self.auth_config_id:
                self.auth_config_id = store_token(token, self.auth_config_id)
                params = replace(params, auth_config_id=self.auth_config_id)
        except CaptionRunError as error:
            self.error_label.setText(str(error))
            return
        self.error_label.clear()
        params.save()
        self.accept()
        self.run_requested.emit(params)

    def test_connection(self) -> None:
        """Ask each backend for ``/v1/info`` with the URLs and token shown; say what each answered."""
        try:
            urls = parse_backend_urls(self.backend_url.text())
        except CaptionRunError as error:
            self.connection_label.setText(f"✗ {error}")
            return
        lines = []
        for url in urls:
            try:
                info = BackendClient(url, self.token.text(), retries=0).info()
            except CaptionRunError as error:
                lines.append(f"✗ {error}")
                continue
            limits = info.get("limits", {})
            lines.append(
                f"✓ {url if len(urls) > 1 else 'model'} {info.get('model_id')} on {info.get('device')} "
                f"({info.get('dtype')}), API v{info.get('api_version')}, ccexpert {info.get('version')}, "
                f"up to {limits.get('max_pairs_per_request', '?')} pairs per request"
            )
        self.connection_label.setText("\n".join(lines))

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
