"""Quick-look PNGs: size bounded by max_side, outlines in their colours where polygons are."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import matplotlib.image as mpimg
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from geoseg.errors import InputVectorError
from geoseg.quicklook import PRED_COLOR, TRUTH_COLOR, quicklook, stretch


def box_px(scene: Path, c0: int, r0: int, c1: int, r1: int) -> shapely.Polygon:
    """A polygon in the scene CRS covering pixel columns c0..c1 and rows r0..r1."""
    with rasterio.open(scene) as src:
        t = src.transform
    (x0, y0), (x1, y1) = t * (c0, r0), t * (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def grey_scene(path: Path, shape: tuple[int, int], bands: int = 3, dtype: str = "uint8") -> Path:
    """A smooth grey ramp (all bands equal): no pixel of it looks like an outline colour."""
    h, w = shape
    ramp = np.add.outer(np.arange(h), np.arange(w)) / (h + w) * 200 + 20
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=dtype,
                       crs="EPSG:32636", transform=from_origin(450000, 40000, 0.5, 0.5)) as dst:
        dst.write(np.repeat(ramp[None], bands, axis=0).astype(dtype))
    return path


def colour_mask(png: np.ndarray, rgb: tuple[int, int, int], tol: int = 60) -> np.ndarray:
    px = (png[..., :3] * 255).astype(int)
    return (np.abs(px - np.array(rgb)) <= tol).all(axis=-1)


def test_outlines_where_polygons_are(tmp_path: Path) -> None:
    scene = grey_scene(tmp_path / "s.tif", (300, 400))
    # truth in EPSG:4326 (a GeoDataFrame), prediction in EPSG:3857 (a file): both reprojected
    truth = gpd.GeoDataFrame(geometry=[box_px(scene, 40, 160, 100, 240)], crs="EPSG:32636").to_crs(4326)
    pred_file = tmp_path / "pred.geojson"
    gpd.GeoDataFrame({"score": [0.9]}, geometry=[box_px(scene, 200, 40, 300, 120)],
                     crs="EPSG:32636").to_crs(3857).to_file(pred_file)
    out = quicklook(scene, tmp_path / "q" / "look.png", pred=pred_file, truth=truth, max_side=200)
    png = mpimg.imread(out)
    assert png.shape[:2] == (150, 200)  # long side max_side, aspect kept
    cyan, yellow = colour_mask(png, PRED_COLOR), colour_mask(png, TRUTH_COLOR)
    # scene px -> png px: divide by 2 (400 -> 200); the legend sits in the lower right
    assert cyan[18:62, 98:152].sum() > 20  # the predicted outline
    assert yellow[78:122, 18:52].sum() > 20  # the true outline
    assert cyan[26:54, 106:144].sum() == 0  # well inside the predicted box: no outline
    assert cyan[:100, :90].sum() == 0 and yellow[:100, 60:].sum() == 0  # each only at its polygon
    assert [p.name for p in out.parent.iterdir()] == ["look.png"]  # no temporary file left


def test_small_single_band_scene_is_grey_and_enlarged(tmp_path: Path) -> None:
    scene = grey_scene(tmp_path / "grey.tif", (48, 64), bands=1, dtype="uint16")
    out = quicklook(scene, tmp_path / "g.png", title="")
    png = mpimg.imread(out)
    assert png.shape[:2] == (450, 600)  # enlarged to the minimum long side
    body = png[100:400, 100:500, :3]
    assert np.allclose(body[..., 0], body[..., 1]) and np.allclose(body[..., 1], body[..., 2])
    assert body.min() < 0.3 and body.max() > 0.7  # stretched


def test_large_scene_is_read_decimated(tmp_path: Path) -> None:
    scene = grey_scene(tmp_path / "big.tif", (1000, 3000))
    png = mpimg.imread(quicklook(scene, tmp_path / "b.png", max_side=300))
    assert png.shape[:2] == (100, 300)


def test_polygons_without_crs_are_an_error(tmp_path: Path) -> None:
    scene = grey_scene(tmp_path / "s.tif", (64, 64))
    with pytest.raises(InputVectorError, match="no CRS"):
        quicklook(scene, tmp_path / "x.png", pred=gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]))
    assert not (tmp_path / "x.png").exists()


def test_stretch_masks_and_greys() -> None:
    data = np.ma.masked_array(np.arange(12.0).reshape(1, 3, 4), mask=np.zeros((1, 3, 4), bool))
    data.mask[0, 0, 0] = True
    img = stretch(data)
    assert img.shape == (3, 4, 3) and img[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert np.all(img[..., 0] == img[..., 2]) and img.max() == 1.0


def test_without_scene_polygons_on_grey(tmp_path: Path) -> None:
    """`geoseg evaluate --quicklook` without --scenes: the outlines alone, over their extent."""
    truth = gpd.GeoDataFrame(geometry=[shapely.box(450000, 40000, 450040, 40020)], crs="EPSG:32636")
    pred = gpd.GeoDataFrame(geometry=[shapely.box(450060, 40000, 450100, 40020)], crs="EPSG:32636").to_crs(4326)
    png = mpimg.imread(quicklook(None, tmp_path / "p.png", pred=pred, truth=truth, max_side=300))
    assert png.shape[1] == 300 and png.shape[0] < 150  # the extent's aspect
    assert colour_mask(png, PRED_COLOR)[:, 160:].sum() > 20 and colour_mask(png, TRUTH_COLOR)[:, :140].sum() > 20
    with pytest.raises(InputVectorError, match="scene or polygons"):
        quicklook(None, tmp_path / "x.png")


@pytest.mark.parametrize("grid", ["rotated", "south-up"])
def test_outlines_on_their_pixels_on_rotated_and_south_up_scenes(tmp_path: Path, grid: str) -> None:
    from affine import Affine

    h, w = 200, 300
    ramp = (np.add.outer(np.arange(h), np.arange(w)) / (h + w) * 200 + 20).astype("uint8")
    transform = (Affine.translation(450000, 40000) * Affine.rotation(30) * Affine.scale(0.5, -0.5)
                 if grid == "rotated" else Affine.translation(450000, 40000) * Affine.scale(0.5, 0.5))
    scene = tmp_path / "s.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32636", transform=transform) as dst:
        dst.write(np.repeat(ramp[None], 3, axis=0))
    # a polygon over pixel columns 150..250, rows 20..80, in map coordinates (through the affine)
    roof = shapely.Polygon([transform * (c, r) for c, r in ((150, 20), (250, 20), (250, 80), (150, 80))])
    pred = gpd.GeoDataFrame(geometry=[roof], crs="EPSG:32636")
    png = mpimg.imread(quicklook(scene, tmp_path / "r.png", pred=pred, max_side=300, title=""))
    assert png.shape[:2] == (200, 300)
    cyan = colour_mask(png, PRED_COLOR)
    assert cyan[14:26, 150:250].sum() > 50 and cyan[74:86, 150:250].sum() > 50  # top and bottom edges
    assert cyan[14:86, 144:156].sum() > 30 and cyan[14:86, 244:256].sum() > 30  # left and right edges
    assert cyan[30:70, 165:235].sum() == 0  # inside the roof
    assert cyan[100:150].sum() == 0 and cyan[:150, :130].sum() == 0  # nowhere else (the legend: lower right)
