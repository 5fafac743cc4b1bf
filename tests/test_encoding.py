"""Scenes whose stored values mean different things (data type, declared scale/offset).

GDAL bands may declare ``physical = stored * scale + offset`` (Sentinel-2 L2A of processing
baseline 04.00 on: offset -0.1, scale 0.0001). geoseg normalises stored values with one set of
statistics, so mixing such scenes in a tile run, or predicting one with a model trained on
another encoding, would be a wrong result with exit 0: each is refused in one line.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for

from geoseg.bands import BandStats, load_stats
from geoseg.cli.main import cli
from geoseg.errors import ConfigError, GeoSegWarning, InputRasterError
from geoseg.io.encoding import band_scaling, check_for_model, describe
from geoseg.io.rasters import inspect_scene
from geoseg.predict import PredictConfig, predict
from geoseg.tile import TileConfig, tile

SHAPE = (64, 64)
BOXES = grid_boxes(SHAPE, step=20, seed=3)
S2 = ((0.0001, -0.1),) * 3  # Sentinel-2 L2A from processing baseline 04.00


def declare(path: Path, scaling: tuple[tuple[float, float], ...]) -> Path:
    """Declare per-band (scale, offset) on an existing GeoTIFF, as gdal_edit.py -scale/-offset does."""
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = zip(*scaling, strict=True)
    return path


def scene(path: Path, seed: int = 0, scaling: tuple[tuple[float, float], ...] = (), **kw: object) -> Path:
    bright_boxes_scene(path, SHAPE, BOXES, seed=seed, **kw)  # type: ignore[arg-type]
    return declare(path, scaling) if scaling else path


def test_declared_scaling_of_data_bands_only() -> None:
    assert band_scaling((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), [1, 2, 3]) == ()
    assert band_scaling((None, None), (None, None), [1, 2]) == ()  # nothing declared
    assert band_scaling((0.5, 2.0, 1.0), (1.0, 0.0, 7.0), [1, 2]) == ((0.5, 1.0), (2.0, 0.0))
    assert describe(()) == "no scale or offset"
    assert describe(S2) == "scale 0.0001 and offset -0.1"
    assert describe(((2.0, 0.0), (1.0, 3.0))) == "scales 2, 1 and offsets 0, 3"


def test_inspect_reads_the_declaration(tmp_path: Path) -> None:
    assert inspect_scene(scene(tmp_path / "plain.tif")).scaling == ()
    assert inspect_scene(scene(tmp_path / "s2.tif", scaling=S2)).scaling == S2


@pytest.mark.parametrize("second", [{"dtype": "uint16"}, {"scaling": S2}], ids=["dtype", "scale-offset"])
def test_tile_refuses_scenes_of_two_encodings_before_writing(second: dict[str, object], tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    a = scene(tmp_path / "s" / "a.tif")
    b = scene(tmp_path / "s" / "b.tif", seed=1, **second)  # type: ignore[arg-type]
    labels = labels_for(a, tmp_path / "l.gpkg", BOXES)
    with pytest.raises(InputRasterError) as err:
        tile([a, b], labels, tmp_path / "out", TileConfig(size=32, overlap=0), scheduler="sync")
    msg = str(err.value)
    assert "a.tif" in msg and "b.tif" in msg and "separate folders" in msg, msg
    assert ("uint8" in msg and "uint16" in msg) if "dtype" in second else "offset -0.1" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the CLI: one line, exit code non-zero
    res = CliRunner().invoke(cli, ["tile", str(tmp_path / "s"), "--labels", str(labels),
                                   "--out", str(tmp_path / "cli"), "--size", "32", "--overlap", "0"])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("geoseg: error:")]
    assert len(errors) == 1 and "a.tif" in errors[0] and "b.tif" in errors[0], res.output


def test_one_declared_encoding_is_recorded_and_kept_in_the_chips(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    scenes = [scene(tmp_path / "s" / f"{n}.tif", seed=i, scaling=S2) for i, n in enumerate("ab")]
    out = tmp_path / "p"
    tile(scenes, labels_for(scenes[0], tmp_path / "l.gpkg", BOXES), out,
         TileConfig(size=32, overlap=0), scheduler="sync")
    assert json.loads((out / "stats.json").read_text())["scaling"] == [list(p) for p in S2]
    assert load_stats(out).scaling == S2
    chip = sorted((out / "images").glob("*.tif"))[0]
    with rasterio.open(chip) as src:  # QGIS shows the values they stand for, as in the scene
        assert band_scaling(src.scales, src.offsets, [1, 2, 3]) == S2
    with rasterio.open(chip) as c:  # the stored values, unchanged
        assert c.dtypes[0] == "uint8" and c.read().max() > 100


def _item(item_id: str, href: Path, fields: dict[str, object]) -> dict[str, object]:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "properties": {"datetime": "2024-01-01T00:00:00Z"}, "links": [],
            "geometry": {"type": "Point", "coordinates": [33.0, 0.4]}, "bbox": [33.0, 0.4, 33.0, 0.4],
            "assets": {"data": {"href": str(href), "type": "image/tiff; application=geotiff", **fields}}}


def test_a_stac_asset_declares_for_a_file_that_does_not(tmp_path: Path) -> None:
    from geoseg.io.stac import asset_scaling, stac_scenes

    assert asset_scaling({"raster:bands": [{"scale": 0.0001, "offset": -0.1}] * 2}) == ((0.0001, -0.1),) * 2
    assert asset_scaling({"bands": [{"raster:scale": 2.0}]}) == ((2.0, 0.0),)  # STAC 1.1, raster v2
    assert asset_scaling({"raster:offset": -0.1}) == ((1.0, -0.1),)  # on the asset: every band
    assert asset_scaling({"raster:bands": [{"nodata": 0}]}) is None
    (tmp_path / "s").mkdir()
    old, new = scene(tmp_path / "s" / "old.tif"), scene(tmp_path / "s" / "new.tif", seed=1)
    s2 = {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}  # one band entry: for every band
    coll = {"type": "FeatureCollection", "features": [_item("baseline-0300", old, {}),
                                                      _item("baseline-0400", new, s2)]}
    (tmp_path / "items.json").write_text(json.dumps(coll))
    scenes = stac_scenes(str(tmp_path / "items.json"))
    assert [inspect_scene(s).scaling for s in scenes] == [(), S2]
    declare(new, ((0.5, 0.0),) * 3)  # the file's own declaration wins over the catalogue's
    assert inspect_scene(stac_scenes(str(tmp_path / "items.json"))[1]).scaling == ((0.5, 0.0),) * 3
    declare(new, ((1.0, 0.0),) * 3)
    with pytest.raises(InputRasterError, match="old.tif: no scale or offset; .*new.tif: scale 0.0001 and offset -0.1"):
        tile(scenes, labels_for(old, tmp_path / "l.gpkg", BOXES), tmp_path / "p",
             TileConfig(size=32, overlap=0), scheduler="sync")


def test_plain_scenes_record_no_scaling(tiny_patches: Path) -> None:
    assert json.loads((tiny_patches / "stats.json").read_text())["scaling"] == []
    assert load_stats(tiny_patches).scaling == ()


def test_predict_refuses_a_scene_of_another_declared_encoding(tiny_run: Path, tmp_path: Path) -> None:
    bad = scene(tmp_path / "s2.tif", scaling=S2)
    out = tmp_path / "o.gpkg"
    cfg = PredictConfig(block=32, watershed_halo=16, budget=1.0)
    with pytest.raises(InputRasterError) as err:
        predict([bad], tiny_run, out, cfg, progress=False)
    msg = str(err.value)
    assert "s2.tif" in msg and "scale 0.0001 and offset -0.1" in msg and "no scale or offset" in msg, msg
    assert f"gdal_edit.py -scale 1 -offset 0 {bad}" in msg, msg  # if the values already mean the same
    assert not out.exists() and not list(tmp_path.glob(".o.gpkg*"))
    declare(bad, ((1.0, 0.0),) * 3)  # the command the message gives: predicted
    assert predict([bad], tiny_run, out, cfg, progress=False).polygons > 0


def test_calibrate_refuses_chips_of_another_declared_encoding(tiny_run: Path, tmp_path: Path) -> None:
    from geoseg.train.recalibrate import recalibrate

    (tmp_path / "s").mkdir()
    scenes = [scene(tmp_path / "s" / f"{n}.tif", seed=i, scaling=S2) for i, n in enumerate(("train", "val"))]
    tile(scenes, labels_for(scenes[0], tmp_path / "l.gpkg", BOXES), tmp_path / "p",
         TileConfig(size=32, overlap=0, val_fraction=0.0, val_scenes=("val*",)), scheduler="sync")
    before = (tiny_run / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="declare scale 0.0001 and offset -0.1, the model .* no scale or offset"):
        recalibrate(tiny_run, tmp_path / "p")
    assert (tiny_run / "checkpoints" / "best.pt").read_bytes() == before


def test_only_the_bands_read_are_compared(tiny_run: Path, tmp_path: Path) -> None:
    # a 4th band (say, a quality band) declares a scale; the model reads bands 1-3: predicted
    four = scene(tmp_path / "four.tif", bands=4, scaling=((1.0, 0.0),) * 3 + ((0.01, 0.0),))
    cfg = PredictConfig(block=32, watershed_halo=16, budget=1.0, band_indexes=(1, 2, 3))
    assert predict([four], tiny_run, tmp_path / "o.gpkg", cfg, progress=False).polygons > 0
    with pytest.raises(InputRasterError, match="four.tif declares scales 1, 1, 0.01 and offsets 0, 0, 0 for the "
                       "bands read"):
        predict([four], tiny_run, tmp_path / "p.gpkg", cfg.model_copy(update={"band_indexes": (1, 2, 4)}),
                 progress=False)


def test_models_of_earlier_versions_are_not_compared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s2 = inspect_scene(scene(tmp_path / "s2.tif", scaling=S2))
    check_for_model([(s2, [1, 2, 3])], BandStats(mean=(1.0,) * 3, std=(1.0,) * 3, dtype="uint8", scaling=None))
    with pytest.raises(InputRasterError, match="trained on chips of scale 0.0001 and offset -0.1"):
        plain = inspect_scene(scene(tmp_path / "plain.tif"))
        check_for_model([(plain, [1, 2, 3])], BandStats(mean=(1.0,) * 3, std=(1.0,) * 3, dtype="uint8", scaling=S2))
    with caplog.at_level(logging.WARNING, logger="geoseg.io.encoding"):  # another dtype: a warning only
        check_for_model([(s2, [1, 2, 3])], BandStats(mean=(1.0,) * 3, std=(1.0,) * 3, dtype="uint16", scaling=S2))
    assert any("s2.tif is uint8" in r.message and "uint16" in r.message for r in caplog.records), caplog.text


def test_unlabelled_chips_of_another_declared_encoding_are_refused(tiny_patches: Path, tmp_path: Path) -> None:
    from geoseg.train.augment import AugmentConfig
    from geoseg.train.semi import UnlabelledChips

    (tmp_path / "s").mkdir()
    u = scene(tmp_path / "s" / "u.tif", scaling=S2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeoSegWarning)
        tile([u], None, tmp_path / "u", TileConfig(size=32, overlap=0), scheduler="sync")
    stats = load_stats(tiny_patches)
    with pytest.raises(ConfigError, match="declare scale 0.0001 and offset -0.1 but the labelled ones no scale"):
        UnlabelledChips([tmp_path / "u"], stats, crop=None, strong=AugmentConfig(), seed=0)
    declared = BandStats(stats.mean, stats.std, stats.classes, stats.dtype, scaling=S2)
    assert len(UnlabelledChips([tmp_path / "u"], declared, crop=None, strong=AugmentConfig(), seed=0)) > 0


def test_resume_on_chips_of_another_declared_encoding_is_refused(tmp_path: Path) -> None:
    from geoseg.train.dataset import same_chips

    record = {"bands": 3, "dtype": "uint8", "mean": [1.0] * 3, "std": [1.0] * 3, "gsd": 0.5, "scaling": []}
    same_chips({"stats": record, "classes": None}, dict(record), tmp_path, tmp_path / "last.pt")
    same_chips({"stats": {**record, "scaling": None}, "classes": None},  # recorded before: not compared
               {**record, "scaling": [[0.0001, -0.1]] * 3}, tmp_path, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="scaling"):
        same_chips({"stats": record, "classes": None}, {**record, "scaling": [[0.0001, -0.1]] * 3},
                   tmp_path, tmp_path / "last.pt")


def colours(path: Path, *names: str, descriptions: tuple[str, ...] = ()) -> Path:
    """Declare each band's colour interpretation (and description), as gdal_edit.py -colorinterp_N does."""
    from rasterio.enums import ColorInterp

    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp[n] for n in names]
        for i, d in enumerate(descriptions, 1):
            dst.set_band_description(i, d)
    return path


