import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from conftest import SAMPLE

from geoseg.cli.main import cli
from geoseg.errors import GeoSegError, InputVectorError
from geoseg.evaluate import (
    KEYS,
    REPORT_KEYS,
    average_precision,
    boundary_iou,
    candidate_pairs,
    evaluate,
    evaluate_frames,
    format_report,
    match_by_iou,
    match_by_score,
    polygonal,
)

UTM = "EPSG:32636"
X0, Y0 = 450000.0, 40000.0


def grid(n: int = 6, side: float = 10.0, gap: float = 10.0, dx: float = 0.0, **cols) -> gpd.GeoDataFrame:
    """n squares of ``side`` m in a row, ``gap`` m apart, shifted east by ``dx``, in UTM 36N."""
    x = X0 + dx + np.arange(n) * (side + gap)
    return gpd.GeoDataFrame(cols, geometry=shapely.box(x, Y0, x + side, Y0 + side), crs=UTM)


def test_exact_copies_are_perfect():
    truth = grid()
    r = evaluate_frames(truth.copy(), truth)
    assert set(r) == {*REPORT_KEYS, "per_class"}
    assert (r["tp"], r["fp"], r["fn"]) == (6, 0, 0)
    assert r["f1"] == r["precision"] == r["recall"] == 1.0
    assert r["mean_iou"] == 1.0 and r["ap"] == r["ap50"] == r["ap75"] == 1.0
    assert r["boundary_iou"] == 1.0
    assert r["per_class"] == {}
    json.dumps(r)  # plain JSON-able


def test_shift_by_two_has_analytic_iou():
    truth, pred = grid(1), grid(1, dx=2.0)  # 10x10 shifted by 2: IoU = 80 / 120
    r = evaluate_frames(pred, truth, iou=0.5)
    assert r["tp"] == 1 and r["mean_iou"] == pytest.approx(80 / 120)
    r = evaluate_frames(pred, truth, iou=2 / 3)  # exactly the IoU: still a match
    assert r["tp"] == 1
    r = evaluate_frames(pred, truth, iou=0.7)
    assert (r["tp"], r["fp"], r["fn"], r["f1"], r["mean_iou"]) == (0, 1, 1, 0.0, 0.0)
    # matched at 0.50, 0.55, 0.60, 0.65 out of the 10 COCO thresholds
    assert r["ap"] == pytest.approx(0.4) and r["ap50"] == 1.0 and r["ap75"] == 0.0
    # boundary IoU with d = 1 m: bands of 36 m² each sharing only the top and bottom 8x1 strips
    r = evaluate_frames(pred, truth, boundary_width=1.0)
    assert r["boundary_iou"] == pytest.approx(16 / 56)


def test_missing_and_extra_polygons():
    truth = grid(6)
    pred = truth.iloc[:4].copy()  # two missing
    extra = grid(3, dx=5000.0)    # three far away
    pred = gpd.GeoDataFrame(geometry=[*pred.geometry, *extra.geometry], crs=UTM)
    r = evaluate_frames(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (4, 3, 2)
    assert r["precision"] == pytest.approx(4 / 7) and r["recall"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(8 / 13)


def test_multipart_truth_is_scored_per_part_as_tile_trains(tmp_path):
    """A building mapped as one MultiPolygon of 3 parts, found as 3 polygons: 0 TP before (one object)."""
    parts = grid(3)
    truth = gpd.GeoDataFrame({"class": ["building"]}, geometry=[shapely.union_all(parts.geometry)], crs=UTM)
    pred = parts.assign(**{"class": "building", "score": 0.9})
    r = evaluate_frames(pred, truth)
    assert (r["tp"], r["fp"], r["fn"], r["mean_iou"]) == (3, 0, 0, 1.0)
    r = evaluate_frames(pred, truth, multipart="whole")  # each part is a third of the object
    assert (r["tp"], r["fp"], r["fn"]) == (0, 3, 1)
    r = evaluate_frames(truth.assign(score=1.0), truth, multipart="whole")  # predicted as one: a match
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    with pytest.raises(ValueError, match="multipart"):
        evaluate_frames(pred, truth, multipart="each")
    pred.to_file(tmp_path / "p.gpkg")
    truth.to_file(tmp_path / "t.gpkg")
    for mode, row in (("parts", ["all", "3", "0", "0"]), ("whole", ["all", "0", "3", "1"])):
        res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"),
                                       "--multipart", mode])
        assert res.exit_code == 0 and res.output.splitlines()[2].split()[:4] == row, res.output


