"""`geoseg predict` on bad or unusual scenes: no silent wrong result, one clear error for the rest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for, write_raster
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.predict import PredictConfig, predict

SHAPE = (64, 96)
BOXES = grid_boxes(SHAPE, step=20, seed=3)


def cfg(**kw: object) -> PredictConfig:
    return PredictConfig(**{"block": 32, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0,
                            "budget": 1.0, **kw})


def one_error_line(res: object, *names: str) -> str:
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code != 0, out  # type: ignore[attr-defined]
    assert "Traceback" not in out and "unexpected" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("geoseg: error:")]
    assert len(lines) == 1, out
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


def test_scene_names_never_reach_the_cache_paths(tiny_run: Path, tmp_path: Path) -> None:
    # a scene called '...tif' once wrote its cache beside the output and the next scene
    # reused it; 'stamp.json.tif' could collide with the cache's own stamp
    for d in ("in", "in2"):
        (tmp_path / d).mkdir()
    a = bright_boxes_scene(tmp_path / "in" / "...tif", SHAPE, BOXES, seed=1)
    b = bright_boxes_scene(tmp_path / "in2" / "stamp.json.tif", SHAPE, BOXES[:3], seed=2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ga = predict([a], tiny_run, out_dir / "a.gpkg", cfg(), progress=False)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.gpkg"]  # nothing left beside it
    predict([b], tiny_run, out_dir / "b.gpkg", cfg(), progress=False)
    got_a, got_b = gpd.read_file(out_dir / "a.gpkg"), gpd.read_file(out_dir / "b.gpkg")
    assert ga.polygons == len(got_a) and len(got_a) > len(got_b) > 0
    assert set(got_b["scene"]) == {"stamp.json"}
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.gpkg", "b.gpkg"]


def test_nan_pixels_are_invalid_in_predict(tiny_run: Path, tmp_path: Path) -> None:
    path = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES, seed=4)
    with rasterio.open(path) as src:
        data, transform, crs = src.read().astype(np.float32), src.transform, src.crs
    data[:, :, 48:] = np.nan  # right half: no data, and no nodata value declared
    nan_scene = write_raster(tmp_path / "nan.tif", data, crs.to_string(), transform)
    predict([nan_scene], tiny_run, tmp_path / "p.gpkg", cfg(), progress=False)
    gdf = gpd.read_file(tmp_path / "p.gpkg")
    assert len(gdf) > 0 and np.isfinite(gdf["score"]).all()
    x_nan = transform * (48, 0)
    right = shapely.box(x_nan[0] + 0.5, -1e9, 1e9, 1e9)  # half a pixel inside the NaN half
    assert not gdf.intersects(right).any()


def test_a_scene_without_valid_pixels_warns(tiny_run: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A scene of nodata only (outside a mosaic's imagery) gives no polygon, and says so; the others go on."""
    good = bright_boxes_scene(tmp_path / "good.tif", SHAPE, BOXES, seed=4)
    with rasterio.open(good) as src:
        transform, crs = src.transform, src.crs.to_string()
    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, *SHAPE), np.uint8), crs, transform, nodata=0)
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.stage"):
        predict([empty, good], tiny_run, tmp_path / "p.gpkg", cfg(), progress=False)
    assert "1 scene(s) hold no valid pixel" in caplog.text and "from empty" in caplog.text, caplog.text
    assert set(gpd.read_file(tmp_path / "p.gpkg")["scene"]) == {"good"}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.stage"):
        predict([good], tiny_run, tmp_path / "q.gpkg", cfg(), progress=False)
    assert "no valid pixel" not in caplog.text


def test_a_scene_given_twice_is_predicted_once(tiny_run: Path, tmp_path: Path) -> None:
    """A folder and a file in it: one scene (once an error telling to rename it); two files of one name: an error."""
    from geoseg.errors import InputRasterError
    from geoseg.io.sources import list_scenes

    (tmp_path / "in").mkdir()
    good = bright_boxes_scene(tmp_path / "in" / "good.tif", SHAPE, BOXES, seed=4)
    assert [s.name for s in list_scenes([tmp_path / "in", good])] == ["good"]
    once = predict([tmp_path / "in"], tiny_run, tmp_path / "a.gpkg", cfg(), progress=False).polygons
    assert predict([tmp_path / "in", good], tiny_run, tmp_path / "b.gpkg", cfg(), progress=False).polygons == once > 0
    (tmp_path / "other").mkdir()
    bright_boxes_scene(tmp_path / "other" / "good.tif", SHAPE, BOXES, seed=5)
    with pytest.raises(InputRasterError, match="two scenes share the name 'good'"):
        list_scenes([tmp_path / "in", tmp_path / "other"])