def test_band_meanings_are_read_from_colour_and_description(tmp_path: Path) -> None:
    assert inspect_scene(scene(tmp_path / "rgb.tif")).meaning == ("red", "green", "blue")  # a 3-band Byte GeoTIFF
    s2 = colours(scene(tmp_path / "s2.tif", bands=4), "gray", "undefined", "undefined", "undefined",
                 descriptions=("B02", "B03", "B04", "Band 4"))
    assert inspect_scene(s2).meaning == ("b02", "b03", "b04", "")  # a number is no meaning


def test_tile_refuses_scenes_declaring_their_bands_in_another_order(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    a = scene(tmp_path / "s" / "a.tif")
    b = colours(scene(tmp_path / "s" / "b.tif", seed=1), "blue", "green", "red")
    labels = labels_for(a, tmp_path / "l.gpkg", BOXES)
    res = CliRunner().invoke(cli, ["tile", str(tmp_path / "s"), "--labels", str(labels),
                                   "--out", str(tmp_path / "out"), "--size", "32", "--overlap", "0"])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("geoseg: error:")]
    assert res.exit_code != 0 and len(errors) == 1, res.output
    assert "b.tif declares its bands as blue, green, red" in errors[0] and "red, green, blue" in errors[0]
    assert f"gdal_translate -b 3 -b 2 -b 1 {b}" in errors[0] and "gdal_edit.py -colorinterp_1" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    plain = colours(scene(tmp_path / "plain.tif", seed=2), "gray", "undefined", "undefined")
    with pytest.raises(InputRasterError, match="b.tif declares its bands as blue, green, red but .*a.tif as red"):
        tile([plain, a, b], labels, tmp_path / "out", TileConfig(size=32, overlap=0), scheduler="sync")
    colours(b, "gray", "undefined", "undefined")  # declares nothing: not compared
    summary = tile([b, a], labels, tmp_path / "ok", TileConfig(size=32, overlap=0), scheduler="sync")
    assert summary.chips_train + summary.chips_val > 0  # the order of the scene that declares one:
    assert json.loads((tmp_path / "ok" / "stats.json").read_text())["meaning"] == ["red", "green", "blue"]


