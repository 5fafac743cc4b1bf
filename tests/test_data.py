"""ChipDataset over a tile directory: splits, targets, crops, nodata, normalisation, collate."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import SAMPLE, labels_for, write_raster
from rasterio.transform import from_origin

from geoseg.bands import BandStats, load_stats, normalize, scale_to_unit, unit_to_normalized
from geoseg.errors import ConfigError, InputRasterError
from geoseg.tile import TileConfig, tile
from geoseg.tile.labels import decode_rle
from geoseg.train.augment import AugmentConfig, build_augment
from geoseg.train.dataset import ChipDataset, collate
from geoseg.train.targets import make_targets

H, W = 96, 128
NODATA = 65535
BOXES = [(8, 8, 28, 24), (30, 8, 50, 24), (70, 40, 100, 80), (10, 60, 40, 90)]  # c0, r0, c1, r1
CLASSES = ["hut", "hut", "tank", "hut"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-band uint16 scene whose bands are the row and column index, tiled into 48 px chips."""
    d = tmp_path_factory.mktemp("data")
    rows, cols = np.mgrid[:H, :W]
    data = np.stack([rows * 10 + 100, cols * 10 + 100]).astype(np.uint16)
    data[:, 88:, 112:] = NODATA  # nodata corner
    scene = write_raster(d / "scene.tif", data, "EPSG:32636",
                         from_origin(450000, 40000, 1.0, 1.0), nodata=NODATA)
    # val: a copy of the scene, so every chip of either split is the whole window (a val block
    # beside train blocks would mask its pixels out of their chips: tests/test_tiling.py)
    held = write_raster(d / "heldout.tif", data, "EPSG:32636",
                        from_origin(450000, 40000, 1.0, 1.0), nodata=NODATA)
    labels = labels_for(scene, d / "labels.gpkg", BOXES, crs="EPSG:32636", classes=CLASSES)
    tile([scene, held], labels, d / "tiles", TileConfig(size=48, overlap=8, split_block=2, val_scenes=("heldout",),
                                                        val_fraction=0.0, min_valid=0.0, seed=1),
         scheduler="sync")
    return d / "tiles"


