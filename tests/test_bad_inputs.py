"""Issue #9, no silent wrong result: inputs that used to give wrong outputs without a word.

Each test builds its small rasters and polygons in tmp_path. CLI failures are one line
``geoseg: error: ...`` naming the file at fault, exit code != 0, and no traceback.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from conftest import labels_for, write_raster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import Window

from geoseg.cli.main import cli
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
        x, y = affine @ (col, row)
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


ROTATED = Affine.translation(450000, 40000) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5)
SKEWED = Affine.translation(450000, 40000) @ Affine.shear(20, 10) @ Affine.scale(0.5, -0.5)
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


# -- 2. NaN and inf are invalid data ---------------------------------------------------------

def _nan_scene(path: Path, nodata: float | None = None, bad: float = np.nan) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.normal(100, 20, (2, 64, 96)).astype(np.float32)
    data[:, 5:20, 10:40] = bad  # patches, in every band
    data[:, 40:50, 60:70] = bad
    data[:, 30, 30] = np.inf
    data[0, 33, 33] = -np.inf  # one band only: the pixel is invalid
    write_raster(path, data, CRS, from_origin(450000, 40000, 0.5, 0.5), nodata=nodata)
    return data


@pytest.mark.parametrize("bad", [np.nan, -3.4028235e38], ids=["nan", "float-fill"])
def test_nan_pixels_excluded_from_stats_and_masked_in_chips(tmp_path: Path, bad: float) -> None:
    """NaN, and GDAL's float fill value when no nodata is declared (stats were once -5.7e37 +- 1.3e38)."""
    data = _nan_scene(tmp_path / "nan.tif", bad=bad)
    out = tmp_path / "out"
    # one split, so that the stats cover every chip
    tile([tmp_path / "nan.tif"], None, out,
         TileConfig(size=32, overlap=0, min_valid=0.0, val_fraction=0.0), scheduler="sync")
    text = (out / "stats.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    stats = json.loads(text)
    valid = (np.abs(data) < 1e30).all(axis=0)  # NaN compares False too
    vals = data[:, valid].astype(np.float64)
    np.testing.assert_allclose(stats["mean"], vals.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], vals.std(axis=1), rtol=1e-6)
    assert stats["pixels"] == int(valid.sum())
    imgs = json.loads((out / "annotations.json").read_text())["images"]
    for im in imgs:
        col, row, w, h = im["window"]
        with rasterio.open(out / "images" / im["file_name"]) as chip:
            m = chip.dataset_mask() > 0
        assert (m == valid[row:row + h, col:col + w]).all()
        assert im["valid_fraction"] == pytest.approx(valid[row:row + h, col:col + w].mean(), abs=1e-6)


def test_nan_chips_give_finite_training_inputs(tmp_path: Path) -> None:
    from geoseg.bands import BandStats, normalize
    from geoseg.train.dataset import ChipDataset

    _nan_scene(tmp_path / "nan.tif", nodata=-9999.0)
    out = tmp_path / "out"
    labels = labels_for(tmp_path / "nan.tif", tmp_path / "l.gpkg", [(50, 5, 60, 15)], crs=CRS)  # train needs one
    tile([tmp_path / "nan.tif"], labels, out,
         TileConfig(size=32, overlap=0, min_valid=0.0, val_fraction=0.0), scheduler="sync")
    assert np.isfinite(json.loads((out / "stats.json").read_text())["mean"]).all()
    ds = ChipDataset(out, "train", crop=None)
    for i in range(len(ds)):
        s = ds[i]
        assert torch_finite(s["image"])
        assert not s["valid"].all() or i not in (0,)  # chip (0, 0) holds NaN patches
    stats = BandStats(mean=(1.0, 2.0), std=(1.0, 0.0))
    x = np.array([[[np.nan, 1.0, np.inf]], [[2.0, 2.0, 2.0]]], dtype=np.float32)
    z = normalize(x, stats)
    assert np.isfinite(z).all() and z[:, 0, 0].tolist() == [0.0, 0.0] and z[:, 0, 2].tolist() == [0.0, 0.0]
    import torch

    zt = normalize(torch.from_numpy(x), stats, valid=torch.tensor([[True, False, True]]))
    assert torch.isfinite(zt).all() and zt[:, 0, 1].tolist() == [0.0, 0.0]


def torch_finite(t) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


@pytest.mark.parametrize("nodata", [None, -9999.0])
def test_all_invalid_scene_is_an_error(nodata: float | None, tmp_path: Path) -> None:
    data = np.full((1, 40, 40), np.nan if nodata is None else nodata, np.float32)
    scene = write_raster(tmp_path / "void.tif", data, CRS, from_origin(450000, 40000, 1, 1),
                         nodata=nodata)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--out", str(tmp_path / "out"),
                                   "--size", "16", "--overlap", "0", "--min-valid", "0"])
    line = one_error_line(res, "void.tif")
    assert "valid pixel" in line and "NaN" in line
    assert not (tmp_path / "out" / "stats.json").exists()


# -- 3. one scene still gets a validation split; train runs without one ------------------------

def test_single_scene_gets_a_val_split(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (1, 128, 128), dtype=np.uint8)
    scene = write_raster(tmp_path / "one" / "s.tif", _mkdir(data, tmp_path / "one"), CRS,
                         from_origin(450000, 40000, 0.5, 0.5))
    labels = labels_for(scene, tmp_path / "l.gpkg", [(5, 5, 20, 20), (70, 70, 90, 90)])
    out = tmp_path / "p"
    s = tile([tmp_path / "one"], labels, out, TileConfig(size=32, overlap=0), scheduler="sync")
    assert s.chips_train + s.chips_val == 16
    assert s.chips_val >= 1 and s.chips_train >= 1 and s.split_block < 4
    imgs = json.loads((out / "annotations.json").read_text())["images"]
    # blocks stay whole: every split block of the side used is one split
    of_block: dict[tuple[int, int], set[str]] = {}
    for im in imgs:
        col, row = im["window"][:2]
        of_block.setdefault((row // (32 * s.split_block), col // (32 * s.split_block)),
                            set()).add(im["split"])
    assert all(len(v) == 1 for v in of_block.values())
    assert f"{s.chips_train} train / {s.chips_val} val" in "\n".join(s.lines())


def test_single_chip_warns_that_val_is_empty(tmp_path: Path) -> None:
    from geoseg.errors import GeoSegWarning

    scene = write_raster(tmp_path / "s.tif", np.ones((1, 20, 20), np.uint8), CRS,
                         from_origin(450000, 40000, 1, 1))
    with pytest.warns(GeoSegWarning, match="no validation split"):
        s = tile([scene], None, tmp_path / "p", TileConfig(size=32, overlap=0), scheduler="sync")
    assert (s.chips_train, s.chips_val) == (1, 0)


def _mkdir(data: np.ndarray, d: Path) -> np.ndarray:
    d.mkdir(parents=True, exist_ok=True)
    return data


def _tiny_cfg():
    from conftest import REPO

    from geoseg.config import load_config
    from geoseg.train import TrainConfig

    return load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml",
                       {"data": {"samples_per_epoch": 4}})


