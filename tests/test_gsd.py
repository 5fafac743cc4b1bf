"""Ground sampling distance: chips and predictions at the scale a model learned (issue #11)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for, write_raster
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.errors import OutputExistsError
from geoseg.evaluate import evaluate_frames
from geoseg.io.rasters import SceneInfo, inspect_scene, open_scene
from geoseg.models.meta import ModelMeta
from geoseg.predict import PredictConfig, predict
from geoseg.predict.gsd import target_gsd
from geoseg.predict.tta import VIEWS, averaged, unview, view
from geoseg.tile import TileConfig, tile


def test_open_scene_at_a_coarser_gsd_averages_pixels(tmp_path: Path) -> None:
    data = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    path = write_raster(tmp_path / "a.tif", data, "EPSG:32636", from_origin(450000, 40000, 0.25, 0.25))
    scene = inspect_scene(path)
    assert scene.gsd == pytest.approx(0.25, rel=1e-3)
    coarse = scene.at_gsd(0.5)
    assert (coarse.width, coarse.height, coarse.resample) == (4, 4, pytest.approx(2.0, rel=1e-3))
    with open_scene(coarse) as src:
        got = src.read(1)
        mask = src.dataset_mask()
    want = data[0].reshape(4, 2, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert mask.all()
    # the same ground: footprints agree
    assert coarse.footprint.symmetric_difference(scene.footprint).area < 1e-6


def test_rotated_scene_keeps_its_footprint_and_content(tmp_path: Path) -> None:
    t = from_origin(450000, 40000, 0.25, 0.25) * Affine.rotation(25)
    data = np.zeros((1, 40, 40), np.uint8)
    data[0, 8:16, 20:32] = 200  # a bright box in pixel space
    path = write_raster(tmp_path / "r.tif", data, "EPSG:32636", t)
    scene = inspect_scene(path)
    coarse = scene.at_gsd(0.5)
    assert coarse.footprint.symmetric_difference(scene.footprint).area < 1e-6
    with open_scene(coarse) as src:
        small = src.read(1)
    rows, cols = np.nonzero(small > 100)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 7, 10, 15)


def test_scenes_within_tolerance_are_read_on_their_own_grid(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "a.tif", np.zeros((1, 8, 8), np.uint8), "EPSG:32636",
                        from_origin(450000, 40000, 0.5, 0.5))
    scene = inspect_scene(path)
    assert scene.at_gsd(0.51) is scene and scene.at_gsd(None) is scene
    assert scene.at_gsd(0.6).resample == pytest.approx(1.2, rel=1e-3)


def test_tile_gsd_resamples_chips_and_labels_and_records_it(tmp_path: Path) -> None:
    boxes = [(b[0] * 2, b[1] * 2, b[2] * 2, b[3] * 2) for b in grid_boxes((64, 64))]
    fine = bright_boxes_scene(tmp_path / "fine.tif", (128, 128), boxes,
                              transform=from_origin(450000, 40000, 0.25, 0.25))
    labels = labels_for(fine, tmp_path / "l.gpkg", boxes, crs="EPSG:32636")
    tile([fine], labels, tmp_path / "native", TileConfig(size=64, overlap=0), scheduler="sync")
    tile([fine], labels, tmp_path / "p", TileConfig(size=32, overlap=0, gsd=0.5), scheduler="sync")
    assert json.loads((tmp_path / "native" / "stats.json").read_text())["gsd"] == pytest.approx(0.25, rel=1e-3)
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["gsd"] == pytest.approx(0.5, rel=1e-3)
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    assert len(coco["images"]) == 4  # 128 px at 0.25 m = 64 px at 0.5 m: 2 x 2 chips of 32
    first = coco["images"][0]
    with rasterio.open(tmp_path / "p" / "images" / first["file_name"]) as src:
        assert src.res == pytest.approx((0.5, 0.5)) and src.shape == (32, 32)
    # every label lands in the chips at its ground size: 1 px at 0.5 m is 0.25 m²
    area_m2 = sum(a["area"] for a in coco["annotations"]) * 0.25
    truth_m2 = gpd.read_file(labels).area.sum()
    assert area_m2 == pytest.approx(truth_m2, rel=0.15)


def test_checkpoint_records_the_training_gsd(tiny_run: Path) -> None:
    from geoseg.backends.cache import ModelKey, get_backend

    meta = get_backend(ModelKey(str(tiny_run.resolve()), "torch", "cpu", 8)).meta
    assert meta.gsd == pytest.approx(0.5, rel=1e-3)


def _meta(gsd: float | None) -> ModelMeta:
    stats = {"mean": [0.0], "std": [1.0], "bands": 1, "dtype": "uint8", "gsd": gsd}
    return ModelMeta.model_validate({"bands": 1, "stats": stats, "classes": ["b"], "scale": 4, "cell": 16,
                                     "halo": 8, "tile": 32, "multiple": 32, "pv_multiple": 8})


def test_target_gsd_model_native_and_metres() -> None:
    assert target_gsd(PredictConfig(), _meta(0.3)) == 0.3
    assert target_gsd(PredictConfig(), _meta(None)) is None  # older checkpoints: native
    assert target_gsd(PredictConfig(gsd="native"), _meta(0.3)) is None
    assert target_gsd(PredictConfig(gsd=0.7), _meta(0.3)) == 0.7


@pytest.fixture(scope="module")
def fine_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model's kind of scene at half its pixel size: 0.25 m, boxes twice as many px."""
    root = tmp_path_factory.mktemp("fine")
    boxes = [(b[0] * 2, b[1] * 2, b[2] * 2, b[3] * 2) for b in grid_boxes((96, 128), step=20, seed=5)]
    path = bright_boxes_scene(root / "fine.tif", (192, 256), boxes, seed=7,
                              transform=from_origin(450000, 40000, 0.25, 0.25))
    return path, labels_for(path, root / "truth.gpkg", boxes, crs="EPSG:32636")


