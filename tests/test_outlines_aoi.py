"""Outline quality measures, scene footprints and AOI clipping (used by `geoseg evaluate`)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import Affine, from_origin

from geoseg.aoi import clip_to, footprint, read_aoi, scene_footprint
from geoseg.errors import InputRasterError, InputVectorError
from geoseg.outlines import OUTLINE_KEYS, corners, pair_measures, rectangularity, summarize

UTM = "EPSG:32636"


def test_corners_and_rectangularity() -> None:
    stair = shapely.Polygon([(0, 0), (3, 0), (3, 1), (2, 1), (2, 2), (1, 2), (1, 3), (0, 3)])
    ell = shapely.Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])
    multi = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 0, 3, 1)])
    assert corners(np.array([stair, ell, multi, shapely.Polygon()])).tolist() == [8, 6, 8, 0]
    r = rectangularity(np.array([shapely.box(0, 0, 4, 1), ell, shapely.Point(0, 0).buffer(1, 64)]))
    assert r[0] == 1.0 and r[1] == 0.75 and r[2] == pytest.approx(np.pi / 4, abs=0.01)
    rotated = shapely.affinity.rotate(shapely.box(0, 0, 4, 1), 33)
    assert rectangularity(np.array([rotated]))[0] == pytest.approx(1.0)  # minimum *rotated* rectangle


def test_clipping_to_a_densified_footprint_adds_no_corners(tmp_path: Path) -> None:
    """A roof cut by the edge of a Web Mercator scene is still a 4-corner roof once clipped.

    The footprint is densified for reprojection, so the clipped edge carries its points,
    collinear only up to rounding: counted as corners, they put the median of the Kampala
    demo at 7.5 where the roofs have 4.
    """
    from conftest import write_raster

    from geoseg.evaluate import evaluate_frames

    scene = write_raster(tmp_path / "merc.tif", np.full((1, 80, 80), 7, np.uint8), "EPSG:3857",
                         from_origin(3627854.236, 38830.0104, 0.1493, 0.1493))
    area = footprint([scene])
    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
    roofs = [shapely.box(left + 1, top - 2.5, left + 4.3, top + 1.7),  # cut by the top edge
             shapely.box(left + 5, bottom + 0.5, left + 7.7, bottom + 2.9)]  # inside
    gdf = gpd.GeoDataFrame({"score": [0.9, 0.8]}, geometry=roofs, crs="EPSG:3857")
    clipped = clip_to(gdf, area)
    report = evaluate_frames(clipped, clipped, iou=0.5)
    assert report["f1"] == 1.0 and report["vertices"] == 4.0 and report["truth_vertices"] == 4.0


def test_masked_specks_do_not_punch_the_footprint(tmp_path: Path) -> None:
    """Scattered masked pixels (transparent pixels of a mosaic) stay in; a masked band does not."""
    from conftest import write_raster

    data = np.full((1, 100, 100), 7, np.uint8)
    mask = np.full((100, 100), 255, np.uint8)
    rng = np.random.default_rng(0)
    for r, c in zip(rng.integers(0, 98, 40), rng.integers(0, 76, 40), strict=True):  # clear of the band
        mask[r:r + 2, c:c + 2] = 0  # 40 specks of 2 x 2 px
    mask[:, 80:] = 0  # and a masked band of 20 columns
    scene = write_raster(tmp_path / "speck.tif", data, UTM, from_origin(450000, 36000, 1, 1), mask=mask)
    fp = scene_footprint(scene).iloc[0]
    assert fp.geom_type == "Polygon" and not fp.interiors
    assert fp.area == pytest.approx(80 * 100, rel=0.01) and corners(np.array([fp]), 0.01)[0] == 4


def test_summary_of_pairs() -> None:
    pred = np.array([shapely.Polygon([(0, 0), (3, 0), (3, 1), (2, 1), (2, 2), (0, 2)]), shapely.box(5, 0, 6, 1)])
    truth = np.array([shapely.box(0, 0, 3, 2), shapely.box(5, 0, 6, 1)])
    s = summarize(pair_measures(pred, truth))
    assert list(s) == list(OUTLINE_KEYS)
    assert (s["vertices"], s["truth_vertices"], s["vertex_ratio"]) == (5.0, 4.0, 1.25)
    assert s["rectangularity"] == pytest.approx((5 / 6 + 1) / 2) and s["truth_rectangularity"] == 1.0
    assert summarize(pair_measures(pred[:0], truth[:0])) == dict.fromkeys(OUTLINE_KEYS, 0.0)


def make_scene(path: Path, transform: Affine, nodata_cols: int = 0) -> Path:
    data = np.full((1, 40, 60), 7, np.uint8)
    data[:, :, :nodata_cols] = 0
    with rasterio.open(path, "w", driver="GTiff", width=60, height=40, count=1, dtype="uint8",
                       crs=UTM, transform=transform, nodata=0) as dst:
        dst.write(data)
    return path


def test_footprints_follow_rotation_and_nodata(tmp_path: Path) -> None:
    rot = from_origin(450000, 36000, 1, 1) * Affine.rotation(30)
    fp = scene_footprint(make_scene(tmp_path / "rot.tif", rot)).iloc[0]
    assert fp.area == pytest.approx(60 * 40) and fp.contains(shapely.Point(rot * (30, 20)))
    half = scene_footprint(make_scene(tmp_path / "half.tif", from_origin(450000, 36000, 1, 1), 20)).iloc[0]
    assert half.area == pytest.approx(40 * 40, rel=0.01)
    assert not half.contains(shapely.Point(450005, 35980))  # the nodata columns are out
    both = footprint([tmp_path / "rot.tif", tmp_path / "half.tif"])
    assert both.crs == UTM and both.iloc[0].area == pytest.approx(fp.union(half).area)
    with pytest.raises(InputRasterError, match="no scene"):
        footprint([])


def test_clip_and_aoi(tmp_path: Path) -> None:
    g = gpd.GeoDataFrame({"n": [1, 2, 3]}, geometry=[shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10),
                                                   shapely.box(95, 0, 105, 10)], crs=UTM)
    g = g.set_geometry(g.geometry.translate(450000, 35000))
    aoi = gpd.GeoDataFrame(geometry=[shapely.box(450000, 35000, 450100, 35050)], crs=UTM).to_crs("EPSG:4326")
    aoi.to_file(tmp_path / "aoi.geojson")
    area = read_aoi(tmp_path / "aoi.geojson")
    out = clip_to(g, area)
    assert out.crs == g.crs and out["n"].tolist() == [1, 2, 3]
    assert out.area.iloc[2] == pytest.approx(50, rel=0.01)  # the edge building is cut at the AOI
    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs=UTM).to_file(tmp_path / "pts.gpkg")
    with pytest.raises(InputVectorError, match="no polygon"):
        read_aoi(tmp_path / "pts.gpkg")


def test_clip_repairs_an_invalid_polygon_across_the_edge() -> None:
    # a bow-tie (self-intersecting, as some OpenStreetMap footprints) across the area's edge:
    # GEOS cannot clip it as it is ("side location conflict"), so evaluate --clip failed
    bow = shapely.Polygon([(450040, 35960), (450080, 35990), (450080, 35960), (450040, 35990)])
    g = gpd.GeoDataFrame({"n": [1, 2]}, geometry=[bow, shapely.LineString([(450000, 35950), (450010, 35950)])],
                         crs=UTM)
    out = clip_to(g, gpd.GeoSeries([shapely.box(450000, 35900, 450060, 36000)], crs=UTM))
    # the repaired bow-tie's two triangles meet at x = 450060: the left one (300 m2) is inside; the line is dropped
    assert out["n"].tolist() == [1] and out.area.tolist() == [pytest.approx(300.0)]


def test_restrict_by_scenes_and_aoi(tmp_path: Path) -> None:
    from geoseg.aoi import restrict

    scene = make_scene(tmp_path / "s.tif", from_origin(450000, 36000, 1, 1))  # x 0..60, y -40..0
    inside, outside = shapely.box(450010, 35970, 450020, 35980), shapely.box(450100, 35970, 450110, 35980)
    truth = gpd.GeoDataFrame(geometry=[inside, outside], crs=UTM)
    pred = gpd.GeoDataFrame({"score": [1.0]}, geometry=[inside], crs=UTM)
    p, t, notes = restrict(pred, truth, scenes=[scene], clip=True)
    assert (len(p), len(t), notes) == (1, 1, ["inside the scenes"])
    gpd.GeoDataFrame(geometry=[shapely.box(450000, 35900, 450015, 36000)], crs=UTM).to_file(tmp_path / "a.gpkg")
    p, t, notes = restrict(pred, truth, aoi=tmp_path / "a.gpkg")
    assert t.area.tolist() == [50.0] and notes == ["inside a.gpkg"]
    with pytest.raises(InputRasterError, match="--scenes"):
        restrict(pred, truth, clip=True)


def test_an_aoi_beside_every_polygon_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An AOI of another place (or in a wrong CRS) leaves nothing: every number 0, with a warning why."""
    from geoseg.aoi import restrict

    truth = pred = gpd.GeoDataFrame(geometry=[shapely.box(450010, 35970, 450020, 35980)], crs=UTM)
    gpd.GeoDataFrame(geometry=[shapely.box(460000, 35900, 460015, 36000)], crs=UTM).to_file(tmp_path / "a.gpkg")
    with caplog.at_level("WARNING"):
        p, t, _ = restrict(pred, truth, aoi=tmp_path / "a.gpkg")
    assert len(p) == len(t) == 0 and "no prediction and no truth polygon is left inside a.gpkg" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        restrict(pred.iloc[:0], truth.iloc[:0], aoi=tmp_path / "a.gpkg")  # nothing to begin with: no warning
    assert caplog.text == ""