def _truth(window: list[int] | tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Union of the boxes and class index (sorted class names) in a scene window."""
    col, row, w, h = window
    extent = np.zeros((H, W), dtype=bool)
    classes = -np.ones((H, W), dtype=np.int64)
    names = sorted(set(CLASSES))
    for (c0, r0, c1, r1), name in zip(BOXES, CLASSES):
        extent[r0:r1, c0:c1] = True
        classes[r0:r1, c0:c1] = names.index(name)
    return extent[row:row + h, col:col + w], classes[row:row + h, col:col + w]


def _coco(tiles: Path) -> dict:
    return json.loads((tiles / "annotations.json").read_text())


def test_lengths_per_split(tiles: Path) -> None:
    coco = _coco(tiles)
    train, val = ChipDataset(tiles, "train"), ChipDataset(tiles, "val")
    assert len(train) == sum(im["split"] == "train" for im in coco["images"]) > 0
    assert len(val) == sum(im["split"] == "val" for im in coco["images"]) > 0
    assert len(train) + len(val) == len(coco["images"])
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert train.classes == ("hut", "tank")


@pytest.mark.parametrize("split", ["train", "val"])
def test_full_chip_targets_match_the_rasterized_boxes(tiles: Path, split: str) -> None:
    ds = ChipDataset(tiles, split, crop=None)
    images = {im["id"]: im for im in _coco(tiles)["images"]}
    anns = _coco(tiles)["annotations"]
    for i in range(len(ds)):
        s = ds[i]
        im = images[s["image_id"]]
        extent, classes = _truth(im["window"])
        valid = s["valid"].numpy()
        assert s["image"].shape == (2, im["height"], im["width"])
        assert np.array_equal(s["extent"].numpy().astype(bool), extent & valid)
        assert np.array_equal(s["classes"].numpy(), np.where(valid, classes, -1))
        # and with make_targets on the chip's own COCO masks
        masks = [decode_rle(a["segmentation"]) for a in anns if a["image_id"] == im["id"]]
        cats = [a["category_id"] - 1 for a in anns if a["image_id"] == im["id"]]
        want = make_targets(masks, cats, (im["height"], im["width"]))
        for key in ("boundary", "contact", "sdf"):
            got = s[key].numpy()
            assert np.array_equal(got[valid], want[key][valid]), key


def _position(image: torch.Tensor, stats: BandStats) -> tuple[np.ndarray, np.ndarray]:
    """Scene row and column of each pixel, recovered from the normalised bands."""
    raw = image.numpy() * np.array(stats.std)[:, None, None] + np.array(stats.mean)[:, None, None]
    return np.rint((raw[0] - 100) / 10), np.rint((raw[1] - 100) / 10)


def test_random_crop_size_and_alignment(tiles: Path) -> None:
    ds = ChipDataset(tiles, "train", crop=20, seed=3)
    images = {im["id"]: im for im in _coco(tiles)["images"]}
    offsets = set()
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (2, 20, 20) and s["extent"].shape == (20, 20)
            col, row, _, _ = images[s["image_id"]]["window"]
            rows, cols = _position(s["image"], ds.stats)
            v = s["valid"].numpy()
            r0, c0 = int(rows[v].min() - np.argmax(v.any(1))), int(cols[v].min() - np.argmax(v.any(0)))
            win = ds.window(i)
            assert (int(win.row_off), int(win.col_off)) == (r0 - row, c0 - col)
            extent, classes = _truth((c0, r0, 20, 20))
            assert np.array_equal(s["extent"].numpy().astype(bool), extent & v)
            assert np.array_equal(s["classes"].numpy(), np.where(v, classes, -1))
            offsets.add((epoch, s["image_id"], r0 - row, c0 - col))
    assert len({o[2:] for o in offsets}) > 1  # crops are random
    ds.reseed(12345)
    assert {(int(ds.window(i).row_off), int(ds.window(i).col_off)) for i in range(len(ds))} != {
        (int(o[2]), int(o[3])) for o in offsets if o[0] == 0} or len(ds) == 1
    again = ChipDataset(tiles, "train", crop=20, seed=3)
    assert torch.equal(again[0]["image"], ChipDataset(tiles, "train", crop=20, seed=3)[0]["image"])


def test_crop_targets_equal_the_full_chip_targets(tiles: Path) -> None:
    """The halo makes crop targets exact: neighbours outside the crop still count."""
    crops = ChipDataset(tiles, "train", crop=20, seed=1, sdf_clip=6.0)
    full = ChipDataset(tiles, "train", crop=None, sdf_clip=6.0)
    differs_without_halo = 0
    for i in range(len(crops)):
        s, f, win = crops[i], full[i], crops.window(i)
        r0, c0 = int(win.row_off), int(win.col_off)
        for key in ("extent", "boundary", "contact", "sdf", "classes", "valid"):
            assert torch.equal(s[key], f[key][r0:r0 + 20, c0:c0 + 20]), key
        m = f["extent"][r0:r0 + 20, c0:c0 + 20].numpy()
        alone = make_targets(m.astype(np.int32), [0], sdf_clip=6.0)["sdf"]
        differs_without_halo += int(not np.array_equal(alone, s["sdf"].numpy()))
    assert differs_without_halo > 0  # the test can tell


def test_crop_larger_than_chip_gives_whole_chip(tiles: Path) -> None:
    s = ChipDataset(tiles, "train", crop=1000)[0]
    assert s["image"].shape == (2, 48, 48)


def test_nodata_is_invalid_and_zero(tiles: Path) -> None:
    seen = 0
    for split in ("train", "val"):
        ds = ChipDataset(tiles, split, crop=None)
        images = {im["id"]: im for im in _coco(tiles)["images"]}
        for i in range(len(ds)):
            s = ds[i]
            col, row, w, h = images[s["image_id"]]["window"]
            rr, cc = np.mgrid[row:row + h, col:col + w]
            nodata = (rr >= 88) & (cc >= 112)
            assert np.array_equal(~s["valid"].numpy(), nodata)
            assert (s["image"][:, torch.from_numpy(nodata)] == 0).all()
            assert (s["sdf"].numpy()[nodata] == 1).all()
            seen += int(nodata.any())
    assert seen > 0


def test_normalisation_formula(tiles: Path) -> None:
    stats = load_stats(tiles)
    raw = np.random.default_rng(0).uniform(-500, 3000, (2, 8, 9)).astype(np.float32)
    mean, std = np.array(stats.mean)[:, None, None], np.array(stats.std)[:, None, None]
    want = np.clip((raw - mean) / std, -3, 3)
    assert np.allclose(normalize(raw, stats), want, atol=1e-5)
    assert np.allclose(unit_to_normalized(scale_to_unit(raw, stats)), want, atol=1e-5)
    assert normalize(raw, stats).dtype == np.float32
    hwc = normalize(raw.transpose(1, 2, 0), stats, channel_axis=-1)
    assert np.allclose(hwc.transpose(2, 0, 1), want, atol=1e-5)
    t = normalize(torch.from_numpy(raw)[None], stats, channel_axis=1,
                  valid=torch.zeros(1, 8, 9, dtype=torch.bool))
    assert t.shape == (1, 2, 8, 9) and (t == 0).all()
    assert np.allclose(normalize(torch.from_numpy(raw), stats).numpy(), want, atol=1e-5)
    with pytest.raises(ValueError, match="bands"):
        normalize(raw[:1], stats)
    # the dataset image is exactly normalize() of the raw chip
    ds = ChipDataset(tiles, "val", crop=None)
    s = ds[0]
    with rasterio.open(tiles / "images" / str(ds.index.files[0])) as src:
        chip = src.read()
    want = normalize(chip, stats, valid=s["valid"].numpy())
    assert np.allclose(s["image"].numpy(), want, atol=1e-5)
    # zero mean, unit std over the valid train pixels (no clipping happens here)
    train = ChipDataset(tiles, "train", crop=None)
    px = torch.cat([train[i]["image"][:, train[i]["valid"]] for i in range(len(train))], 1)
    assert px.shape[1] > 0 and px.abs().max() < 3


def test_augmented_sample(tiles: Path) -> None:
    aug = build_augment(AugmentConfig(shift_scale_rotate=1.0, rotate_limit=30), 2)
    ds = ChipDataset(tiles, "train", crop=32, augment=aug, seed=0)
    for i in range(min(3, len(ds))):
        s = ds[i]
        assert s["image"].shape == (2, 32, 32) and s["image"].dtype == torch.float32
        v = s["valid"]
        assert (s["image"][:, ~v] == 0).all() and (s["classes"][~v] == -1).all()
        assert (s["extent"][~v] == 0).all()
        assert torch.equal(s["extent"].bool() & v, s["classes"] >= 0)
    assert torch.equal(ds[1]["image"], ds[1]["image"])  # reseeded per sample


def test_collate_pads_to_the_largest(tiles: Path) -> None:
    ds = ChipDataset(tiles, "val", crop=None)
    big, small = ds[0], {k: (v[..., :30, :20] if torch.is_tensor(v) else v)
                         for k, v in ds[len(ds) - 1].items()}
    b = collate([small, big])
    assert b["image"].shape == (2, 2, 48, 48) and b["valid"].shape == (2, 48, 48)
    assert b["image_id"].tolist() == [small["image_id"], big["image_id"]]
    assert not b["valid"][0, 30:].any() and not b["valid"][0, :, 20:].any()
    assert (b["classes"][0, 30:] == -1).all() and (b["image"][0, :, :, 20:] == 0).all()
    assert (b["sdf"][0, 30:] == 1).all() and (b["extent"][0, :, 20:] == 0).all()
    assert torch.equal(b["image"][0, :, :30, :20], small["image"])
    assert torch.equal(b["classes"][1], big["classes"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert next(iter(loader))["image"].shape[:2] == (2, 2)


def test_picklable(tiles: Path) -> None:
    ds = ChipDataset(tiles, "train", crop=24, seed=5)
    clone = pickle.loads(pickle.dumps(ds))
    for k in ("image", "extent", "valid"):
        assert torch.equal(clone[1][k], ds[1][k])


def test_errors(tiles: Path, tmp_path: Path) -> None:
    with pytest.raises(InputRasterError, match="run `geoseg tile"):
        ChipDataset(tmp_path, "train")
    (tmp_path / "annotations.json").write_text((tiles / "annotations.json").read_text())
    with pytest.raises(InputRasterError, match="stats.json.*geoseg tile"):
        ChipDataset(tmp_path, "train")
    with pytest.raises(ConfigError, match="built for 3 bands.*bands=2"):
        ChipDataset(tiles, "train", augment=build_augment(AugmentConfig(), 3))
    with pytest.raises(ConfigError, match="split"):
        ChipDataset(tiles, "test")  # type: ignore[arg-type]
    coco = _coco(tiles)
    for im in coco["images"]:
        im["split"] = "train"
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    (tmp_path / "stats.json").write_text((tiles / "stats.json").read_text())
    with pytest.raises(ConfigError, match="no 'val' chips.*val_fraction"):
        ChipDataset(tmp_path, "val")


def test_sample_data_extent_coverage(tmp_path: Path) -> None:
    scenes = sorted(SAMPLE.glob("*.tif"))
    tile(scenes, SAMPLE / "labels" / "buildings.gpkg", tmp_path / "t", scheduler="sync")
    ds = ChipDataset(tmp_path / "t", "train", crop=None)
    assert ds.stats.bands == 3 and len(ds) > 0
    samples = [ds[i] for i in range(0, len(ds), 3)]
    cover = [float(s["extent"][s["valid"]].mean()) for s in samples]
    assert 0.05 < float(np.mean(cover)) < 0.8
    assert all(0.0 < c < 0.95 for c in cover)