def test_a_concave_roof_cut_by_the_aoi_is_one_object(tmp_path):
    """--aoi/--clip cut a U-shaped roof into its two arms: one object still, not two."""
    x, y = 450000, 35000
    u = shapely.union_all([shapely.box(x, y, x + 30, y + 10), shapely.box(x, y, x + 10, y + 30),
                           shapely.box(x + 20, y, x + 30, y + 30)])
    two = shapely.MultiPolygon([shapely.box(x + 50, y + 20, x + 60, y + 30),
                                shapely.box(x + 70, y + 20, x + 80, y + 30)])
    truth = gpd.GeoDataFrame({"class": ["building"] * 2}, geometry=[u, two], crs=UTM)
    pred = gpd.GeoDataFrame({"class": ["building"] * 3, "score": 0.9},
                            geometry=[u, *two.geoms], crs=UTM)  # the U whole, the mapped parts apart
    truth.to_file(tmp_path / "t.gpkg")
    pred.to_file(tmp_path / "p.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.box(x - 100, y + 15, x + 100, y + 100)], crs=UTM).to_file(tmp_path / "a.gpkg")
    for mode, row in (("parts", ["all", "3", "0", "0"]), ("whole", ["all", "2", "1", "0"])):
        res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"),
                                       "--aoi", str(tmp_path / "a.gpkg"), "--multipart", mode])
        # parts: U (cut in two by the AOI, still one object) + the 2 parts; before: 4 true positives.
        # whole: the U, and one square at IoU 0.5 with the 2-part feature
        assert res.exit_code == 0 and res.output.splitlines()[2].split()[:4] == row, (mode, res.output)


def test_matching_is_one_to_one():
    truth = grid(1)
    pred = gpd.GeoDataFrame(geometry=[truth.geometry[0], truth.geometry[0].buffer(0.1, join_style="mitre")],
                            crs=UTM)
    r = evaluate_frames(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0) and r["mean_iou"] == 1.0


def test_ap_follows_the_score():
    truth = grid(2)
    far = grid(1, dx=9000.0).geometry[0]
    good = [*truth.geometry, far]
    high_fp = evaluate_frames(gpd.GeoDataFrame({"score": [0.5, 0.4, 0.9]}, geometry=good, crs=UTM), truth)
    low_fp = evaluate_frames(gpd.GeoDataFrame({"score": [0.9, 0.8, 0.1]}, geometry=good, crs=UTM), truth)
    assert low_fp["ap"] == 1.0
    assert high_fp["ap"] < 1.0 and high_fp["f1"] == low_fp["f1"] == 0.8
    # false positive first: precision 1/2 at recall 0.5, 2/3 at recall 1 -> envelope 2/3
    assert high_fp["ap50"] == pytest.approx(2 / 3)


def test_truth_in_wgs84_same_as_utm():
    truth, pred = grid(5), grid(5, dx=1.5)
    utm = evaluate_frames(pred, truth)
    mixed = evaluate_frames(pred, truth.to_crs(4326))
    both_geo = evaluate_frames(pred.to_crs(4326), truth.to_crs(4326))
    for r in (mixed, both_geo):
        assert (r["tp"], r["fp"], r["fn"]) == (utm["tp"], utm["fp"], utm["fn"]) == (5, 0, 0)
        assert r["mean_iou"] == pytest.approx(utm["mean_iou"], rel=1e-4)
        assert r["boundary_iou"] == pytest.approx(utm["boundary_iou"], rel=1e-3)


def test_truth_with_a_wrong_crs_warns_that_nothing_overlaps(caplog):
    """Truth whose coordinates are in another CRS than the one it declares lands elsewhere: F1 0 is the
    right number, but the user must learn why."""
    truth = grid(5).set_crs("EPSG:32637", allow_override=True)  # the coordinates are UTM 36N's
    with caplog.at_level("WARNING"):
        r = evaluate_frames(grid(5), truth)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 5, 5)
    assert "do not overlap" in caplog.text and "CRS" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate_frames(grid(5, dx=10.0), grid(5))  # in the gaps: nothing matches, yet the extents overlap
        evaluate_frames(grid(0), grid(5))
    assert "do not overlap" not in caplog.text