@pytest.fixture
def train_only_patches(tmp_path: Path) -> Path:
    from conftest import bright_boxes_scene, grid_boxes

    boxes = grid_boxes((64, 64))
    bright_boxes_scene(tmp_path / "s.tif", (64, 64), boxes)
    labels_for(tmp_path / "s.tif", tmp_path / "l.gpkg", boxes)
    tile([tmp_path / "s.tif"], tmp_path / "l.gpkg", tmp_path / "p",
         TileConfig(size=32, overlap=0, val_fraction=0.0), scheduler="sync")
    return tmp_path / "p"


def test_train_without_val_chips_warns_and_best_is_last(train_only_patches: Path,
                                                       tmp_path: Path) -> None:
    import torch

    from geoseg.errors import GeoSegWarning
    from geoseg.train import train

    run = tmp_path / "run"
    with pytest.warns(GeoSegWarning, match="no validation chips"):
        res = train(_tiny_cfg(), train_only_patches, run, epochs=2)
    assert res.epochs == 2 and res.best["epoch"] == 2 and np.isnan(res.best["value"])
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] == 2
    for k in last["ema"]:  # best.pt holds the EMA weights; an uncalibrated threshold is NaN in both
        torch.testing.assert_close(best["model"][k], last["ema"][k], rtol=0, atol=0, equal_nan=True, msg=k)
    # the summary line says so, not "best ap nan at epoch 1"
    from conftest import REPO

    from geoseg.cli.main import cli

    with warnings.catch_warnings():  # the CLI logs the warning (pytest makes GeoSegWarning an error)
        warnings.simplefilter("default", GeoSegWarning)
        out = CliRunner().invoke(cli, ["train", str(REPO / "tests" / "conf" / "tiny.yaml"), "--patches",
                                       str(train_only_patches), "--out", str(tmp_path / "cli"), "--epochs", "1",
                                       "--set", "data.samples_per_epoch=4"])
    assert out.exit_code == 0, out.output
    assert "best.pt is the last epoch, 1 (no validation)" in out.output and "nan" not in out.output, out.output


def test_val_chips_without_an_object_score_nothing_and_best_is_last(tmp_path: Path) -> None:
    """AP was 0 at every epoch, so best.pt stayed the first validated epoch: an untrained model."""
    import torch
    from conftest import bright_boxes_scene, grid_boxes

    from geoseg.errors import GeoSegWarning
    from geoseg.train import train

    boxes = grid_boxes((64, 64))
    bright_boxes_scene(tmp_path / "a.tif", (64, 64), boxes)
    bright_boxes_scene(tmp_path / "empty.tif", (64, 64), [], transform=from_origin(470000, 40000, 0.5, 0.5))
    labels_for(tmp_path / "a.tif", tmp_path / "l.gpkg", boxes)
    tile([tmp_path / "a.tif", tmp_path / "empty.tif"], tmp_path / "l.gpkg", tmp_path / "p",
         TileConfig(size=32, overlap=0, val_scenes=("empty",), val_fraction=0.0), scheduler="sync")
    run = tmp_path / "run"
    with pytest.warns(GeoSegWarning, match="validation chips .* hold no labelled object"):
        res = train(_tiny_cfg(), tmp_path / "p", run, epochs=2)
    assert res.best["epoch"] == 2 and np.isnan(res.best["value"])
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 2


# -- 4. a chip in annotations.json missing on disk ---------------------------------------------

def test_missing_chip_fails_train_up_front_and_tile_rewrites_it(train_only_patches: Path,
                                                                tmp_path: Path) -> None:
    from conftest import REPO

    chip = sorted((train_only_patches / "images").iterdir())[1]
    chip.unlink()
    res = CliRunner().invoke(cli, ["train", str(REPO / "tests" / "conf" / "tiny.yaml"),
                                   "--patches", str(train_only_patches),
                                   "--out", str(tmp_path / "run")])
    line = one_error_line(res, chip.name)
    assert "geoseg tile" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the same tile command writes it again
    s = tile([tmp_path / "s.tif"], tmp_path / "l.gpkg", train_only_patches,
             TileConfig(size=32, overlap=0, val_fraction=0.0), scheduler="sync")
    assert chip.is_file() and s.chips_written == 1


def test_train_on_chips_without_labels_is_refused(tmp_path: Path) -> None:
    """Chips tiled without --labels (meant for --unlabelled) would train a model of empty masks, exit 0."""
    from conftest import REPO

    data = np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8)
    scene = write_raster(tmp_path / "s.tif", data, CRS, from_origin(450000, 40000, 1, 1))
    tile([scene], None, tmp_path / "p", TileConfig(size=32, overlap=0, val_fraction=0.0), scheduler="sync")
    res = CliRunner().invoke(cli, ["train", str(REPO / "tests" / "conf" / "tiny.yaml"),
                                   "--patches", str(tmp_path / "p"), "--out", str(tmp_path / "run")])
    line = one_error_line(res, "annotations.json")
    assert "no labelled object" in line and "--unlabelled" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- 5. temporaries of a killed tile run ------------------------------------------------------

def test_rerun_removes_temporaries_of_a_killed_run(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8)
    scene = write_raster(tmp_path / "s.tif", data, CRS, from_origin(450000, 40000, 1, 1))
    out = tmp_path / "out"
    cfg = TileConfig(size=32, overlap=0)
    tile([scene], None, out, cfg, scheduler="sync")
    # what atomic_path leaves when the process is killed mid-write
    planted = [out / "images" / ".s_0_32.k3j_x9a2.tif", out / "images" / ".s_0_0.ab12cd34.tif.aux.xml",
               out / ".parts" / ".s__0_0_0.q1w2e3r4.json", out / ".annotations.zz99yy88.json"]
    for p in planted:
        p.write_bytes(b"half a file")
    (out / "images" / "s_0_0.tif").unlink()  # and the chip the kill interrupted
    s = tile([scene], None, out, cfg, scheduler="sync")
    assert not any(p.exists() for p in planted)
    assert not [p for p in out.rglob(".*") if p.is_file()]
    assert s.chips_written == 1 and (out / "images" / "s_0_0.tif").is_file()
    assert len(list((out / "images").iterdir())) == 4


