"""The pixel rules both readers share: band choice, the 8-bit stretch, nodata, one band to grey."""

from __future__ import annotations

import numpy as np
import pytest

from ccexpert_core.geo.pixels import Stretch, decimated_shape, nodata_share, pick_bands, to_rgb
from ccexpert_core.geo.run_contract import skipped


def test_band_choice() -> None:
    messages: list[str] = []
    assert pick_bands(4, None, "BEFORE", messages.append) == (1, 2, 3)
    assert pick_bands(5, [4, 3, 2], "BEFORE", messages.append) == (4, 3, 2)
    assert not messages
    assert pick_bands(1, None, "AFTER", messages.append) == (1,)
    assert messages == ["AFTER is read from one band (1), repeated to grey RGB; the model expects colour"]
    with pytest.raises(ValueError, match="has 2 bands"):
        pick_bands(2, None, "BEFORE", messages.append)
    with pytest.raises(ValueError, match="one or three band numbers, not 2"):
        pick_bands(3, (1, 2), "BEFORE", messages.append)
    with pytest.raises(ValueError, match="band 4 does not exist"):
        pick_bands(3, (1, 2, 4), "BEFORE", messages.append)


def test_stretch_from_percentiles_skips_invalid_and_non_finite_values() -> None:
    data = np.stack([np.arange(100, dtype=np.float32).reshape(10, 10)] * 2)
    data[1, 0, :5] = np.nan
    masks = np.ones_like(data, dtype=bool)
    masks[0, 5:] = False  # band 0 keeps 0..49
    stretch = Stretch.percentiles(data, masks, is_float=True)
    expected = [np.percentile(np.arange(50), (2, 98)), np.percentile(np.arange(5, 100), (2, 98))]
    np.testing.assert_allclose(np.stack([stretch.low, stretch.high], axis=1), expected, rtol=1e-6)
    empty = Stretch.percentiles(data, np.zeros_like(masks), is_float=True)
    assert empty.low.tolist() == [0, 0] and empty.high.tolist() == [1, 1]


def test_fixed_stretch_and_a_constant_band() -> None:
    stretch = Stretch.fixed((1000.0, 5000.0), 3)
    assert stretch.low.dtype == np.float32 and stretch.high.tolist() == [5000.0] * 3
    values = np.array([0, 1000, 3000, 5000, 9000], np.uint16).reshape(1, 1, 5).repeat(3, axis=0)
    assert stretch.apply(values)[0, 0].tolist() == [0, 0, 128, 255, 255]
    constant = Stretch(np.array([5.0], np.float32), np.array([5.0], np.float32))
    assert constant.apply(np.full((1, 2, 2), 5, np.uint16)).tolist() == [[[0, 0], [0, 0]]]


def test_to_rgb_blacks_out_invalid_pixels_and_repeats_one_band() -> None:
    data = np.array([[[1.0, np.nan], [3.0, 4.0]]], np.float32)
    masks = np.array([[[255, 255], [0, 255]]], np.uint8)
    rgb, valid = to_rgb(data, masks, Stretch.fixed((0.0, 255.0), 1), is_float=True)
    assert valid.tolist() == [[True, False], [False, True]]
    assert rgb.shape == (2, 2, 3) and rgb.flags.c_contiguous
    assert rgb[..., 0].tolist() == [[1, 0], [0, 4]] and (rgb[..., 0] == rgb[..., 2]).all()
    eight_bit, _ = to_rgb(np.full((3, 1, 2), 7, np.uint8), np.full((3, 1, 2), 255, np.uint8), None, is_float=False)
    assert eight_bit.tolist() == [[[7, 7, 7], [7, 7, 7]]]


def test_an_interval_is_skipped_for_the_worse_of_its_dates() -> None:
    shares = [nodata_share(np.array([[True, True], [True, False]])), nodata_share(np.array([[True, False], [False, False]]))]
    assert shares == [0.25, 0.75]
    assert skipped(shares, (0, 1), max_nodata=0.5) and not skipped(shares, (0, 1), max_nodata=0.75)


def test_decimated_shape_never_upsamples() -> None:
    assert decimated_shape(4096, 2048, 1024) == (512, 1024)
    assert decimated_shape(300, 200, 1024) == (200, 300)
    assert decimated_shape(5000, 1, 1024) == (1, 1024)