def _with_alpha(rgb: Path, out: Path, transparent_from: int) -> Path:
    """``rgb`` as RGBA (a drone or web-map export), transparent from column ``transparent_from`` on."""
    with rasterio.open(rgb) as src:
        data, profile = src.read(), src.profile
    alpha = np.full((1, *data.shape[1:]), 255, np.uint8)
    alpha[:, :, transparent_from:] = 0
    profile.update(count=4, photometric="RGB", alpha="YES")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.concatenate([data, alpha]))
    return out


def test_an_alpha_band_is_the_mask_not_a_band(tiny_run: Path, tmp_path: Path) -> None:
    """RGBA scenes: a 3-band model predicts them as they are, nothing where alpha is 0; tile writes RGB chips
    (once: 4-band chips and an alpha 'band' in stats.json, and predict asked for --bands)."""
    from geoseg.tile import TileConfig, tile

    rgb = bright_boxes_scene(tmp_path / "rgb.tif", SHAPE, BOXES, seed=4)
    rgba = _with_alpha(rgb, tmp_path / "rgba.tif", transparent_from=48)
    predict([rgba], tiny_run, tmp_path / "p.gpkg", cfg(), progress=False)
    got = gpd.read_file(tmp_path / "p.gpkg")
    with rasterio.open(rgba) as src:
        x_clear = (src.transform * (48, 0))[0]
    assert len(got) > 0 and not got.intersects(shapely.box(x_clear + 0.5, -1e9, 1e9, 1e9)).any()
    tile([rgba], None, tmp_path / "chips", TileConfig(size=32, overlap=0, min_valid=0.0), scheduler="sync")
    stats = json.loads((tmp_path / "chips" / "stats.json").read_text())
    assert stats["bands"] == 3 and max(stats["mean"]) < 200  # no alpha band (mean ~255 where opaque)
    for chip in (tmp_path / "chips" / "images").iterdir():
        with rasterio.open(chip) as src:
            assert src.count == 3
    # alpha before the data bands (a VRT can say so): an error, not a shifted band order
    vrt = tmp_path / "alpha_first.vrt"
    vrt.write_text(f"""<VRTDataset rasterXSize="{SHAPE[1]}" rasterYSize="{SHAPE[0]}">
  <SRS>EPSG:32636</SRS><GeoTransform>450000, 0.5, 0, 40000, 0, -0.5</GeoTransform>""" + "".join(
        f"""<VRTRasterBand dataType="Byte" band="{i}"><ColorInterp>{ci}</ColorInterp><SimpleSource>
    <SourceFilename relativeToVRT="1">rgba.tif</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>
  </VRTRasterBand>""" for i, (ci, b) in enumerate([("Alpha", 4), ("Red", 1), ("Green", 2), ("Blue", 3)], 1))
        + "</VRTDataset>")
    res = CliRunner().invoke(cli, ["predict", str(vrt), "--model", str(tiny_run), "--out", str(tmp_path / "v.gpkg")])
    assert "alpha band 1 of 4" in one_error_line(res, str(vrt))
    # a near-infrared band in a 4-byte GeoTIFF written with GDAL's defaults is marked alpha: its values
    # say it is data, so it stays a band (with a warning), not a mask that drops it
    from geoseg.errors import GeoSegWarning
    from geoseg.io.rasters import inspect_scenes
    from geoseg.io.sources import list_scenes

    with rasterio.open(rgb) as src:
        data, profile = src.read(), src.profile
    nir = np.random.default_rng(0).integers(20, 230, (1, *SHAPE), dtype=np.uint8)
    profile.update(count=4)
    profile.pop("photometric", None)
    with rasterio.open(tmp_path / "rgbn.tif", "w", **profile) as dst:
        dst.write(np.concatenate([data, nir]))
    with rasterio.open(tmp_path / "rgbn.tif") as src:
        assert src.colorinterp[3].name == "alpha"  # what GDAL made of it
    with pytest.warns(GeoSegWarning, match="band 4 is marked alpha but holds other values"):
        (info,), _ = inspect_scenes(list_scenes([tmp_path / "rgbn.tif"]))
    assert info.count == 4


