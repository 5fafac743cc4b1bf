"""`geoseg tile`: chips, COCO instance masks, stats, splits, resume, errors, Dask."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from conftest import SAMPLE, labels_for, write_raster
from hypothesis import given
from hypothesis import strategies as st
from pycocotools.coco import COCO
from rasterio.features import rasterize
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.errors import (
    ConfigError,
    EmptyLabelsWarning,
    GeoSegWarning,
    InputRasterError,
    InputVectorError,
    OutputExistsError,
)
from geoseg.tile import TileConfig, tile
from geoseg.tile.grid import axis_offsets, window_grid
from geoseg.tile.labels import decode_rle

BOXES = [(10, 10, 40, 30), (100, 50, 150, 120), (180, 150, 260, 190)]  # pixel boxes


def _mtimes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


@given(length=st.integers(1, 5000), size=st.integers(8, 1024), overlap_frac=st.floats(0, 0.9))
def test_axis_offsets_cover_the_axis(length: int, size: int, overlap_frac: float) -> None:
    overlap = min(int(size * overlap_frac), size - 1)
    offs = axis_offsets(length, size, size - overlap)
    ext = min(size, length)
    assert offs[0] == 0 and offs[-1] + ext == length  # flush with both edges
    assert all(b > a for a, b in zip(offs, offs[1:]))
    assert all(b - a <= size - overlap for a, b in zip(offs, offs[1:]))  # no gap, overlap kept


def test_window_grid_small_raster_gives_one_smaller_window() -> None:
    grid = window_grid(100, 60, 512, 64)
    assert len(grid) == 1 and len(grid[0]) == 1
    assert (grid[0][0].width, grid[0][0].height) == (100, 60)


def test_an_unset_overlap_follows_a_small_size(merc_rgb: Path, tmp_path: Path) -> None:
    """`--size 64` alone tiles with overlap 8 (before: 'overlap (64) must be smaller than size (64)'
    for an option not given); the default stays 64 from 512 up, and a set overlap is kept or refused."""
    assert (TileConfig().overlap, TileConfig(size=1024).overlap, TileConfig(size=64).overlap) == (64, 64, 8)
    assert TileConfig(size=64, overlap=0).overlap == 0
    with pytest.raises(ValueError, match="overlap"):
        TileConfig(size=64, overlap=64)
    res = CliRunner().invoke(cli, ["tile", str(merc_rgb), "--out", str(tmp_path / "p"), "--size", "64"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["tile"]["overlap"] == 8


@pytest.mark.parametrize("fixture", ["utm_uint16", "merc_rgb", "nodata_4band", "compound_rgb"])
def test_instance_masks_equal_rasterized_truth(fixture: str, request, tmp_path: Path) -> None:
    scene: Path = request.getfixturevalue(fixture)
    # an overlapping pair, a touching pair, and one alone: each keeps its own mask
    boxes = [(5, 5, 25, 20), (20, 10, 35, 30), (40, 30, 90, 70), (90, 30, 100, 50),
             (100, 80, 118, 110)]
    labels = labels_for(scene, tmp_path / "labels.gpkg", boxes, crs="EPSG:4326")
    out = tmp_path / "out"
    summary = tile([scene], labels, out, TileConfig(size=64, overlap=16, min_valid=0.0),
                   scheduler="sync")
    coco = COCO(str(out / "annotations.json"))
    assert summary.chips_written == len(coco.imgs) > 0
    truth = gpd.read_file(labels).to_crs(rasterio.open(scene).crs)
    with rasterio.open(scene) as src:
        profile = src.profile
    for img in coco.imgs.values():
        with rasterio.open(out / "images" / img["file_name"]) as chip:
            # georeferencing kept per chip
            assert chip.crs == profile["crs"]
            assert chip.dtypes[0] == profile["dtype"] and chip.count == profile["count"]
            assert chip.nodata == profile["nodata"]
            col, row, w, h = img["window"]
            expected_t = profile["transform"] @ rasterio.Affine.translation(col, row)
            assert chip.transform.almost_equals(expected_t)
            assert list(chip.transform)[:6] == pytest.approx(img["transform"])
        # each polygon rasterized alone on the chip grid is exactly its annotation
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        got = sorted((a["area"], decode_rle(a["segmentation"]).tobytes()) for a in anns)
        want = []
        for geom in truth.geometry:
            m = rasterize([(geom, 1)], out_shape=(h, w), transform=expected_t, dtype="uint8")
            if m.any():
                want.append((int(m.sum()), m.astype(bool).tobytes()))
        assert got == sorted(want)
        for a in anns:
            assert coco.annToMask(a).sum() == a["area"]
            assert a["iscrowd"] == 0 and len(a["bbox"]) == 4


def test_chips_skipped_for_the_other_splits_pixels_are_counted_apart(merc_rgb: Path, tmp_path: Path) -> None:
    """Chips overlapping val windows lose those pixels: under min_valid they are skipped as held, not as
    nodata (the summary counted both as one number, 'nodata, or held for validation')."""
    labels = labels_for(merc_rgb, tmp_path / "l.gpkg", BOXES)  # labelled: val pixels are held out of train chips
    s = tile([merc_rgb], labels, tmp_path / "out", TileConfig(size=64, overlap=32, split_block=1, val_fraction=0.5,
                                                              min_valid=0.9, seed=1), scheduler="sync")
    assert s.chips_low_valid == 0 and s.chips_held > 0 and s.chips_train + s.chips_val == s.chips_written
    assert f"skipped (0 mostly nodata, {s.chips_held} mostly the other split's pixels)" in s.lines()[1]


def test_nodata_chips_skipped_and_stats_over_valid_pixels(nodata_4band: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = tile([nodata_4band], None, out, TileConfig(size=60, overlap=0, min_valid=0.5,
                                                   val_fraction=0.0), scheduler="sync")
    # 3 columns of 60 px, the first all nodata: one third of the chips skipped
    assert s.chips_low_valid == 2 and s.chips_held == 0 and s.chips_written == 4
    assert "2 skipped (2 mostly nodata, 0 mostly the other split's pixels)" in s.lines()[1]
    stats = json.loads((out / "stats.json").read_text())
    with rasterio.open(nodata_4band) as src:
        data = src.read()
    valid = data[:, :, 60:].reshape(4, -1).astype(np.float64)
    assert stats["bands"] == 4 and stats["dtype"] == "float32"
    np.testing.assert_allclose(stats["mean"], valid.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], valid.std(axis=1), rtol=1e-4)


def test_all_chips_in_val_give_val_statistics(nodata_4band: Path, tmp_path: Path) -> None:
    """Chips only to validate on (e.g. for geoseg calibrate): stats.json from the val pixels, train's otherwise."""
    out = tmp_path / "out"
    tile([nodata_4band], None, out, TileConfig(size=60, overlap=0, val_fraction=1.0), scheduler="sync")
    stats = json.loads((out / "stats.json").read_text())
    with rasterio.open(nodata_4band) as src:
        valid = src.read()[:, :, 60:].reshape(4, -1).astype(np.float64)
    assert stats["stats_split"] == "val" and stats["chips"] == {"train": 0, "val": 4}
    np.testing.assert_allclose(stats["mean"], valid.mean(axis=1), rtol=1e-6)
    both = tmp_path / "both"
    tile([nodata_4band], None, both, TileConfig(size=60, overlap=0, val_fraction=0.5, split_block=1),
         scheduler="sync")
    assert json.loads((both / "stats.json").read_text())["stats_split"] == "train"