def test_objects_far_beyond_the_other_sides_extent_warn(caplog, tmp_path):
    """Truth mapped over one district, predictions over the whole scene: precision is right for the
    inputs but not what the user wants to know; the warning says so and how to evaluate inside."""
    district, scene = grid(6), grid(30)  # the same squares; the truth stops after the sixth
    with caplog.at_level("WARNING"):
        r = evaluate_frames(scene, district)
    assert (r["tp"], r["fp"], r["fn"]) == (6, 24, 0)
    assert "23 of 30 predictions lie over 11 m beyond the truth's extent" in caplog.text
    assert "--aoi AREA_FILE" in caplog.text and "truth polygons lie" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate_frames(district, scene)
    assert "23 of 30 truth polygons lie over 11 m beyond the predictions' extent" in caplog.text
    assert "--scenes SCENES --clip" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate_frames(grid(6, dx=1.5), district)  # one area, shifted outlines
        evaluate_frames(grid(7), district)  # one more object, at the edge
    assert "m beyond the" not in caplog.text
    # the advice: evaluate inside the mapped area
    scene.to_file(tmp_path / "p.gpkg")
    district.to_file(tmp_path / "t.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.box(*district.total_bounds).buffer(1)], crs=UTM).to_file(tmp_path / "a.gpkg")
    caplog.clear()
    with caplog.at_level("WARNING"):
        res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"),
                                       "--aoi", str(tmp_path / "a.gpkg"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["fp"] == 0 and "m beyond the" not in caplog.text


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:3857+5773", "EPSG:4326"])
def test_boundary_width_is_ground_metres_in_mercator_compound_and_degrees(crs):
    # at 60° N a Web Mercator metre is half a ground metre; a drone survey's compound CRS
    # (Web Mercator + EGM96 heights) hides its projection in its horizontal part
    x = 600_000 + np.arange(5) * 30.0
    truth = gpd.GeoDataFrame(geometry=shapely.box(x, 6_650_000, x + 12, 6_650_008), crs="EPSG:32632")
    pred = truth.translate(0.6, 0.4).to_frame("geometry")
    expected = evaluate_frames(pred, truth, boundary_width=1.0)["boundary_iou"]
    r = evaluate_frames(pred.to_crs(crs), truth.to_crs(crs), boundary_width=1.0)
    assert r["tp"] == 5 and r["boundary_iou"] == pytest.approx(expected, abs=1e-3)


def test_a_class_field_neither_input_has_is_refused(caplog):
    with pytest.raises(InputVectorError, match="column 'kind'"):
        evaluate_frames(grid(3), grid(3), class_field="kind")
    with caplog.at_level("WARNING"):  # only one has it: class-agnostic, and the user is told
        r = evaluate_frames(grid(3, kind=["a"] * 3), grid(3), class_field="kind")
    assert r["tp"] == 3 and "only one input has a 'kind' column" in caplog.text


def test_per_class_matches_within_class():
    truth = grid(4, **{"class": ["house", "house", "shed", "shed"]})
    pred = grid(4, **{"class": ["house", "shed", "shed", "shed"]})
    r = evaluate_frames(pred, truth)
    assert set(r["per_class"]) == {"house", "shed"}
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 1)
    house, shed = r["per_class"]["house"], r["per_class"]["shed"]
    assert (house["tp"], house["fp"], house["fn"]) == (1, 0, 1)
    assert (shed["tp"], shed["fp"], shed["fn"]) == (2, 1, 0)
    assert set(house) == set(REPORT_KEYS)
    assert r["ap"] == pytest.approx((house["ap"] + shed["ap"]) / 2)
    # class-agnostic when one side has no class column
    r = evaluate_frames(pred.drop(columns="class"), truth)
    assert r["tp"] == 4 and r["per_class"] == {}


def test_classes_that_cannot_match_across_the_inputs_warn(caplog):
    # the model's 'building' against the truth's 'Building': that class scores 0, with a warning naming both
    truth = grid(4, **{"class": ["Building", "Building", "shed", "shed"]})
    pred = grid(4, **{"class": ["building", "building", "shed", "shed"]})
    with caplog.at_level("WARNING"):
        r = evaluate_frames(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 2)
    assert "differ only in case or spaces between the predictions and the truth ('building' and 'Building')" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate_frames(pred, grid(4, **{"class": ["yes"] * 4}))  # OpenStreetMap's building=yes
    assert "no class is in both inputs (['building', 'shed'] vs ['yes'])" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        r = evaluate_frames(pred, truth.assign(**{"class": pred["class"]}))
    assert r["tp"] == 4 and "class" not in caplog.text


def test_invalid_and_empty_geometries(caplog):
    truth = grid(2)
    bowtie = shapely.Polygon([(X0, Y0), (X0 + 10, Y0 + 10), (X0 + 10, Y0), (X0, Y0 + 10)])
    pred = gpd.GeoDataFrame(geometry=[truth.geometry[1], bowtie, shapely.Point(X0, Y0), None], crs=UTM)
    r = evaluate_frames(pred, truth, multipart="whole")
    # the bow-tie is repaired into one MultiPolygon of two triangles: half the square, IoU 0.5
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0) and r["mean_iou"] == pytest.approx(0.75)
    assert evaluate_frames(pred, truth, iou=0.6, multipart="whole")["tp"] == 1
    r = evaluate_frames(pred, truth)  # as tile reads labels: two triangles, a quarter of the square each
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1) and r["mean_iou"] == 1.0
    assert "2 prediction features have no polygonal area" in caplog.text
    empty = evaluate_frames(pred.iloc[:0], truth)
    assert (empty["tp"], empty["fp"], empty["fn"], empty["ap"]) == (0, 0, 2, 0.0)