def test_an_alpha_band_scene_read_at_another_gsd(tiny_run: Path, tmp_path: Path) -> None:
    """An RGBA scene read on another grid (the model's GSD, `tile --gsd`) stopped with 'unexpected
    WarpOptionsError: The VRT already has an alpha band': the warped view added a second one."""
    from geoseg.tile import TileConfig, tile

    fine = [(2 * c0, 2 * r0, 2 * c1, 2 * r1) for c0, r0, c1, r1 in BOXES]  # the tiny scene at 0.25 m
    rgb = bright_boxes_scene(tmp_path / "rgb.tif", (2 * SHAPE[0], 2 * SHAPE[1]), fine, seed=4,
                             transform=from_origin(450000, 40000, 0.25, 0.25))
    rgba = _with_alpha(rgb, tmp_path / "rgba.tif", transparent_from=96)
    summary = predict([rgba], tiny_run, tmp_path / "p.gpkg", cfg(), progress=False)
    assert "read at 0.5 m/px" in "\n".join(summary.lines())  # the model's GSD: a warped view
    got = gpd.read_file(tmp_path / "p.gpkg")
    x_clear = 450000 + 96 * 0.25
    opaque = [b for b in fine if b[2] <= 96]
    assert len(got) >= 0.8 * len(opaque) and not got.intersects(shapely.box(x_clear + 0.5, -1e9, 1e9, 1e9)).any()
    tile([rgba], None, tmp_path / "chips", TileConfig(size=32, overlap=0, min_valid=0.0, gsd=0.5), scheduler="sync")
    stats = json.loads((tmp_path / "chips" / "stats.json").read_text())
    assert stats["bands"] == 3 and max(stats["mean"]) < 200 and stats["gsd"] == pytest.approx(0.5, rel=1e-3)


def test_an_alpha_band_beside_a_nodata_value_is_the_mask_and_rasterio_is_not_repeated(
        tiny_run: Path, tmp_path: Path) -> None:
    """A raster that declares nodata and has an alpha band: its mask is the alpha band's (rasterio's dataset
    mask prefers it), read on its own grid and warped to the model's GSD; a transparent fill of other values
    than the nodata value is not predicted on. rasterio's NodataShadowWarning (which says the opposite) was
    printed by predict at every place that reads a mask: the CLI no longer shows it."""
    for name, px in (("native", 0.5), ("fine", 0.25)):  # 0.25 m: read warped to the model's 0.5 m
        k = round(0.5 / px)
        rgb = bright_boxes_scene(tmp_path / f"{name}_rgb.tif", (SHAPE[0] * k, SHAPE[1] * k),
                                 [tuple(k * v for v in b) for b in BOXES], seed=4,
                                 transform=from_origin(450000, 40000, px, px))
        with rasterio.open(rgb) as src:
            data, profile = src.read(), src.profile
        data[:, :, 48 * k:] = 230  # the transparent half: a bright fill, not the nodata value
        alpha = np.full((1, *data.shape[1:]), 255, np.uint8)
        alpha[:, :, 48 * k:] = 0
        profile.update(count=4, photometric="RGB", alpha="YES", nodata=0)
        with rasterio.open(tmp_path / f"{name}.tif", "w", **profile) as dst:
            dst.write(np.concatenate([data, alpha]))
        out = tmp_path / f"{name}.gpkg"
        res = CliRunner().invoke(cli, ["predict", str(tmp_path / f"{name}.tif"), "--model", str(tiny_run), "--out",
                                       str(out), "--block", "32", "--min-area", "1", "--budget", "1"])
        assert res.exit_code == 0 and "NodataShadowWarning" not in res.output, res.output
        got = gpd.read_file(out)
        assert len(got) > 0 and not got.intersects(shapely.box(450000 + 24 + 0.5, -1e9, 1e9, 1e9)).any(), name