# -- 6. labels without geometry ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpkg_table", "csv"])
def test_labels_without_geometry_column(kind: str, tmp_path: Path) -> None:
    import pyogrio

    scene = write_raster(tmp_path / "s.tif", np.ones((1, 32, 32), np.uint8), CRS,
                         from_origin(450000, 40000, 1, 1))
    table = pd.DataFrame({"class": ["building", "tree"], "area": [10.0, 20.0]})
    if kind == "csv":
        labels = tmp_path / "labels.csv"
        table.to_csv(labels, index=False)
    else:
        labels = tmp_path / "labels.gpkg"
        pyogrio.write_dataframe(table, labels, layer="attributes")
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels),
                                   "--out", str(tmp_path / "out")])
    line = one_error_line(res, labels.name)
    assert "polygon layer" in line
    assert not (tmp_path / "out").exists()


def test_labels_as_a_csv_of_wkt_name_the_conversion(tmp_path: Path) -> None:
    # Google Open Buildings: a CSV whose 'geometry' column is WKT in EPSG:4326
    import pyogrio

    scene = write_raster(tmp_path / "s.tif", np.ones((1, 32, 32), np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    roof = gpd.GeoSeries([shapely.box(450004, 39980, 450012, 39990)], crs=CRS).to_crs(4326)
    labels = tmp_path / "open_buildings.csv"
    pd.DataFrame({"confidence": [0.8], "geometry": roof.to_wkt()}).to_csv(labels, index=False)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels), "--out", str(tmp_path / "out")])
    line = one_error_line(res, labels.name)
    assert "'geometry' column looks like WKT" in line and "-oo GEOM_POSSIBLE_NAMES=geometry" in line, line
    assert not (tmp_path / "out").exists()
    # what the suggested ogr2ogr does (its open options, through pyogrio), then -a_srs: tiled
    gdf = pyogrio.read_dataframe(labels, GEOM_POSSIBLE_NAMES="geometry", KEEP_GEOM_COLUMNS="NO").set_crs(4326)
    gdf.to_file(tmp_path / "open_buildings.gpkg")
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(tmp_path / "open_buildings.gpkg"),
                                   "--out", str(tmp_path / "out"), "--size", "16", "--overlap", "0"])
    assert res.exit_code == 0, res.output


def _two_layer_labels(tmp_path: Path) -> tuple[Path, Path]:
    """A scene, and a GeoPackage whose first layer holds 3 of its 4 squares and whose second holds all 4."""
    import pyogrio

    scene = write_raster(tmp_path / "s.tif", np.ones((1, 64, 64), np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    labels = labels_for(scene, tmp_path / "tmp.gpkg", [(4, 4, 12, 12), (40, 4, 50, 12), (4, 40, 12, 50),
                                                          (40, 40, 52, 52)], crs=CRS)
    every = gpd.read_file(labels)
    out = tmp_path / "labels.gpkg"
    every.iloc[:3].to_file(out, layer="draft")
    every.to_file(out, layer="checked")
    pyogrio.write_dataframe(pd.DataFrame({"note": ["a table"]}), out, layer="notes")
    return scene, out


def test_labels_of_several_layers_name_the_one_to_read(tmp_path: Path) -> None:
    """OGR reads a file's first layer: with several, tiling it would use the wrong polygons with exit 0."""
    scene, labels = _two_layer_labels(tmp_path)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels), "--out", str(tmp_path / "out")])
    line = one_error_line(res, labels.name)
    assert "2 geometry layers (draft, checked)" in line and f"{labels}|layername=draft" in line
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", f"{labels}|layername=nope",
                                   "--out", str(tmp_path / "out")])
    assert "no layer 'nope'; its layers: draft, checked, notes" in one_error_line(res, labels.name)

    def instances(layer: str, out: Path, *extra: str) -> int:
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", f"{labels}|layername={layer}", "--out",
                                       str(out), "--size", "32", "--overlap", "0", *extra])
        assert res.exit_code == 0, res.output
        return len(json.loads((out / "annotations.json").read_text())["annotations"])

    assert instances("draft", tmp_path / "a") == 3
    assert instances("checked", tmp_path / "b") == 4
    # the layer is part of what a rerun must match: another layer is not "already done"
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", f"{labels}|layername=checked", "--out",
                                   str(tmp_path / "a"), "--size", "32", "--overlap", "0"])
    assert "other parameters or inputs" in one_error_line(res, "a")
    assert instances("checked", tmp_path / "a", "--overwrite") == 4


def test_truth_of_several_layers_is_refused_by_evaluate(tmp_path: Path) -> None:
    scene, labels = _two_layer_labels(tmp_path)
    pred = tmp_path / "pred.gpkg"
    gpd.read_file(labels, layer="checked").to_file(pred)
    res = CliRunner().invoke(cli, ["evaluate", str(pred), str(labels)])
    assert "name the one to read" in one_error_line(res, labels.name)
    res = CliRunner().invoke(cli, ["evaluate", str(pred), f"{labels}|layername=draft", "--json",
                                   str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert (report["tp"], report["fp"], report["fn"]) == (3, 1, 0), report  # scored against the 3 drafts


def test_a_layer_named_in_geoparquet_must_be_its_one_layer(tmp_path: Path) -> None:
    """GeoParquet has one layer (OGR names it after the file): another name was once ignored without a word."""
    scene, labels = _two_layer_labels(tmp_path)
    pred = tmp_path / "pred.parquet"
    gpd.read_file(labels, layer="checked").to_parquet(pred)
    res = CliRunner().invoke(cli, ["evaluate", f"{pred}|layername=draft", f"{labels}|layername=checked"])
    line = one_error_line(res, pred.name)
    assert "GeoParquet, one layer ('pred'), not 'draft'" in line and "drop '|layername=draft'" in line
    res = CliRunner().invoke(cli, ["evaluate", f"{pred}|layername=pred", f"{labels}|layername=checked", "--json",
                                   str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["tp"] == 4


def test_labels_that_touch_no_scene_are_refused_before_writing(tmp_path: Path) -> None:
    """Labels whose declared CRS is not their coordinates' (UTM 37N given to 36N numbers) miss every scene:
    tiling them would write negative chips only, with exit 0."""
    scene, labels = _two_layer_labels(tmp_path)
    wrong = tmp_path / "wrong.gpkg"
    gpd.read_file(labels, layer="checked").set_crs("EPSG:32637", allow_override=True).to_file(wrong)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(wrong), "--out", str(tmp_path / "out"),
                                   "--size", "32", "--overlap", "0"])
    line = one_error_line(res, wrong.name, "scene s")
    assert "none of the 4 polygons" in line and "CRS" in line and "EPSG:32636" in line
    assert not (tmp_path / "out").exists()
    # some outside (labels of a wider area) is normal: counted in the summary
    some = tmp_path / "some.gpkg"
    extra = gpd.read_file(wrong)
    gpd.GeoDataFrame(geometry=[*gpd.read_file(labels, layer="checked").geometry, *extra.to_crs(CRS).geometry],
                     crs=CRS).to_file(some)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(some), "--out", str(tmp_path / "out"),
                                   "--size", "32", "--overlap", "0"])
    assert res.exit_code == 0 and "labels: 8, 4 outside every scene" in res.output, res.output


