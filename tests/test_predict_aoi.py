"""`geoseg predict --aoi`: only the blocks near the area are computed, the objects meeting it are written whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes

from geoseg.cli.main import cli
from geoseg.errors import InputVectorError
from geoseg.io.rasters import inspect_scene
from geoseg.pipeline import load_pipeline
from geoseg.predict import PredictConfig, predict

SHAPE = (96, 256)  # 3 x 8 blocks of 32 px
EDGE = 79  # the AOI's edge (px): block columns 0-2 lie within the 16-px halo of it, column 3 (from 96) not
EDGE_BOX = (76, 40, 104, 52)  # across the edge; owned by column 2 (centroid x 90), reaching into column 3


def cfg(**kw) -> PredictConfig:
    base = {"block": 32, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0, "budget": 1.0}
    return PredictConfig(**{**base, **kw})


def scene_and_aoi(root: Path, transform: Affine | None = None) -> tuple[Path, Path, shapely.Polygon]:
    """A scene of boxes, and an AOI over its first EDGE columns (in the scene's CRS)."""
    boxes = [b for b in grid_boxes(SHAPE, step=20, seed=3) if shapely.box(*b).distance(shapely.box(*EDGE_BOX)) > 3]
    path = bright_boxes_scene(root / "scene.tif", SHAPE, boxes + [EDGE_BOX], seed=2, transform=transform)
    with rasterio.open(path) as src:
        tr = src.transform
    area = shapely.Polygon([tr * (0, 0), tr * (EDGE, 0), tr * (EDGE, 96), tr * (0, 96)])
    gpd.GeoDataFrame(geometry=[area], crs="EPSG:32636").to_file(root / "aoi.gpkg")
    return path, root / "aoi.gpkg", area


def same_polygons(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> bool:
    return sorted(g.wkb for g in a.geometry.normalize()) == sorted(g.wkb for g in b.geometry.normalize())


@pytest.mark.parametrize("rotated", [False, True])
def test_aoi_keeps_the_objects_meeting_it_whole_and_computes_only_near_blocks(tiny_run: Path, tmp_path: Path,
                                                                              rotated: bool) -> None:
    tr = Affine.translation(450000, 40000) * Affine.rotation(20) * Affine.scale(0.5, -0.5) if rotated else None
    path, aoi, area = scene_and_aoi(tmp_path, tr)
    full = predict([path], tiny_run, tmp_path / "full.gpkg", cfg(gsd="native"))  # the scene's own grid
    near = predict([path], tiny_run, tmp_path / "near.gpkg", cfg(gsd="native", aoi=str(aoi)))
    everything, part = gpd.read_file(tmp_path / "full.gpkg"), gpd.read_file(tmp_path / "near.gpkg")
    expected = everything[everything.intersects(area)]
    assert 0 < len(part) == len(expected) < len(everything)
    # the dense network on near blocks gives the same pixels; the ring of context blocks keeps the
    # edge box whole where it reaches into column 3
    assert same_polygons(part, expected)
    across = part[part.intersects(area.exterior)]  # the box across the AOI's edge: whole, not cut
    assert len(across) >= 1 and (across.difference(area).area > 1).any()
    # owners: block columns 0-2; one ring: column 3; of 8 columns, 3 rows
    assert full.blocks == 24 and near.blocks == 12 and near.cells == 48
    assert near.outside_aoi > 0  # objects of the owner blocks beyond the area: found, then dropped
    assert (f"--aoi aoi.gpkg: 12 of 24 blocks computed, 9 near the area; {near.outside_aoi} objects near it"
            in "\n".join(near.lines()))


def test_aoi_in_another_crs_and_a_scene_away_from_it(tiny_run: Path, tmp_path: Path) -> None:
    path, aoi, area = scene_and_aoi(tmp_path)
    gpd.read_file(aoi).to_crs(4326).to_file(tmp_path / "aoi4326.geojson")
    far = bright_boxes_scene(tmp_path / "far.tif", (64, 64), grid_boxes((64, 64)), seed=4,
                             transform=rasterio.transform.from_origin(460000, 40000, 0.5, 0.5))
    near = predict([path, far], tiny_run, tmp_path / "b.gpkg", cfg(aoi=str(tmp_path / "aoi4326.geojson")))
    one = predict([path], tiny_run, tmp_path / "one.gpkg", cfg(aoi=str(aoi)))
    assert near.scenes == 1 and near.blocks == one.blocks == 12
    assert "1 scene(s) away from it skipped" in "\n".join(near.lines())
    got = gpd.read_file(tmp_path / "b.gpkg")
    assert set(got["scene"]) == {"scene"} and same_polygons(got, gpd.read_file(tmp_path / "one.gpkg"))


def test_prob_out_is_masked_away_from_the_aoi(tiny_run: Path, tmp_path: Path) -> None:
    path, aoi, _ = scene_and_aoi(tmp_path)
    predict([path], tiny_run, tmp_path / "b.gpkg", cfg(aoi=str(aoi), prob_out=str(tmp_path / "p.tif")))
    with rasterio.open(tmp_path / "p.tif") as src:
        mask = src.dataset_mask()
        probs = src.read(1)
    assert mask[:, :128].all() and not mask[:, 128:].any()  # computed: block columns 0-3
    assert probs[:, :128].max() > 200


def test_aoi_near_no_scene_is_one_line_and_writes_nothing(tiny_run: Path, tmp_path: Path) -> None:
    path, _, area = scene_and_aoi(tmp_path)
    far = shapely.affinity.translate(area, 5000, 0)
    gpd.GeoDataFrame(geometry=[far], crs="EPSG:32636").to_file(tmp_path / "far.gpkg")
    with pytest.raises(InputVectorError, match="comes near none of the 1 scene"):
        predict([path], tiny_run, tmp_path / "b.gpkg", cfg(aoi=str(tmp_path / "far.gpkg")))
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "b.gpkg"), "--aoi", str(tmp_path / "far.gpkg")])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("geoseg: error")]
    assert len(lines) == 1 and "far.gpkg" in lines[0] and "CRS" in lines[0], res.output
    assert not (tmp_path / "b.gpkg").exists()
    assert not any(p.name.startswith(".b.gpkg") for p in tmp_path.iterdir())