def test_labels_repaired_exploded_and_outside_counted(merc_rgb: Path, tmp_path: Path) -> None:
    with rasterio.open(merc_rgb) as src:
        b = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    w, h = b[2] - b[0], b[3] - b[1]
    bowtie = shapely.Polygon([(b[0] + 0.1 * w, b[1] + 0.1 * h), (b[0] + 0.4 * w, b[1] + 0.4 * h),
                              (b[0] + 0.4 * w, b[1] + 0.1 * h), (b[0] + 0.1 * w, b[1] + 0.4 * h)])
    assert not bowtie.is_valid
    outside = shapely.box(b[2] + w, b[3] + h, b[2] + 2 * w, b[3] + 2 * h)
    two = shapely.MultiPolygon([shapely.box(b[0] + 0.6 * w, b[1] + 0.6 * h, b[0] + 0.7 * w, b[1] + 0.7 * h),
                                shapely.box(b[0] + 0.8 * w, b[1] + 0.8 * h, b[0] + 0.9 * w, b[1] + 0.9 * h)])
    labels = tmp_path / "l.geojson"
    gpd.GeoDataFrame({"class": ["a", "a", "b"]}, geometry=[bowtie, outside, two],
                     crs="EPSG:4326").to_file(labels)
    out = tmp_path / "out"
    s = tile([merc_rgb], labels, out, TileConfig(size=256, overlap=0, val_fraction=0.0),
             scheduler="sync")
    # bow-tie -> 2 triangles, multipolygon -> 2 instances, 1 outside
    assert s.labels == 5 and s.labels_outside == 1
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["a", "b"]
    assert len(coco["annotations"]) == 4
    assert sorted(a["category_id"] for a in coco["annotations"]) == [1, 1, 2, 2]


