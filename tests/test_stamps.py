"""`geoseg.io.stamps`: the one "has this input changed?" answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

from geoseg.io.stamps import digest, input_stamp


def test_a_file_rewritten_deep_in_a_folder_changes_the_folder_stamp(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(b"a" * 10)
    os.utime(run, ns=(1, 1))
    before = input_stamp(run)
    assert before is not None and before["bytes"] == 10 and before["name"] == "run"
    dir_mtime = run.stat().st_mtime_ns
    best.write_bytes(b"b" * 12)
    os.utime(best, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    assert run.stat().st_mtime_ns == dir_mtime  # the folder itself did not change
    after = input_stamp(run)
    assert after != before and after is not None and after["bytes"] == 12


def test_file_stamp_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "scene.tif"
    f.write_bytes(b"xyz")
    s = input_stamp(f)
    assert s == {"name": "scene.tif", "bytes": 3, "mtime_ns": f.stat().st_mtime_ns}
    assert input_stamp(tmp_path / "gone.tif") is None
    assert digest({"a": s}) == digest({"a": dict(s)}) != digest({"a": None})


def _mosaic(root: Path, tiles: Path) -> Path:
    """A GDAL VRT in ``root`` over two 16x32 tiles in another folder ``tiles`` (a mosaic of 32x32)."""
    import numpy as np
    from conftest import write_raster
    from rasterio.transform import from_origin

    tiles.mkdir(parents=True, exist_ok=True)
    for i in (0, 1):
        write_raster(tiles / f"t{i}.tif", np.full((1, 32, 16), 50 * (i + 1), np.uint8), "EPSG:32636",
                     from_origin(450000 + 8 * i, 40000, 0.5, 0.5))
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="0">{tiles / f"t{i}.tif"}</SourceFilename>'
        f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="16" ySize="32"/>'
        f'<DstRect xOff="{16 * i}" yOff="0" xSize="16" ySize="32"/></SimpleSource>' for i in (0, 1))
    vrt = root / "mosaic.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="32" rasterYSize="32"><SRS>EPSG:32636</SRS>'
                   f'<GeoTransform>450000, 0.5, 0, 40000, 0, -0.5</GeoTransform>'
                   f'<VRTRasterBand dataType="Byte" band="1">{sources}</VRTRasterBand></VRTDataset>')
    return vrt


def test_a_mosaic_tile_reprocessed_in_place_changes_the_mosaic_and_its_folder(tmp_path: Path) -> None:
    """A VRT's stamp was the VRT file's alone: predict's cache and `geoseg run` reused a changed mosaic."""
    (tmp_path / "scenes").mkdir()
    vrt = _mosaic(tmp_path / "scenes", tmp_path / "tiles")
    before, folder = input_stamp(vrt), input_stamp(tmp_path / "scenes")
    assert before is not None and before["bytes"] > vrt.stat().st_size  # the tiles count
    t1 = tmp_path / "tiles" / "t1.tif"
    os.utime(t1, ns=(t1.stat().st_atime_ns, t1.stat().st_mtime_ns + 2_000_000_000))
    assert input_stamp(vrt) != before and input_stamp(tmp_path / "scenes") != folder


def test_an_external_mask_or_overviews_change_the_scene_stamp(tmp_path: Path) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"xyz")
    before = input_stamp(scene)
    (tmp_path / "scene.tif.msk").write_bytes(b"m" * 5)
    after = input_stamp(scene)
    assert after is not None and after["bytes"] == 8 and after != before
    (tmp_path / "scene.tif.aux.xml").write_bytes(b"<PAMDataset/>")  # QGIS's statistics: not pixels
    assert input_stamp(scene) == after


def test_a_pipeline_on_a_mosaic_reruns_when_a_tile_changes(tmp_path: Path) -> None:
    import yaml
    from conftest import labels_for

    from geoseg.pipeline.run import run_pipeline

    vrt = _mosaic(tmp_path, tmp_path / "tiles")
    labels_for(vrt, tmp_path / "l.gpkg", [(4, 4, 12, 12), (20, 20, 28, 28)])
    spec = {"tile": {"scenes": ["mosaic.vrt"], "labels": "l.gpkg", "out": "patches",
                     "params": {"size": 16, "overlap": 0, "val_fraction": 0.0}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    (first,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    (again,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert first.ran and not again.ran, again.why
    t0 = tmp_path / "tiles" / "t0.tif"
    os.utime(t0, ns=(t0.stat().st_atime_ns, t0.stat().st_mtime_ns + 2_000_000_000))
    (third,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert third.ran, third.why


def test_a_folder_with_a_mosaic_beside_its_tiles_gives_the_mosaic_once(tmp_path: Path, caplog) -> None:
    """`gdalbuildvrt mosaic.vrt *.tif` in the scenes folder: every object would come twice."""
    from geoseg.io.sources import list_scenes

    _mosaic(tmp_path, tmp_path)  # the tiles beside the mosaic
    assert [s.name for s in list_scenes([tmp_path])] == ["mosaic"]
    assert "2 raster(s) read by the VRT mosaic mosaic.vrt are left out" in caplog.text
    assert [s.name for s in list_scenes([tmp_path / "t0.tif", tmp_path / "t1.tif"])] == ["t0", "t1"]  # named: kept
    assert [s.name for s in list_scenes([str(tmp_path / "t*.tif")])] == ["t0", "t1"]


def test_a_pipeline_scenes_pattern_over_a_mosaic_and_its_tiles_gives_the_mosaic(tmp_path: Path) -> None:
    import yaml
    from conftest import labels_for

    from geoseg.pipeline.run import run_pipeline

    vrt = _mosaic(tmp_path, tmp_path)
    labels_for(vrt, tmp_path / "l.gpkg", [(4, 4, 12, 12), (20, 20, 28, 28)])
    spec = {"tile": {"scenes": ["*.[tv][ir][ft]"], "labels": "l.gpkg", "out": "patches",  # *.tif and *.vrt
                     "params": {"size": 16, "overlap": 0, "val_fraction": 0.0}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    images = json.loads((tmp_path / "patches" / "annotations.json").read_text())["images"]
    assert {im["scene"] for im in images} == {"mosaic"} and len(images) == 4


def test_rasters_in_subfolders_of_a_scenes_folder_are_told_unless_a_mosaic_reads_them(tmp_path: Path, caplog) -> None:
    """`scenes/extra.tif` beside `scenes/2024/*.tif` read the first only, without a word."""
    import shutil

    from geoseg.io.sources import list_scenes

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    _mosaic(scenes, scenes / "tiles")  # gdalbuildvrt mosaic.vrt tiles/*.tif: the tiles are read
    (scenes / ".predict-cache").mkdir()  # hidden: not scenes
    shutil.copy(scenes / "tiles" / "t0.tif", scenes / ".predict-cache" / "x.tif")
    (scenes / "__MACOSX").mkdir()  # a zip made on macOS: AppleDouble files, no rasters
    (scenes / "__MACOSX" / "._mosaic.tif").write_bytes(b"\x00\x05\x16\x07")
    assert [s.name for s in list_scenes([scenes])] == ["mosaic"]
    assert "subfolders" not in caplog.text
    (scenes / "2024").mkdir()
    shutil.copy(scenes / "tiles" / "t1.tif", scenes / "2024" / "b.tif")
    assert [s.name for s in list_scenes([scenes])] == ["mosaic"]
    assert f"rasters in its subfolders are not read (2024); pass '{scenes}/**/*.tif' (quoted)" in caplog.text
    assert [s.name for s in list_scenes([f"{scenes}/**/*.tif"])] == ["b", "t0", "t1"]