def test_chips_an_earlier_revision_cut_with_the_alpha_as_a_band_never_resume(tmp_path: Path, monkeypatch) -> None:
    """Same RGBA file, same options: a rerun reading it otherwise (3 bands and a mask) retiles, never resumes."""
    from geoseg.errors import OutputExistsError
    from geoseg.tile import TileConfig, tile

    rgba = _with_alpha(bright_boxes_scene(tmp_path / "rgb.tif", SHAPE, BOXES, seed=4), tmp_path / "rgba.tif",
                       transparent_from=48)
    tcfg = TileConfig(size=32, overlap=0, min_valid=0.0)
    with monkeypatch.context() as m:
        m.setattr("geoseg.io.rasters.alpha_bands", lambda src, path: [])  # the revision that read alpha as data
        tile([rgba], None, tmp_path / "chips", tcfg, scheduler="sync")
    assert json.loads((tmp_path / "chips" / "stats.json").read_text())["bands"] == 4
    with pytest.raises(OutputExistsError, match=r"inputs \(how the scenes are read"):
        tile([rgba], None, tmp_path / "chips", tcfg, scheduler="sync")
    tile([rgba], None, tmp_path / "chips", tcfg, scheduler="sync", overwrite=True)
    assert json.loads((tmp_path / "chips" / "stats.json").read_text())["bands"] == 3


def test_truncated_tiff_names_file_and_window(tiny_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    img = np.random.default_rng(0).integers(0, 255, (3, 256, 256)).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                       crs="EPSG:32636", transform=from_origin(450000, 40000, 0.5, 0.5),
                       tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(img)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size * 2 // 3)  # header and the first tiles intact, the rest gone
    out = tmp_path / "o.gpkg"
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out", str(out),
                                   "--block", "64", "--scheduler", "sync"])
    line = one_error_line(res, str(path))
    assert "cannot read" in line or "damaged" in line or "truncated" in line, line
    assert not out.exists()


def test_band_mismatch_leaves_nothing(tiny_run: Path, tmp_path: Path) -> None:
    path = bright_boxes_scene(tmp_path / "s4.tif", SHAPE, BOXES, bands=4)
    out = tmp_path / "o.gpkg"
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out", str(out)])
    one_error_line(res, str(path), "--bands")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s4.tif"]  # no cache, no output


def test_bands_of_another_count_name_the_option_not_the_scene(tiny_run: Path, tmp_path: Path) -> None:
    """--bands 1,2 for a 3-band model said 'the scene has 3 bands but the model takes 3'."""
    path = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES)
    out = tmp_path / "o.gpkg"
    for bands in ("1,2", "1,2,3,3"):
        res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out", str(out),
                                       "--bands", bands])
        line = one_error_line(res, str(path), f"--bands {bands}")
        assert f"names {len(bands.split(','))} bands but the model takes 3" in line, line
    assert not out.exists()


def test_options_of_two_kinds_say_both_in_one_line(tiny_run: Path, tmp_path: Path) -> None:
    """--gsd 0 said "invalid value for 'gsd.literal['native','model']' ... (and 1 more problems)"."""
    path = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES)
    for opt, value, said in (("--gsd", "0", "should be 'native' or 'model' or greater than 0"),
                             ("--budget", "0", "should be greater than 0 or 'auto'")):
        res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                       str(tmp_path / "o.gpkg"), opt, value])
        line = one_error_line(res, f"for '{opt}'", said)
        assert "literal" not in line and "constrained" not in line and "more problems" not in line, line