def test_split_by_blocks_not_chips(utm_uint16: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tile([utm_uint16], None, out, TileConfig(size=20, overlap=0, split_block=3, val_fraction=0.5),
         scheduler="sync")
    imgs = json.loads((out / "annotations.json").read_text())["images"]
    split_of_block: dict[tuple[int, int], set[str]] = {}
    for im in imgs:
        col, row = im["window"][:2]
        split_of_block.setdefault((row // 60, col // 60), set()).add(im["split"])
    assert all(len(s) == 1 for s in split_of_block.values())  # one split per block
    splits = [next(iter(s)) for s in split_of_block.values()]
    assert "train" in splits and "val" in splits


def test_the_val_share_counts_chips_not_blocks(tmp_path: Path) -> None:
    """The bundled sample's two scenes gave two split blocks, of 12 chips and of 1: one went to val at
    random, so `geoseg tile data/sample` (the help's first example) put 12 of 13 chips in val for
    half the seeds and trained on one. Val now takes blocks while its chips stay within the share."""
    from geoseg.tile.grid import plan_splits

    big = write_raster(tmp_path / "big.tif", np.ones((3, 96, 128), np.uint8), "EPSG:32636",
                       from_origin(450000, 40000, 0.5, 0.5))  # 3 x 4 chips of 32: one block of 4 x 4 chips
    small = write_raster(tmp_path / "small.tif", np.ones((3, 32, 32), np.uint8), "EPSG:32636",
                         from_origin(460000, 40000, 0.5, 0.5))
    for seed in range(6):
        s = tile([big, small], None, tmp_path / f"o{seed}", TileConfig(size=32, overlap=0, seed=seed),
                 scheduler="sync")
        assert (s.chips_train, s.chips_val) == (12, 1), seed
    # an output of a revision that drew the split otherwise is not resumed: its held pixels follow its split
    manifest = json.loads((tmp_path / "o0" / "tile.json").read_text())
    manifest["params"].pop("split")
    (tmp_path / "o0" / "tile.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputExistsError, match="the train/val split: another geoseg revision"):
        tile([big, small], None, tmp_path / "o0", TileConfig(size=32, overlap=0, seed=0), scheduler="sync")
    # equal blocks: round(val_fraction x blocks) of them, as before; a share no block fits: the smallest
    cfg = TileConfig(val_fraction=0.2)
    blocks = {"a": [(0, k) for k in range(10)]}
    scene = type("S", (), {"name": "a"})()
    splits = plan_splits([scene], blocks, cfg, {("a", (0, k)): 16 for k in range(10)})  # type: ignore[list-item]
    assert list(splits.values()).count("val") == 2
    sizes = {("a", (0, 0)): 30, ("a", (0, 1)): 9, ("a", (0, 2)): 30}
    splits = plan_splits([scene], {"a": [(0, 0), (0, 1), (0, 2)]}, cfg, sizes)  # type: ignore[list-item]
    assert [k for k, v in splits.items() if v == "val"] == [("a", (0, 1))]


@pytest.mark.parametrize("fixture", ["utm_uint16", "nodata_4band"])
def test_train_chips_never_hold_a_val_pixel(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Neighbouring chips overlap: the train chips at a val block's edge held a strip of its
    pixels (and val chips one of theirs), so validation scored pixels the model trained on."""
    scene = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    cfg = TileConfig(size=20, overlap=6, split_block=2, val_fraction=0.5, min_valid=0.0)
    labels = labels_for(scene, tmp_path / "l.geojson", [(70, 5, 80, 15), (100, 40, 110, 50)])
    tile([scene], labels, out, cfg, scheduler="sync")
    imgs = json.loads((out / "annotations.json").read_text())["images"]
    val = [im["window"] for im in imgs if im["split"] == "val"]
    shared = 0
    for im in (im for im in imgs if im["split"] == "train"):
        c, r, w, h = im["window"]
        with rasterio.open(out / "images" / im["file_name"]) as src:
            valid = src.dataset_mask() > 0
        for vc, vr, vw, vh in val:
            r0, r1, c0, c1 = max(r, vr) - r, min(r + h, vr + vh) - r, max(c, vc) - c, min(c + w, vc + vw) - c
            if r1 > r0 and c1 > c0:
                shared += (r1 - r0) * (c1 - c0)
                assert not valid[r0:r1, c0:c1].any(), (im["file_name"], (vc, vr))
    assert shared > 0  # the layout does put train chips over val pixels
    stats = json.loads((out / "stats.json").read_text())
    assert all(np.isfinite(stats["mean"])) and all(np.isfinite(stats["std"]))
    if fixture == "utm_uint16":  # chips for the mean teacher (no labels) use every pixel: all are unlabelled
        tile([scene], None, tmp_path / "unl", cfg, scheduler="sync")
        for p in (tmp_path / "unl" / "images").iterdir():
            with rasterio.open(p) as src:
                assert (src.dataset_mask() > 0).all(), p.name


def test_val_scenes_go_wholly_to_val(utm_uint16: Path, tmp_path: Path) -> None:
    other = write_raster(tmp_path / "other.tif", np.ones((1, 50, 50), np.uint16), "EPSG:32636",
                         from_origin(450000, 40000, 0.5, 0.5))
    out = tmp_path / "out"
    tile([utm_uint16, other], None, out, TileConfig(size=32, overlap=0, val_fraction=0.0, val_scenes=("oth*",)),
         scheduler="sync")
    imgs = json.loads((out / "annotations.json").read_text())["images"]
    assert {im["split"] for im in imgs if im["scene"] == "other"} == {"val"}
    assert {im["split"] for im in imgs if im["scene"] == "utm"} == {"train"}
    # a pattern that matches no scene (a typo: 'Oth*') once fell back to the random block split, with the
    # scene meant to be held out partly in train; it is an error before anything is written
    with pytest.raises(ConfigError, match=r"--val-scenes 'Oth\*' matches none of the scenes tiled \(utm, other\)"):
        tile([utm_uint16, other], None, tmp_path / "typo", TileConfig(size=32, overlap=0, val_scenes=("oth*", "Oth*")),
             scheduler="sync")
    assert not (tmp_path / "typo").exists()


def test_rerun_writes_nothing_and_resumes(merc_rgb: Path, tmp_path: Path) -> None:
    labels = labels_for(merc_rgb, tmp_path / "l.gpkg", BOXES[:2])
    out = tmp_path / "out"
    cfg = TileConfig(size=64, overlap=8)
    first = tile([merc_rgb], labels, out, cfg, scheduler="sync")
    before = _mtimes(out)
    again = tile([merc_rgb], labels, out, cfg, scheduler="sync")
    assert _mtimes(out) == before
    assert again.chips_written == 0 and again.chips_done_before == first.chips_written
    assert not again.rewrote_outputs and again.instances == first.instances
    # a crash after some blocks: drop a part file and a chip; the rerun redoes only those
    ann_before = json.loads((out / "annotations.json").read_text())
    part = sorted((out / ".parts").iterdir())[0]
    part.unlink()
    victim = sorted((out / "images").iterdir())[0]
    victim.unlink()
    third = tile([merc_rgb], labels, out, cfg, scheduler="sync")
    assert third.chips_written == 1
    assert json.loads((out / "annotations.json").read_text()) == ann_before


def test_other_parameters_need_overwrite(merc_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tile([merc_rgb], None, out, TileConfig(size=64, overlap=0), scheduler="sync")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        tile([merc_rgb], None, out, TileConfig(size=128, overlap=0), scheduler="sync")
    s = tile([merc_rgb], None, out, TileConfig(size=128, overlap=0), scheduler="sync",
             overwrite=True)
    assert len(list((out / "images").iterdir())) == s.chips_written == 4


def test_no_tmp_files_left(merc_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tile([merc_rgb], None, out, TileConfig(size=64, overlap=0), scheduler="threads")
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_corrupt_raster_one_line_error_and_nothing_written(merc_rgb: Path, tmp_path: Path) -> None:
    bad = tmp_path / "scenes" / "bad.tif"
    bad.parent.mkdir()
    bad.write_bytes(merc_rgb.read_bytes()[:3000])
    os.link(merc_rgb, tmp_path / "scenes" / "good.tif")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["tile", str(bad.parent), "--out", str(out)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error:") and "bad.tif" in lines[0]
    assert "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(cli, ["tile", str(bad.parent), "--out", str(out), "--skip-bad",
                                   "--size", "128", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "bad.tif" in res.output
    assert len(list((out / "images").iterdir())) == 4


def test_raster_without_crs_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
                       transform=from_origin(0, 10, 1, 1)) as dst:
        dst.write(np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(InputRasterError, match="nocrs.tif has no CRS; assign one \\(e.g. gdal_edit.py -a_srs EPSG"):
        tile([path], None, tmp_path / "out")
    # a delivery's ESRI .prj beside it (GDAL does not read it for a GeoTIFF): the line names it and its CRS
    from pyproj import CRS

    (tmp_path / "nocrs.prj").write_text(CRS.from_epsg(32636).to_wkt("WKT1_ESRI"))
    with pytest.raises(InputRasterError, match=r"nocrs.prj beside it holds EPSG:32636 \(WGS 84 / UTM zone 36N\), "
                                               r"which GDAL does not read for it: gdal_edit.py -a_srs .*nocrs.prj"):
        tile([path], None, tmp_path / "out")


def test_labels_without_crs_is_an_error(merc_rgb: Path, tmp_path: Path) -> None:
    path = tmp_path / "nocrs.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pyogrio: "'crs' was not provided"
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]).to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(InputVectorError, match="nocrs.gpkg has no CRS"):
        tile([merc_rgb], tmp_path / "nocrs.gpkg", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_labels_warn_and_give_negatives(merc_rgb: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"class": []}, geometry=[], crs="EPSG:4326").to_file(path)
    with pytest.warns(EmptyLabelsWarning):
        s = tile([merc_rgb], path, tmp_path / "out", TileConfig(size=128, overlap=0),
                 scheduler="sync")
    assert s.chips_written == 4 and s.instances == 0


def test_unknown_config_key_names_key_and_file(merc_rgb: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("size: 64\novrlap: 8\n")
    res = CliRunner().invoke(cli, ["tile", str(merc_rgb), "--out", str(tmp_path / "o"),
                                   "--config", str(cfg)])
    assert res.exit_code == 1
    assert "unknown key 'ovrlap'" in res.output and "t.yaml" in res.output
    # CLI options override config values
    cfg.write_text("size: 64\noverlap: 0\n")
    res = CliRunner().invoke(cli, ["tile", str(merc_rgb), "--out", str(tmp_path / "o"),
                                   "--config", str(cfg), "--size", "128", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["tile"]["size"] == 128


def test_distributed_cluster_equals_local(merc_rgb: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    labels = labels_for(merc_rgb, tmp_path / "l.gpkg", BOXES)
    cfg = TileConfig(size=64, overlap=16, split_block=2)
    tile([merc_rgb], labels, tmp_path / "local", cfg, scheduler="threads")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        tile([merc_rgb], labels, tmp_path / "dist", cfg, scheduler=cluster.scheduler_address)
    a = json.loads((tmp_path / "local" / "annotations.json").read_text())
    b = json.loads((tmp_path / "dist" / "annotations.json").read_text())
    assert a == b
    for p in (tmp_path / "local" / "images").iterdir():
        with rasterio.open(p) as x, rasterio.open(tmp_path / "dist" / "images" / p.name) as y:
            np.testing.assert_array_equal(x.read(), y.read())


def test_threads_and_processes_equal_sync(merc_rgb: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    boxes = [(c, r, c + int(rng.integers(3, 30)), r + int(rng.integers(3, 30)))
             for c, r in rng.integers(0, 240, (150, 2))]
    labels = labels_for(merc_rgb, tmp_path / "l.gpkg", boxes)
    cfg = TileConfig(size=64, overlap=16, split_block=1)
    outs = {}
    for sch in ("sync", "threads", "processes"):
        tile([merc_rgb], labels, tmp_path / sch, cfg, scheduler=sch)
        outs[sch] = json.loads((tmp_path / sch / "annotations.json").read_text())
    assert len(outs["sync"]["annotations"]) > 150
    assert outs["threads"] == outs["sync"] == outs["processes"]


def test_kampala_sample(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = tile([SAMPLE], SAMPLE / "labels" / "buildings.gpkg", out,
             TileConfig(val_fraction=0.0, val_scenes=("kampala_blockB*",)), scheduler="threads")
    assert s.scenes == 2 and s.labels_outside == 0
    coco = COCO(str(out / "annotations.json"))
    by_split = {sp: [i for i in coco.imgs.values() if i["split"] == sp] for sp in ("train", "val")}
    assert len(by_split["val"]) == 1 and len(by_split["train"]) == 12
    assert all(i["crs"] == "EPSG:3857" for i in coco.imgs.values())
    # block B is a dense settlement: many instances, touching
    val_anns = coco.getAnnIds(imgIds=[by_split["val"][0]["id"]])
    assert len(val_anns) >= 90
    # the internal mask of the scene is carried into the chip
    with rasterio.open(out / "images" / "kampala_blockB_z20_0_0.tif") as chip, \
            rasterio.open(SAMPLE / "kampala_blockB_z20.tif") as src:
        np.testing.assert_array_equal(chip.dataset_mask(), src.dataset_mask())
        np.testing.assert_array_equal(chip.read(), src.read())


def test_class_field_none_makes_one_class_of_labels_with_an_empty_class_column(tmp_path: Path) -> None:
    # Overture's buildings carry a 'class' column that is mostly null: refused by default, with the way out
    from conftest import bright_boxes_scene, grid_boxes

    boxes = grid_boxes((64, 64), step=20, seed=1)
    (tmp_path / "s").mkdir()
    scene = bright_boxes_scene(tmp_path / "s" / "a.tif", (64, 64), boxes)
    labels = gpd.read_file(labels_for(scene, tmp_path / "l.gpkg", boxes))
    labels["class"] = ["house" if i == 0 else None for i in range(len(labels))]
    labels.to_parquet(tmp_path / "overture.parquet")
    args = ["tile", str(tmp_path / "s"), "--labels", str(tmp_path / "overture.parquet"), "--size", "32",
            "--overlap", "0", "--scheduler", "sync"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "refused")])
    assert res.exit_code != 0 and "--class-field (none: one class for every feature)" in res.output, res.output
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "p"), "--class-field", "none",
                                   "--class-name", "building"])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["building"]
    assert {a["label_id"] for a in coco["annotations"]} == set(range(len(labels)))


def test_labels_far_from_every_scene_are_left_out_but_keep_their_classes(tmp_path: Path) -> None:
    # a country's footprints for one scene: only those near it are repaired and compared
    from conftest import bright_boxes_scene, grid_boxes

    boxes = grid_boxes((64, 64), step=20, seed=2)
    (tmp_path / "s").mkdir()
    scene = bright_boxes_scene(tmp_path / "s" / "a.tif", (64, 64), boxes)
    near = gpd.read_file(labels_for(scene, tmp_path / "near.gpkg", boxes))  # EPSG:4326
    far = gpd.GeoSeries([shapely.box(30 + i * 1e-3, 1.0, 30.0005 + i * 1e-3, 1.0005) for i in range(50)],
                        crs=4326)
    rows: list[tuple[str, object]] = []
    for i, g in enumerate(near.geometry):  # near features at rows 1, 3, 5...: label_id is the row
        rows += [("shed", far.iloc[i]), ("building", g)]
    rows += [("shed", g) for g in far.iloc[len(near):]]
    labels = gpd.GeoDataFrame({"class": [c for c, _ in rows]}, geometry=[g for _, g in rows], crs=4326)
    labels.to_file(tmp_path / "country.gpkg")
    s = tile([scene], tmp_path / "country.gpkg", tmp_path / "p", TileConfig(size=32, overlap=0), scheduler="sync")
    assert (s.labels, s.labels_outside) == (len(near) + 50, 50)  # counted as before, not repaired
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["building", "shed"]  # of every label, as before
    near_rows = {2 * i + 1 for i in range(len(near))}
    assert {a["label_id"] for a in coco["annotations"]} == near_rows
    assert {a["category_id"] for a in coco["annotations"]} == {1}


def test_a_subset_in_qgis_syntax_keeps_the_features_it_selects(tmp_path: Path) -> None:
    # Google Open Buildings' confidence, as QGIS writes a filtered layer's source
    from conftest import bright_boxes_scene, grid_boxes

    from geoseg.errors import OutputExistsError

    boxes = grid_boxes((64, 64), step=20, seed=4)
    (tmp_path / "s").mkdir()
    scene = bright_boxes_scene(tmp_path / "s" / "a.tif", (64, 64), boxes)
    labels = gpd.read_file(labels_for(scene, tmp_path / "l.gpkg", boxes))
    labels["confidence"] = np.linspace(0.5, 0.95, len(labels))
    labels.to_file(tmp_path / "ob.gpkg", layer="buildings")
    kept = int((labels["confidence"] >= 0.7).sum())
    assert 0 < kept < len(labels)
    source = f"{tmp_path / 'ob.gpkg'}|layername=buildings|subset=\"confidence\" >= 0.7"
    cfg = TileConfig(size=32, overlap=0)
    s = tile([scene], source, tmp_path / "p", cfg, scheduler="sync")
    assert s.labels == kept
    with pytest.raises(OutputExistsError):  # another subset is other labels: never a silent resume
        tile([scene], source.replace("0.7", "0.5"), tmp_path / "p", cfg, scheduler="sync")
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", f"{tmp_path / 'ob.gpkg'}|subset=confidnce > 1",
                                   "--out", str(tmp_path / "bad"), "--size", "32", "--overlap", "0"])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("geoseg: error:")][0]
    assert "with subset 'confidnce > 1'" in line and "OGR SQL WHERE clause" in line, line


def test_openstreetmap_buildings_through_layer_and_subset(tmp_path: Path) -> None:
    # an OSM extract (XML here, PBF alike): its multipolygons layer holds every area; the subset keeps buildings
    import pyogrio
    from conftest import bright_boxes_scene
    from pyproj import Transformer

    if "OSM" not in pyogrio.list_drivers():
        pytest.skip("this GDAL has no OSM driver")
    x, y = Transformer.from_crs(4326, 32636, always_xy=True).transform(32.57995, 0.36035)
    (tmp_path / "s").mkdir()
    bright_boxes_scene(tmp_path / "s" / "k.tif", (80, 80), [(10, 10, 30, 30)], transform=from_origin(x, y, 0.5, 0.5))
    square = [(0.3600, 32.5800), (0.3600, 32.5801), (0.3601, 32.5801), (0.3601, 32.5800)]
    grass = [(lat + 0.0002, lon + 0.0002) for lat, lon in square]
    nodes = "".join(f'<node id="{i + 1}" lat="{lat}" lon="{lon}" version="1"/>'
                    for i, (lat, lon) in enumerate(square + grass))
    refs = ["".join(f'<nd ref="{i}"/>' for i in (*ids, ids[0])) for ids in ((1, 2, 3, 4), (5, 6, 7, 8))]
    (tmp_path / "extract.osm").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><osm version="0.6">{nodes}'
        f'<way id="10" version="1">{refs[0]}<tag k="building" v="yes"/></way>'
        f'<way id="11" version="1">{refs[1]}<tag k="landuse" v="grass"/></way></osm>')
    source = f"{tmp_path / 'extract.osm'}|layername=multipolygons|subset=building IS NOT NULL"
    res = CliRunner().invoke(cli, ["tile", str(tmp_path / "s"), "--labels", source, "--out", str(tmp_path / "p"),
                                   "--size", "32", "--overlap", "0", "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    assert "labels: 1, 0 outside every scene" in res.output  # the grass is not a building
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    assert len(coco["annotations"]) > 0 and {a["label_id"] for a in coco["annotations"]} == {0}


def test_labels_under_a_pixel_are_counted_and_warned(tmp_path: Path) -> None:
    """Roofs of 7 m on a 10 m grid: about half cover no pixel centre, so they are in no mask and train as
    background. Tile says how many, once over all chips (a label cut at a chip edge that has pixels in the
    next chip is not one of them), and a resumed run says the same."""
    t = from_origin(500000, 4000000, 10, 10)
    write_raster(tmp_path / "s2.tif", np.full((3, 128, 128), 90, np.uint8), "EPSG:32636", t)
    roofs = [shapely.box(500000 + x, 4000000 - y - 7, 500000 + x + 7, 4000000 - y)
             for x in range(13, 1200, 37) for y in range(17, 1200, 41)]
    rasterized = rasterize([(g, 1) for g in roofs], out_shape=(128, 128), transform=t,
                           merge_alg=rasterio.enums.MergeAlg.add)  # no two roofs share a pixel
    with_px = sum(int(rasterize([(g, 1)], out_shape=(128, 128), transform=t).any()) for g in roofs)
    assert 0 < with_px < len(roofs) and rasterized.max() == 1
    # across the seam of the chips at column 64 (x = 500640): a sliver in the left chip, pixels in the right one
    roofs.append(shapely.box(500639.5, 3999300, 500665, 3999330))
    gpd.GeoDataFrame(geometry=roofs, crs="EPSG:32636").to_file(tmp_path / "roofs.gpkg")
    cfg = TileConfig(size=64, overlap=0, split_block=1, val_fraction=0.25)
    with pytest.warns(GeoSegWarning, match=rf"{len(roofs) - 1 - with_px} of the {len(roofs)} labels .* cover no pixel "
                      r"centre of any chip at 10 m"):
        s = tile([tmp_path / "s2.tif"], tmp_path / "roofs.gpkg", tmp_path / "p", cfg)
    assert s.labels_small == len(roofs) - 1 - with_px
    assert "covering no pixel centre" in "\n".join(s.lines())
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["labels_under_a_pixel"] == s.labels_small
    ids = {a["label_id"] for a in json.loads((tmp_path / "p" / "annotations.json").read_text())["annotations"]}
    assert len(ids) == with_px + 1
    again = tile([tmp_path / "s2.tif"], tmp_path / "roofs.gpkg", tmp_path / "p", cfg)  # resumed: the same count
    assert not again.rewrote_outputs and again.labels_small == s.labels_small