def test_no_crs_and_bad_iou():
    truth = grid(1)
    with pytest.raises(InputVectorError, match="prediction polygons have no CRS"):
        evaluate_frames(truth.set_crs(None, allow_override=True), truth)
    with pytest.raises(ValueError, match="iou"):
        evaluate_frames(truth, truth, iou=0)


def test_helpers():
    pi, ti = np.array([0, 1, 1]), np.array([0, 0, 1])
    iou = np.array([0.6, 0.9, 0.7])
    assert match_by_iou(pi, ti, iou, 0.5).tolist() == [False, True, False]  # (1, 0) first
    # COCO order: prediction 0 ranks first and takes truth 0
    assert match_by_score(pi, ti, iou, np.array([0, 1]), 0.5).tolist() == [True, False, True]
    assert average_precision(np.array([], bool), np.array([], int), 3) == 0.0
    assert average_precision(np.array([True]), np.array([0]), 0) == 0.0
    assert boundary_iou(np.array([], object), np.array([], object)).tolist() == []
    assert polygonal(np.array([shapely.LineString([(0, 0), (1, 1)])], object)).tolist() == [None]
    text = format_report(evaluate_frames(grid(2), grid(2)))
    assert text.splitlines()[0].split() == ["class", *KEYS]


def test_touching_neighbours_are_pruned_before_intersection():
    truth = grid(3, gap=0.0)          # squares sharing edges
    pred = grid(3, gap=0.0, dx=1.0)   # each overlaps its truth by 90 % and the next by 10 %
    pg, tg = pred.geometry.to_numpy(), truth.geometry.to_numpy()
    pi, ti, iou = candidate_pairs(pg, tg)
    assert len(pi) == 5 and iou.min() == pytest.approx(10 / 190)
    pi, ti, iou = candidate_pairs(pg, tg, min_iou=0.5)
    assert pi.tolist() == ti.tolist() == [0, 1, 2] and iou == pytest.approx(90 / 110)


def test_watershed_to_polygons_to_metrics(tmp_path):
    from rasterio.transform import from_origin

    from geoseg.predict.instances import watershed_instances
    from geoseg.predict.vectorize import instances_to_frame, write_vector

    extent = np.zeros((20, 40), np.float32)
    extent[5:15, 5:25] = 0.9           # two touching 10x10 buildings ...
    contact = np.zeros_like(extent)
    contact[5:15, 15] = 0.9            # ... split by a contact line
    extent[5:15, 30:36] = 0.8          # and a third one
    inst = watershed_instances(extent, np.zeros_like(extent), contact)
    gdf = instances_to_frame(inst.labels, from_origin(X0, Y0 + 20, 1, 1), UTM, score=inst.score,
                             class_index=inst.class_index, class_names=["building"])
    pred = write_vector(gdf, tmp_path / "pred.gpkg")
    truth = gpd.GeoDataFrame({"class": ["building"] * 3}, crs=UTM, geometry=[
        shapely.box(X0 + 5, Y0 + 5, X0 + 15, Y0 + 15), shapely.box(X0 + 15, Y0 + 5, X0 + 25, Y0 + 15),
        shapely.box(X0 + 30, Y0 + 5, X0 + 36, Y0 + 15)]).to_crs(4326)
    truth.to_file(tmp_path / "truth.geojson")
    r = evaluate(pred, tmp_path / "truth.geojson")
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 0)
    assert r["mean_iou"] > 0.95  # the contact column is shared out between the two (IoU ~0.94 each)


