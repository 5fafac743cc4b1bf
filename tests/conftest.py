"""Shared fixtures: tiny georeferenced rasters and labels written into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import geopandas as gpd  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rasterio  # noqa: E402
import shapely  # noqa: E402
import torch  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

# The whole suite runs torch on one thread, whichever tests are selected: its tensors are
# tiny (one thread is fastest), CI's two cores are shared with Dask's threads, and float
# comparisons between runs (resume, parity) assume one summation order. Tests that need
# another count set it and restore it.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason="../shared/data is not beside this clone"
)


def write_raster(path: Path, data: np.ndarray, crs: str, transform, nodata=None, mask=None) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF, with an optional internal mask."""
    count, h, w = data.shape
    # 4 bytes a pixel are RGBA to GDAL by default: bands here are data (RGBN), none alpha
    extra = {"photometric": "MINISBLACK"} if count >= 4 and data.dtype == np.uint8 else {}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype,
        crs=crs, transform=transform, nodata=nodata, **extra,
    ) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
    return path


@pytest.fixture
def utm_uint16(tmp_path: Path) -> Path:
    """1-band uint16 scene in UTM 36N, 300x200 px at 0.5 m."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (1, 200, 300), dtype=np.uint16)
    return write_raster(tmp_path / "utm.tif", data, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5))


@pytest.fixture
def merc_rgb(tmp_path: Path) -> Path:
    """3-band uint8 scene in EPSG:3857, 256x256 px at 0.3 m."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)
    return write_raster(tmp_path / "merc.tif", data, "EPSG:3857", from_origin(3627000, 38800, 0.3, 0.3))


@pytest.fixture
def compound_rgb(tmp_path: Path) -> Path:
    """3-band uint8 scene in a drone survey's compound CRS: UTM 36N + EGM96 heights, 0.05 m."""
    data = np.random.default_rng(3).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    return write_raster(tmp_path / "drone.tif", data, "EPSG:32636+5773", from_origin(450000, 40000, 0.05, 0.05))


@pytest.fixture
def nodata_4band(tmp_path: Path) -> Path:
    """4-band float32 scene with nodata=-9999 on its left third, UTM 36N."""
    rng = np.random.default_rng(2)
    data = rng.random((4, 120, 180), dtype=np.float32)
    data[:, :, :60] = -9999
    return write_raster(tmp_path / "nd.tif", data, "EPSG:32636",
                        from_origin(450000, 40000, 1.0, 1.0), nodata=-9999)


def labels_for(raster: Path, out: Path, boxes_px: list[tuple[int, int, int, int]],
               crs: str = "EPSG:4326", classes: list[str] | None = None,
               extra: list[shapely.Geometry] | None = None) -> Path:
    """Write polygons given as pixel boxes (col0, row0, col1, row1) of ``raster``, in ``crs``."""
    with rasterio.open(raster) as src:
        t, scrs = src.transform, src.crs
    geoms = []
    for c0, r0, c1, r1 in boxes_px:
        x0, y0 = t @ (c0, r0)
        x1, y1 = t @ (c1, r1)
        geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    gdf = gpd.GeoDataFrame({"class": classes or ["building"] * len(geoms)}, geometry=geoms, crs=scrs)
    gdf = gdf.to_crs(crs)
    if extra:
        more = gpd.GeoDataFrame({"class": ["building"] * len(extra)}, geometry=extra, crs=crs)
        gdf = gpd.GeoDataFrame(
            {"class": list(gdf["class"]) + list(more["class"])},
            geometry=list(gdf.geometry) + list(more.geometry), crs=crs,
        )
    gdf.to_file(out)
    return out


