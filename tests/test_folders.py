"""A folder of scenes: georeferenced JPEG/PNG orthophotos are scenes, nothing is left out silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.io.sources import list_scenes

SHAPE = (64, 96)
BOXES = grid_boxes(SHAPE, step=20, seed=3)


def as_image(tif: Path, out: Path, world: bool = True) -> Path:
    """``tif``'s pixels as a JPEG or PNG; with its grid in a world file and its CRS in ``.aux.xml``."""
    with rasterio.open(tif) as src:
        data, prof = src.read(), src.profile
    driver = "PNG" if out.suffix == ".png" else "JPEG"
    geo = {"crs": prof["crs"], "transform": prof["transform"]} if world else {}
    with rasterio.open(out, "w", driver=driver, width=prof["width"], height=prof["height"], count=prof["count"],
                       dtype=prof["dtype"], WORLDFILE="YES" if world else "NO", **geo) as dst:
        dst.write(data)
    return out


def orthophotos(root: Path) -> Path:
    """A folder like a municipal delivery: a GeoTIFF, a JPEG with world file, a plain PNG, an ECW."""
    scenes = root / "scenes"
    scenes.mkdir()
    bright_boxes_scene(scenes / "north.tif", SHAPE, BOXES, seed=1)
    east = from_origin(450000 + SHAPE[1] * 0.5 + 100, 40000, 0.5, 0.5)  # 100 m east of north.tif
    bright_boxes_scene(root / "east.tif", SHAPE, BOXES, seed=2, transform=east)
    as_image(root / "east.tif", scenes / "east.jpg")
    as_image(root / "east.tif", scenes / "quicklook.png", world=False)
    (scenes / "old_delivery.ecw").write_bytes(b"\0" * 64)
    (scenes / "._north.tif").write_bytes(b"\0\5\26\7" + b"\0" * 60)  # macOS's AppleDouble file, on a shared drive
    return scenes


def test_a_folder_takes_georeferenced_images_and_names_what_it_leaves_out(tmp_path: Path, caplog) -> None:
    scenes = orthophotos(tmp_path)
    assert sorted(p.name for p in scenes.iterdir()) == [
        "._north.tif", "east.jpg", "east.jpg.aux.xml", "east.wld", "north.tif", "old_delivery.ecw", "quicklook.png"]
    with caplog.at_level(logging.WARNING, logger="geoseg.io.folders"):
        got = list_scenes([scenes])
    assert [s.name for s in got] == ["east", "north"]
    assert "1 image(s) without georeferencing left out (quicklook.png)" in caplog.text
    assert "1 raster(s) left out (old_delivery.ecw): this GDAL has no ECW or MrSID driver" in caplog.text
    # named files and patterns are taken as given
    assert [s.name for s in list_scenes([str(scenes / "*.tif")])] == ["north"]


def test_tile_cuts_chips_of_a_jpeg_orthophoto_on_its_world_file_grid(tmp_path: Path) -> None:
    """Before, a folder's JPEG scenes were left out without a word: fewer chips, exit 0."""
    scenes = orthophotos(tmp_path)
    labels = labels_for(tmp_path / "east.tif", tmp_path / "l.gpkg", BOXES)  # the labels lie on the JPEG only
    res = CliRunner().invoke(cli, ["tile", str(scenes), "--labels", str(labels), "--out", str(tmp_path / "p"),
                                   "--size", "32", "--overlap", "0", "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    images = json.loads((tmp_path / "p" / "annotations.json").read_text())["images"]
    east = [im for im in images if im["scene"] == "east"]
    assert len(east) == 6 and {im["scene"] for im in images} == {"east", "north"}
    with rasterio.open(tmp_path / "east.tif") as src:
        grid = src.transform
    chip = next(im for im in east if im["file_name"].endswith("east_32_64.tif"))
    with rasterio.open(tmp_path / "p" / "images" / chip["file_name"]) as c:
        assert c.crs == "EPSG:32636" and c.transform.almost_equals(grid * grid.translation(64, 32))


def test_predict_writes_the_polygons_of_a_jpeg_orthophoto(tiny_run: Path, tmp_path: Path) -> None:
    scenes = orthophotos(tmp_path)
    out = tmp_path / "b.gpkg"
    res = CliRunner().invoke(cli, ["predict", str(scenes), "--model", str(tiny_run), "--out", str(out),
                                   "--block", "32", "--min-area", "1"])
    assert res.exit_code == 0, res.output
    got = gpd.read_file(out)
    east = got[got["scene"] == "east"]
    assert len(east) >= 0.8 * len(BOXES) and (got["scene"] == "north").sum() >= 0.8 * len(BOXES)
    with rasterio.open(tmp_path / "east.tif") as src:
        left, bottom, right, top = src.bounds
    x0, y0, x1, y1 = east.total_bounds
    assert left <= x0 and x1 <= right and bottom <= y0 and y1 <= top  # on the world file's ground


@pytest.mark.parametrize("layout", ["subfolders", "tiles"])
def test_a_folder_without_scenes_says_what_it_holds(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "scenes"
    if layout == "subfolders":
        (root / "2023").mkdir(parents=True)
        bright_boxes_scene(root / "2023" / "a.tif", SHAPE, BOXES)
        bright_boxes_scene(root / "2023" / "b.tif", SHAPE, BOXES)
        (root / "2023" / "B02.jp2").write_bytes(b"")  # the pattern names the most common extension
        expect = f"its subfolders hold rasters (2023): pass '{root}/**/*.tif' (quoted)"
    else:  # web-map tiles: PNGs named z/x/y, no georeferencing
        root.mkdir()
        rasterio.open(root / "21-1238424-1046544.png", "w", driver="PNG", width=8, height=8, count=3,
                      dtype="uint8").close()
        expect = "or a georeferenced jpeg/jpg/png/webp); pass the folder of your scenes"
    res = CliRunner().invoke(cli, ["tile", str(root), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"geoseg: error: {root} holds no raster" in res.output and expect in res.output, res.output
    if layout == "subfolders":
        assert [s.name for s in list_scenes([f"{root}/**/*.tif"])] == ["a", "b"]
    assert not (tmp_path / "p").exists()
