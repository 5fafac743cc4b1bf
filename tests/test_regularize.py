"""Building regularization: staircase outlines squared, in ground metres, rows kept."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import shapely.affinity as aff
from rasterio.features import rasterize, shapes
from rasterio.transform import from_origin

from geoseg.predict.regularize import metric_crs, regularize

UTM = "EPSG:32636"  # Kampala's zone
X0, Y0 = 450_000.0, 35_000.0


def staircase(poly: shapely.Polygon, px: float = 0.3) -> shapely.Polygon:
    """``poly`` rasterized at ``px`` metres and traced back: the pixel staircase predict makes."""
    minx, miny, maxx, maxy = poly.bounds
    tr = from_origin(minx - 3 * px, maxy + 3 * px, px, px)
    h, w = int((maxy - miny) / px) + 6, int((maxx - minx) / px) + 6
    img = rasterize([poly], out_shape=(h, w), transform=tr).astype("uint8")
    (geom, _), = [(g, v) for g, v in shapes(img, mask=img > 0, transform=tr)]
    return shapely.geometry.shape(geom)


def corners(poly: shapely.Polygon) -> int:
    return len(shapely.remove_repeated_points(poly.exterior).coords) - 1


RECT = aff.rotate(shapely.box(X0, Y0, X0 + 12, Y0 + 8), 20, origin="centroid")
L_SHAPE = aff.rotate(shapely.Polygon([(0, 0), (20, 0), (20, 8), (8, 8), (8, 16), (0, 16)]), 30, origin=(0, 0))
L_SHAPE = aff.translate(L_SHAPE, X0 + 40, Y0)


@pytest.fixture(scope="module")
def noisy() -> gpd.GeoDataFrame:
    polys = [staircase(RECT), staircase(L_SHAPE)]
    return gpd.GeoDataFrame({"class": ["building"] * 2, "score": [0.9, 0.8], "area_m2": [0.0, 0.0]},
                            geometry=polys, crs=UTM, index=[10, 11])


def test_staircase_rectangle_and_l_shape(noisy: gpd.GeoDataFrame) -> None:
    assert corners(noisy.geometry.iloc[0]) > 40  # the input really is a staircase
    out = regularize(noisy)
    rect, ell = out.geometry.iloc[0], out.geometry.iloc[1]
    assert corners(rect) == 4 and corners(ell) == 6
    assert out.is_valid.all() and (out.geom_type == "Polygon").all()
    assert rect.area == pytest.approx(noisy.geometry.iloc[0].area)  # a near-rectangle keeps its area
    for got, true in ((rect, RECT), (ell, L_SHAPE)):
        assert got.area == pytest.approx(true.area, rel=0.06)
        assert got.intersection(true).area / got.union(true).area > 0.9
    # squared: the rectangle's corners are right angles
    xy = np.asarray(rect.exterior.coords)[:-1]
    edges = np.roll(xy, -1, axis=0) - xy
    cos = np.einsum("ij,ij->i", edges, np.roll(edges, -1, axis=0)) / (
        np.linalg.norm(edges, axis=1) * np.linalg.norm(np.roll(edges, -1, axis=0), axis=1))
    assert np.abs(cos).max() < 1e-4  # within 0.006° of square
    # rows, index, attributes kept; area_m2 recomputed
    assert list(out.index) == [10, 11] and list(out["score"]) == [0.9, 0.8]
    assert out["area_m2"].iloc[0] == pytest.approx(rect.area / 0.9996**2, rel=0.01)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:3857+5773"])  # + EGM96 heights: compound
def test_tolerance_is_metres_in_degrees_and_web_mercator(noisy: gpd.GeoDataFrame, crs: str) -> None:
    there = noisy.to_crs(crs)
    assert metric_crs(there).to_epsg() == 32636
    out = regularize(there)
    assert out.crs == there.crs
    assert [corners(g) for g in out.geometry] == [4, 6]
    back = out.to_crs(UTM)
    assert back.geometry.iloc[0].area == pytest.approx(RECT.area, rel=0.06)
    assert metric_crs(noisy) == noisy.crs  # UTM is used as it is


def test_ragged_blob_becomes_its_rectangle_unless_disabled() -> None:
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    r = 1 / np.maximum(np.abs(np.cos(angles)) / 8, np.abs(np.sin(angles)) / 5)  # a 16 x 10 rectangle
    r *= 1 + rng.uniform(-0.06, 0.06, len(r))  # ragged, as a weak model draws it
    blob = shapely.Polygon(np.column_stack([X0 + r * np.cos(angles), Y0 + r * np.sin(angles)]))
    frame = gpd.GeoDataFrame(geometry=[blob], crs=UTM)
    out = regularize(frame).geometry.iloc[0]
    assert corners(out) == 4 and out.area == pytest.approx(blob.area)
    assert out.intersection(blob).area / out.union(blob).area > 0.85
    assert corners(regularize(frame, rectangle=1.0).geometry.iloc[0]) > 4  # left to buildingregulariser


def test_only_outlines_no_rectangle_fits_are_edge_snapped(noisy: gpd.GeoDataFrame,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import buildingregulariser

    seen: list[list[int]] = []
    real = buildingregulariser.regularize_geodataframe

    def spy(frame: gpd.GeoDataFrame, **kw: object) -> gpd.GeoDataFrame:
        seen.append(list(frame["_row"]))
        return real(frame, **kw)

    monkeypatch.setattr(buildingregulariser, "regularize_geodataframe", spy)
    out = regularize(noisy)
    assert seen == [[1]]  # the L; the staircase rectangle became its rectangle without it
    assert [corners(g) for g in out.geometry] == [4, 6]
    seen.clear()
    assert corners(regularize(noisy.iloc[:1]).geometry.iloc[0]) == 4 and seen == []  # no call at all
    regularize(noisy, rectangle=1.0)
    assert seen == [[0, 1]]  # rectangles disabled: both snapped


def test_every_row_survives(noisy: gpd.GeoDataFrame) -> None:
    tiny = shapely.box(X0, Y0 - 30, X0 + 0.6, Y0 - 29.4)  # smaller than the tolerance
    bowtie = shapely.Polygon([(X0, Y0 - 50), (X0 + 4, Y0 - 46), (X0 + 4, Y0 - 50), (X0, Y0 - 46)])
    frame = gpd.GeoDataFrame({"score": [1.0, 0.5, 0.4]}, geometry=[noisy.geometry.iloc[0], tiny, bowtie],
                             crs=UTM)
    out = regularize(frame)
    assert len(out) == 3 and out.is_valid.all() and not out.is_empty.any()
    assert out.geometry.iloc[1].area == pytest.approx(tiny.area, rel=0.3)
    empty = regularize(frame.iloc[:0])
    assert len(empty) == 0 and empty.crs == frame.crs
    with pytest.raises(ValueError, match="CRS"):
        regularize(gpd.GeoDataFrame(geometry=[tiny]))


def test_a_spike_on_one_side_does_not_move_or_stretch_the_rectangle() -> None:
    # a 12 x 8 m roof traced with a 0.6 m wide, 2 m long spike off one long side (a tree, a
    # neighbour's pixels): its minimum rotated rectangle is 2 m taller, so that rectangle scaled
    # to the area is squatter and off-centre; the second moments hardly see the spike
    true = aff.rotate(shapely.box(X0, Y0, X0 + 12, Y0 + 8), 20, origin=(X0, Y0))
    spike = aff.rotate(shapely.box(X0 + 5.7, Y0 + 7.9, X0 + 6.3, Y0 + 10), 20, origin=(X0, Y0))
    traced = shapely.union(true, spike)
    assert traced.geom_type == "Polygon"
    out = regularize(gpd.GeoDataFrame(geometry=[traced], crs=UTM)).geometry.iloc[0]
    assert corners(out) == 4 and out.area == pytest.approx(traced.area)
    assert out.intersection(true).area / out.union(true).area > 0.97
    env = shapely.oriented_envelope(traced)
    scaled = aff.scale(env, *(2 * [np.sqrt(traced.area / env.area)]), origin="centroid")
    assert scaled.intersection(true).area / scaled.union(true).area < 0.93  # what squaring did before


def test_a_courtyard_is_not_filled_and_its_moments_count_the_hole() -> None:
    from geoseg.predict.regularize import _moment_rectangles

    outer = shapely.box(X0, Y0, X0 + 20, Y0 + 10)
    ring = outer.difference(shapely.box(X0 + 6, Y0 + 3, X0 + 14, Y0 + 7))  # 200 - 32 m2
    rect = _moment_rectangles(np.array([ring]))[0]
    # the ring's second moments are the outer box's minus the hole's: 20 x 10 -> sides in
    # proportion sqrt(Iu / A) : sqrt(Iv / A), centred, scaled to the ring's 168 m2
    iu = (20**3 * 10 - 8**3 * 4) / 12
    iv = (10**3 * 20 - 4**3 * 8) / 12
    minx, miny, maxx, maxy = rect.bounds
    assert (maxx - minx) / (maxy - miny) == pytest.approx(np.sqrt(iu / iv), rel=1e-6)
    assert rect.area == pytest.approx(168) and rect.centroid.distance(outer.centroid) < 1e-6
    # regularize does not fill the courtyard: the rectangle overlaps the ring by IoU 0.68 only
    ragged = shapely.union(ring, shapely.box(X0 + 19.9, Y0 + 4, X0 + 20.4, Y0 + 4.5))
    out = regularize(gpd.GeoDataFrame(geometry=[ragged], crs=UTM), rectangle=0.6).geometry.iloc[0]
    assert len(out.interiors) == 1 and out.area == pytest.approx(ragged.area, rel=0.02)


def test_the_tolerance_is_at_least_two_pixels_of_the_scene() -> None:
    """A 1 m tolerance on 10 m pixels kept every step of the staircase (142 corners; 24 s for a 644-vertex blob)."""
    from dataclasses import replace

    from geoseg.io.rasters import SceneInfo
    from geoseg.predict.regularize import square_tolerance

    big = aff.scale(L_SHAPE, 20, 20, origin=(X0, Y0))  # 400 x 320 m, rotated 30°
    traced = gpd.GeoDataFrame(geometry=[staircase(big, px=10.0)], crs=UTM)
    scene = SceneInfo("s.tif", "s", 64, 64, 3, "uint8", UTM, (10.0, 0, X0, 0, -10.0, Y0), None, False, 10.0)
    assert square_tolerance(1.0, scene) == 20.0 and square_tolerance(1.0, replace(scene, gsd=0.3)) == 1.0
    assert corners(regularize(traced, tolerance=1.0, rectangle=1.0).geometry.iloc[0]) > 100  # as traced
    got = regularize(traced, tolerance=square_tolerance(1.0, scene), rectangle=1.0).geometry.iloc[0]
    assert corners(got) <= 8 and got.intersection(big).area / got.union(big).area > 0.9


def test_regularize_file_squares_only_the_classes_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A tree crown beside a roof: the buildings presets' ``[building]`` squares the roof only."""
    from geoseg.models.postprocess import squared_classes
    from geoseg.predict.regularize import regularize_file

    crown = staircase(shapely.Point(X0 + 80, Y0 + 10).buffer(5))  # round: rectangularity pi/4 > 0.75
    gdf = gpd.GeoDataFrame({"class": ["building", "tree"], "score": [0.9, 0.8], "area_m2": [1.0, 2.0]},
                           geometry=[staircase(RECT), crown], crs=UTM)
    gdf.to_file(tmp_path / "block.gpkg")
    every = gpd.read_file(regularize_file(tmp_path / "block.gpkg", 1.0))
    assert corners(every.geometry[1]) == 4  # True squares every class: the crown became a rectangle
    named = gpd.read_file(regularize_file(tmp_path / "block.gpkg", 1.0, classes=["building"]))
    assert corners(named.geometry[0]) == 4 and named.geometry[0].equals(every.geometry[0])
    assert named.geometry[1].equals(gdf.geometry[1]) and named["area_m2"][1] == 2.0  # as traced, untouched
    assert named["area_m2"][0] == pytest.approx(named.geometry[0].area / 0.9996**2, rel=0.01)  # recomputed
    assert list(named["class"]) == ["building", "tree"]
    assert squared_classes(("building",), ["tree"]) == [] and squared_classes(False, ["tree"]) == []


def test_a_list_naming_no_class_of_the_chips_warns(caplog: pytest.LogCaptureFixture) -> None:
    from geoseg.models.postprocess import check_regularize

    with caplog.at_level("WARNING"):
        check_regularize(("building",), ["tree"])
    assert "postprocess.regularize names building, not a class of the chips (tree): predict will square " \
        "no outline" in caplog.text
