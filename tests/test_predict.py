"""`geoseg predict`: blocks, seams, CRS, bands, resume, Dask, errors (tiny trained model)."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for

import geoseg.predict.stage as predict_mod
from geoseg.cli.main import cli
from geoseg.errors import InputRasterError, OutputExistsError
from geoseg.evaluate import evaluate_frames
from geoseg.predict import PredictConfig, predict

SHAPE = (96, 128)
# one box straddles the seam between blocks at x = 64 and y = 32
SEAM_BOX = (58, 26, 70, 38)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scene")
    boxes = [b for b in grid_boxes(SHAPE, step=20, seed=5)
             if shapely.box(*b).distance(shapely.box(*SEAM_BOX)) > 3] + [SEAM_BOX]
    path = bright_boxes_scene(root / "scene.tif", SHAPE, boxes, seed=7)
    truth = labels_for(path, root / "truth.gpkg", boxes, crs="EPSG:32636")
    return path, truth


def cfg(**kw) -> PredictConfig:
    base = {"block": 32, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0, "budget": 1.0}
    return PredictConfig(**{**base, **kw})


def run(scene: Path, model: Path, out: Path, **kw) -> gpd.GeoDataFrame:
    predict([scene], model, out, cfg(**kw))
    return gpd.read_file(out)


def test_polygons_match_truth_and_schema(scene, tiny_run: Path, tmp_path: Path) -> None:
    path, truth = scene
    gdf = run(path, tiny_run, tmp_path / "b.gpkg")
    with rasterio.open(path) as src:
        assert gdf.crs == src.crs
    assert {"class", "score", "area_m2", "scene", "geometry"} <= set(gdf.columns)
    assert gdf.is_valid.all() and (gdf["class"] == "building").all()
    assert ((gdf["score"] > 0) & (gdf["score"] <= 1)).all()
    assert (gdf["scene"] == "scene").all()
    rep = evaluate_frames(gdf, gpd.read_file(truth), iou=0.5)
    assert rep["f1"] > 0.9, rep
    # the box across the block seam is found exactly once
    seam = gpd.read_file(truth).geometry.iloc[-1]
    hits = gdf[gdf.intersects(seam)]
    assert len(hits) == 1
    assert hits.geometry.iloc[0].intersection(seam).area / hits.geometry.iloc[0].union(seam).area > 0.7


def test_objects_cut_by_a_small_watershed_halo_are_reported(scene, tiny_run: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path, _ = scene
    with caplog.at_level("WARNING", logger="geoseg"):
        gdf = run(path, tiny_run, tmp_path / "h16.gpkg")
    assert "cut" not in caplog.text and "cut_at_window" not in gdf.columns
    with caplog.at_level("WARNING", logger="geoseg"):
        cut = run(path, tiny_run, tmp_path / "h0.gpkg", watershed_halo=0)
    assert len(cut) > len(gdf)  # the seam box (and any other box on a block edge) is in pieces
    line = next(r.getMessage() for r in caplog.records if "cut in two" in r.getMessage())
    k = int(line.split()[0])
    assert k >= 2 and "in scene)" in line and "raise --watershed-halo (now 0)" in line, line
    assert "cut_at_window" not in cut.columns


def test_block_size_does_not_change_the_result(scene, tiny_run: Path, tmp_path: Path) -> None:
    path, _ = scene
    small = run(path, tiny_run, tmp_path / "s.gpkg", block=32)
    big = run(path, tiny_run, tmp_path / "l.gpkg", block=256)
    assert abs(len(small) - len(big)) <= 1
    rep = evaluate_frames(small, big, iou=0.5)
    assert rep["f1"] > 0.97


def test_routed_budget_runs_fewer_cells(scene, tiny_run: Path, tmp_path: Path) -> None:
    path, _ = scene
    dense = predict([path], tiny_run, tmp_path / "d.gpkg", cfg(budget=1.0))
    routed = predict([path], tiny_run, tmp_path / "r.gpkg", cfg(budget=0.25))
    assert dense.ff_cells == dense.cells == 48
    assert routed.ff_cells == 12


def test_distributed_equals_local(scene, tiny_run: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    path, _ = scene
    local = run(path, tiny_run, tmp_path / "a.gpkg")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        predict([path], tiny_run, tmp_path / "b.gpkg", cfg(), scheduler=cluster.scheduler_address)
    dist = gpd.read_file(tmp_path / "b.gpkg")
    assert len(local) == len(dist) > 0
    assert evaluate_frames(local, dist, iou=0.999)["f1"] == 1.0


def test_single_band_uint16_with_band_mapping(tiny_run: Path, tmp_path: Path) -> None:
    boxes = grid_boxes((64, 64), seed=3)
    path = bright_boxes_scene(tmp_path / "pan.tif", (64, 64), boxes, bands=1, dtype="uint16")
    with pytest.raises(InputRasterError, match="--bands"):
        predict([path], tiny_run, tmp_path / "x.gpkg", cfg())
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "pan.gpkg"), "--bands", "1,1,1", "--block", "32",
                                   "--budget", "1.0", "--min-area", "1"])
    assert res.exit_code == 0, res.output
    assert gpd.read_file(tmp_path / "pan.gpkg").crs.to_epsg() == 32636


def test_resume_after_interruption_gives_the_same_file(scene, tiny_run: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    path, _ = scene
    ref = run(path, tiny_run, tmp_path / "ref.gpkg")
    real = predict_mod.instances_block
    calls = {"n": 0}

    def dies_midway(plan, bi, bj, *a):
        calls["n"] += 1
        if calls["n"] == 6:  # half of the 12 blocks are cached (dask's order of them may vary)
            raise KeyboardInterrupt("killed")
        return real(plan, bi, bj, *a)

    monkeypatch.setattr(predict_mod, "instances_block", dies_midway)
    out = tmp_path / "out.gpkg"
    with pytest.raises(KeyboardInterrupt):
        predict([path], tiny_run, out, cfg(), scheduler="sync")
    assert not out.exists()
    cache = tmp_path / ".out.gpkg.geoseg-cache"
    assert any(cache.rglob("polys_*.gpkg"))
    monkeypatch.setattr(predict_mod, "instances_block", real)
    summary = predict([path], tiny_run, out, cfg(), scheduler="sync")
    assert summary.resumed["instances"] > 0 and summary.resumed["PV"] == 12
    again = gpd.read_file(out)
    assert len(again) == len(ref)
    assert evaluate_frames(again, ref, iou=0.99)["f1"] == 1.0
    assert not cache.exists()


def test_a_kill_between_prob_out_and_out_resumes_without_overwrite(scene, tiny_run: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """The rerun asked for --overwrite for the probability raster its own killed run had written."""
    from geoseg.io.formats import VectorSink

    path, _ = scene
    out, prob = tmp_path / "out.gpkg", tmp_path / "p.tif"

    def killed_at_out(self):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(VectorSink, "commit", killed_at_out)
        m.chdir(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            predict([path], tiny_run, out, cfg(prob_out="p.tif"), scheduler="sync")
    assert prob.exists() and not out.exists()
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".out.gpkg")] == [".out.gpkg.geoseg-cache"]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the same file, named from another directory
    summary = predict([path], tiny_run, out, cfg(prob_out="../p.tif"), scheduler="sync")
    assert summary.prob_out == [prob] and summary.resumed["instances"] == 12 and out.exists()
    # a probability file of another job (another --block) is still never replaced without --overwrite
    with pytest.raises(OutputExistsError, match="p.tif exists") as err:
        predict([path], tiny_run, tmp_path / "o2.gpkg", cfg(prob_out=str(prob), block=64), scheduler="sync")
    assert err.value.path == str(prob)  # what `geoseg run` names


def test_geojson_prob_out_and_errors(scene, tiny_run: Path, tmp_path: Path) -> None:
    path, _ = scene
    out = tmp_path / "b.geojson"
    s = predict([path], tiny_run, out, cfg(prob_out=str(tmp_path / "p.tif")))
    assert gpd.read_file(out).crs.to_epsg() == 4326
    with rasterio.open(s.prob_out[0]) as p, rasterio.open(path) as src:
        assert p.crs == src.crs and p.transform == src.transform and p.dtypes[0] == "uint8"
        assert p.tags(1)["scale"] == "1/255"
    with pytest.raises(OutputExistsError):
        predict([path], tiny_run, out, cfg())
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tmp_path / "nope"),
                                   "--out", str(tmp_path / "c.gpkg")])
    assert res.exit_code == 1 and res.output.startswith("geoseg: error:")
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run),
                                   "--out", str(tmp_path / "c.kml")])
    assert res.exit_code == 1 and "c.kml" in res.output


def test_deadline_sets_k_from_the_measured_cost(scene, tiny_run: Path, tmp_path: Path) -> None:
    path, _ = scene
    few = predict([path], tiny_run, tmp_path / "few.gpkg", cfg(budget=None, deadline_ms=1e-3))
    assert few.ff_cells == 0 and few.cells == 48  # no time for any FF cell: PV only
    many = predict([path], tiny_run, tmp_path / "many.gpkg", cfg(budget=None, deadline_ms=1e6))
    assert many.ff_cells == 48


def test_a_checkpoint_rewritten_in_its_run_dir_invalidates_the_block_cache(scene, tiny_run: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    import os
    import shutil

    path, _ = scene
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    real = predict_mod.instances_block
    calls = {"n": 0}

    def dies_midway(plan, bi, bj, *a):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real(plan, bi, bj, *a)

    monkeypatch.setattr(predict_mod, "instances_block", dies_midway)
    out = tmp_path / "out.gpkg"
    with pytest.raises(KeyboardInterrupt):
        predict([path], run_dir, out, cfg(), scheduler="sync")
    monkeypatch.setattr(predict_mod, "instances_block", real)
    # "retrain in place": the checkpoint changes, the run folder's own mtime does not
    folder_mtime = run_dir.stat().st_mtime_ns
    for ckpt in run_dir.rglob("*.pt"):
        st = ckpt.stat()
        os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert run_dir.stat().st_mtime_ns == folder_mtime
    summary = predict([path], run_dir, out, cfg(), scheduler="sync")
    assert summary.resumed == {"PV": 0, "FF": 0, "instances": 0}


def test_budget_one_is_the_plain_dense_network(scene, tiny_run: Path, tmp_path: Path) -> None:
    """At budget 1.0 the probabilities are FF over whole windows with one halo, nothing else."""
    import numpy as np

    from geoseg.backends import open_backend
    from geoseg.bands import normalize

    path, _ = scene
    prob = tmp_path / "p.tif"
    s = predict([path], tiny_run, tmp_path / "d.gpkg", cfg(block=128, prob_out=str(prob)))
    assert s.ff_cells == s.cells == 48 and s.ff_regions == 1
    with rasterio.open(path) as src, rasterio.open(prob) as p:
        img, got = src.read().astype(np.float32), p.read(1).astype(np.int16)
    with open_backend(tiny_run, "torch", "cpu") as be:  # the scene is one 6x8-cell window
        halo = be.meta.tile_halo
        valid = np.pad(np.ones(img.shape[1:], bool), halo)  # past the scene edge: nodata (0)
        x = normalize(np.pad(img, ((0, 0), (halo, halo), (halo, halo)), mode="reflect"), be.meta.band_stats,
                      valid=valid)
        extent = be.ff(x[None])[0, 0]
    ref = np.round(255 / (1 + np.exp(-extent.astype(np.float64)))).astype(np.int16)
    assert np.abs(got - ref).max() <= 1


def test_budget_one_runs_no_pv_and_leaves_nodata_empty(scene, tiny_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget 1.0 is FF alone: PV never runs; cells without a valid pixel get no probability, the rest FF's."""
    from geoseg.backends.torch_backend import TorchBackend

    path, _ = scene
    holed = tmp_path / "holed.tif"
    with rasterio.open(path) as src:
        img, profile = src.read(), src.profile
    img[:, :, :32] = 0  # the two left cell columns are nodata
    with rasterio.open(holed, "w", **{**profile, "nodata": 0}) as dst:
        dst.write(img)

    def no_pv(self, small):  # noqa: ANN001, ANN202
        raise AssertionError("PV ran at budget 1.0")

    monkeypatch.setattr(TorchBackend, "_pv", no_pv)
    prob = tmp_path / "p.tif"
    s = predict([holed], tiny_run, tmp_path / "d.gpkg", cfg(prob_out=str(prob)))
    assert "the plain dense network (PV not run)" in s.routing, s.routing
    assert s.ff_cells == 48 - 12  # every cell with a valid pixel
    with rasterio.open(prob) as p:
        extent, t = p.read(1), p.transform
    assert extent[:, :32].max() == 0 and extent[:, 32:].max() > 200
    got = gpd.read_file(tmp_path / "d.gpkg")
    assert len(got) and got.total_bounds[0] >= t.c + 32 * t.a - 1e-6
    with pytest.raises(AssertionError, match="PV ran"):  # the routed path does need PV
        predict([holed], tiny_run, tmp_path / "r.gpkg", cfg(budget=0.5))