def test_other_dtype_than_training_warns(tiny_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = bright_boxes_scene(tmp_path / "u16.tif", SHAPE, BOXES, dtype="uint16")
    with caplog.at_level(logging.WARNING, logger="geoseg.io.encoding"):
        predict([path], tiny_run, tmp_path / "o.gpkg", cfg(), progress=False)
    assert any("uint16" in r.message and "uint8" in r.message and "u16.tif" in r.message
               for r in caplog.records), caplog.text


def test_cache_of_another_scene_is_not_reused(tiny_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # same output name, same scene file name, other pixels: the stamp differs, nothing is reused
    out = tmp_path / "o.gpkg"
    scene = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES, seed=1)
    import geoseg.predict.stage as stage

    def killed(*a: object) -> None:
        raise KeyboardInterrupt("killed after PV")

    monkeypatch.setattr(stage, "ff_block", killed)
    with pytest.raises(KeyboardInterrupt):  # a cache is left
        predict([scene], tiny_run, out, cfg(), scheduler="sync", progress=False)
    monkeypatch.undo()
    assert any(tmp_path.glob(".o.gpkg.geoseg-cache/*/pv_*.npz"))
    bright_boxes_scene(scene, SHAPE, BOXES[:2], seed=1)  # the scene is replaced at the same path
    s = predict([scene], tiny_run, out, cfg(), progress=False)
    assert s.resumed == {"PV": 0, "FF": 0, "instances": 0}
    assert len(gpd.read_file(out)) < len(BOXES)


# -- inputs that once ended in "unexpected ...; report it" --------------------------------------

@pytest.mark.parametrize("origin", [(1e12, 1e12, "EPSG:32636"), (0.0, 1e12, "EPSG:3857")],
                         ids=["utm-1e12", "mercator-pole"])
def test_scene_outside_its_crs_is_one_line_for_tile_and_predict(origin: tuple[float, float, str],
                                                                 tiny_run: Path, tmp_path: Path) -> None:
    """An origin at 1e12 has no ground pixel size (areas and simplify tolerances divide by it)."""
    x, y, crs = origin
    path = bright_boxes_scene(tmp_path / "far.tif", SHAPE, BOXES, crs=crs,
                              transform=from_origin(x, y, 0.5, 0.5))
    for args in (["tile", str(path), "--out", str(tmp_path / "p")],
                 ["predict", str(path), "--model", str(tiny_run), "--out", str(tmp_path / "o.gpkg")]):
        line = one_error_line(CliRunner().invoke(cli, args), str(path), "georeferencing")
        assert "outside the valid area" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.tif"]


def test_scene_in_degrees_past_180_is_one_line_and_a_global_grid_is_not(tiny_run: Path, tmp_path: Path) -> None:
    """A scene in EPSG:4326 from 179.999 to 180.001 degrees: labels at -179.9995 (as GeoJSON and
    GeoPackage hold them) missed its eastern half, whose roofs were trained as background."""
    from geoseg.io.rasters import inspect_scene

    path = bright_boxes_scene(tmp_path / "past.tif", SHAPE, BOXES, crs="EPSG:4326",
                              transform=from_origin(180.0 - SHAPE[1] / 2 * 1e-5, -16.8, 1e-5, 1e-5))
    roofs = [shapely.box(-179.9995, -16.8005, -179.9994, -16.8004), shapely.box(179.9994, -16.8005, 179.9995, -16.8004)]
    gpd.GeoDataFrame(geometry=roofs, crs="EPSG:4326").to_file(tmp_path / "l.gpkg")
    for args in (["tile", str(path), "--labels", str(tmp_path / "l.gpkg"), "--out", str(tmp_path / "p")],
                 ["predict", str(path), "--model", str(tiny_run), "--out", str(tmp_path / "o.gpkg")]):
        line = one_error_line(CliRunner().invoke(cli, args), str(path), "gdalwarp -t_srs EPSG:327")
        assert "past ±180" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.gpkg", "past.tif"]
    world = bright_boxes_scene(tmp_path / "world.tif", (10, 180), [], crs="EPSG:4326",  # the equator's band
                               transform=from_origin(-180.0, 1.0, 2.0000000001, 0.2))
    assert inspect_scene(world).width == 180  # -180 to 180, but for a step's rounding
    from geoseg.errors import InputRasterError
    from geoseg.io.ground import check_ground_pixel

    with pytest.raises(InputRasterError, match="past ±180"):  # degrees with heights: its third axis is metres
        check_ground_pixel("h.tif", from_origin(179.9, -16.7, 1e-4, 1e-4), "EPSG:4979", (100, 2000))


def test_metres_under_a_degrees_label_are_one_line_for_scenes_labels_and_predictions(tiny_run: Path,
                                                                                       tmp_path: Path) -> None:
    """A scene, labels or predictions in metres whose file says EPSG:4326 (a CRS assigned by mistake):
    the labels stopped tile with 'unexpected GEOSException', evaluate with 'unexpected RuntimeError:
    Unable to determine UTM CRS', and the scene was told to be warped across 180°."""
    scene = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES)
    utm = labels_for(scene, tmp_path / "utm.gpkg", BOXES, crs="EPSG:32636")
    gpd.read_file(utm).set_crs(4326, allow_override=True).to_file(tmp_path / "deg.gpkg")
    wrong = bright_boxes_scene(tmp_path / "w.tif", SHAPE, BOXES, crs="EPSG:4326")  # 450000 "degrees" east
    cases = [(["tile", str(scene), "--labels", str(tmp_path / "deg.gpkg"), "--out", str(tmp_path / "p")], "deg.gpkg"),
             (["evaluate", str(tmp_path / "deg.gpkg"), str(utm)], "deg.gpkg"),
             (["predict", str(wrong), "--model", str(tiny_run), "--out", str(tmp_path / "o.gpkg")], str(wrong))]
    for args, name in cases:
        line = one_error_line(CliRunner().invoke(cli, args), name, "not degrees")
        assert "-a_srs" in line and "unexpected" not in line
    assert not (tmp_path / "p").exists() and not (tmp_path / "o.gpkg").exists()
    # UTM offset by 10^12 m (outside what the CRS covers): reprojected to the scene's, inf
    far = gpd.read_file(utm)
    far.geometry = far.geometry.translate(1e12, 1e12)
    far.to_file(tmp_path / "far.gpkg")
    wm = bright_boxes_scene(tmp_path / "wm.tif", SHAPE, BOXES, crs="EPSG:3857")
    args = ["tile", str(wm), "--labels", str(tmp_path / "far.gpkg"), "--out", str(tmp_path / "p")]
    assert "outside what EPSG:32636 covers" in one_error_line(CliRunner().invoke(cli, args), "far.gpkg", "-a_srs")
    # a prediction file of features without geometry: evaluated as none (stopped with 'unexpected ValueError')
    nothing = gpd.read_file(utm)
    gpd.GeoDataFrame(nothing.drop(columns="geometry"), geometry=gpd.GeoSeries([None] * len(nothing)),
                     crs="EPSG:4326").to_file(tmp_path / "none.gpkg")
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "none.gpkg"), str(utm),
                                   "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["fn"] == len(BOXES)