def _f1(path: Path, truth: Path) -> float:
    return float(evaluate_frames(gpd.read_file(path), gpd.read_file(truth), iou=0.5)["f1"])


def test_predict_reads_a_finer_scene_at_the_model_gsd(fine_scene, tiny_run: Path, tmp_path: Path) -> None:
    path, truth = fine_scene
    base = {"block": 32, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0, "budget": 1.0}
    summary = predict([path], tiny_run, tmp_path / "m.gpkg", PredictConfig(**base))
    assert "0.5 m/px (the model's training GSD) for 1 of 1 scenes (native 0.25 m/px)" in summary.gsd
    gdf = gpd.read_file(tmp_path / "m.gpkg")
    with rasterio.open(path) as src:
        assert gdf.crs == src.crs
    assert _f1(tmp_path / "m.gpkg", truth) > 0.9
    # areas are ground areas whatever grid the model saw
    assert gdf["area_m2"].sum() == pytest.approx(gpd.read_file(truth).area.sum(), rel=0.3)
    native = predict([path], tiny_run, tmp_path / "n.gpkg", PredictConfig(**base, gsd="native"))
    assert native.gsd == ""
    assert _f1(tmp_path / "m.gpkg", truth) >= _f1(tmp_path / "n.gpkg", truth)


# ----------------------------------------------------------------------------- TTA
@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_views_invert(tta: str) -> None:
    a = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    for turns, mirror in VIEWS[tta]:
        np.testing.assert_array_equal(unview(view(a, turns, mirror), turns, mirror), a)


def test_averaged_maps_come_back_on_the_input_grid() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((1, 2, 8, 12)).astype(np.float32)

    def equivariant(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # a per-pixel map and a stride-4 "cell" map (block means): both commute with the views
        cells = t.reshape(1, 2, t.shape[2] // 4, 4, t.shape[3] // 4, 4).mean(axis=(3, 5))
        return t * 2.0, cells

    for tta in ("none", "flip", "d4"):
        maps, cells = averaged(equivariant, x, tta)
        np.testing.assert_allclose(maps, x * 2.0, rtol=1e-6)
        np.testing.assert_allclose(cells, x.reshape(1, 2, 2, 4, 3, 4).mean(axis=(3, 5)), rtol=1e-6)


def test_averaged_removes_a_left_right_bias() -> None:
    x = np.zeros((1, 1, 4, 6), np.float32)
    ramp = np.arange(6, dtype=np.float32)  # a model that sees more on the right

    (out,) = averaged(lambda t: (t + ramp,), x, "flip")
    np.testing.assert_allclose(out[0, 0], np.full((4, 6), 2.5))


def test_predict_with_tta_finds_the_same_objects(tiny_run: Path, tmp_path: Path) -> None:
    boxes = grid_boxes((96, 128), step=20, seed=5)
    path = bright_boxes_scene(tmp_path / "s.tif", (96, 128), boxes, seed=7)
    truth = labels_for(path, tmp_path / "t.gpkg", boxes, crs="EPSG:32636")
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "d4.gpkg"), "--tta", "d4", "--budget", "0.5",
                                   "--block", "32", "--min-area", "1", "--simplify", "0"])
    assert res.exit_code == 0, res.output
    assert "test-time augmentation d4" in res.output
    assert _f1(tmp_path / "d4.gpkg", truth) > 0.9