def test_sample_labels_against_themselves():
    labels = SAMPLE / "labels" / "buildings.gpkg"  # EPSG:4326, one invalid polygon
    r = evaluate(labels, labels)
    assert (r["tp"], r["fp"], r["fn"]) == (206, 0, 0)
    assert r["f1"] == r["ap"] == 1.0 and r["mean_iou"] == pytest.approx(1.0)
    assert r["boundary_iou"] == pytest.approx(1.0)


@pytest.fixture
def files(tmp_path):
    truth = grid(4, **{"class": ["building"] * 4})
    pred = grid(4, dx=2.0, score=[0.9, 0.8, 0.7, 0.6], **{"class": ["building"] * 4})
    truth.to_crs(4326).to_file(tmp_path / "truth.geojson")
    pred.to_file(tmp_path / "pred.gpkg")
    return tmp_path / "pred.gpkg", tmp_path / "truth.geojson"


def test_evaluate_files(files):
    r = evaluate(*files)
    assert r["tp"] == 4 and r["mean_iou"] == pytest.approx(80 / 120, rel=1e-5)
    assert list(r["per_class"]) == ["building"]


def test_evaluate_file_errors(tmp_path):
    with pytest.raises(InputVectorError, match="does not exist"):
        evaluate(tmp_path / "nope.gpkg", tmp_path / "t.gpkg")
    (tmp_path / "bad.gpkg").write_text("not a geopackage")
    with pytest.raises(InputVectorError, match="cannot read prediction"):
        evaluate(tmp_path / "bad.gpkg", tmp_path / "bad.gpkg")
    with pytest.warns(UserWarning, match="crs"):
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]).to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(GeoSegError, match="has no CRS; assign one"):
        evaluate(tmp_path / "nocrs.gpkg", tmp_path / "nocrs.gpkg")


def test_cli_table_and_json(files, tmp_path):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(cli, ["evaluate", *map(str, files), "--iou", "0.6", "--json", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split() == ["class", *KEYS]
    assert lines[2].split()[:4] == ["all", "4", "0", "0"] and lines[3].startswith("building")
    report = json.loads(out.read_text())
    assert set(report) == {*REPORT_KEYS, "per_class"} and report["tp"] == 4
    assert set(report["per_class"]["building"]) == set(REPORT_KEYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "pred.gpkg", "truth.geojson"]
    res = CliRunner().invoke(cli, ["evaluate", *map(str, files), "--iou", "0.7"])
    assert res.exit_code == 0 and res.output.splitlines()[2].split()[:4] == ["all", "0", "4", "4"]


def test_cli_errors(tmp_path, files):
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "missing.gpkg"), str(files[1])])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"geoseg: error: prediction file {tmp_path / 'missing.gpkg'} does not exist; check the path"]
    res = CliRunner().invoke(cli, ["evaluate", *map(str, files), "--iou", "1.5"])
    assert res.exit_code == 2
    res = CliRunner().invoke(cli, ["evaluate", "--help"])
    assert res.exit_code == 0 and "$ geoseg evaluate buildings.gpkg" in res.output


def test_one_polygon_repair():
    from geoseg.io.vectors import polygonal_parts

    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    collapsed = shapely.Polygon([(0, 0), (1, 0), (2, 0), (0, 0)])
    nested = shapely.GeometryCollection([shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 0, 3, 1)]),
                                         shapely.Point(5, 5)])
    geoms = np.array([bowtie, None, collapsed, nested, shapely.box(0, 0, 1, 1)], dtype=object)
    parts, index = polygonal_parts(geoms)
    assert index.tolist() == [0, 0, 3, 3, 4]
    assert set(shapely.get_type_id(parts).tolist()) == {shapely.GeometryType.POLYGON}
    assert shapely.area(parts).sum() == pytest.approx(2 + 2 + 1)
    kinds = [g.geom_type if g is not None else None for g in polygonal(geoms)]
    assert kinds == ["MultiPolygon", None, None, "MultiPolygon", "Polygon"]
    assert polygonal(geoms)[4].equals(geoms[4])