def test_a_scene_of_the_training_type_in_another_range_warns_with_a_rescale(tiny_run: Path, tmp_path: Path) -> None:
    """uint8 like the chips, but stretched otherwise (a 12-bit product divided by 16): the model saw it
    flat grey at its clip and found nothing, exit 0, without a word."""
    bright = bright_boxes_scene(tmp_path / "bright.tif", SHAPE, BOXES)
    with rasterio.open(bright) as src:
        profile, data = src.profile, src.read()
    dark = tmp_path / "dark.tif"
    with rasterio.open(dark, "w", **profile) as dst:
        dst.write(data // 16)
    for scene, far in ((bright, False), (dark, True)):
        res = CliRunner().invoke(cli, ["predict", str(scene), "--model", str(tiny_run), "--out",
                                       str(tmp_path / f"{scene.stem}.gpkg"), "--no-progress"])
        assert res.exit_code == 0, res.output
        said = "hold values far from the training chips'" in res.output
        assert said == far, res.output
    assert "band(s) 1,2,3" in res.output and "gdal_translate -scale_1 " in res.output and "-ot Byte " in res.output
    found = {name: len(gpd.read_file(tmp_path / f"{name}.gpkg")) for name in ("bright", "dark")}
    assert found["bright"] >= len(BOXES) - 1 and found["dark"] < found["bright"] / 2, found  # what the warning is for


def test_scene_smaller_than_the_model_scale(tiny_run: Path, tmp_path: Path) -> None:
    path = write_raster(tmp_path / "dot.tif", np.ones((3, 1, 1), np.uint8), "EPSG:32636",
                        from_origin(450000, 40000, 0.5, 0.5))
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "o.gpkg")])
    assert "too small for the model" in one_error_line(res, str(path), "remove it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dot.tif"]
    # a scene large enough as stored, read too coarse: the fix is the option, not the file
    big = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES)
    res = CliRunner().invoke(cli, ["predict", str(big), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "o.gpkg"), "--gsd", "1000"])
    line = one_error_line(res, str(big), "read at 1e+03 m/px (--gsd)", "finer --gsd")
    assert "remove it" not in line and not (tmp_path / "o.gpkg").exists()
    two = bright_boxes_scene(tmp_path / "two.tif", (2, 2), [], seed=0)  # the smallest that runs
    predict([two], tiny_run, tmp_path / "two.gpkg", cfg(), progress=False)
    assert (tmp_path / "two.gpkg").is_file()


