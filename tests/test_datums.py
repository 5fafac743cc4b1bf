"""Reprojections that lose accuracy here: PROJ's best datum shift needs a grid not installed.

British National Grid (OSGB36) labels on a UTM (WGS 84) scene: PROJ's accurate
transformation reads the OSTN15 grid, which pyproj's wheels do not ship; without it PROJ
falls back to a Helmert shift good to a few metres, silently. geoseg says so, naming the
grid. Where the grid is installed (a user's machine after `pyproj sync`) the tests that need
it missing skip.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from conftest import bright_boxes_scene, grid_boxes, labels_for
from pyproj import Transformer
from pyproj.transformer import TransformerGroup
from rasterio.transform import from_origin

from geoseg.errors import GeoSegWarning
from geoseg.evaluate import evaluate_frames
from geoseg.io.datums import datum_gap, to_crs
from geoseg.io.formats import write_vector
from geoseg.tile import TileConfig, tile

GRID = "uk_os_OSTN15_NTv2_OSGBtoETRS.tif"


def _grid_missing() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return not TransformerGroup("EPSG:27700", "EPSG:32630", always_xy=True).best_available


needs_missing_grid = pytest.mark.skipif(not _grid_missing(), reason=f"{GRID} is installed here")


def oxford_scene(path: Path) -> Path:
    """A 64x64 scene at 0.5 m in UTM 30N (WGS 84) over Oxford."""
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(-1.2577, 51.752)
    return bright_boxes_scene(path, (64, 64), grid_boxes((64, 64)), crs="EPSG:32630",
                              transform=from_origin(round(x), round(y), 0.5, 0.5))


def test_one_datum_loses_nothing() -> None:
    assert datum_gap("EPSG:4326", "EPSG:32636") is None
    assert datum_gap("EPSG:3857", "EPSG:4326") is None
    assert datum_gap("EPSG:32630", "EPSG:32630") is None


@needs_missing_grid
def test_labels_in_british_national_grid_warn_naming_the_grid(tmp_path: Path) -> None:
    gap = datum_gap("EPSG:27700", "EPSG:32630")
    assert gap is not None and GRID in gap and f"pyproj sync --file {GRID}" in gap and "PROJ_NETWORK=ON" in gap
    scene = oxford_scene(tmp_path / "oxford.tif")
    labels = labels_for(scene, tmp_path / "os_mastermap.gpkg", grid_boxes((64, 64)), crs="EPSG:27700")
    with pytest.warns(GeoSegWarning, match=rf"--labels .*os_mastermap.gpkg \(EPSG:27700\) reprojected to "
                      rf"EPSG:32630: .*{GRID}.*falls back to .*accurate to 2 m"):
        s = tile([scene], labels, tmp_path / "p", TileConfig(size=32, overlap=0), scheduler="sync")
    assert s.instances > 0  # still tiled: a warning, not a refusal


@needs_missing_grid
def test_evaluate_and_geojson_output_warn_too(tmp_path: Path) -> None:
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(-1.2577, 51.752)
    pred = gpd.GeoDataFrame({"score": [0.9]}, geometry=[shapely.box(x, y, x + 10, y + 10)], crs="EPSG:32630")
    truth = pred.to_crs("EPSG:27700")
    with pytest.warns(GeoSegWarning, match="the truth polygons .*EPSG:27700.* reprojected to EPSG:32630"):
        res = evaluate_frames(pred, truth)
    assert res["tp"] == 1  # scored all the same: the same fallback made the truth file here
    with pytest.warns(GeoSegWarning, match=r"out.geojson \(GeoJSON: EPSG:4326\) .*EPSG:27700"):
        write_vector(truth, tmp_path / "out.geojson")


@needs_missing_grid
def test_said_once_per_input_and_pair(tmp_path: Path) -> None:
    g = gpd.GeoSeries([shapely.Point(450000, 200000)], crs="EPSG:27700")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            to_crs(g, "EPSG:32630", f"--labels {tmp_path / 'a.gpkg'}")
        to_crs(g, "EPSG:32630", f"--labels {tmp_path / 'b.gpkg'}")
    assert [str(w.message).split(" (")[0] for w in seen if w.category is GeoSegWarning] == [
        f"--labels {tmp_path / 'a.gpkg'}", f"--labels {tmp_path / 'b.gpkg'}"]
