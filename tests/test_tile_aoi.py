"""`geoseg tile --aoi`: only windows meeting the labelled area, pixels beyond it masked, its labels only."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from conftest import labels_for, write_raster

from geoseg.cli.main import cli
from geoseg.errors import ConfigError, InputVectorError, OutputExistsError
from geoseg.pipeline import load_pipeline
from geoseg.tile import TileConfig, tile

SHAPE = (96, 192)
EDGE = 100  # the AOI: columns 0-99
INSIDE = (8, 8, 18, 18)
ACROSS = (94, 40, 106, 50)  # meets the area
BEYOND = (110, 70, 118, 78)  # in a window that meets the area, but not in it


def scene_aoi(root: Path, transform: Affine) -> tuple[Path, Path, shapely.Polygon]:
    """Dark inside the AOI, bright beyond it (unlabelled land the statistics must not see)."""
    rng = np.random.default_rng(0)
    img = rng.integers(20, 60, (3, *SHAPE)).astype(np.uint8)
    img[:, :, EDGE:] = 250
    for c0, r0, c1, r1 in (INSIDE, ACROSS, BEYOND):
        img[:, r0:r1, c0:c1] = 200
    path = write_raster(root / "scene.tif", img, "EPSG:32636", transform)
    labels_for(path, root / "labels.gpkg", [INSIDE, ACROSS, BEYOND])
    area = shapely.Polygon([transform * (0, 0), transform * (EDGE, 0), transform * (EDGE, SHAPE[0]),
                            transform * (0, SHAPE[0])])
    gpd.GeoDataFrame(geometry=[area], crs="EPSG:32636").to_file(root / "aoi.gpkg")
    return path, root / "aoi.gpkg", area


def cfg(aoi: Path | None, **kw) -> TileConfig:
    return TileConfig(size=32, overlap=0, min_valid=0.0, val_fraction=0.0, aoi=str(aoi) if aoi else None, **kw)


@pytest.mark.parametrize("rotated", [False, True])
def test_aoi_tiles_its_windows_masks_beyond_and_keeps_its_labels(tmp_path: Path, rotated: bool) -> None:
    tr = (Affine.translation(450000, 40000) * (Affine.rotation(25) if rotated else Affine.identity())
          * Affine.scale(0.5, -0.5))
    path, aoi, area = scene_aoi(tmp_path, tr)
    summary = tile([path], tmp_path / "labels.gpkg", tmp_path / "p", cfg(aoi), scheduler="sync")
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    cols = sorted({im["window"][0] for im in coco["images"]})
    assert cols == [0, 32, 64, 96] and len(coco["images"]) == 12  # of 6 x 3 windows: those meeting columns < 100
    assert "--aoi aoi.gpkg: 12 of 18 windows meet it" in "\n".join(summary.lines())
    ids = {a["label_id"] for a in coco["annotations"]}
    assert ids == {0, 1}  # INSIDE, ACROSS (whole, over two chips); not BEYOND, in a chip that meets the area
    inside_px = []
    for im in coco["images"]:
        with rasterio.open(tmp_path / "p" / "images" / im["file_name"]) as src:
            mask, data, t = src.dataset_mask() > 0, src.read(), src.transform
        rows, cols_ = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        xs, ys = t * (cols_ + 0.5, rows + 0.5)
        assert (mask == shapely.contains_xy(area, xs, ys)).all(), im["file_name"]  # pixel centres in the area
        inside_px.append(data[:, mask])
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    pixels = np.concatenate(inside_px, axis=1).astype(np.float64)
    assert stats["pixels"] == pixels.shape[1]
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=1), rtol=1e-6)  # the bright land beyond: unseen
    assert max(stats["mean"]) < 100


def test_aoi_meeting_no_scene_and_a_changed_aoi(tmp_path: Path) -> None:
    path, aoi, area = scene_aoi(tmp_path, Affine.translation(450000, 40000) * Affine.scale(0.5, -0.5))
    gpd.GeoDataFrame(geometry=[shapely.affinity.translate(area, 9000)], crs="EPSG:32636").to_file(tmp_path / "far.gpkg")
    with pytest.raises(InputVectorError, match="meets none of the 1 scene"):
        tile([path], tmp_path / "labels.gpkg", tmp_path / "p", cfg(tmp_path / "far.gpkg"), scheduler="sync")
    assert not (tmp_path / "p").exists()
    res = CliRunner().invoke(cli, ["tile", str(path), "--labels", str(tmp_path / "labels.gpkg"), "--out",
                                   str(tmp_path / "q"), "--aoi", str(tmp_path / "far.gpkg")])
    assert res.exit_code == 1 and "far.gpkg" in res.output and "CRS" in res.output, res.output
    tile([path], tmp_path / "labels.gpkg", tmp_path / "p", cfg(aoi), scheduler="sync")
    gpd.GeoDataFrame(geometry=[area.buffer(-5)], crs="EPSG:32636").to_file(aoi)  # the same file, redrawn
    with pytest.raises(OutputExistsError, match=r"inputs \(the --aoi file\)"):
        tile([path], tmp_path / "labels.gpkg", tmp_path / "p", cfg(aoi), scheduler="sync")


def test_pipeline_reads_the_tile_aoi_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "aoi.gpkg").write_bytes(b"")
    (tmp_path / "p.yaml").write_text("tile:\n  scenes: [scene.tif]\n  labels: l.gpkg\n  params: {aoi: aoi.gpkg}\n")
    stage = load_pipeline(tmp_path / "p.yaml").stages["tile"]
    assert stage.args.cfg.aoi == str(tmp_path / "aoi.gpkg") and tmp_path / "aoi.gpkg" in stage.inputs


def test_an_aoi_that_meets_no_label_is_refused(tmp_path: Path) -> None:
    """An AOI of another district over the same scene: every chip would be a negative, with exit 0."""
    path, _, _ = scene_aoi(tmp_path, Affine.translation(450000, 40000) * Affine.scale(0.5, -0.5))
    empty = shapely.box(450000 + 150 * 0.5, 40000 - 30 * 0.5, 450000 + 190 * 0.5, 40000)  # no label there
    gpd.GeoDataFrame(geometry=[empty], crs="EPSG:32636").to_file(tmp_path / "other.gpkg")
    with pytest.raises(InputVectorError, match="none of the 3 labels of .* meets --aoi"):
        tile([path], tmp_path / "labels.gpkg", tmp_path / "p", cfg(tmp_path / "other.gpkg"), scheduler="sync")
    assert not (tmp_path / "p").exists()
    tile([path], None, tmp_path / "n", cfg(tmp_path / "other.gpkg"), scheduler="sync")  # without labels: negatives


def test_val_scenes_naming_a_scene_the_aoi_leaves_out_says_so(tmp_path: Path) -> None:
    """The held-out scene is away from the AOI: not 'matches none' (it is right there), but why."""
    path, aoi, _ = scene_aoi(tmp_path, Affine.translation(450000, 40000) * Affine.scale(0.5, -0.5))
    far = write_raster(tmp_path / "far_scene.tif", np.full((3, 64, 64), 90, np.uint8), "EPSG:32636",
                       Affine.translation(470000, 40000) * Affine.scale(0.5, -0.5))
    with pytest.raises(ConfigError, match=r"'far\*' matches only scenes that are not tiled: "
                                          r"far_scene \(the --aoi does not meet it\)"):
        tile([path, far], tmp_path / "labels.gpkg", tmp_path / "p", cfg(aoi, val_scenes=["far*"]), scheduler="sync")
    with pytest.raises(ConfigError, match="'nowhere' matches none of the scenes tiled"):
        tile([path, far], tmp_path / "labels.gpkg", tmp_path / "p", cfg(aoi, val_scenes=["nowhere"]),
             scheduler="sync")
    assert not (tmp_path / "p").exists()


def test_an_aoi_across_the_antimeridian_covers_both_halves_of_the_scene(tmp_path: Path) -> None:
    # Taveuni (Fiji): the 180th meridian crosses the scene (UTM 60S); the AOI in degrees is split
    # at 180°, as RFC 7946 and QGIS write it. Clipping it to the scene's box in degrees (west > east)
    # kept the globe but the scene.
    from rasterio.transform import from_origin

    from geoseg.aoi import area_on_scene, read_aoi
    from geoseg.io.rasters import inspect_scene

    x0, y0 = 819_661.0, 8_140_276.0
    path = write_raster(tmp_path / "taveuni.tif", np.zeros((3, 256, 256), np.uint8), "EPSG:32760",
                        from_origin(x0, y0, 1.0, 1.0))
    halves = [shapely.box(179.99, -16.81, 180.0, -16.79), shapely.box(-180.0, -16.81, -179.99, -16.79)]
    gpd.GeoDataFrame(geometry=halves, crs=4326).to_file(tmp_path / "aoi.gpkg")
    scene = inspect_scene(path)
    area = area_on_scene(read_aoi(tmp_path / "aoi.gpkg"), scene, 8, "--aoi aoi.gpkg")
    assert area.covers(scene.footprint.buffer(-1e-6))