def bright_boxes_scene(path: Path, shape: tuple[int, int], boxes: list[tuple[int, int, int, int]],
                       seed: int = 0, crs: str = "EPSG:32636", bands: int = 3,
                       dtype: str = "uint8", transform=None) -> Path:
    """Bright rectangles (col0, row0, col1, row1) on a dark noisy field: an easy scene."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.full((bands, h, w), 40, np.float64)
    for c0, r0, c1, r1 in boxes:
        img[:, r0:r1, c0:c1] = 200
    img += rng.integers(0, 10, img.shape)
    if dtype == "uint16":
        img *= 20
    return write_raster(path, img.astype(dtype), crs,
                        transform or from_origin(450000, 40000, 0.5, 0.5))


def grid_boxes(shape: tuple[int, int], step: int = 16, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    boxes = []
    for r in range(4, shape[0] - 12, step):
        for c in range(4, shape[1] - 12, step):
            w, h = rng.integers(6, 11, 2)
            boxes.append((c, r, c + int(w), r + int(h)))
    return boxes


def shifted_domain(root: Path, labelled: int = 1, unlabelled: int = 10, val: int = 4) -> tuple[Path, Path]:
    """Tile folders of a domain shift that only unlabelled chips can bridge (issue #12).

    Labelled: ``labelled`` 64x64 scenes (4 chips of 32 each) of grey boxes (200 in every
    band on 40). Validation and ``unlabelled`` scenes: the same kind of boxes, bright in the
    first band only (200, 40, 40 on 40: another "sensor"), never seen with a label.

    Returns:
        the labelled tile folder (the val scenes are its validation split) and the unlabelled one.
    """
    import pandas as pd

    from geoseg.tile import TileConfig, tile

    def scene(name: str, seed: int, fg: tuple[float, float, float]) -> tuple[Path, list]:
        boxes = grid_boxes((64, 64), seed=seed)
        img = np.full((3, 64, 64), 40.0)
        for c0, r0, c1, r1 in boxes:
            img[:, r0:r1, c0:c1] = np.asarray(fg)[:, None, None]
        img += np.random.default_rng(seed).normal(0, 5, img.shape)
        return write_raster(root / name, np.clip(img, 0, 255).astype("uint8"), "EPSG:32636",
                            from_origin(450000 + 1000 * seed, 40000, 0.5, 0.5)), boxes

    grey, tinted = (200.0, 200.0, 200.0), (200.0, 40.0, 40.0)
    scenes = [scene(f"train{i}.tif", i, grey) for i in range(labelled)]
    scenes += [scene(f"val{i}.tif", 50 + i, tinted) for i in range(val)]
    parts = [gpd.read_file(labels_for(path, root / f"{path.stem}.gpkg", boxes)) for path, boxes in scenes]
    gpd.GeoDataFrame(pd.concat(parts), crs=parts[0].crs).to_file(root / "labels.gpkg")
    tile([path for path, _ in scenes], root / "labels.gpkg", root / "patches",
         TileConfig(size=32, overlap=0, val_fraction=0.0, val_scenes=("val*",)), scheduler="sync")
    unl = [scene(f"u{i}.tif", 100 + i, tinted)[0] for i in range(unlabelled)]
    tile(unl, None, root / "unlabelled", TileConfig(size=32, overlap=0), scheduler="sync")
    return root / "patches", root / "unlabelled"


@pytest.fixture(scope="session")
def tiny_patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tile output of a 64x64 scene of bright boxes; the val scene has the same layout."""
    return tile_box_scenes(tmp_path_factory.mktemp("tiny"), (64, 64), grid_boxes((64, 64)), size=32)


def tile_box_scenes(root: Path, shape: tuple[int, int], boxes: list[tuple[int, int, int, int]],
                    size: int) -> Path:
    """Tile a train and a val scene of the same bright boxes (other noise) into ``root/p``."""
    from geoseg.tile import TileConfig, tile

    bright_boxes_scene(root / "train_scene.tif", shape, boxes, seed=0)
    bright_boxes_scene(root / "val_scene.tif", shape, boxes, seed=1)
    labels_for(root / "train_scene.tif", root / "l.gpkg", boxes)
    tile([root / "train_scene.tif", root / "val_scene.tif"], root / "l.gpkg", root / "p",
         TileConfig(size=size, overlap=0, val_fraction=0.0, val_scenes=("val*",)), scheduler="sync")
    return root / "p"


@pytest.fixture(scope="session")
def tiny_run(tiny_patches: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny routed model trained until it finds the boxes (AP > 0.9 on val)."""
    from geoseg.config import load_config
    from geoseg.train import TrainConfig, train

    cfg = load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml",
                      {"data": {"samples_per_epoch": 32}, "val": {"every": 8}})
    run = tmp_path_factory.mktemp("tinyrun") / "run"
    res = train(cfg, tiny_patches, run, epochs=8)
    assert res.history[-1]["ap"] > 0.9, res.history[-1]
    return run