def test_a_class_field_the_labels_lack_is_refused(tmp_path: Path) -> None:
    """--class-field kind on labels without 'kind' once gave every polygon one class, exit 0."""
    scene, labels = _two_layer_labels(tmp_path)
    one = f"{labels}|layername=checked"
    args = ["tile", str(scene), "--labels", one, "--size", "32", "--overlap", "0"]
    res = CliRunner().invoke(cli, [*args, "--class-field", "kind", "--out", str(tmp_path / "out")])
    assert "no column 'kind'" in one_error_line(res, labels.name, "class")
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "ok")])  # the default field: one class
    assert res.exit_code == 0, res.output
    cats = json.loads((tmp_path / "ok" / "annotations.json").read_text())["categories"]
    assert [c["name"] for c in cats] == ["building"]  # labels_for's 'class' column


def test_one_geometry_layer_beside_tables_is_read(tmp_path: Path) -> None:
    """A GeoPackage of one polygon layer after an attribute table: that layer, not the first table."""
    import pyogrio

    from geoseg.io.vectors import read_labels

    path = tmp_path / "l.gpkg"
    pyogrio.write_dataframe(pd.DataFrame({"note": ["a table"]}), path, layer="notes")
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs=CRS).to_file(path, layer="roofs")
    assert len(read_labels(path)) == 1


# -- 7. a malformed stats.json at train time --------------------------------------------------

@pytest.mark.parametrize("text", ['{"bands": 3, "mean": [1, 2', '[]', '{"bands": 3}',
                                  '{"bands": 3, "mean": [0, 0, 0], "std": [1, NaN, 1], '
                                  '"classes": ["building"]}',
                                  '{"bands": 2, "mean": [0, 0, 0], "std": [1, 1, 1], '
                                  '"classes": ["building"]}'],
                         ids=["truncated", "list", "no-mean", "nan", "bands"])
def test_malformed_stats_json_at_train(text: str, train_only_patches: Path,
                                       tmp_path: Path) -> None:
    from conftest import REPO

    (train_only_patches / "stats.json").write_text(text)
    res = CliRunner().invoke(cli, ["train", str(REPO / "tests" / "conf" / "tiny.yaml"),
                                   "--patches", str(train_only_patches),
                                   "--out", str(tmp_path / "run")])
    line = one_error_line(res, "stats.json")
    assert "geoseg tile" in line


# -- 8. a 1x1 pixel scene ---------------------------------------------------------------------

