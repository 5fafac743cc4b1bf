"""A scene's values against the training chips': the sample predict and search read before the work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from conftest import write_raster
from rasterio.shutil import copy as rio_copy
from rasterio.transform import from_origin
from rasterio.windows import Window

from geoseg.bands import BandStats
from geoseg.io.radiometry import SAMPLE_SIDE, off_bands, sample


def _scene(path: Path, overviews: bool) -> Path:
    rng = np.random.default_rng(0)
    data = rng.normal(1000, 200, (2, 600, 600)).clip(0, 4000).astype(np.uint16)
    mask = np.full((600, 600), 255, np.uint8)
    mask[:300] = 0  # the upper half is nodata: never sampled
    data[:, :300] = 65535
    if not overviews:  # a striped GeoTIFF
        return write_raster(path, data, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5), mask=mask)
    plain = write_raster(path.with_suffix(".plain.tif"), data, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5),
                         mask=mask)
    rio_copy(plain, path, driver="COG", blocksize=256, overview_resampling="average")  # 256 px tiles, overviews
    with rasterio.open(path) as src:
        assert src.overviews(1) and src.block_shapes[0] == (256, 256)
    return path


def test_a_sample_is_full_resolution_valid_pixels_one_tile_a_window(tmp_path: Path) -> None:
    for overviews in (False, True):  # averaged overviews narrow noise's spread: never read
        with rasterio.open(_scene(tmp_path / f"s{overviews}.tif", overviews)) as src:
            reads: list[Window] = []

            def read(*a: object, window: Window, _read=src.read, _reads=reads, **k: object) -> object:
                _reads.append(window)
                return _read(*a, window=window, **k)

            src.read = read
            values = sample(src, [1, 2])
            tiles = src.block_shapes[0]
        assert values.max() < 65535  # masked pixels left out
        assert abs(values.mean() - 1000) < 25 and 180 < values.std() < 220
        # 3x3 windows (2x2 on a tile each), those in the masked half not read
        assert len(reads) == (2 if overviews else 6) and all(w.width == w.height == SAMPLE_SIDE for w in reads)
        if min(tiles) >= SAMPLE_SIDE:
            assert all(w.row_off // tiles[0] == (w.row_off + w.height - 1) // tiles[0] for w in reads)
            assert all(w.col_off // tiles[1] == (w.col_off + w.width - 1) // tiles[1] for w in reads)


def test_off_bands_judges_the_mean_in_training_stds_and_the_spread_as_a_ratio() -> None:
    trained = BandStats(mean=(400.0, 400.0, 400.0, 400.0), std=(150.0, 150.0, 150.0, 150.0), dtype="uint16")
    mean = np.array([400.0 + 2.9 * 150, 400.0 + 3.1 * 150, 400.0, 400.0])
    std = np.array([150.0, 150.0, 150.0 * 4.1, 150.0 / 4.1])
    assert off_bands(mean, std, trained) == [1, 2, 3]