def test_class_field_none_matches_regardless_of_class(tmp_path) -> None:
    boxes = [shapely.box(i * 20, 0, i * 20 + 10, 10) for i in range(5)]
    pred = gpd.GeoDataFrame({"class": ["object"] * 5, "score": [0.9] * 5}, geometry=boxes, crs="EPSG:32636")
    truth = gpd.GeoDataFrame({"class": ["house", None, "garage", None, None]}, geometry=boxes, crs="EPSG:32636")
    with pytest.raises(InputVectorError, match="none: one class for every feature"):  # null classes in truth
        evaluate_frames(pred, truth)
    report = evaluate_frames(pred, truth, class_field="none")
    assert (report["tp"], report["fp"], report["fn"], report["per_class"]) == (5, 0, 0, {})
    pred.to_file(tmp_path / "p.gpkg")
    truth.to_file(tmp_path / "t.gpkg")
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"),
                                   "--class-field", "none", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["f1"] == 1.0


@pytest.mark.parametrize("clip", [True, False])
def test_geojson_predictions_across_the_antimeridian_clip_and_match_whole(tmp_path, clip):
    # Taveuni (Fiji): predict's GeoJSON (RFC 7946, degrees) splits a roof on the 180th meridian into
    # two parts; --clip drew the scene (UTM 60S) in degrees, a polygon spanning the globe: "unexpected
    # GEOSException". Clipped in the scene's CRS, the two parts are one roof again and match it.
    from conftest import write_raster
    from rasterio.transform import from_origin

    from geoseg.io.formats import write_vector

    utm, x0, y0 = "EPSG:32760", 819_661.0, 8_140_276.0  # the meridian: x 819 789
    scene = write_raster(tmp_path / "taveuni.tif", np.full((3, 256, 256), 60, np.uint8), utm,
                         from_origin(x0, y0, 1.0, 1.0))
    roofs = gpd.GeoDataFrame({"class": ["building"] * 3, "score": [0.9] * 3},
                             geometry=[shapely.box(819_784, 8_140_200, 819_794, 8_140_210),  # on the meridian
                                       shapely.box(819_700, 8_140_100, 819_710, 8_140_110),
                                       shapely.box(819_850, 8_140_100, 819_860, 8_140_108)], crs=utm)
    write_vector(roofs, tmp_path / "pred.geojson")
    assert gpd.read_file(tmp_path / "pred.geojson").geom_type.tolist()[0] == "MultiPolygon"  # split at 180°
    roofs.to_file(tmp_path / "truth.gpkg")
    args = ["evaluate", str(tmp_path / "pred.geojson"), str(tmp_path / "truth.gpkg"),
            "--json", str(tmp_path / "r.json")]
    res = CliRunner().invoke(cli, args + (["--scenes", str(scene), "--clip"] if clip else []))
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 0) and r["mean_iou"] > 0.99


def test_scenes_without_clip_or_quicklook_is_refused(tmp_path):
    """--scenes alone was read for nothing: the truth beyond the scenes counted as missed, exit 0."""
    grid(3).to_file(tmp_path / "p.gpkg")
    grid(3).to_file(tmp_path / "t.gpkg")
    base = ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"), "--scenes", str(SAMPLE)]
    res = CliRunner().invoke(cli, [*base, "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "add --clip" in res.output, res.output
    assert not (tmp_path / "r.json").exists()
    res = CliRunner().invoke(cli, [*base, "--quicklook", str(tmp_path / "q.png")])  # the background: fine
    assert res.exit_code == 0, res.output


def test_predictions_without_a_score_column_warn_and_score_field_names_theirs(tmp_path):
    # another tool's predictions, confidence in 'confidence': the two false ones first in the file
    truth = grid(4)
    false = grid(2, dx=500.0)
    pred = gpd.GeoDataFrame({"confidence": [0.2, 0.3, 0.9, 0.9, 0.9, 0.9]},
                            geometry=[*false.geometry, *truth.geometry], crs=UTM)
    pred.to_file(tmp_path / "p.gpkg")
    truth.to_file(tmp_path / "t.gpkg")
    base = ["evaluate", str(tmp_path / "p.gpkg"), str(tmp_path / "t.gpkg"), "--json", str(tmp_path / "r.json")]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 0, res.output
    assert "no 'score' column: ap, ap50 and ap75 rank them in file order" in res.output
    assert "--score-field (confidence?)" in res.output
    in_file_order = json.loads((tmp_path / "r.json").read_text())
    res = CliRunner().invoke(cli, [*base, "--score-field", "confidence"])
    ranked = json.loads((tmp_path / "r.json").read_text())
    assert res.exit_code == 0 and "file order" not in res.output, res.output
    assert ranked["f1"] == in_file_order["f1"] and ranked["ap50"] == 1.0 > in_file_order["ap50"]
