"""A folder of scenes: georeferenced JPEG/PNG orthophotos are scenes, nothing is left out silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import SHARED_DATA, bright_boxes_scene, grid_boxes, labels_for, requires_shared_data
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


@pytest.mark.parametrize("layout", ["subfolders", "tiles", "zipped"])
def test_a_folder_without_scenes_says_what_it_holds(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "scenes"
    if layout == "zipped":  # orthophotos delivered zipped, not yet extracted
        import zipfile

        root.mkdir()
        bright_boxes_scene(tmp_path / "a.tif", SHAPE, BOXES)
        with zipfile.ZipFile(root / "ortho_2024.zip", "w") as z:
            z.write(tmp_path / "a.tif", "a.tif")
        expect = "it holds archives (ortho_2024.zip): extract them first"
    elif layout == "subfolders":
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
    if layout == "zipped":  # the archive named, and GDAL's path into it: one line each, not 'does not exist'
        for given, said in ((root / "ortho_2024.zip", "is an archive, not a raster: extract it first"),
                            (f"/vsizip/{root}/ortho_2024.zip/a.tif", "archive and in-memory paths (vsizip)")):
            res = CliRunner().invoke(cli, ["tile", str(given), "--out", str(tmp_path / "p")])
            lines = res.output.strip().splitlines()
            assert res.exit_code == 1 and len(lines) == 1 and said in lines[0], res.output
        (tmp_path / "a.tif").rename(root / "a.tif")  # one extracted beside it: tiled, the archive named as left out
        res = CliRunner().invoke(cli, ["tile", str(root), "--out", str(tmp_path / "p"), "--size", "32"])
        assert res.exit_code == 0 and "1 archive(s) left out (ortho_2024.zip)" in res.output, res.output


@pytest.mark.shared_data
@requires_shared_data
def test_web_map_tiles_with_world_files_and_their_mosaic_read_as_the_scene_they_were_cut_from(tmp_path: Path) -> None:
    """The 16 RGBA PNG tiles of Kampala block B (zoom 21) given world files, and a VRT mosaic of them: read at
    twice their pixel (as the demo's model reads them) they give the pixels and mask of the GeoTIFF scene made
    from the same tiles. Before, the mosaic (4 bands, one alpha) stopped on the warped view's second alpha band."""
    import re

    from rasterio.windows import Window

    from geoseg.io.rasters import inspect_scene, open_scene

    kampala = SHARED_DATA / "kampala_oam_buildings"
    scene = inspect_scene(kampala / "scenes" / "kampala_blockB_z21.tif")
    left, top = scene.affine.c, scene.affine.f
    half = 2 * 20037508.342789244 / 2**21  # a zoom-21 tile's side in Web Mercator metres
    sources = []
    for png in sorted((kampala / "tiles").glob("OAM-*-21.png")):
        x, y, _ = map(int, re.findall(r"\d+", png.name))
        ulx, uly = -20037508.342789244 + x * half, 20037508.342789244 - y * half
        col, row = round((ulx - left) / (half / 256)), round((top - uly) / (half / 256))
        if 0 <= col < scene.width and 0 <= row < scene.height:
            (tmp_path / png.name).write_bytes(png.read_bytes())
            px = half / 256  # a world file: the centre of the upper-left pixel
            (tmp_path / png.name).with_suffix(".pgw").write_text(f"{px}\n0\n0\n{-px}\n{ulx + px / 2}\n{uly - px / 2}\n")
            (tmp_path / f"{png.name}.aux.xml").write_text("<PAMDataset><SRS>EPSG:3857</SRS></PAMDataset>")
            sources.append((png.name, col, row))
    assert len(sources) == 16 and [s.name for s in list_scenes([tmp_path])][0].startswith("OAM-")
    band = ('<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{ci}</ColorInterp>' + "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>{{b}}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="256" ySize="256"/><DstRect xOff="{col}" yOff="{row}" xSize="256" '
        f'ySize="256"/></SimpleSource>' for name, col, row in sources) + "</VRTRasterBand>")
    a = scene.affine
    (tmp_path / "mosaic.vrt").write_text(
        f'<VRTDataset rasterXSize="{scene.width}" rasterYSize="{scene.height}"><SRS>EPSG:3857</SRS><GeoTransform>'
        f'{a.c!r}, {a.a!r}, 0, {a.f!r}, 0, {a.e!r}</GeoTransform>'
        + "".join(band.format(b=b, ci=ci) for b, ci in ((1, "Red"), (2, "Green"), (3, "Blue"), (4, "Alpha")))
        + "</VRTDataset>")  # as gdalbuildvrt writes it over RGBA tiles
    (mosaic,) = list_scenes([tmp_path])  # the mosaic stands for its tiles
    coarse = 2 * scene.gsd
    reads = []
    for info in (scene, inspect_scene(mosaic)):
        moved = info.at_gsd(coarse)
        assert moved.count == 3 and moved.moved
        with open_scene(moved) as src:
            win = Window(0, 0, moved.width, moved.height)
            reads.append((src.read((1, 2, 3), window=win), src.read_masks(1, window=win)))
    assert np.array_equal(reads[0][0], reads[1][0]) and np.array_equal(reads[0][1] > 0, reads[1][1] > 0)