def test_one_pixel_scene_is_a_clear_error(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "dot.tif", np.ones((1, 1, 1), np.uint8), CRS,
                         from_origin(450000, 40000, 1, 1))
    res = CliRunner().invoke(cli, ["tile", str(scene), "--out", str(tmp_path / "out")])
    line = one_error_line(res, "dot.tif")
    assert "too small" in line
    ok = write_raster(tmp_path / "ok.tif", np.ones((1, 40, 40), np.uint8), CRS,
                      from_origin(450000, 40000, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(cli, ["tile", str(scene), str(ok), "--out", str(tmp_path / "o2"),
                                       "--size", "32", "--overlap", "0", "--skip-bad"])
    assert res.exit_code == 0, res.output
    assert "dot.tif" in res.output and "too small" in res.output


def test_a_building_mapped_twice_is_one_instance_and_one_truth(tmp_path: Path) -> None:
    """Two copies of a polygon (an OSM import over hand-mapped roofs) were two instances: all
    of the roof became contact in the training targets, and evaluate could match one only."""
    scene = write_raster(tmp_path / "s.tif", np.full((3, 64, 64), 50, np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    one = [shapely.box(450004, 39950, 450014, 39960), shapely.box(450030, 39950, 450040, 39960)]
    twice = [*one, shapely.box(450004, 39950, 450014, 39960.3), shapely.box(450016, 39950, 450026, 39960)]
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame({"class": ["b"] * 4}, geometry=twice, crs=CRS).to_file(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one chip: no validation split
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels), "--out", str(tmp_path / "p"),
                                       "--size", "64", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "1 label polygons repeat another of their class" in res.output and "feature 3" in res.output
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    assert len(coco["annotations"]) == 3  # the copy dropped, the neighbour kept
    pred = tmp_path / "pred.gpkg"
    gpd.GeoDataFrame(geometry=one + [twice[3]], crs=CRS).to_file(pred)
    res = CliRunner().invoke(cli, ["evaluate", str(pred), str(labels), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert (report["tp"], report["fn"], report["fp"]) == (3, 0, 0)
    assert "1 truth polygons repeat another" in res.output
    assert "inside another" not in res.output  # the neighbour touching nothing, the copy dropped: no pair


def test_a_building_mostly_inside_another_is_warned_of_in_labels_and_truth(tmp_path: Path) -> None:
    """Two sources merged (OSM over Microsoft's footprints, offset by 3 m: IoU 0.5), and a part drawn
    over its building: each pair is two instances sharing pixels taught as contact, exit 0 without a word."""
    scene = write_raster(tmp_path / "s.tif", np.full((3, 64, 64), 50, np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    roofs = [shapely.box(450004, 39940, 450016, 39952), shapely.box(450007, 39940, 450019, 39952),  # offset 3 m
             shapely.box(450030, 39940, 450050, 39960), shapely.box(450034, 39944, 450040, 39950),  # a part inside
             shapely.box(450004, 39960, 450014, 39970), shapely.box(450014, 39960, 450024, 39970),  # row houses
             shapely.box(450042, 39952, 450048, 39958)]  # another class over a roof: not a pair
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame({"class": ["b"] * 6 + ["tree"]}, geometry=roofs, crs=CRS).to_file(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one chip: no validation split
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels), "--out", str(tmp_path / "p"),
                                       "--size", "64", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "2 label polygons lie over half inside another of their class (features 1 and 2 first" in res.output
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(labels), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0 and "2 truth polygons lie over half inside another" in res.output, res.output
    gpd.GeoDataFrame({"class": ["b"] * 4}, geometry=[roofs[0], roofs[2], roofs[4], roofs[5]], crs=CRS).to_file(
        tmp_path / "clean.gpkg")  # touching row houses, one of each pair: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(tmp_path / "clean.gpkg"), "--out",
                                       str(tmp_path / "q"), "--size", "64", "--overlap", "0"])
    assert res.exit_code == 0 and "inside another" not in res.output, res.output


def test_a_quoted_scenes_pattern_is_expanded(tmp_path: Path) -> None:
    """'scenes/*.tif' quoted (or from a script without a shell) was 'does not exist'."""
    from geoseg.io.sources import list_scenes

    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        write_raster(tmp_path / "in" / f"{name}.tif", np.ones((3, 40, 40), np.uint8), CRS,
                     from_origin(450000, 40000, 1, 1))
    assert [s.name for s in list_scenes([str(tmp_path / "in" / "*.tif")])] == ["a", "b"]
    assert [s.name for s in list_scenes([str(tmp_path / "**" / "b.tif")])] == ["b"]
    res = CliRunner().invoke(cli, ["tile", str(tmp_path / "in" / "z*.tif"), "--out", str(tmp_path / "o")])
    one_error_line(res, "z*.tif", "matches no file")


def test_val_scene_on_the_ground_of_a_train_scene_warns(tmp_path: Path) -> None:
    """Two captures of one place, one held out with --val-scenes: validated on roofs trained on."""
    for name, x0 in (("here_2023", 450000), ("here_2024", 450010), ("elsewhere", 460000)):
        write_raster(tmp_path / f"{name}.tif", np.full((3, 64, 64), 60, np.uint8), CRS, from_origin(x0, 40000, 1, 1))
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame({"class": ["b", "b"]}, geometry=[shapely.box(450020, 39950, 450030, 39960),
                                                       shapely.box(460020, 39950, 460030, 39960)],
                     crs=CRS).to_file(labels)
    base = ["tile", "--labels", str(labels), "--size", "32", "--overlap", "0", "--val-fraction", "0"]
    res = CliRunner().invoke(cli, [*base, str(tmp_path / "here_2023.tif"), str(tmp_path / "here_2024.tif"),
                                   "--val-scenes", "here_2024", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "train chips of scene here_2023 cover 84% of the ground of scene here_2024's validation chips" \
        in res.output, res.output
    res = CliRunner().invoke(cli, [*base, str(tmp_path / "here_2023.tif"), str(tmp_path / "elsewhere.tif"),
                                   "--val-scenes", "elsewhere", "--out", str(tmp_path / "p2")])
    assert res.exit_code == 0 and "cover" not in res.output, res.output


def test_scenes_beside_one_across_the_antimeridian_tile_and_warn_only_of_shared_ground(tmp_path: Path) -> None:
    """Taveuni (Fiji), which the 180th meridian crosses, beside a scene 50 km west: its footprint in
    degrees was an invalid polygon spanning the globe, and tile stopped with 'unexpected GEOSException'."""
    utm, x0, y0 = "EPSG:32760", 819_760.0, 8_140_276.0  # the meridian runs through the scene (x 819 789)
    for name, x in (("taveuni_2023", x0), ("taveuni_2024", x0 + 10), ("vanua", x0 - 53_000)):
        write_raster(tmp_path / f"{name}.tif", np.full((3, 64, 64), 60, np.uint8), utm, from_origin(x, y0, 1, 1))
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame({"class": ["b", "b"]}, geometry=[shapely.box(x0 + 20, y0 - 30, x0 + 30, y0 - 20),
                                                       shapely.box(x0 - 52_980, y0 - 30, x0 - 52_970, y0 - 20)],
                     crs=utm).to_crs(4326).to_file(labels)
    base = ["tile", "--labels", str(labels), "--size", "32", "--overlap", "0", "--val-fraction", "0"]
    res = CliRunner().invoke(cli, [*base, str(tmp_path / "taveuni_2023.tif"), str(tmp_path / "vanua.tif"),
                                   "--val-scenes", "vanua", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0 and "cover" not in res.output, res.output
    res = CliRunner().invoke(cli, [*base, str(tmp_path / "taveuni_2023.tif"), str(tmp_path / "taveuni_2024.tif"),
                                   "--val-scenes", "taveuni_2024", "--out", str(tmp_path / "p2")])
    assert res.exit_code == 0, res.output
    assert "train chips of scene taveuni_2023 cover 84% of the ground of scene taveuni_2024's validation chips" \
        in res.output, res.output


def test_tile_gsd_far_off_the_scenes_says_so(tmp_path: Path) -> None:
    """--gsd 100 on a 1 m scene said 'remove it' (the scene is fine, the option is not), and
    --gsd 0.2 tiled 25 times the pixels without a word."""
    ok = write_raster(tmp_path / "ok.tif", np.ones((3, 40, 40), np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    res = CliRunner().invoke(cli, ["tile", str(ok), "--out", str(tmp_path / "o"), "--gsd", "100"])
    line = one_error_line(res, "ok.tif", "at 100 m/px (--gsd)", "finer --gsd")
    assert "remove it" not in line and not (tmp_path / "o").exists()
    res = CliRunner().invoke(cli, ["tile", str(ok), "--out", str(tmp_path / "o"), "--gsd", "0.2",
                                   "--size", "64", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "resampled over 4x finer than stored by --gsd" in res.output and "25x the pixels" in res.output
    res = CliRunner().invoke(cli, ["tile", str(ok), "--out", str(tmp_path / "o2"), "--gsd", "0.5",
                                   "--size", "64", "--overlap", "0"])
    assert res.exit_code == 0 and "finer than stored" not in res.output, res.output


def test_a_blank_class_name_or_field_is_refused(tmp_path: Path) -> None:
    ok = write_raster(tmp_path / "ok.tif", np.ones((3, 40, 40), np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    for opt in ("--class-name", "--class-field"):
        res = CliRunner().invoke(cli, ["tile", str(ok), "--out", str(tmp_path / "o"), opt, " "])
        line = one_error_line(res, f"'{opt}'", "must not be blank")
        assert "Value error" not in line
    assert not (tmp_path / "o").exists()


def test_an_all_invalid_scene_among_others_warns(tmp_path: Path) -> None:
    from geoseg.errors import GeoSegWarning

    void = write_raster(tmp_path / "void.tif", np.full((1, 40, 40), np.nan, np.float32), CRS,
                        from_origin(450000, 40000, 1, 1))
    ok = write_raster(tmp_path / "ok.tif", np.ones((1, 40, 40), np.float32), CRS,
                      from_origin(450000, 40000, 1, 1))
    with pytest.warns(GeoSegWarning, match="void.tif gave no chip"):
        s = tile([void, ok], None, tmp_path / "p", TileConfig(size=16, overlap=0), scheduler="sync")
    assert s.chips_train + s.chips_val == 9


def test_scene_bounds_are_those_of_the_rotated_footprint(tmp_path: Path) -> None:
    from geoseg.io.rasters import inspect_scene

    scene = write_raster(tmp_path / "r.tif", np.ones((1, 10, 20), np.uint8), CRS, ROTATED)
    info = inspect_scene(scene)
    corners = np.array([ROTATED @ (c, r) for c, r in ((0, 0), (20, 0), (20, 10), (0, 10))])
    np.testing.assert_allclose(info.bounds, [*corners.min(0), *corners.max(0)])


def test_truncated_scene_names_file_and_window_in_tile(tmp_path: Path) -> None:
    """Header and first tiles intact (passes the up-front check), the rest gone."""
    path = tmp_path / "t.tif"
    img = np.random.default_rng(0).integers(0, 255, (3, 256, 256)).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                       crs=CRS, transform=from_origin(450000, 40000, 0.5, 0.5),
                       tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(img)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size * 2 // 3)
    out = tmp_path / "p"
    res = CliRunner().invoke(cli, ["tile", str(path), "--out", str(out), "--size", "64", "--overlap", "0",
                                   "--scheduler", "sync"])
    line = one_error_line(res, str(path), "cannot read pixels")
    assert "truncated" in line
    assert not (out / "annotations.json").exists() and not (out / "stats.json").exists()


# -- rasters off a georeferenced grid: GCPs or RPCs only, or nothing ---------------------------

def _ungridded(tmp_path: Path) -> dict[str, Path]:
    """Three rasters GDAL gives the identity transform: GCPs only, RPCs only (a raw satellite product), none."""
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    data = np.full((3, 64, 64), 90, np.uint8)
    grid = from_origin(500000, 40000, 0.5, 0.5)
    gcps = [GroundControlPoint(r, c, *(grid * (c, r))) for r, c in ((0, 0), (0, 64), (64, 0), (64, 64))]
    poly = [1.0] + [0.0] * 19
    rpc = RPC(height_off=0, height_scale=100, lat_off=0.36, lat_scale=0.01, line_den_coeff=poly,
              line_num_coeff=[0.0, 0.0, -1.0] + [0.0] * 17, line_off=32, line_scale=32, long_off=33.0,
              long_scale=0.01, samp_den_coeff=poly, samp_num_coeff=[0.0, 1.0] + [0.0] * 18, samp_off=32,
              samp_scale=32)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        for name, extra in (("gcps", {}), ("rpcs", {"rpcs": rpc}), ("plain", {})):
            path = tmp_path / f"{name}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                               **extra) as dst:
                dst.write(data)
                if name == "gcps":
                    dst.gcps = (gcps, rasterio.crs.CRS.from_string(CRS))
            out[name] = path
    return out


def test_rasters_off_a_grid_are_refused_with_the_command_that_grids_them(tmp_path: Path) -> None:
    """GCP/RPC-only scenes (raw satellite products) once got "no CRS; assign one (gdal_edit -a_srs)": followed,
    that advice left the identity transform, and predict put every polygon at pixel coordinates with exit 0."""
    scenes = _ungridded(tmp_path)
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(500004, 39980, 500010, 39990)], crs=CRS).to_file(labels)
    expected = {"gcps": ("4 ground control points only", f"gdalwarp -t_srs {CRS}"),
                "rpcs": ("RPCs only", "gdalwarp -rpc -t_srs"),
                "plain": ("no geotransform", "gdal_translate -a_ullr")}
    for name, path in scenes.items():
        for args in (["tile", str(path), "--labels", str(labels), "--out", str(tmp_path / "p")],
                     ["predict", str(path), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o.gpkg")],
                     ["evaluate", str(labels), str(labels), "--scenes", str(path), "--clip"]):
            line = one_error_line(CliRunner().invoke(cli, args), path.name)
            assert all(part in line for part in expected[name]), (args[0], line)
            assert "assign one" not in line
        assert not (tmp_path / "p").exists() and not (tmp_path / "o.gpkg").exists()
    from geoseg.errors import InputRasterError
    from geoseg.quicklook import quicklook

    with pytest.raises(InputRasterError, match="ground control points"):
        quicklook(scenes["gcps"], tmp_path / "q.png", pred=labels)
    assert quicklook(scenes["gcps"], tmp_path / "q.png").exists()  # a picture alone needs no grid


def test_labels_and_truth_of_points_or_lines_are_refused(tmp_path: Path) -> None:
    """Building centroids (points) or outlines as lines gave no polygon: tile wrote negative chips only and
    evaluate scored against nothing (F1 0), both with exit 0."""
    scene, labels = _two_layer_labels(tmp_path)
    polys = gpd.read_file(labels, layer="checked")
    points, lines = tmp_path / "points.gpkg", tmp_path / "lines.geojson"
    gpd.GeoDataFrame(geometry=polys.centroid, crs=polys.crs).to_file(points)
    gpd.GeoDataFrame(geometry=[shapely.LineString(p.exterior.coords) for p in polys.geometry],
                     crs=polys.crs).to_file(lines)
    for path, kind in ((points, "4 Point"), (lines, "4 LineString")):
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(path), "--out", str(tmp_path / "out"),
                                       "--size", "32", "--overlap", "0"])
        line = one_error_line(res, path.name)
        assert f"holds 4 features and no polygon ({kind})" in line and "Buffer" in line
        assert not (tmp_path / "out").exists()
        res = CliRunner().invoke(cli, ["evaluate", f"{labels}|layername=checked", str(path)])
        assert "truth file" in one_error_line(res, path.name, "no polygon")
    # polygons with a point among them: the polygons are read (evaluate says how many features it ignores)
    mixed = tmp_path / "mixed.gpkg"
    gpd.GeoDataFrame(geometry=[*polys.geometry, polys.centroid.iloc[0]], crs=polys.crs).to_file(mixed)
    res = CliRunner().invoke(cli, ["evaluate", f"{labels}|layername=checked", str(mixed), "--json",
                                   str(tmp_path / "e.json")])
    assert res.exit_code == 0 and "1 truth features have no polygonal area" in res.output, res.output
    assert json.loads((tmp_path / "e.json").read_text())["tp"] == 4
    # tile left them out without a word: an outline drawn as a closed line is a roof the chips lose
    mixed = tmp_path / "mixed.geojson"
    ring = shapely.LineString(polys.geometry.iloc[3].exterior.coords)
    gpd.GeoDataFrame(geometry=[*polys.geometry[:3], polys.centroid.iloc[0], ring], crs=polys.crs).to_file(mixed)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(mixed), "--out", str(tmp_path / "out"),
                                   "--size", "32", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "2 of 5 label features have no area" in res.output and "feature 4 first" in res.output
    assert "1 of them closed lines" in res.output and "Lines to polygons" in res.output


def test_an_identifier_as_class_field_is_refused(tmp_path: Path) -> None:
    """--class-field osm_id (or fid): 60 classes of one roof each, tiled and trained without a word."""
    scene = write_raster(tmp_path / "s.tif", np.ones((1, 128, 128), np.uint8), CRS, from_origin(450000, 40000, 1, 1))
    squares = [(c, r, c + 6, r + 6) for r in range(4, 120, 15) for c in range(4, 120, 15)][:60]
    labels = labels_for(scene, tmp_path / "l.gpkg", squares, crs=CRS)
    gdf = gpd.read_file(labels)
    gdf["osm_id"] = np.arange(len(gdf)) * 1000.0 + 12345
    gdf["kind"] = ["house", "shed", "school"] * 20
    gdf.to_file(labels)
    for args in (["tile", str(scene), "--labels", str(labels), "--class-field", "osm_id", "--out", str(tmp_path / "p")],
                 ["evaluate", str(labels), str(labels), "--class-field", "osm_id"]):
        line = one_error_line(CliRunner().invoke(cli, args), "'osm_id' gives 60 classes to 60 features")
        assert "l.gpkg" in line
        assert "--class-field" in line and "none" in line
    assert not (tmp_path / "p").exists()
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels), "--class-field", "kind", "--out",
                                   str(tmp_path / "p"), "--size", "64", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["classes"] == ["house", "school", "shed"]


def test_features_without_a_class_are_refused(tmp_path: Path) -> None:
    """A null in --class-field crashed tile ('unexpected TypeError', pandas keeps NaN through astype(str)),
    and evaluate scored it as a class of its own."""
    scene, labels = _two_layer_labels(tmp_path)
    gdf = gpd.read_file(labels, layer="checked")
    gdf["kind"] = ["house", None, "shed", "house"]
    kinds = tmp_path / "kinds.gpkg"
    gdf.to_file(kinds)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(kinds), "--class-field", "kind", "--out",
                                   str(tmp_path / "out"), "--size", "32", "--overlap", "0"])
    line = one_error_line(res, kinds.name)
    assert "1 of 4 features have no value in 'kind'" in line and "features 2)" in line and "unexpected" not in line
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(cli, ["evaluate", str(kinds), str(kinds), "--class-field", "kind"])
    assert "1 of 4 features have no value in 'kind'" in one_error_line(res, "predictions")
    gdf["kind"] = gdf["kind"].fillna("house")
    gdf.to_file(kinds)
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(kinds), "--class-field", "kind", "--out",
                                   str(tmp_path / "out"), "--size", "32", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    cats = json.loads((tmp_path / "out" / "annotations.json").read_text())["categories"]
    assert [c["name"] for c in cats] == ["house", "shed"]


def test_blank_classes_are_refused_and_spellings_of_one_class_warn(tmp_path: Path) -> None:
    """'' was a class of its own (a COCO category without a name); 'House' beside 'house ' two classes
    that split one kind of object, with exit 0 and no word."""
    scene, labels = _two_layer_labels(tmp_path)
    gdf = gpd.read_file(labels, layer="checked")
    gdf["kind"] = ["house", " ", "shed", "house"]
    kinds = tmp_path / "kinds.gpkg"
    gdf.to_file(kinds)
    args = ["tile", str(scene), "--labels", str(kinds), "--class-field", "kind", "--out", str(tmp_path / "out"),
            "--size", "32", "--overlap", "0"]
    line = one_error_line(CliRunner().invoke(cli, args), kinds.name)
    assert "1 of 4 features have no value in 'kind'" in line and "features 2)" in line
    gdf["kind"] = ["house", "House", "shed", "house "]
    gdf.to_file(kinds)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert ("classes 'house'/'House'/'house ' differ only in case or spaces: each is a class of its own" in res.output
            and 'lower(trim("kind"))' in res.output), res.output
    cats = json.loads((tmp_path / "out" / "annotations.json").read_text())["categories"]
    assert [c["name"] for c in cats] == ["House", "house", "house ", "shed"]  # as given: the warning says why


def test_local_engineering_crs_is_refused(tmp_path: Path) -> None:
    """A site grid (LOCAL_CS, drone surveys in local coordinates) has no place on the Earth: the CRS
    transformations crashed with 'unexpected ProjError', a bug-report line."""
    local = rasterio.crs.CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
                                      'AXIS["Northing",NORTH]]')
    scene = tmp_path / "site.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8", crs=local,
                       transform=from_origin(1000, 2000, 0.5, 0.5)) as dst:
        dst.write(np.full((3, 32, 32), 50, np.uint8))
    labels = tmp_path / "site.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(1002, 1990, 1008, 1996)], crs=local.to_wkt()).to_file(labels)
    good_scene, good_labels = _two_layer_labels(tmp_path)
    for args, name in ((["tile", str(scene), "--out", str(tmp_path / "o")], scene.name),
                       (["predict", str(scene), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p.gpkg")],
                        scene.name),
                       (["tile", str(good_scene), "--labels", str(labels), "--out", str(tmp_path / "o")], labels.name),
                       (["evaluate", str(labels), f"{good_labels}|layername=checked"], labels.name)):
        line = one_error_line(CliRunner().invoke(cli, args), name)
        assert "local engineering CRS ('site grid')" in line and "-a_srs EPSG:" in line and "unexpected" not in line
    assert not (tmp_path / "o").exists()


def test_complex_and_paletted_scenes_are_refused(tmp_path: Path) -> None:
    """SAR single-look complex: the imaginary part was dropped without a word, and chips tiled from the rest.
    A paletted image: tiled as colour indices, and predict advised --bands 1,1,1 (indices as grey values)."""
    path = tmp_path / "slc.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=1, dtype="complex64", crs=CRS,
                       transform=from_origin(450000, 40000, 0.5, 0.5)) as dst:
        dst.write(np.full((1, 32, 32), 1 + 2j, np.complex64))
    res = CliRunner().invoke(cli, ["tile", str(path), "--out", str(tmp_path / "out")])
    line = one_error_line(res, path.name)
    assert "complex64" in line and "amplitude" in line and "abs(A)" in line
    assert not (tmp_path / "out").exists()
    pal = tmp_path / "pal.tif"
    with rasterio.open(pal, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs=CRS,
                       transform=from_origin(450000, 40000, 0.5, 0.5), photometric="palette") as dst:
        dst.write(np.arange(32 * 32, dtype=np.uint8).reshape(1, 32, 32) % 3)
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (200, 200, 200, 255)})
    for args in (["tile", str(pal), "--out", str(tmp_path / "out")],
                 ["predict", str(pal), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p.gpkg")]):
        line = one_error_line(CliRunner().invoke(cli, args), pal.name)
        assert "paletted" in line and "gdal_translate -expand rgb" in line and "--bands" not in line
    assert not (tmp_path / "out").exists()



def test_chips_far_beyond_the_labels_are_said_to_be_negatives(tmp_path: Path) -> None:
    """Labels of one scene of two (or of one district of a city's scene): the rest is tiled as negatives, which
    teaches the model that unlabelled buildings are background. Tile cannot know, so it says it."""
    scene, labels = _two_layer_labels(tmp_path)
    with rasterio.open(scene) as src:
        data, t = src.read(), src.transform
    away = write_raster(tmp_path / "away.tif", data, CRS, t * Affine.translation(0, 10_000))  # 10 km south
    args = ["--labels", f"{labels}|layername=checked", "--size", "16", "--overlap", "0"]
    res = CliRunner().invoke(cli, ["tile", str(scene), str(away), *args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "16 of 32 chips lie over a chip away from the labels' extent and are written as negatives" in res.output
    res = CliRunner().invoke(cli, ["tile", str(scene), *args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0 and "labels' extent" not in res.output, res.output


def test_scenes_of_other_band_counts_are_refused_with_the_vrt_that_reads_the_same_bands(tmp_path: Path) -> None:
    """An RGB drone scene beside an RGBN aerial one: one line with the gdalbuildvrt that reads the
    first three bands of the 4-band scene; that VRT, beside it in the folder, stands for it."""
    rng = np.random.default_rng(0)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_raster(scenes / "drone.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), "EPSG:32636",
                 from_origin(450000, 40000, 0.5, 0.5))
    write_raster(scenes / "aerial.tif", rng.integers(0, 255, (4, 64, 64), dtype=np.uint8), "EPSG:32636",
                 from_origin(450100, 40000, 0.5, 0.5))
    res = CliRunner().invoke(cli, ["tile", str(scenes), "--out", str(tmp_path / "p"), "--size", "32"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("geoseg: error:"), res.output
    assert f"{scenes / 'aerial.tif'}: 4" in lines[0] and f"{scenes / 'drone.tif'}: 3" in lines[0]
    assert f"gdalbuildvrt -b 1 -b 2 -b 3 aerial_b123.vrt {scenes / 'aerial.tif'}" in lines[0]
    assert not (tmp_path / "p").exists()
    # what that command writes: the VRT reads bands 1-3 of aerial.tif, and the folder then tiles
    (scenes / "aerial_b123.vrt").write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32636</SRS>'
        "<GeoTransform>450100, 0.5, 0, 40000, 0, -0.5</GeoTransform>" + "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">'
            f"aerial.tif</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
            for b in (1, 2, 3)) + "</VRTDataset>")
    res = CliRunner().invoke(cli, ["tile", str(scenes), "--out", str(tmp_path / "p"), "--size", "32"])
    assert res.exit_code == 0 and "read by the VRT mosaic aerial_b123.vrt are left out" in res.output, res.output
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["bands"] == 3


def test_the_band_files_of_one_product_are_refused_with_the_vrt_that_stacks_them(tmp_path: Path) -> None:
    """A Landsat 9 product unpacked: one file per band. Each was a one-band scene: tile mixed red and
    near-infrared chips into one model, exit 0. Two scenes of other places named like bands are scenes."""
    rng = np.random.default_rng(0)
    product = tmp_path / "landsat"
    product.mkdir()
    stem = "LC09_L2SP_171060_20240101_20240102_02_T1"
    for b in (2, 3, 4, 5):
        write_raster(product / f"{stem}_SR_B{b}.TIF", rng.integers(7000, 20000, (1, 48, 48), dtype=np.uint16),
                     "EPSG:32636", from_origin(450000, 40000, 30, 30))
    res = CliRunner().invoke(cli, ["tile", str(product), "--out", str(tmp_path / "p"), "--size", "16"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("geoseg: error:"), res.output
    assert f"look like the bands of one product, one file each ({stem}: bands 2, 3, 4, 5" in lines[0]
    b = {k: str(product / f"{stem}_SR_B{k}.TIF") for k in (2, 3, 4)}
    assert f"gdalbuildvrt -separate {stem}_rgb.vrt {b[4]} {b[3]} {b[2]} (red, green, blue)" in lines[0]
    assert not (tmp_path / "p").exists()
    # what that command writes, passed alone: a 3-band scene
    vrt = product / f"{stem}_rgb.vrt"
    vrt.write_text('<VRTDataset rasterXSize="48" rasterYSize="48"><SRS>EPSG:32636</SRS>'
                   "<GeoTransform>450000, 30, 0, 40000, 0, -30</GeoTransform>" + "".join(
                       f'<VRTRasterBand dataType="UInt16" band="{i}"><SimpleSource><SourceFilename>{b[k]}'
                       "</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
                       for i, k in enumerate((4, 3, 2), 1)) + "</VRTDataset>")
    res = CliRunner().invoke(cli, ["tile", str(vrt), "--out", str(tmp_path / "p"), "--size", "16"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["bands"] == 3
    # two blocks of a survey named B1 and B2, each its own place: scenes, not bands
    other = tmp_path / "survey"
    other.mkdir()
    for k in (1, 2):
        write_raster(other / f"area_B{k}.tif", rng.integers(0, 255, (1, 48, 48), dtype=np.uint8), "EPSG:32636",
                     from_origin(450000 + 1000 * k, 40000, 0.5, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(cli, ["tile", str(other), "--out", str(tmp_path / "q"), "--size", "16"])
    assert res.exit_code == 0, res.output


def test_a_mosaic_whose_tile_is_missing_names_the_tile(tmp_path: Path) -> None:
    """A VRT mosaic moved without one of its tiles said 'Read failed. See previous exception for details'."""
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text('<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32636</SRS><GeoTransform>450000, 0.5, 0, '
                   '40000, 0, -0.5</GeoTransform><VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename '
                   'relativeToVRT="1">gone.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
                   "</VRTDataset>")
    res = CliRunner().invoke(cli, ["tile", str(vrt), "--out", str(tmp_path / "p"), "--size", "32"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and str(tmp_path / "gone.tif") in lines[0], res.output
    assert "previous exception" not in lines[0] and not (tmp_path / "p").exists()