def test_aoi_changes_invalidate_the_cache_and_the_pipeline_reads_it_beside_the_file(tiny_run: Path,
                                                                                     tmp_path: Path) -> None:
    from geoseg.predict.stage import _stamp

    _, aoi, _ = scene_and_aoi(tmp_path)
    one = _stamp(tiny_run, cfg(aoi=str(aoi)), [])
    gpd.GeoDataFrame(geometry=[shapely.box(450000, 39960, 450010, 40000)], crs="EPSG:32636").to_file(aoi)
    assert _stamp(tiny_run, cfg(aoi=str(aoi)), []) != one  # same path, other polygons: no reuse
    (tmp_path / "p.yaml").write_text(
        f"predict:\n  scenes: [scene.tif]\n  model: {tiny_run}\n  params: {{aoi: aoi.gpkg, block: 32}}\n")
    stage = load_pipeline(tmp_path / "p.yaml").stages["predict"]
    assert stage.args.cfg.aoi == str(aoi) and aoi in stage.inputs


def test_out_naming_the_aoi_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    from geoseg.errors import OutputError

    path, aoi, _ = scene_and_aoi(tmp_path)
    before = aoi.read_bytes()
    with pytest.raises(OutputError, match="is the AOI"):
        predict([path], tiny_run, aoi, cfg(aoi=f"{aoi}|layername=aoi"), overwrite=True)
    assert aoi.read_bytes() == before


def test_a_routed_budget_is_a_share_of_the_cells_near_the_owner_blocks(tiny_run: Path, tmp_path: Path) -> None:
    """FF on ring cells beyond the halo changes no object written: the budget is not spent there."""
    from geoseg.predict.area import near_owners
    from geoseg.predict.plan import BlockPlan

    path, aoi, area = scene_and_aoi(tmp_path)
    s = predict([path], tiny_run, tmp_path / "b.gpkg", cfg(aoi=str(aoi), budget=0.5))
    # owners: block columns 0-2 (cells 0-5), grown by the 16-px halo (one 16-px cell): cell columns 0-6,
    # all 6 cell rows; the ring's column 3 (cells 6-7) is computed, its cell column 7 never runs FF
    assert s.cells == 42 and s.ff_cells == 21
    got = gpd.read_file(tmp_path / "b.gpkg")
    assert len(got) > 0 and got.intersects(area).all()
    plan = BlockPlan(scene=inspect_scene(path), block=32, watershed_halo=16, cell=16, scale=2, tile_halo=8,
                     multiple=32, band_indexes=(1, 2, 3), cache=tmp_path,
                     only=frozenset((i, j) for i in range(3) for j in range(4)),
                     owners=frozenset((i, j) for i in range(3) for j in range(3)))
    near = near_owners(plan)
    assert near is not None and near.shape == (6, 16) and near[:, :7].all() and not near[:, 7:].any()
    assert near_owners(dataclasses.replace(plan, only=None, owners=None)) is None
