"""Shared fixtures: tiny georeferenced rasters and labels written into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import geopandas as gpd  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rasterio  # noqa: E402
import shapely  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason="../shared/data is not beside this clone"
)


def write_raster(path: Path, data: np.ndarray, crs: str, transform, nodata=None, mask=None) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF, with an optional internal mask."""
    count, h, w = data.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype,
        crs=crs, transform=transform, nodata=nodata,
    ) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
    return path


@pytest.fixture
def utm_uint16(tmp_path: Path) -> Path:
    """1-band uint16 scene in UTM 36N, 300x200 px at 0.5 m."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (1, 200, 300), dtype=np.uint16)
    return write_raster(tmp_path / "utm.tif", data, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5))


@pytest.fixture
def merc_rgb(tmp_path: Path) -> Path:
    """3-band uint8 scene in EPSG:3857, 256x256 px at 0.3 m."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)
    return write_raster(tmp_path / "merc.tif", data, "EPSG:3857", from_origin(3627000, 38800, 0.3, 0.3))


@pytest.fixture
def nodata_4band(tmp_path: Path) -> Path:
    """4-band float32 scene with nodata=-9999 on its left third, UTM 36N."""
    rng = np.random.default_rng(2)
    data = rng.random((4, 120, 180), dtype=np.float32)
    data[:, :, :60] = -9999
    return write_raster(tmp_path / "nd.tif", data, "EPSG:32636",
                        from_origin(450000, 40000, 1.0, 1.0), nodata=-9999)


def labels_for(raster: Path, out: Path, boxes_px: list[tuple[int, int, int, int]],
               crs: str = "EPSG:4326", classes: list[str] | None = None,
               extra: list[shapely.Geometry] | None = None) -> Path:
    """Write polygons given as pixel boxes (col0, row0, col1, row1) of ``raster``, in ``crs``."""
    with rasterio.open(raster) as src:
        t, scrs = src.transform, src.crs
    geoms = []
    for c0, r0, c1, r1 in boxes_px:
        x0, y0 = t @ (c0, r0)
        x1, y1 = t @ (c1, r1)
        geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    gdf = gpd.GeoDataFrame({"class": classes or ["building"] * len(geoms)}, geometry=geoms, crs=scrs)
    gdf = gdf.to_crs(crs)
    if extra:
        more = gpd.GeoDataFrame({"class": ["building"] * len(extra)}, geometry=extra, crs=crs)
        gdf = gpd.GeoDataFrame(
            {"class": list(gdf["class"]) + list(more["class"])},
            geometry=list(gdf.geometry) + list(more.geometry), crs=crs,
        )
    gdf.to_file(out)
    return out