def test_budget_auto_uses_the_calibrated_threshold_and_says_why(scene, tiny_run: Path, tmp_path: Path) -> None:
    import torch

    from geoseg.models.checkpoint import load_checkpoint, save_checkpoint

    path, truth = scene
    s = predict([path], tiny_run, tmp_path / "a.gpkg", cfg(budget="auto"))
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    thr = float(ckpt["model"]["utility_threshold"])
    assert not math.isnan(thr) and thr != math.inf
    if thr == -math.inf:  # FF paid on every validation cell: a dense pass
        assert s.routing == "--budget auto: every cell (FF paid on every validation cell)" and s.ff_cells == s.cells
    else:
        assert s.routing.startswith(f"--budget auto: predicted utility > {thr:.3g}"), s.routing
        assert 0 < s.ff_cells <= s.cells
    assert evaluate_frames(gpd.read_file(tmp_path / "a.gpkg"), gpd.read_file(truth), iou=0.5)["f1"] > 0.9
    for forced, cells in ((-math.inf, s.cells), (math.inf, 0)):  # thresholds set by hand: all cells, none
        ckpt["model"]["utility_threshold"] = torch.tensor(forced)
        save_checkpoint(tmp_path / "forced.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
        f = predict([path], tmp_path / "forced.pt", tmp_path / "f.gpkg", cfg(budget="auto"), overwrite=True)
        assert f.ff_cells == cells and f.ff_covered == cells  # every cell is one region's, or none
    assert s.ff_covered >= s.ff_cells
    # a checkpoint from before calibration: auto falls back to the model's budget, and says so
    ckpt["model"].pop("utility_threshold")
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    s = predict([path], old, tmp_path / "o.gpkg", cfg(budget="auto"))
    assert "no calibrated utility threshold" in s.routing and s.ff_cells == 24  # the model's budget 0.5
    res = CliRunner().invoke(cli, ["predict", str(path), "--model", str(tiny_run), "--out",
                                   str(tmp_path / "c.gpkg"), "--budget", "most"])
    assert res.exit_code == 2 and "neither a number in (0, 1] nor 'auto'" in res.output


@pytest.mark.parametrize("maps", [3, 4])
def test_pv_upsampling_gives_the_models_values_in_either_layout(maps: int) -> None:
    """ff_block upsamples 3 maps channels-last (faster on the CPU): the values are the model's fusion's."""
    import torch
    import torch.nn.functional as F

    from geoseg.predict.phases import upsampled

    pv = torch.randn(maps, 37, 29, generator=torch.Generator().manual_seed(maps))
    ref = F.interpolate(pv[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    got = upsampled(pv, 4)
    assert got.shape == (maps, 148, 116) and torch.equal(got, ref)
    assert (got.stride(0) == 1) == (maps == 3)  # channels-last for 3 maps: channels adjacent


def test_nodata_pixels_inside_a_roof_leave_no_hole(scene, tiny_run: Path, tmp_path: Path) -> None:
    """Saturated pixels read as nodata (NEON's ``nodata=255``), or a tiler's transparent ones, inside
    roofs: the polygons cover them, as the roofs do (before: a hole in every roof)."""
    path, truth = scene
    boxes = [b for b in grid_boxes(SHAPE, step=20, seed=5)
             if shapely.box(*b).distance(shapely.box(*SEAM_BOX)) > 3 and min(b[2] - b[0], b[3] - b[1]) >= 8]
    with rasterio.open(path) as src:
        img, profile = src.read(), src.profile
    img[img == 255] = 254
    for c0, r0, c1, r1 in boxes:  # a 2x2 patch of saturated pixels in the middle of each roof
        rm, cm = (r0 + r1) // 2, (c0 + c1) // 2
        img[:, rm - 1:rm + 1, cm - 1:cm + 1] = 255
    holed = tmp_path / "saturated.tif"
    with rasterio.open(holed, "w", **{**profile, "nodata": 255}) as dst:
        dst.write(img)
    with rasterio.open(holed) as src:
        assert (src.dataset_mask() == 0).sum() == 4 * len(boxes)
    got = run(holed, tiny_run, tmp_path / "s.gpkg")
    plain = run(path, tiny_run, tmp_path / "p.gpkg")
    with rasterio.open(path) as src:
        t = src.transform
    roofs = [shapely.box(*(t * (c0, r1)), *(t * (c1, r0))) for c0, r0, c1, r1 in boxes]
    on_roofs = got[got.intersects(shapely.union_all(roofs))]
    assert len(on_roofs) >= len(boxes)
    assert (shapely.get_num_interior_rings(on_roofs.geometry.to_numpy()) == 0).all()
    assert len(got) == len(plain)  # no roof split or lost by its nodata pixels
    rep = evaluate_frames(got, gpd.read_file(truth), iou=0.5)
    assert rep["f1"] > 0.9, rep
