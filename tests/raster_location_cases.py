"""Where a raster is (``ccexpert_core/geo/sources.py``, bundled in the plugin), in both Pythons: the project's
(tests/test_raster_location.py) and QGIS's (tests/qgis/test_raster_location.py). Standard library and pytest only."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccexpert_core.geo import run_files
from ccexpert_core.geo.sources import CLOUD_DEFAULTS, RasterLocation, cloud_defaults

SIGNED = "https://reader:pa55@bucket.example.org:8443/town/2018/ortho.tif?X-Amz-Signature=abc123&X-Amz-Expires=600"


@pytest.mark.parametrize("given, gdal_path", [
    ("https://h.example/a.tif", "/vsicurl/https://h.example/a.tif"),
    ("http://127.0.0.1:8000/x//y.tif", "/vsicurl/http://127.0.0.1:8000/x//y.tif"),  # nothing collapsed
    ("s3://bucket/key/a.tif", "/vsis3/bucket/key/a.tif"),
    ("gs://bucket/a.tif", "/vsigs/bucket/a.tif"),
    ("az://container/a.tif", "/vsiaz/container/a.tif"),
    ("/vsicurl/https://h.example/a.tif", "/vsicurl/https://h.example/a.tif"),
    ("/vsis3/bucket/a.tif", "/vsis3/bucket/a.tif"),
    ("rasters/a.tif", "rasters/a.tif"),
])
def test_a_url_is_opened_by_gdals_network_file_systems_and_a_path_stays_a_path(given: str, gdal_path: str) -> None:
    location = RasterLocation.of(given)
    assert location.gdal_path == gdal_path
    assert location.remote == (given != "rasters/a.tif")
    assert location.local == (Path(given) if given == "rasters/a.tif" else None)
    assert RasterLocation.of(location) is location and RasterLocation.of(Path("a.tif")).local == Path("a.tif")


def test_a_url_is_named_and_shown_without_its_credentials() -> None:
    location = RasterLocation.of(SIGNED)
    assert location.name == "ortho.tif"
    assert location.shown == "https://bucket.example.org:8443/town/2018/ortho.tif" == str(location)
    assert location.withholds_credentials and "abc123" not in repr(location) and "pa55" not in repr(location)
    assert not RasterLocation.of("https://h.example/a.tif").withholds_credentials
    # GDAL's messages name the file as it was opened, or only its last part: both said without the secret.
    said = location.redact(f"{location.gdal_path}: HTTP response code: 403; ortho.tif?X-Amz-Signature=abc123"
                           "&X-Amz-Expires=600, band 1: IReadBlock failed")
    assert said == f"{location.shown}: HTTP response code: 403; ortho.tif, band 1: IReadBlock failed"
    options = RasterLocation.of("/vsicurl?use_head=no&url=https%3A%2F%2Fh.example%2Fa.tif%3Fsig%3Dx")
    assert (options.name, options.shown, options.remote) == ("a.tif", "https://h.example/a.tif", True)
    assert options.withholds_credentials
    ipv6 = RasterLocation.of("http://[::1]:8000/a.tif?sig=x")
    assert ipv6.shown == "http://[::1]:8000/a.tif" and ipv6.name == "a.tif"


def test_a_local_path_is_named_by_its_file_as_before(tmp_path: Path) -> None:
    location = RasterLocation.of(tmp_path / "dates" / "2016.tif")
    assert (location.name, location.shown, location.withholds_credentials) == ("2016.tif", str(location.local), False)
    assert RasterLocation.of("a.tif").absolute().local == Path("a.tif").absolute()
    assert RasterLocation.of(SIGNED).absolute() == RasterLocation.of(SIGNED)


def test_gdals_cloud_settings_leave_what_the_user_set() -> None:
    assert cloud_defaults(lambda key: False) == dict(CLOUD_DEFAULTS)
    assert "GDAL_HTTP_MAX_RETRY" not in cloud_defaults(lambda key: key == "GDAL_HTTP_MAX_RETRY")


@pytest.mark.parametrize("output", ["https://h.example/out.gpkg", "s3://bucket/out.gpkg", "/vsis3/bucket/out.gpkg"])
def test_an_output_is_never_a_url(output: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a file on this machine"):
        run_files.check_run_paths({"BEFORE": tmp_path / "a.tif"}, {"--out": Path(output)})