def test_bad_gsd_option_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    path = bright_boxes_scene(tmp_path / "s.tif", (32, 32), [])
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "o.gpkg"), "--gsd", "fine"])
    assert res.exit_code == 2 and "'fine' is neither 'native', 'model' nor metres per pixel" in res.output
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "o.gpkg"), "--gsd", "-1"])
    assert res.exit_code != 0 and "gsd" in res.output and "Traceback" not in res.output


def wide_pixel_scene(root: Path) -> tuple[Path, Path, list[tuple[int, int, int, int]]]:
    """EPSG:4326 at 60° N with equal steps in degrees: pixels half as wide as tall on the ground.

    Its boxes are squares on the ground (0.558 m x 1.11 m pixels): twice as many columns as rows.
    """
    boxes = [(c, r, c + 2 * s, r + s) for (c, r, s) in
             ((8, 6, 10), (60, 30, 8), (120, 70, 12), (190, 10, 9), (30, 90, 11), (200, 95, 10))]
    path = bright_boxes_scene(root / "wide.tif", (128, 256), boxes, seed=3, crs="EPSG:4326",
                              transform=from_origin(10.0, 60.01, 1e-5, 1e-5))
    return path, labels_for(path, root / "truth.gpkg", boxes), boxes


def _square_components(mask: np.ndarray) -> list[tuple[int, int]]:
    from scipy import ndimage

    return [(s[1].stop - s[1].start, s[0].stop - s[0].start) for s in ndimage.find_objects(ndimage.label(mask)[0])]


def test_pixels_not_square_on_the_ground_are_read_square(tmp_path: Path) -> None:
    """Read as stored, a model would see every roof twice as wide as it is (F1 0.58 -> 0.50 on Kampala)."""
    path, _, _ = wide_pixel_scene(tmp_path)
    scene = inspect_scene(path)
    width_m, height_m = scene.sides or (0, 0)
    assert width_m / height_m == pytest.approx(0.5, abs=0.01) and scene.gsd == pytest.approx(height_m)
    square = scene.at_gsd(None)  # the scene's own GSD (no --gsd): square pixels of its larger side
    assert (square.width, square.height, square.stretch) == (128, 128, (2.0, 1.0))
    assert square.pixel_text == f"{square.gsd:.3g}" and " x " in scene.pixel_text
    assert scene.at_gsd(0.5).sides == pytest.approx((0.5, 0.5), rel=0.01)
    with open_scene(square) as src:
        img = src.read(1)
    sides = _square_components(img > 120)
    assert len(sides) == 6 and all(abs(w - h) <= 1 for w, h in sides), sides


def test_tile_makes_square_chips_of_pixels_not_square_on_the_ground(tmp_path: Path) -> None:
    path, labels, _ = wide_pixel_scene(tmp_path)
    tile([path], labels, tmp_path / "p", TileConfig(size=64, overlap=0, val_fraction=0.0), scheduler="sync")
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    assert len(coco["images"]) == 4  # 128 x 128 square pixels: 2 x 2 chips of 64
    with rasterio.open(tmp_path / "p" / "images" / coco["images"][0]["file_name"]) as src:
        assert src.res == pytest.approx((2e-5, 1e-5))  # degrees: square on the ground at 60° N
    whole = [a["bbox"] for a in coco["annotations"]  # not cut by a chip's edge
             if a["bbox"][0] > 0 and a["bbox"][1] > 0 and a["bbox"][0] + a["bbox"][2] < 64
             and a["bbox"][1] + a["bbox"][3] < 64]
    assert len(whole) == 5 and all(abs(w - h) <= 1 for _, _, w, h in whole), whole


def test_chips_tiled_on_another_grid_of_the_same_file_never_resume(tmp_path: Path, monkeypatch) -> None:
    """Chips an earlier revision cut from the file's own (stretched) grid, same file and options."""
    path, labels, _ = wide_pixel_scene(tmp_path)
    cfg = TileConfig(size=64, overlap=0, val_fraction=0.0)
    with monkeypatch.context() as m:
        m.setattr(SceneInfo, "at_gsd", lambda self, gsd, tolerance=0.0: self)  # the revision that read as stored
        tile([path], labels, tmp_path / "p", cfg, scheduler="sync")
    assert len(json.loads((tmp_path / "p" / "annotations.json").read_text())["images"]) == 8  # 256 x 128 stretched
    with pytest.raises(OutputExistsError, match=r"inputs \(how the scenes are read: another geoseg"):
        tile([path], labels, tmp_path / "p", cfg, scheduler="sync")
    tile([path], labels, tmp_path / "p", cfg, scheduler="sync", overwrite=True)
    assert len(json.loads((tmp_path / "p" / "annotations.json").read_text())["images"]) == 4