def test_evaluate_reports_outline_quality_and_cli_restricts(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from geoseg.cli.main import cli
    from geoseg.evaluate import REPORT_KEYS, evaluate_frames

    scene = make_scene(tmp_path / "s.tif", from_origin(450000, 36000, 1, 1), nodata_cols=20)  # valid x 20..60
    stair = shapely.Polygon([(0, 0), (8, 0), (8, 1), (10, 1), (10, 6), (9, 6), (9, 7), (0, 7)])
    truths = [shapely.box(0, 0, 10, 7), shapely.box(0, 0, 10, 7)]
    at = [(450025, 35970), (450045, 35970)]
    pred = gpd.GeoDataFrame({"score": [0.9, 0.8]}, crs=UTM,
                            geometry=[shapely.affinity.translate(stair, x, y) for x, y in at])
    truth = gpd.GeoDataFrame(geometry=[shapely.affinity.translate(t, x, y) for t, (x, y) in zip(truths, at)]
                             + [shapely.box(450002, 35970, 450008, 35975)], crs=UTM)  # in the nodata strip
    r = evaluate_frames(pred, truth)
    assert set(r) == {*REPORT_KEYS, "per_class"} and r["tp"] == 2 and r["fn"] == 1
    assert (r["vertices"], r["truth_vertices"], r["vertex_ratio"]) == (8.0, 4.0, 2.0)
    assert r["rectangularity"] == pytest.approx(stair.area / 70) and r["truth_rectangularity"] == 1.0
    pred.to_file(tmp_path / "p.gpkg")
    truth.to_file(tmp_path / "t.gpkg")
    args = ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"), "--json", str(tmp_path / "e.json")]
    res = CliRunner().invoke(cli, [*args, "--scenes", str(scene), "--clip", "--quicklook", str(tmp_path / "q.png")])
    assert res.exit_code == 0, res.output
    assert "(inside the scenes)" in res.output and "rectangularity" in res.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["fn"] == 0 and report["f1"] == 1.0 and report["vertex_ratio"] == 2.0
    assert (tmp_path / "q.png").stat().st_size > 1000
    gpd.GeoDataFrame(geometry=[shapely.box(450020, 35960, 450040, 35990)], crs=UTM).to_file(tmp_path / "a.gpkg")
    res = CliRunner().invoke(cli, [*args, "--aoi", str(tmp_path / "a.gpkg"), "--quicklook", str(tmp_path / "r.png")])
    assert res.exit_code == 0 and "(inside a.gpkg)" in res.output and json.loads(
        (tmp_path / "e.json").read_text())["tp"] == 1
    res = CliRunner().invoke(cli, [*args, "--clip"])
    assert res.exit_code == 1 and res.output.startswith("geoseg: error:") and "--scenes" in res.output