def test_predict_refuses_bands_in_another_order_and_says_which_to_read(tiny_run: Path, tmp_path: Path) -> None:
    from geoseg.models.checkpoint import load_checkpoint

    assert load_checkpoint(tiny_run / "checkpoints" / "best.pt")["stats"]["meaning"] == ["red", "green", "blue"]
    bgr = colours(scene(tmp_path / "bgr.tif"), "blue", "green", "red")
    cfg = PredictConfig(block=32, watershed_halo=16, budget=1.0)
    with pytest.raises(InputRasterError, match=r"bgr.tif declares the bands read as blue, green, red but the model "
                                               r"was trained on red, green, blue .*--bands 3,2,1 \(if it mislabels"):
        predict([bgr], tiny_run, tmp_path / "o.gpkg", cfg, progress=False)
    assert not (tmp_path / "o.gpkg").exists()
    assert predict([bgr], tiny_run, tmp_path / "o.gpkg", cfg.model_copy(update={"band_indexes": (3, 2, 1)}),
                   progress=False).polygons > 0
    bgrn = colours(scene(tmp_path / "bgrn.tif", bands=4), "blue", "green", "red", "undefined",
                   descriptions=("", "", "", "nir"))
    with pytest.raises(InputRasterError, match=r"has 4 bands .*--bands \(--bands 3,2,1 reads its red, green, blue\)"):
        predict([bgrn], tiny_run, tmp_path / "p.gpkg", cfg, progress=False)
    with pytest.raises(InputRasterError, match=r"--bands 3,2,1 "):  # the first three, in their own order
        predict([bgrn], tiny_run, tmp_path / "p.gpkg", cfg.model_copy(update={"band_indexes": (1, 2, 3)}),
                progress=False)


