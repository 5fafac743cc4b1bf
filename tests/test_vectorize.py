import logging
import math

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin

from geoseg.errors import GeoSegError
from geoseg.predict.vectorize import VectorFormatError, geodesic_area, instances_to_frame, write_vector

UTM = "EPSG:32636"
T_UTM = from_origin(500000, 4000, 1.0, 1.0)  # 1 m pixels whose left edge is the central meridian


def squares() -> np.ndarray:
    """Label 1: 4x4 at rows 1-4, cols 1-4; label 2: 6x6 with a 2x2 hole at rows 2-7, cols 7-12."""
    lab = np.zeros((10, 14), np.int32)
    lab[1:5, 1:5] = 1
    lab[2:8, 7:13] = 2
    lab[4:6, 9:11] = 0
    return lab


def test_exact_polygons_areas_and_crs():
    gdf = instances_to_frame(squares(), T_UTM, UTM, score=[0.9, 0.6], class_index=[1, 0],
                             class_names=["shed", "house"], extra={"scene": "a.tif"})
    assert gdf.crs == UTM
    assert list(gdf.columns) == ["class", "score", "area_m2", "scene", "geometry"]
    assert gdf["class"].tolist() == ["house", "shed"]
    assert gdf["score"].tolist() == [0.9, 0.6]
    assert gdf["scene"].tolist() == ["a.tif", "a.tif"]
    assert shapely.is_valid(gdf.geometry.values).all()
    assert (gdf.geom_type == "Polygon").all()
    first = shapely.box(500001, 3995, 500005, 3999)
    assert shapely.equals_exact(shapely.normalize(gdf.geometry.iloc[0]), shapely.normalize(first))
    assert gdf.geometry.area.tolist() == [16.0, 32.0]
    hole = gdf.geometry.iloc[1]
    assert len(hole.interiors) == 1
    assert shapely.equals_exact(shapely.normalize(shapely.Polygon(hole.interiors[0])),
                                shapely.normalize(shapely.box(500009, 3994, 500011, 3996)))
    # geodesic area on the central meridian of a UTM zone: projected area / k0²
    np.testing.assert_allclose(gdf["area_m2"], [16 / 0.9996**2, 32 / 0.9996**2], rtol=1e-6)


def test_area_in_web_mercator_at_60_degrees():
    y60 = Transformer.from_crs(4326, 3857, always_xy=True).transform(30.0, 60.0)[1]
    lab = np.zeros((12, 12), np.int32)
    lab[1:11, 1:11] = 1  # 10 x 10 px of 2 "Mercator metres"
    gdf = instances_to_frame(lab, from_origin(3_300_000, y60, 2.0, 2.0), "EPSG:3857")
    assert gdf.geometry.area.iloc[0] == 400.0
    # 3857 is spherical Mercator on ellipsoidal coordinates: cos² is right to ~0.5 %
    assert gdf["area_m2"].iloc[0] == pytest.approx(400 * math.cos(math.radians(60)) ** 2, rel=1e-2)


def test_area_in_geographic_crs_matches_utm():
    lab = squares()
    gdf = instances_to_frame(lab, from_origin(32.5, 0.35, 1e-5, 1e-5), "EPSG:4326")
    utm_area = gdf.to_crs(gdf.estimate_utm_crs()).area.to_numpy()
    np.testing.assert_allclose(gdf["area_m2"], utm_area, rtol=2e-3)
    assert gdf.crs == "EPSG:4326"


def test_geodesic_area_multipolygon_and_empty():
    sq = shapely.box(500000, 0, 500010, 10)
    multi = shapely.MultiPolygon([sq, shapely.box(500020, 0, 500030, 10)])
    areas = geodesic_area(np.array([sq, multi, shapely.Polygon()]), UTM)
    assert areas[1] == pytest.approx(2 * areas[0])
    assert areas[2] == 0.0
    assert geodesic_area(np.array([], dtype=object), UTM).tolist() == []


def test_min_area_and_label_order():
    lab = squares()
    lab[8, 1] = 3  # a 1-px instance
    gdf = instances_to_frame(lab, T_UTM, UTM, score=[0.1, 0.2, 0.3])
    assert gdf["score"].tolist() == [0.1, 0.2, 0.3]
    gdf = instances_to_frame(lab, T_UTM, UTM, score=[0.1, 0.2, 0.3], min_area_px=2)
    assert gdf["score"].tolist() == [0.1, 0.2]
    assert gdf["class"].tolist() == ["object", "object"]


def test_disconnected_pieces_give_one_polygon(caplog):
    lab = np.zeros((8, 8), np.int32)
    lab[1:4, 1:4] = 1
    lab[5:7, 5:7] = 1   # a second, smaller piece of label 1
    lab[4, 4] = 1       # touching the first only at a corner
    with caplog.at_level(logging.INFO, logger="geoseg.predict.vectorize"):
        gdf = instances_to_frame(lab, T_UTM, UTM)
    assert len(gdf) == 1 and gdf.geom_type.iloc[0] == "Polygon"
    assert gdf.geometry.area.iloc[0] == 9.0
    assert "kept the largest piece" in caplog.text


