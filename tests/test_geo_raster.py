"""Reading both dates on one grid: alignment across CRSs, band choice, 16-bit mapping, nodata, resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.grid import Tile
from ccexpert_core.geo.raster import RasterSeries
from ccexpert_core.geo.synthetic import write_geotiff

from geo_fixtures import CRS, ORIGIN, pair_pixels, utm_transform, write_pair


def smooth_scene(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A smooth 3-band image as a function of UTM coordinates (bilinear resampling reproduces it closely)."""
    base = 128 + 60 * np.sin((xs - ORIGIN[0]) / 40) * np.cos((ys - ORIGIN[1]) / 50)
    return np.stack([base, 255 - base, 0.5 * base + 40]).clip(0, 255).astype(np.uint8)


def pixel_centres(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return transform.c + transform.a * cols + transform.b * rows, transform.f + transform.d * cols + transform.e * rows


def read_after_on_before_grid(before: Path, after: Path, **kwargs) -> tuple[np.ndarray, list[str]]:
    messages: list[str] = []
    with RasterSeries([before, after], log=messages.append, **kwargs) as pair:
        pair.fit_stretch([Tile(0, 0, 0, 0, pair.grid.width, pair.grid.height)], None)
        rgb, _ = pair.dates[1].read(Window(0, 0, pair.grid.width, pair.grid.height))
    return rgb, messages


def test_after_in_another_crs_and_resolution_matches_one_made_on_the_before_grid(tmp_path: Path) -> None:
    size = 200
    before_transform = utm_transform(1.0)
    xs, ys = pixel_centres(before_transform, size, size)
    expected = smooth_scene(xs, ys)
    before = write_geotiff(tmp_path / "before.tif", expected, CRS, before_transform)
    # AFTER in Web Mercator with 1.37 m pixels (about 1 m on the ground at 43.6° N) and another origin: each
    # pixel samples the same scene at its centre's UTM coordinates.
    (mx0, mx1), (my0, my1) = transform_points(CRS, "EPSG:3857", [ORIGIN[0] - 20, ORIGIN[0] + 230],
                                              [ORIGIN[1] + 20, ORIGIN[1] - 230])
    pixel = 1.37
    width, height = int((mx1 - mx0) / pixel), int((my0 - my1) / pixel)
    after_transform = Affine(pixel, 0, mx0, 0, -pixel, my0)
    mxs, mys = pixel_centres(after_transform, width, height)
    uxs, uys = transform_points("EPSG:3857", CRS, mxs.ravel(), mys.ravel())
    after_data = smooth_scene(np.reshape(uxs, mxs.shape), np.reshape(uys, mys.shape))
    after = write_geotiff(tmp_path / "after.tif", after_data, "EPSG:3857", after_transform)

    aligned, messages = read_after_on_before_grid(before, after)
    assert any("aligned onto BEFORE's grid" in m and "EPSG:3857" in m for m in messages)
    difference = np.abs(aligned.astype(int) - expected.transpose(1, 2, 0).astype(int))[5:-5, 5:-5]
    assert difference.mean() < 1.5 and difference.max() <= 8


def test_same_grid_is_read_as_is(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=64)
    aligned, messages = read_after_on_before_grid(before, after)
    assert not any("aligned" in m for m in messages)
    with RasterSeries([before, after], log=messages.append) as pair:
        assert pair.dates[1].view is pair.dates[1].dataset
    assert aligned.shape == (64, 64, 3)


def test_half_pixel_shift_is_aligned(tmp_path: Path) -> None:
    data = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (3, 100, 1))  # a ramp along x: 2 per pixel
    before = write_geotiff(tmp_path / "b.tif", data, CRS, utm_transform())
    after = write_geotiff(tmp_path / "a.tif", data, CRS, utm_transform(origin=(ORIGIN[0] - 0.5, ORIGIN[1])))
    aligned, messages = read_after_on_before_grid(before, after)
    assert any("origin differs" in m for m in messages)
    # AFTER's pixel i is centred 0.5 m west of BEFORE's: on BEFORE's grid the ramp reads one value higher.
    assert np.abs(aligned[:, 10:-10, 0].astype(int) - (data[0][:, 10:-10].astype(int) + 1)).max() <= 1


