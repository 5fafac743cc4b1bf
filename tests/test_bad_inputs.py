"""Issue #9, no silent wrong result: inputs that used to give wrong outputs without a word.

Each test builds its small rasters and polygons in tmp_path. CLI failures are one line
``geoseg: error: ...`` naming the file at fault, exit code != 0, and no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import write_raster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from rasterio.windows import Window

from geoseg.tile import TileConfig, tile
from geoseg.tile.labels import decode_rle

CRS = "EPSG:32636"


def one_error_line(res, *names: str) -> str:
    """The single ``geoseg: error:`` line of a failed CLI run, naming every ``names``."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geoseg: error:"), res.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# -- 1. rotated and skewed geotransforms ----------------------------------------------------

def _scene_with_squares(tmp_path: Path, affine: Affine, shape: tuple[int, int],
                        centres: list[tuple[float, float]], side: float) -> tuple[Path, Path]:
    """A scene on ``affine`` and world-axis-aligned squares centred on pixel ``centres``."""
    h, w = shape
    data = np.random.default_rng(0).integers(1, 250, (1, h, w), dtype=np.uint8)
    scene = write_raster(tmp_path / "scene.tif", data, CRS, affine)
    geoms = []
    for col, row in centres:
        x, y = affine * (col, row)
        geoms.append(shapely.box(x - side / 2, y - side / 2, x + side / 2, y + side / 2))
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"class": ["building"] * len(geoms)}, geometry=geoms, crs=CRS).to_file(labels)
    return scene, labels


def _check_instances_match_scene_rasterize(scene: Path, labels: Path, out: Path,
                                           cfg: TileConfig) -> None:
    """Every polygon is an instance; its chip masks, pasted in the scene, equal the
    rasterization of the polygon on the whole scene's affine."""
    tile([scene], labels, out, cfg, scheduler="sync")
    coco = json.loads((out / "annotations.json").read_text())
    with rasterio.open(scene) as src:
        t, shape = src.transform, src.shape
    geoms = gpd.read_file(labels).geometry.to_numpy()
    images = {im["id"]: im for im in coco["images"]}
    pasted = {k: np.zeros(shape, bool) for k in range(len(geoms))}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        col, row, w, h = im["window"]
        chip_t = rasterio.windows.transform(Window(col, row, w, h), t)
        assert Affine(*im["transform"]).almost_equals(chip_t)
        mask = decode_rle(ann["segmentation"])
        assert mask.sum() == ann["area"] > 0
        pasted[ann["label_id"]][row:row + h, col:col + w] |= mask
    for k, g in enumerate(geoms):
        truth = rasterize([(g, 1)], out_shape=shape, transform=t, dtype="uint8").astype(bool)
        assert truth.sum() > 0
        # same pixels, up to pixel centres that fall on an edge within rounding
        assert np.count_nonzero(pasted[k] != truth) <= max(2, truth.sum() // 50), k
        assert abs(int(pasted[k].sum()) - int(truth.sum())) <= max(2, truth.sum() // 50), k


ROTATED = Affine.translation(450000, 40000) * Affine.rotation(30) * Affine.scale(0.5, -0.5)
SKEWED = Affine.translation(450000, 40000) * Affine.shear(20, 10) * Affine.scale(0.5, -0.5)
CENTRES = [(20.0, 20.0), (100.0, 30.0), (60.0, 90.0), (150.0, 100.0), (31.5, 33.5), (120.0, 70.0)]


@pytest.mark.parametrize("affine", [ROTATED, SKEWED], ids=["rotated30", "sheared"])
def test_rotated_and_skewed_scenes_keep_every_instance(affine: Affine, tmp_path: Path) -> None:
    scene, labels = _scene_with_squares(tmp_path, affine, (128, 180), CENTRES, side=6.0)
    _check_instances_match_scene_rasterize(
        scene, labels, tmp_path / "out", TileConfig(size=48, overlap=8, min_valid=0.0))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(angle=st.floats(-180, 180), shear_x=st.floats(-30, 30), shear_y=st.floats(-30, 30),
       res=st.floats(0.2, 3.0), flip=st.booleans(), seed=st.integers(0, 2**16))
def test_any_affine_keeps_every_instance(tmp_path_factory: pytest.TempPathFactory, angle: float,
                                         shear_x: float, shear_y: float, res: float, flip: bool,
                                         seed: int) -> None:
    affine = (Affine.translation(450000, 40000) * Affine.rotation(angle)
              * Affine.shear(shear_x, shear_y) * Affine.scale(res, -res if not flip else res))
    rng = np.random.default_rng(seed)
    centres = [(float(c), float(r)) for c, r in zip(rng.uniform(12, 88, 4), rng.uniform(12, 68, 4),
                                                    strict=True)]
    # a square of 8 pixels' width in world units fits the scene for these shears
    side = 8 * res * float(np.sqrt(abs(affine.determinant)) / res)
    tmp = tmp_path_factory.mktemp("affine")
    scene, labels = _scene_with_squares(tmp, affine, (80, 100), centres, side=side)
    _check_instances_match_scene_rasterize(
        scene, labels, tmp / "out", TileConfig(size=32, overlap=8, min_valid=0.0))
