"""Real data beside the clone (../shared/data): another CRS, nodata=255, box labels, formats.

Skipped in a user's clone, which has no ../shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import rasterio
from conftest import SHARED_DATA, requires_shared_data

from geoseg.evaluate import evaluate
from geoseg.tile import TileConfig, tile

pytestmark = requires_shared_data
NEON = SHARED_DATA / "neon_osbs_trees"
KAMPALA = SHARED_DATA / "kampala_oam_buildings"


def test_neon_trees_utm_nodata_and_overlapping_boxes(tmp_path: Path) -> None:
    out = tmp_path / "trees"
    s = tile([NEON / "OSBS_029.tif"], NEON / "OSBS_029_boxes.gpkg", out,
             TileConfig(size=256, overlap=32, min_valid=0.0, val_fraction=0.0), scheduler="sync")
    assert s.labels == 61 and s.labels_outside == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["tree"]
    assert {im["crs"] for im in coco["images"]} == {"EPSG:32617"}
    # every crown appears in at least one chip, overlapping crowns keep their own masks
    assert {a["label_id"] for a in coco["annotations"]} == set(range(61))
    with rasterio.open(out / "images" / coco["images"][0]["file_name"]) as chip:
        assert chip.nodata == 255 and chip.crs.to_epsg() == 32617


def test_kampala_z21_tiles_every_building_of_block_b(tmp_path: Path) -> None:
    out = tmp_path / "z21"
    s = tile([KAMPALA / "scenes" / "kampala_blockB_z21.tif"], KAMPALA / "labels" / "labels.geojson",
             out, TileConfig(size=512, overlap=64, val_fraction=0.0, class_name="building"))
    assert s.labels == 206 and s.labels_outside == 206 - 98
    ids = {a["label_id"] for a in json.loads((out / "annotations.json").read_text())["annotations"]}
    assert len(ids) == 98


def test_geojson_and_geopackage_copies_evaluate_as_identical() -> None:
    rep = evaluate(KAMPALA / "labels" / "labels.geojson", KAMPALA / "labels" / "buildings.gpkg")
    assert rep["f1"] == 1.0 and rep["tp"] >= 205


def test_real_labels_hold_no_pair_mostly_inside_another() -> None:
    """The 'mostly inside another' warning stays quiet on real labels that touch or overlap: Kampala's
    roofs, NEON's crown boxes (docs/errors.md says so)."""
    import geopandas as gpd
    import shapely

    from geoseg.matching import overlapping

    for path in (KAMPALA / "labels" / "buildings.gpkg", NEON / "OSBS_029_boxes.gpkg"):
        g = gpd.read_file(path)
        geoms = (g.to_crs(g.estimate_utm_crs()) if g.crs.is_geographic else g).geometry.to_numpy()
        i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
        assert (i < j).sum() > 0, path  # pairs that touch or overlap are there
        assert len(overlapping(geoms)[0]) == 0, path
