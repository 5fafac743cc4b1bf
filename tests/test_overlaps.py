"""`predict --overlaps once`: copies of an object from overlapping scenes, decided per group."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from conftest import write_raster
from rasterio.transform import from_origin

from geoseg.io.rasters import inspect_scene
from geoseg.predict.overlaps import drop_copies

UTM = "EPSG:32636"


def _scenes(tmp_path: Path) -> list:
    """A: x 0-100 m, B: x 50-150 m, both y 0-100 m (1 m pixels): they overlap on x 50-100."""
    data = np.random.default_rng(0).integers(30, 200, (3, 100, 100), dtype=np.uint8)
    return [inspect_scene(write_raster(tmp_path / f"{name}.tif", data, UTM, from_origin(x0, 100, 1, 1)))
            for name, x0 in (("a", 0), ("b", 50))]


def test_an_object_segmented_differently_by_two_scenes_is_kept_from_one(tmp_path: Path) -> None:
    """A long roof in the overlap: one polygon in A, two halves in B. Pair by pair, the left half's
    intersection lies deeper in A (A's polygon kept) and the right half's deeper in B (B's right half
    kept, A's polygon dropped): only the right half was left, the left half of the roof was lost."""
    scenes = _scenes(tmp_path)
    whole = shapely.box(55, 45, 95, 55)
    halves = [shapely.box(55, 45, 75, 55), shapely.box(75, 45, 95, 55)]
    alone = [shapely.box(10, 10, 20, 20), shapely.box(120, 80, 130, 90)]  # one scene sees each
    gdf = gpd.GeoDataFrame({"scene": ["a", "b", "b", "a", "b"]}, geometry=[whole, *halves, *alone], crs=UTM)
    kept, dropped = drop_copies(gdf, scenes)
    # the group's least deep point is 15 m inside either scene: a tie, so the first scene (A)
    assert dropped == 2 and kept["scene"].tolist() == ["a", "a", "b"]
    assert kept.geometry.iloc[0].equals(whole)
    covered = shapely.union_all(kept.geometry.to_numpy())
    assert covered.intersection(whole).area == whole.area  # the whole roof, once
    assert shapely.union_all(kept.geometry.to_numpy()).area == sum(kept.area)  # no overlapping copies
    # B given first wins the tie: its two halves are kept, A's polygon goes
    kept, dropped = drop_copies(gdf, scenes[::-1])
    assert dropped == 1 and sorted(kept["scene"].tolist()) == ["a", "b", "b", "b"]
    assert shapely.union_all(kept.geometry.to_numpy()).intersection(whole).area == whole.area


def test_the_deeper_scene_keeps_the_group(tmp_path: Path) -> None:
    """Near B's edge (x 50) a roof is deeper in A: A's copy is kept, whatever the order given."""
    scenes = _scenes(tmp_path)
    roof_a, roof_b = shapely.box(52, 45, 62, 55), shapely.box(52, 45, 62, 55.5)
    gdf = gpd.GeoDataFrame({"scene": ["b", "a"]}, geometry=[roof_b, roof_a], crs=UTM)
    for order in (scenes, scenes[::-1]):
        kept, dropped = drop_copies(gdf, order)
        assert dropped == 1 and kept["scene"].tolist() == ["a"]


def test_written_block_by_block_only_polygons_near_another_scene_wait_for_the_merge(
        tmp_path: Path, monkeypatch) -> None:
    """predict writes polygons as their blocks come; only those that could be copies are held to the end."""
    import geoseg.predict.overlaps as overlaps
    from geoseg.predict.collect import write_polygons

    scenes = _scenes(tmp_path)
    roof_a, roof_b = shapely.box(52, 45, 62, 55), shapely.box(52, 45, 62, 55.5)  # one roof, both scenes
    alone = {"a": [shapely.box(10, 10, 20, 20), shapely.box(30, 60, 40, 70)],
             "b": [shapely.box(120, 80, 130, 90)]}
    def block(scene, geoms):
        return scene, gpd.GeoDataFrame({"scene": [scene.name] * len(geoms)}, geometry=geoms, crs=UTM)

    blocks = [block(scenes[0], [*alone["a"], roof_a]), block(scenes[1], [roof_b]), block(scenes[1], alone["b"])]
    seen: list[int] = []
    real = overlaps.drop_copies

    def spy(gdf, order):
        seen.append(len(gdf))
        return real(gdf, order)

    monkeypatch.setattr(overlaps, "drop_copies", spy)
    out = tmp_path / "b.gpkg"
    done = write_polygons(blocks, out, scenes, once=True)
    assert seen == [2]  # the roof's two copies; the objects far from the other scene went straight out
    back = gpd.read_file(out)
    assert done.polygons == len(back) == 4 and done.copies == 1
    assert sorted(back["scene"]) == ["a", "a", "a", "b"]
    assert any(g.equals(roof_a) for g in back.geometry)  # the copy deeper inside its scene
    every = write_polygons(blocks, tmp_path / "all.gpkg", scenes, once=False)
    assert every.polygons == 5 and every.copies == 0 and seen == [2]


def test_scenes_that_abut_warn_that_objects_across_the_seam_are_cut(tiny_run: Path, tmp_path: Path, caplog) -> None:
    """Tiles of a mosaic cut edge to edge (a municipality's orthophoto tiles): a roof across the seam came out
    as two polygons, a piece from each scene, without a word. The warning's advice, a VRT mosaic, finds it whole."""
    import logging

    import rasterio
    from conftest import bright_boxes_scene

    from geoseg.predict import PredictConfig, predict

    boxes = [(6, 6, 16, 16), (40, 20, 56, 32), (70, 40, 80, 50)]  # the second across column 48
    whole = bright_boxes_scene(tmp_path / "whole.tif", (64, 96), boxes, seed=4)
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    with rasterio.open(whole) as src:
        data, t = src.read(), src.transform
    for k, col in enumerate((0, 48)):
        write_raster(tiles / f"t{k}.tif", data[:, :, col:col + 48], UTM, t * t.translation(col, 0))
    cfg = PredictConfig(block=32, watershed_halo=16, simplify=0.0, min_area=1.0, budget=1.0)
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.overlaps"):
        predict([tiles], tiny_run, tmp_path / "cut.gpkg", cfg, progress=False)
    assert "scenes t0 and t1 abut without overlap (1 such pairs): an object across a seam is cut in two" in caplog.text
    seam = shapely.LineString([t * (48, 0), t * (48, 64)])
    cut = gpd.read_file(tmp_path / "cut.gpkg")
    assert len(cut) == 4 and sorted(cut[cut.intersects(seam.buffer(0.3))]["scene"]) == ["t0", "t1"]
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">' + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">t{k}.tif</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="48" ySize="64"/><DstRect xOff="{48 * k}" yOff="0" xSize="48" '
            f'ySize="64"/></SimpleSource>' for k in (0, 1)) + "</VRTRasterBand>" for b in (1, 2, 3))
    (tiles / "mosaic.vrt").write_text(f'<VRTDataset rasterXSize="96" rasterYSize="64"><SRS>{UTM}</SRS><GeoTransform>'
                                      f'{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>{bands}</VRTDataset>')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.overlaps"):
        predict([tiles], tiny_run, tmp_path / "whole.gpkg", cfg, progress=False)  # the folder gives the mosaic
    got = gpd.read_file(tmp_path / "whole.gpkg")
    assert "abut without overlap" not in caplog.text and len(got) == 3 and set(got["scene"]) == {"mosaic"}
    across = got[got.intersects(seam)].geometry
    assert len(across) == 1 and across.iloc[0].area > 0.8 * 16 * 12 * 0.25  # the whole roof, 16 x 12 px of 0.5 m