@pytest.mark.parametrize("content", [b"hello, I am text", b"", b"PK\x03\x04 not a zip"],
                         ids=["text", "empty", "fake-zip"])
def test_a_file_named_pt_that_is_no_checkpoint(content: bytes, tmp_path: Path) -> None:
    scene = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES)
    model = tmp_path / "model.pt"
    model.write_bytes(content)
    for args in (["predict", str(scene), "--model", str(model), "--out", str(tmp_path / "o.gpkg")],
                 ["export", "--model", str(model), "--out", str(tmp_path / "export")]):
        line = one_error_line(CliRunner().invoke(cli, args), str(model))
        assert "not a loadable checkpoint" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "s.tif"]


def test_a_truncated_checkpoint_is_one_line_cut_at_a_word(tmp_path: Path) -> None:
    """torch's reason for a truncated file is 300 characters; the line was cut mid-word ("If yo")."""
    import io
    import re

    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buf)
    model = tmp_path / "model.pt"
    model.write_bytes(buf.getvalue()[:600])  # a copy that stopped early
    scene = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES)
    line = one_error_line(CliRunner().invoke(cli, ["predict", str(scene), "--model", str(model), "--out",
                                                   str(tmp_path / "o.gpkg")]), str(model))
    reason = re.search(r"not a loadable checkpoint \((.*)\); it is corrupt", line)
    assert reason and "central directory" in reason.group(1), line
    try:
        torch.load(model, weights_only=True)
    except Exception as err:  # noqa: BLE001 - the message torch gives, whatever its type
        words = set(re.split(r"[\s.]+", str(err)))
    assert reason.group(1).rstrip(".").split()[-1] in words, line  # a whole word of torch's message


