"""`geoseg predict` outputs of issue #11: regularized outlines, formats by extension, the
probability COG's scale/offset and mask (tiny trained model)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for, write_raster
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.evaluate import evaluate_frames
from geoseg.outlines import corners
from geoseg.predict import PredictConfig, predict

SHAPE = (96, 128)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("outs")
    boxes = grid_boxes(SHAPE, step=20, seed=5)
    path = bright_boxes_scene(root / "scene.tif", SHAPE, boxes, seed=7)
    return path, labels_for(path, root / "truth.gpkg", boxes, crs="EPSG:32636")


def cfg(**kw: object) -> PredictConfig:
    base: dict[str, object] = {"block": 64, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0,
                               "budget": 1.0}
    return PredictConfig(**{**base, **kw})


def test_regularize_squares_boxes_and_keeps_f1(scene: tuple[Path, Path], tiny_run: Path, tmp_path: Path) -> None:
    path, truth = scene
    raw = predict([path], tiny_run, tmp_path / "raw.gpkg", cfg(regularize=False))
    sq = predict([path], tiny_run, tmp_path / "sq.fgb", cfg(regularize=True, regularize_tolerance=1.0))
    assert raw.regularized is None and sq.regularized == 1.0
    assert any("regularized" in line for line in sq.lines())
    a, b = gpd.read_file(tmp_path / "raw.gpkg"), gpd.read_file(tmp_path / "sq.fgb")
    assert len(a) == len(b) and b.is_valid.all() and pyogrio.read_info(tmp_path / "sq.fgb")["layer_name"] == "sq"
    assert np.median(corners(b.geometry.to_numpy())) == 4  # boxes come out as rectangles
    # squared per block (Dask tasks) = squared as a whole: each outline is regularized alone
    from geoseg.predict.regularize import regularize

    whole = regularize(a, tolerance=1.0)
    assert sorted(shapely.normalize(whole.geometry.to_numpy()).astype(str).tolist()) == sorted(
        shapely.normalize(b.to_crs(a.crs).geometry.to_numpy()).astype(str).tolist())
    assert np.median(corners(a.geometry.to_numpy())) >= 4
    t = gpd.read_file(truth)
    assert evaluate_frames(b, t)["f1"] >= evaluate_frames(a, t)["f1"] - 0.05
    b = b.sort_values("area_m2").reset_index(drop=True)
    np.testing.assert_allclose(b["area_m2"], b.geometry.area / 0.9996**2, rtol=0.01)  # recomputed
    # a tolerance under two of the scene's 0.5 m pixels is raised to them, and the summary says so
    low = predict([path], tiny_run, tmp_path / "low.gpkg", cfg(regularize=True, regularize_tolerance=0.3))
    assert low.regularized == pytest.approx(1.0, rel=0.01) and low.regularized_raised
    assert any("tolerance 1 m, raised to two of a scene's pixels" in line for line in low.lines()), low.lines()
    assert not sq.regularized_raised


def test_regularize_squares_the_classes_it_names(scene: tuple[Path, Path], tiny_run: Path, tmp_path: Path) -> None:
    """A list (the buildings presets' ``[building]``) squares those classes; a tree model's crowns stay as traced."""
    path, _ = scene
    raw = predict([path], tiny_run, tmp_path / "raw.gpkg", cfg(regularize=False))
    trees = predict([path], tiny_run, tmp_path / "trees.gpkg", cfg(regularize=("tree",)))  # tiny_run: building
    assert trees.regularized is None and not any("regularized" in line for line in trees.lines())
    a, t = gpd.read_file(tmp_path / "raw.gpkg"), gpd.read_file(tmp_path / "trees.gpkg")
    assert len(a) == raw.polygons > 0 and shapely.equals(a.geometry.to_numpy(), t.geometry.to_numpy()).all()
    named = predict([path], tiny_run, tmp_path / "named.gpkg", cfg(regularize=("building", "tree")))
    assert named.regularized == 1.0 and named.regularized_classes is None  # every class of the model
    assert np.median(corners(gpd.read_file(tmp_path / "named.gpkg").geometry.to_numpy())) == 4
    from geoseg.predict.stage import PredictSummary

    some = PredictSummary(out=tmp_path / "x.gpkg", regularized=1.0, regularized_classes=("building",))
    assert "(regularized, tolerance 1 m, building only)" in "\n".join(some.lines())  # a subset is named


def test_cli_regularize_flags_and_formats(scene: tuple[Path, Path], tiny_run: Path, tmp_path: Path) -> None:
    path, _ = scene
    for name, flag in (("a.shp", "--no-regularize"), ("b.parquet", "--regularize")):
        res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                       str(tmp_path / name), flag, "--budget", "1.0"])
        assert res.exit_code == 0, res.output
        assert ("regularized" in res.output) == (flag == "--regularize")
    assert len(gpd.read_parquet(tmp_path / "b.parquet")) == len(gpd.read_file(tmp_path / "a.shp")) > 0
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "c.kml")])
    assert res.exit_code == 1 and "c.kml" in res.output and ".parquet" in res.output


def test_probability_cog_scale_offset_and_mask(tiny_run: Path, tmp_path: Path) -> None:
    boxes = grid_boxes((64, 64))
    src = bright_boxes_scene(tmp_path / "full.tif", (64, 64), boxes, seed=3)
    with rasterio.open(src) as s:
        data = s.read()
    data[:, :, :16] = 0  # a nodata strip on the left
    path = write_raster(tmp_path / "nd.tif", data, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5), nodata=0)
    summary = predict([path], tiny_run, tmp_path / "b.gpkg", cfg(prob_out=str(tmp_path / "p.tif")))
    with rasterio.open(summary.prob_out[0]) as p:
        assert p.scales == (pytest.approx(1 / 255),) and p.offsets == (0.0,)
        assert p.tags(1)["scale"] == "1/255" and p.profile.get("nodata") is None
        mask = p.dataset_mask()
        assert (mask[:, :16] == 0).all() and (mask[:, 16:] == 255).all()
        assert p.read(1, masked=True).max() * p.scales[0] <= 1.0


def test_crs_writes_every_scene_in_the_crs_asked(scene: tuple[Path, Path], tiny_run: Path, tmp_path: Path) -> None:
    """--crs: two scenes in two UTM zones in one output CRS; without it, the first scene's.

    The second scene is the same pixels georeferenced in UTM 37N (east of the first's zone 36N):
    each scene's polygons lie on its own footprint, whatever the output CRS.
    """
    path, _ = scene
    with rasterio.open(path) as src:
        data = src.read()
    east = write_raster(tmp_path / "east.tif", data, "EPSG:32637", from_origin(300000, 40000, 0.5, 0.5))
    first = predict([path, east], tiny_run, tmp_path / "first.gpkg", cfg())
    asked = predict([path, east], tiny_run, tmp_path / "asked.gpkg", cfg(crs="EPSG:4326"))
    a, b = gpd.read_file(tmp_path / "first.gpkg"), gpd.read_file(tmp_path / "asked.gpkg")
    assert a.crs.to_epsg() == 32636 and b.crs.to_epsg() == 4326
    assert first.polygons == asked.polygons == len(b) > 0 and set(b["scene"]) == {"scene", "east"}
    np.testing.assert_allclose(a.sort_values("area_m2")["area_m2"], b.sort_values("area_m2")["area_m2"])
    from geoseg.aoi import scene_footprint

    for name, src in (("scene", path), ("east", east)):
        foot = scene_footprint(src).to_crs(4326).iloc[0].buffer(1e-6)
        assert b[b["scene"] == name].within(foot).all()
    # a CRS PROJ does not know, and another CRS with RFC 7946 GeoJSON, are refused before any work
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--crs", "EPSG:99999",
                                   "--out", str(tmp_path / "x.gpkg")])
    assert res.exit_code == 1 and "'EPSG:99999' is not a CRS" in res.output and "--crs" in res.output
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--crs", "EPSG:32636",
                                   "--out", str(tmp_path / "x.geojson")])
    assert res.exit_code == 1 and "RFC 7946" in res.output and not (tmp_path / "x.geojson").exists()


def test_crs_far_from_a_scene_is_warned_of(scene: tuple[Path, Path], tmp_path: Path, caplog) -> None:
    """--crs EPSG:3857 over Antarctica, a UTM zone of another continent: the polygons are written,
    distorted past use (Web Mercator's y of -240 000 km); a warning names the scenes beyond the CRS's area."""
    from pyproj import CRS

    from geoseg.io.outcrs import warn_beyond_use
    from geoseg.io.rasters import inspect_scenes
    from geoseg.io.sources import list_scenes

    path, _ = scene
    with rasterio.open(path) as src:
        data = src.read()
    pole = write_raster(tmp_path / "pole.tif", data, "EPSG:3031", from_origin(0, 1000, 0.5, 0.5))
    infos, _ = inspect_scenes(list_scenes([path, pole]))  # Uganda (32.6° E, 0.4° N) and the South Pole
    said = {}
    for crs in ("EPSG:4326", "EPSG:32636", "EPSG:32637", "EPSG:3857", "EPSG:32618"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="geoseg.io.outcrs"):
            warn_beyond_use(CRS.from_user_input(crs), infos[:1] if crs != "EPSG:3857" else infos)
        said[crs] = caplog.text
    assert not said["EPSG:4326"] and not said["EPSG:32636"] and not said["EPSG:32637"]  # a neighbour zone: fine
    merc = said["EPSG:3857"]
    assert "--crs EPSG:3857" in merc and "beyond it: pole (" in merc and "scene (32" not in merc
    assert "1 scene(s) lie beyond it: scene (32.6, 0.4)" in said["EPSG:32618"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg.io.outcrs"):
        warn_beyond_use(None, infos)  # no --crs: the first scene's, nothing to say (the pole included)
    assert not caplog.text


def test_a_simplify_tolerance_of_many_pixels_is_warned_of(scene: tuple[Path, Path], tiny_run: Path, tmp_path: Path,
                                                          caplog) -> None:
    """--simplify 50 (centimetres meant) on 0.5 m pixels: objects collapse and are dropped, exit 0."""
    path, _ = scene
    with caplog.at_level("WARNING", logger="geoseg.predict.gsd"):
        fine = predict([path], tiny_run, tmp_path / "a.gpkg", cfg(simplify=0.5))
    assert "--simplify" not in caplog.text
    with caplog.at_level("WARNING", logger="geoseg.predict.gsd"):
        coarse = predict([path], tiny_run, tmp_path / "b.gpkg", cfg(simplify=50.0))
    assert "--simplify 50 m is 100 pixels of the 0.5 m grid scene is read on" in caplog.text
    a, b = gpd.read_file(tmp_path / "a.gpkg"), gpd.read_file(tmp_path / "b.gpkg")  # what the warning is for:
    assert coarse.polygons <= fine.polygons and b["area_m2"].sum() < 0.8 * a["area_m2"].sum()  # boxes lose corners
