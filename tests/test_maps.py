"""geoseg.maps: predicted maps as lazy, georeferenced xarray (rioxarray) Datasets."""

from __future__ import annotations

from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import bright_boxes_scene, grid_boxes, write_raster
from rasterio.transform import from_origin

from geoseg.errors import InputRasterError
from geoseg.maps import instance_map, open_maps, predict_maps
from geoseg.predict import PredictConfig


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("maps")
    return bright_boxes_scene(root / "scene.tif", (96, 128), grid_boxes((96, 128), step=20, seed=5), seed=7)


def test_predict_maps_lazy_and_on_the_scene_grid(scene: Path, tiny_run: Path, tmp_path: Path) -> None:
    cfg = PredictConfig(block=32, watershed_halo=16, simplify=0.0, min_area=1.0, budget=1.0)
    ds = predict_maps(scene, tiny_run, tmp_path / "maps", cfg, chunks=48)
    assert ds.probability.chunks == ((48, 48), (48, 48, 32))  # Dask chunks: nothing read yet
    assert ds.instance.chunks == ds.probability.chunks
    with rasterio.open(scene) as src:
        assert ds.rio.crs == src.crs and ds.probability.rio.transform() == src.transform
        assert ds.probability.shape == (src.height, src.width)
    prob, inst = dask.compute(ds.probability.data, ds.instance.data)
    assert prob.dtype == np.float32 and np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1
    polys = gpd.read_file(tmp_path / "maps" / "scene.gpkg")
    assert len(polys) >= 10 and set(np.unique(inst)) - {0} <= set(range(1, len(polys) + 1))
    # every polygon is burnt in with its own id, where the model was confident
    assert len(set(np.unique(inst)) - {0}) >= 0.9 * len(polys)
    assert prob[inst > 0].mean() > 0.6 and prob[inst == 0].mean() < 0.4
    again = predict_maps(scene, tiny_run, tmp_path / "maps", cfg)  # replaces, never appends
    assert len(gpd.read_file(tmp_path / "maps" / "scene.gpkg")) == len(polys) and "instance" in again


def test_masked_pixels_are_nan(tmp_path: Path) -> None:
    """A probability COG's internal mask (the scene's nodata) reads as NaN, the scale as 0-1."""
    data = np.full((1, 40, 50), 255, np.uint8)
    data[0, :, :10] = 0
    mask = np.full((40, 50), 255, np.uint8)
    mask[:, :10] = 0
    path = tmp_path / "p.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", width=50, height=40, count=1, dtype="uint8", crs="EPSG:32636",
            transform=from_origin(450000, 40000, 0.5, 0.5)) as dst:
        dst.write(data)
        dst.write_mask(mask)
        dst.scales, dst.offsets = (1 / 255,), (0.0,)
    prob = open_maps(path).probability.values
    assert np.isnan(prob[:, :10]).all() and np.allclose(prob[:, 10:], 1.0)


def test_instance_map_reprojects_polygons_and_numbers_them(tmp_path: Path) -> None:
    grid = write_raster(tmp_path / "g.tif", np.zeros((1, 64, 64), np.uint8), "EPSG:32636",
                        from_origin(450000, 40000, 1.0, 1.0))
    like = open_maps(grid).probability
    boxes = [shapely.box(450004, 39990, 450010, 39996), shapely.box(450040, 39950, 450060, 39940)]
    gdf = gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32636").to_crs("EPSG:4326")
    inst = instance_map(gdf, like, chunks=16).values
    assert (inst == 1).sum() == pytest.approx(36, abs=6) and (inst == 2).sum() == pytest.approx(200, abs=20)
    assert inst[4:10, 4:10].min() == 1 and inst[50:60, 40:60].min() == 2


def test_instance_map_on_a_rotated_grid_burns_each_chunk_it_covers(tmp_path: Path) -> None:
    from affine import Affine

    transform = Affine.translation(450000, 40000) * Affine.rotation(30) * Affine.scale(0.5, -0.5)
    grid = write_raster(tmp_path / "r.tif", np.zeros((1, 64, 96), np.uint8), "EPSG:32636", transform)
    like = open_maps(grid).probability
    # pixel columns 30..50, rows 10..20: it crosses the chunks' seam at column 32 (chunks of 32)
    roof = shapely.Polygon([transform * (c, r) for c, r in ((30, 10), (50, 10), (50, 20), (30, 20))])
    inst = instance_map(gpd.GeoDataFrame(geometry=[roof], crs="EPSG:32636"), like, chunks=32).values
    expected = np.zeros((64, 96), bool)
    expected[10:20, 30:50] = True
    assert ((inst == 1) == expected).all()  # the axis-aligned box of a chunk's two corners missed it


def test_unreadable_probabilities_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    with pytest.raises(InputRasterError, match="--prob-out"):
        open_maps(bad)