def test_simplify_keeps_shared_edges_and_validity():
    yy, xx = np.mgrid[0:40, 0:40]
    lab = np.zeros((40, 40), np.int32)
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2
    lab[disc & (xx < yy)] = 1   # two staircase-edged halves of a disc touching along a diagonal
    lab[disc & (xx >= yy)] = 2
    raw = instances_to_frame(lab, T_UTM, UTM)
    simple = instances_to_frame(lab, T_UTM, UTM, simplify=1.5)
    n_raw = shapely.get_num_coordinates(raw.geometry.values).sum()
    n_simple = shapely.get_num_coordinates(simple.geometry.values).sum()
    assert n_simple < n_raw / 2
    assert shapely.is_valid(simple.geometry.values).all()
    a, b = simple.geometry
    assert shapely.intersection(a, b).area == pytest.approx(0, abs=1e-9)  # no overlap
    assert shapely.intersection(a, b).length > 20                        # no gap: edge shared
    assert simple.geometry.area.sum() == pytest.approx(raw.geometry.area.sum(), rel=0.05)


def test_simplify_tolerance_is_in_metres_for_geographic_crs():
    lab = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[0:40, 0:40]
    lab[(yy - 20) ** 2 + (xx - 20) ** 2 < 15**2] = 1
    deg = instances_to_frame(lab, from_origin(32.5, 0.3, 1e-5, 1e-5), "EPSG:4326", simplify=2.0)
    metric = instances_to_frame(lab, from_origin(500000, 4000, 1.11, 1.11), UTM, simplify=2.0)
    assert shapely.get_num_coordinates(deg.geometry.values)[0] == pytest.approx(
        shapely.get_num_coordinates(metric.geometry.values)[0], abs=4)


def test_empty_labels_and_bad_arguments():
    gdf = instances_to_frame(np.zeros((5, 5), np.int32), T_UTM, UTM, extra={"scene": "a"})
    assert len(gdf) == 0 and gdf.crs == UTM
    assert list(gdf.columns) == ["class", "score", "area_m2", "scene", "geometry"]
    with pytest.raises(ValueError, match="one per instance"):
        instances_to_frame(squares(), T_UTM, UTM, score=[0.5])
    with pytest.raises(ValueError, match="give a name"):
        instances_to_frame(squares(), T_UTM, UTM, class_index=[0, 1])


def test_write_gpkg_atomic(tmp_path):
    gdf = instances_to_frame(squares(), T_UTM, UTM, extra={"scene": "a"})
    out = write_vector(gdf, tmp_path / "b.gpkg")
    assert [p.name for p in tmp_path.iterdir()] == ["b.gpkg"]
    back = gpd.read_file(out, layer="b")
    assert back.crs == UTM and len(back) == 2
    assert back.geometry.area.tolist() == [16.0, 32.0]
    write_vector(gdf.iloc[:1], out, layer="roofs")  # replaces the file
    assert len(gpd.read_file(out, layer="roofs")) == 1
    empty = instances_to_frame(np.zeros((3, 3), np.int32), T_UTM, UTM)
    assert len(gpd.read_file(write_vector(empty, tmp_path / "e.gpkg"))) == 0


def test_write_geojson_in_wgs84(tmp_path, caplog):
    gdf = instances_to_frame(squares(), T_UTM, UTM)
    with caplog.at_level(logging.INFO, logger="geoseg.io.formats"):
        out = write_vector(gdf, tmp_path / "b.geojson")
    assert "EPSG:4326" in caplog.text
    back = gpd.read_file(out)
    assert back.crs == "EPSG:4326"
    # RFC 7946 output keeps 7 decimals of a degree (~1 cm)
    np.testing.assert_allclose(back.to_crs(UTM).geometry.area, [16.0, 32.0], rtol=5e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.geojson"]


def test_write_errors_leave_nothing(tmp_path, monkeypatch):
    gdf = instances_to_frame(squares(), T_UTM, UTM)
    with pytest.raises(VectorFormatError, match=r"unknown vector extension '\.kml'") as err:
        write_vector(gdf, tmp_path / "b.kml")
    assert isinstance(err.value, GeoSegError) and "\n" not in str(err.value)
    with pytest.raises(GeoSegError, match="no CRS"):
        write_vector(gdf.set_crs(None, allow_override=True), tmp_path / "b.gpkg")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", boom)
    with pytest.raises(RuntimeError):
        write_vector(gdf, tmp_path / "b.gpkg")
    assert list(tmp_path.iterdir()) == []


def test_invalid_polygon_is_repaired_to_its_largest_part():
    from geoseg.predict.vectorize import _largest_polygons

    bowtie = shapely.Polygon([(0, 0), (3, 3), (3, 0), (1, 2), (0, 3)])  # two lobes, one larger
    line = shapely.LineString([(0, 0), (1, 1)])
    out = _largest_polygons(np.array([bowtie, line], dtype=object))
    parts = shapely.get_parts(shapely.make_valid(bowtie))
    assert out[0].geom_type == "Polygon" and out[0].area == pytest.approx(max(p.area for p in parts))
    assert out[1].is_empty