def test_undeclared_bands_and_models_of_earlier_versions_are_not_ordered(tmp_path: Path) -> None:
    bgr = inspect_scene(colours(scene(tmp_path / "bgr.tif"), "blue", "green", "red"))
    plain = inspect_scene(colours(scene(tmp_path / "plain.tif"), "gray", "undefined", "undefined"))
    stats = BandStats(mean=(1.0,) * 3, std=(1.0,) * 3, dtype="uint8", meaning=("red", "green", "blue"))
    check_for_model([(plain, [1, 2, 3])], stats)  # the scene declares nothing
    check_for_model([(bgr, [1, 2, 3])], BandStats(mean=(1.0,) * 3, std=(1.0,) * 3, dtype="uint8"))  # unrecorded
    check_for_model([(bgr, [3, 2, 1])], stats)  # read in the training order
    check_for_model([(bgr, [1, 1, 1])], stats)  # not the training bands reordered: the user's choice
    with pytest.raises(InputRasterError, match="--bands 3,2,1"):
        check_for_model([(bgr, [1, 2, 3])], stats)


def test_chips_keep_what_their_scene_declares_each_band_holds(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    bgr = colours(scene(tmp_path / "s" / "bgr.tif"), "blue", "green", "red")
    tile([bgr], labels_for(bgr, tmp_path / "l.gpkg", BOXES), tmp_path / "p", TileConfig(size=32, overlap=0),
         scheduler="sync")
    chip = next((tmp_path / "p" / "images").glob("*.tif"))
    with rasterio.open(chip) as src:  # QGIS shows the chip in the scene's colours
        assert [c.name for c in src.colorinterp] == ["blue", "green", "red"]
    s2 = colours(scene(tmp_path / "s2.tif", bands=4), "gray", "undefined", "undefined", "undefined",
                 descriptions=("B02", "B03", "B04", "B08"))
    tile([s2], None, tmp_path / "q", TileConfig(size=32, overlap=0), scheduler="sync")
    assert inspect_scene(next((tmp_path / "q" / "images").glob("*.tif"))).meaning == ("b02", "b03", "b04", "b08")


def test_calibrate_and_unlabelled_chips_of_another_band_order_are_refused(tiny_run: Path, tiny_patches: Path,
                                                                          tmp_path: Path) -> None:
    from geoseg.train.augment import AugmentConfig
    from geoseg.train.recalibrate import recalibrate
    from geoseg.train.semi import UnlabelledChips

    (tmp_path / "s").mkdir()
    scenes = [colours(scene(tmp_path / "s" / f"{n}.tif", seed=i), "blue", "green", "red")
              for i, n in enumerate(("train", "val"))]
    tile(scenes, labels_for(scenes[0], tmp_path / "l.gpkg", BOXES), tmp_path / "p",
         TileConfig(size=32, overlap=0, val_fraction=0.0, val_scenes=("val*",)), scheduler="sync")
    with pytest.raises(ConfigError, match=r"another order \(read them as 3,2,1"):
        recalibrate(tiny_run, tmp_path / "p")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeoSegWarning)
        tile([scenes[0]], None, tmp_path / "u", TileConfig(size=32, overlap=0), scheduler="sync")
    with pytest.raises(ConfigError, match="bands in another order"):
        UnlabelledChips([tmp_path / "u"], load_stats(tiny_patches), crop=None, strong=AugmentConfig(), seed=0)