def test_16_bit_four_band_raster_is_stretched_to_8_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.stack([rng.integers(1000 * b, 1000 * b + 4000, (96, 96)) for b in range(1, 5)]).astype(np.uint16)
    before = write_geotiff(tmp_path / "b.tif", data, CRS, utm_transform())
    after = write_geotiff(tmp_path / "a.tif", data, CRS, utm_transform())
    tile = Tile(0, 0, 0, 0, 96, 96)
    with RasterSeries([before, after], bands=(4, 3, 2), log=lambda m: None) as pair:
        pair.fit_stretch([tile], None)
        pixels = pair_pixels(pair, tile)
    assert pixels.before.dtype == np.uint8 and pixels.before.shape == (96, 96, 3)
    for channel, band in enumerate((4, 3, 2)):
        values = pixels.before[..., channel]
        # 2-98 % stretch: about 2 % of pixels clip at each end, the rest spread over the range.
        assert 0.01 < (values == 0).mean() < 0.04 and 0.01 < (values == 255).mean() < 0.04
        low, high = np.percentile(data[band - 1], (2, 98))
        expected = np.clip((data[band - 1].astype(float) - low) / (high - low) * 255, 0, 255)
        assert np.abs(values - expected).max() <= 1.01
    with RasterSeries([before, after], bands=(1, 2, 3), log=lambda m: None) as pair:
        pair.fit_stretch([tile], (1000.0, 5000.0))
        fixed = pair_pixels(pair, tile).after
    expected = np.clip((data[0].astype(float) - 1000) / 4000 * 255, 0, 255).round()
    assert np.array_equal(fixed[..., 0], expected.astype(np.uint8))


def test_one_band_is_repeated_to_grey_with_a_warning(tmp_path: Path) -> None:
    grey = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    before = write_geotiff(tmp_path / "b.tif", grey, CRS, utm_transform())
    messages: list[str] = []
    tile = Tile(0, 0, 0, 0, 64, 64)
    with RasterSeries([before, before], log=messages.append) as pair:
        pair.fit_stretch([tile], None)
        rgb = pair_pixels(pair, tile).before
    assert any("one band" in m for m in messages)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def test_nodata_and_masks_count_as_nodata(tmp_path: Path) -> None:
    data = np.full((3, 100, 100), 120, np.uint8)
    data[:, :, :70] = 0
    before = write_geotiff(tmp_path / "b.tif", data, CRS, utm_transform(), nodata=0)
    # AFTER covers only the northern half of BEFORE: the rest reads as nodata.
    after = write_geotiff(tmp_path / "a.tif", np.full((3, 50, 100), 90, np.uint8), CRS, utm_transform())
    with RasterSeries([before, after], log=lambda m: None) as pair:
        pair.fit_stretch([Tile(0, 0, 0, 0, 100, 100)], None)
        west = pair_pixels(pair, Tile(0, 0, 0, 0, 50, 50))
        east_north = pair_pixels(pair, Tile(0, 1, 70, 0, 30, 50))
        east_south = pair_pixels(pair, Tile(1, 1, 70, 50, 30, 50))
    assert west.nodata_share == 1.0 and not west.before.any()
    assert east_north.nodata_share == 0.0 and (east_north.after == 90).all()
    assert east_south.nodata_share == 1.0


def test_resolution_resamples_both_dates(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=100)
    messages: list[str] = []
    with RasterSeries([before, after], resolution=2.0, log=messages.append) as pair:
        assert (pair.grid.width, pair.grid.height) == (50, 50)
        assert pair.grid.transform.a == 2.0
        assert pair.dates[0].view is not pair.dates[0].dataset
    assert any("resampled to 2 m" in m for m in messages)
    with pytest.raises(CCExpertError, match="positive"):
        RasterSeries([before, after], resolution=0, log=lambda m: None)
    geographic = write_geotiff(tmp_path / "g.tif", np.zeros((3, 10, 10), np.uint8), "EPSG:4326",
                               Affine(0.001, 0, 3, 0, -0.001, 45))
    with pytest.raises(CCExpertError, match="degrees"):
        RasterSeries([geographic, geographic], resolution=1.0, log=lambda m: None)


def test_band_errors(tmp_path: Path) -> None:
    two = write_geotiff(tmp_path / "two.tif", np.zeros((2, 8, 8), np.uint8), CRS, utm_transform())
    three = write_geotiff(tmp_path / "three.tif", np.zeros((3, 8, 8), np.uint8), CRS, utm_transform())
    with pytest.raises(CCExpertError, match="2 bands"):
        RasterSeries([two, two], log=lambda m: None)
    with pytest.raises(CCExpertError, match="band 4 does not exist"):
        RasterSeries([three, three], bands=(1, 2, 4), log=lambda m: None)
    with pytest.raises(CCExpertError, match="one or three"):
        RasterSeries([three, three], bands=(1, 2), log=lambda m: None)