@pytest.mark.parametrize("kind", ["gpkg_table", "csv"])
def test_truth_without_geometry_column(kind: str, tmp_path: Path) -> None:
    import pandas as pd
    import pyogrio

    pred = tmp_path / "pred.gpkg"
    gpd.GeoDataFrame({"score": [0.9]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:32636").to_file(pred)
    table = pd.DataFrame({"class": ["building"], "area": [10.0]})
    truth = tmp_path / ("truth.csv" if kind == "csv" else "truth.gpkg")
    if kind == "csv":
        table.to_csv(truth, index=False)
    else:
        pyogrio.write_dataframe(table, truth, layer="attributes")
    res = CliRunner().invoke(cli, ["evaluate", str(pred), str(truth), "--json", str(tmp_path / "e.json")])
    assert "no geometry column" in one_error_line(res, str(truth))
    assert not (tmp_path / "e.json").exists()


def test_objects_in_overlapping_scenes_come_out_once(tiny_run: Path, tmp_path: Path) -> None:
    """Two scenes cut from one with an overlap (tiles of a mosaic): each box once, and whole where one scene
    cuts it (before, every box of the overlap came out twice, and those at a scene edge as a fragment too)."""
    full = bright_boxes_scene(tmp_path / "full.tif", SHAPE, BOXES, seed=4)
    with rasterio.open(full) as src:
        data, t, crs = src.read(), src.transform, src.crs.to_string()
    cuts = {"left": (0, 70), "right": (30, SHAPE[1])}  # boxes cross col 30 and col 70: cut by one scene
    parts = [write_raster(tmp_path / f"{name}.tif", data[:, :, c0:c1].copy(), crs, t * Affine.translation(c0, 0))
             for name, (c0, c1) in cuts.items()]
    assert any(c0 < 30 < c1 for c0, _, c1, _ in BOXES) and any(c0 < 70 < c1 for c0, _, c1, _ in BOXES)
    once = predict(parts, tiny_run, tmp_path / "once.gpkg", cfg(), progress=False)
    every = predict(parts, tiny_run, tmp_path / "all.gpkg", cfg(overlaps="all"), progress=False)
    alone = predict([full], tiny_run, tmp_path / "full.gpkg", cfg(), progress=False)
    assert every.copies == 0 and once.copies == every.polygons - once.polygons > 0
    assert once.polygons == alone.polygons == len(BOXES)
    gdf = gpd.read_file(tmp_path / "once.gpkg")
    px = abs(t.a * t.e)
    for c0, r0, c1, r1 in BOXES:  # one polygon on each box, the whole of it
        hit = gdf[gdf.contains(shapely.Point(*(t * ((c0 + c1) / 2, (r0 + r1) / 2))))]
        assert len(hit) == 1 and hit.area.iloc[0] / px >= 0.8 * (c1 - c0) * (r1 - r0), (c0, r0, c1, r1)
    assert "overlapping scenes: " in "\n".join(once.lines()) and "--overlaps all" in "\n".join(once.lines())


def test_overwrite_never_deletes_other_layers_of_a_geopackage(tiny_run: Path, tmp_path: Path) -> None:
    """A QGIS project GeoPackage given as --out with --overwrite lost all its layers to the one predicted."""
    scene = bright_boxes_scene(tmp_path / "s.tif", SHAPE, BOXES, seed=4)
    project = tmp_path / "project.gpkg"
    roads = gpd.GeoDataFrame(geometry=[shapely.LineString([(450000, 39990), (450040, 39990)])], crs="EPSG:32636")
    roads.to_file(project, layer="roads")
    before = project.read_bytes()
    args = ["predict", str(scene), "--model", str(tiny_run), "--out", str(project), "--block", "32",
            "--watershed-halo", "16", "--budget", "1.0", "--overwrite"]
    line = one_error_line(CliRunner().invoke(cli, args), "project.gpkg")
    assert "other layers (roads)" in line and "new file" in line
    assert project.read_bytes() == before
    own = tmp_path / "own.gpkg"  # a file holding only geoseg's own layer is replaced as before
    res = CliRunner().invoke(cli, [*args[:5], str(own), *args[6:]])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*args[:5], str(own), *args[6:]])
    assert res.exit_code == 0 and len(gpd.read_file(own)) > 0, res.output
    # the style QGIS saved in the file as the layer's default is not another layer: it is kept
    style = pd.DataFrame({"f_table_catalog": [""], "f_table_schema": [""], "f_table_name": ["own"],
                          "f_geometry_column": ["geom"], "styleName": ["own"], "styleQML": ["<qgis>red</qgis>"],
                          "styleSLD": [""], "useAsDefault": [True], "description": [""], "owner": [""],
                          "ui": [""], "update_time": [pd.Timestamp("2026-12-01 10:00")]})
    pyogrio.write_dataframe(style, own, layer="layer_styles")
    res = CliRunner().invoke(cli, [*args[:5], str(own), *args[6:]])
    assert res.exit_code == 0 and len(gpd.read_file(own, layer="own")) > 0, res.output
    kept = pyogrio.read_dataframe(own, layer="layer_styles")
    assert kept["styleQML"].tolist() == ["<qgis>red</qgis>"] and kept["useAsDefault"].tolist() == [True]


def test_a_scene_read_far_finer_than_stored_warns_first(tiny_run: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A 2.5 m scene and a model trained at 0.5 m: read 5x finer (25x the pixels), said before the work."""
    coarse = bright_boxes_scene(tmp_path / "coarse.tif", (32, 32), [(4, 4, 12, 12)],
                                transform=from_origin(450000, 40000, 2.5, 2.5))
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.gsd"):
        s = predict([coarse], tiny_run, tmp_path / "p.gpkg", cfg(), progress=False)
    assert "1 scene(s) are read over 4x finer than stored, e.g. coarse: 2.5 m to 0.5 m" in caplog.text, caplog.text
    assert "25x the pixels" in caplog.text and "--gsd native" in caplog.text and "0.5 m/px" in s.gsd
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.gsd"):
        predict([coarse], tiny_run, tmp_path / "q.gpkg", cfg(gsd="native"), progress=False)
    assert "finer than stored" not in caplog.text