def test_predict_reads_pixels_not_square_on_the_ground_square(tiny_run: Path, tmp_path: Path) -> None:
    path, truth, _ = wide_pixel_scene(tmp_path)
    base = {"block": 32, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0, "budget": 1.0}
    summary = predict([path], tiny_run, tmp_path / "n.gpkg", PredictConfig(gsd="native", **base))
    assert "(square pixels of the scene's own GSD) for 1 of 1 scenes (native 0.558 x 1.11 m/px)" in summary.gsd
    assert _f1(tmp_path / "n.gpkg", truth) > 0.9


def test_the_read_at_note_says_why_each_scene_was_resampled() -> None:
    """A scene inside the model's GSD range that is only squared is not said to be read at the training GSD."""
    from geoseg.predict.gsd import gsd_note

    wide = SceneInfo("w.tif", "w", 256, 128, 3, "uint8", "EPSG:4326", (1e-5, 0, 10, 0, -1e-5, 60), None, False,
                     gsd=1.11, sides=(0.558, 1.11))
    fine = SceneInfo("f.tif", "f", 100, 100, 3, "uint8", "EPSG:32636", (0.25, 0, 0, 0, -0.25, 0), None, False,
                     gsd=0.25)
    squared = wide.at_gsd(None)
    coarse = fine.at_gsd(0.5)
    model = PredictConfig()  # --gsd model
    assert gsd_note([wide], [squared], model).startswith("1.11 m/px (square pixels of the scene's own GSD) for 1")
    assert "(the model's training GSD) for 1 of 1" in gsd_note([fine], [coarse], model)
    both = gsd_note([fine, wide], [coarse, squared], model)
    assert "(the model's training GSD; square pixels of the scene's own GSD) for 2 of 2" in both, both


def test_a_rotated_grid_of_rectangular_pixels_is_read_square(tmp_path: Path) -> None:
    """The sides are resampled along the grid's own axes: a rotated scene stays rotated, its pixels square."""
    from scipy import ndimage

    boxes = [(c, r, c + 2 * s, r + s) for (c, r, s) in ((8, 6, 10), (60, 30, 8), (120, 70, 12), (200, 95, 10))]
    tr = Affine.translation(450000, 40000) * Affine.rotation(30) * Affine.scale(0.25, -0.5)
    scene = inspect_scene(bright_boxes_scene(tmp_path / "rot.tif", (128, 256), boxes, seed=3, transform=tr))
    square = scene.at_gsd(None)
    a = square.affine
    assert square.stretch == (2.0, 1.0) and np.degrees(np.arctan2(a.d, a.a)) == pytest.approx(30)  # columns' axis
    with open_scene(square) as src:
        img = src.read(1)
    found = ndimage.find_objects(ndimage.label(img > 120)[0])
    assert sorted((s[1].stop - s[1].start, s[0].stop - s[0].start) for s in found) == [(8, 8), (10, 10), (10, 10),
                                                                                     (12, 12)]


@pytest.mark.parametrize(("crs", "transform", "seen"), [
    ("EPSG:4326", from_origin(10.0, 58.0, 0.6, 0.6), "stretched"),  # 4.8° of latitude: widths differ by 6 %
    ("EPSG:3857", from_origin(3e6, -7e6, 2.5e5, 2.5e5), "at 0.8"),  # Web Mercator over 16° S: size, not shape
])
def test_a_scene_whose_crs_scale_varies_over_it_warns_with_the_utm_zone(tmp_path: Path, crs, transform, seen) -> None:
    """One grid of square pixels sized at the centre: a user is told, with the warp that fixes it."""
    from geoseg.errors import GeoSegWarning

    write_raster(tmp_path / "big.tif", np.zeros((1, 8, 8), np.uint8), crs, transform)
    with pytest.warns(GeoSegWarning, match=rf"up to \d+ %.*seen {seen}.*gdalwarp -t_srs EPSG:32(633|736) "):
        inspect_scene(tmp_path / "big.tif")
    write_raster(tmp_path / "town.tif", np.zeros((1, 8, 8), np.uint8), crs, transform * Affine.scale(1e-3))
    inspect_scene(tmp_path / "town.tif")  # a town's extent: no warning (pytest makes it an error)
