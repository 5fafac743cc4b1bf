"""A country's labels for a few scenes: only the features near the scenes are read (geoseg.io.near)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geoseg.errors import InputVectorError
from geoseg.io.near import near_mask, read_near
from geoseg.io.vectors import read_labels

CRS = "EPSG:32636"
AREA = shapely.box(500_000, 0, 500_100, 100)  # a scene's footprint, 100 m square


def country(
    path: Path, *, classes: list[str | None] | list[str] | None = None, delete: tuple[int, ...] = (),
) -> gpd.GeoDataFrame:
    """300 buildings: every 7th on the area, the rest kilometres away; ``delete``: fids removed after writing.

    Returns the features as the file holds them (file order), deleted ones gone.
    """
    rng = np.random.default_rng(0)
    geoms = []
    for i in range(300):
        if i % 7 == 3:  # on the area, away from its edge
            x, y = 500_010.0 + (i % 8) * 10, 10.0 + (i // 40) * 10
        else:
            x, y = 510_000 + rng.uniform(0, 20_000), 10_000 + rng.uniform(0, 20_000)
        geoms.append(shapely.box(x, y, x + 6, y + 5))
    cls = classes or ["building"] * 300
    gpd.GeoDataFrame({"class": cls}, geometry=geoms, crs=CRS).to_file(path)
    if delete:  # gaps in the feature ids, as editing a GeoPackage in QGIS leaves them
        with sqlite3.connect(path) as db:
            db.execute(f"DELETE FROM {path.stem} WHERE fid IN ({','.join(map(str, delete))})")
    return gpd.read_file(path)


def expected(whole: gpd.GeoDataFrame) -> np.ndarray:
    """Rows (in file order) of the features whose envelope meets the area: what the whole read keeps."""
    return np.flatnonzero(near_mask(whole.geometry.to_numpy(), CRS, [(CRS, AREA)]))


def test_only_near_features_are_read_and_label_ids_stay_rows_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "country.gpkg"
    whole = country(path, delete=(2, 11, 12, 150))  # fids 1.. with gaps: rows and fids part ways
    got = read_near(path, "label", None, [(CRS, AREA)], "class")
    assert got is not None
    near, every = got
    rows = expected(whole)
    assert len(near) == len(rows) < len(whole) // 5  # the far ones were never read
    assert len(every) == len(whole) and list(every.columns) == ["class"]

    labels = read_labels(path, near=[(CRS, AREA)])
    assert labels["label_id"].tolist() == rows.tolist()  # in file order, as the whole read gives them
    for _, lab in labels.iterrows():  # each label is the feature of its row
        assert lab.geometry.equals(whole.geometry.iloc[lab["label_id"]])
    assert labels.attrs["far"] == len(whole) - len(rows)


@pytest.mark.parametrize("suffix", [".fgb", ".shp"])
def test_other_indexed_formats_keep_rows_of_their_own_file_order(tmp_path: Path, suffix: str) -> None:
    """A FlatGeobuf with its index stores features in its own (Hilbert) order: rows are of that order."""
    path = tmp_path / f"country{suffix}"
    country(tmp_path / "country.gpkg").to_file(path)
    whole = gpd.read_file(path)
    assert read_near(path, "label", None, [(CRS, AREA)], "class") is not None
    labels = read_labels(path, near=[(CRS, AREA)])
    assert labels["label_id"].tolist() == expected(whole).tolist()
    for _, lab in labels.iterrows():
        assert lab.geometry.equals(whole.geometry.iloc[lab["label_id"]])


@pytest.mark.parametrize("covering", [True, False])
def test_geoparquet_with_a_bbox_covering_reads_the_row_groups_near_only(tmp_path: Path, covering: bool) -> None:
    """Overture's buildings (GeoParquet 1.1, sorted in space, a bbox column): the row groups whose
    bbox statistics meet the area are read, rows of the file kept as label_id; without a covering,
    the whole file is read, to the same labels."""
    from geoseg.io.parquet import _groups_near, parquet_info

    gdf = country(tmp_path / "c.gpkg", classes=["building"] * 299 + ["garage"])
    gdf = gdf.iloc[np.argsort(gdf.geometry.bounds["minx"].to_numpy(), kind="stable")].reset_index(drop=True)
    path = tmp_path / "country.parquet"
    gdf.to_parquet(path, write_covering_bbox=covering, row_group_size=20)
    whole = gpd.read_parquet(path)
    got = read_near(path, "label", None, [(CRS, AREA)], "class")
    labels = read_labels(path, near=[(CRS, AREA)])
    rows = expected(whole)
    assert labels["label_id"].tolist() == rows.tolist() and len(rows) > 0
    for _, lab in labels.iterrows():
        assert lab.geometry.equals(whole.geometry.iloc[lab["label_id"]])
    assert labels.attrs["classes"] == ["building", "garage"]  # the far garage's class too
    assert labels.attrs["far"] == len(whole) - len(rows)
    if not covering:
        assert got is None and parquet_info(path) is None
        return
    assert got is not None
    near, every = got
    assert len(every) == len(whole) and list(every.columns) == ["class"] and len(near) == len(rows)
    info = parquet_info(path)
    assert info is not None and len(_groups_near(info, [AREA])) <= 3 < info["file"].metadata.num_row_groups
    # another layer name, or a subset, is left to the whole read, which names the problem
    with pytest.raises(InputVectorError, match="GeoParquet"):
        read_labels(f"{path}|layername=roofs", near=[(CRS, AREA)])


def test_geoparquet_with_geometry_types_undeclared_reads_near_polygons_only(tmp_path: Path) -> None:
    """Overture's files (written by Spark) declare no geometry types ([]: any): read near the area
    all the same; where nothing near is a polygon, the whole read says what the file holds."""
    import pyarrow.parquet as pq

    def undeclared(gdf: gpd.GeoDataFrame, path: Path) -> Path:
        gdf.to_parquet(path, write_covering_bbox=True, row_group_size=20)
        table = pq.read_table(path)
        geo = json.loads(table.schema.metadata[b"geo"])
        geo["columns"]["geometry"]["geometry_types"] = []
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"geo": json.dumps(geo).encode()}),
                       path, row_group_size=20)
        return path

    whole = country(tmp_path / "c.gpkg")
    path = undeclared(whole, tmp_path / "any.parquet")
    got = read_near(path, "label", None, [(CRS, AREA)], "class")
    assert got is not None and len(got[0]) == len(expected(whole))
    assert read_labels(path, near=[(CRS, AREA)])["label_id"].tolist() == expected(whole).tolist()
    points = undeclared(whole.set_geometry(whole.centroid), tmp_path / "points.parquet")
    assert read_near(points, "label", None, [(CRS, AREA)], "class") is None
    with pytest.raises(InputVectorError, match="no polygon"):
        read_labels(points, near=[(CRS, AREA)])


def test_the_area_in_another_crs_and_a_far_only_class(tmp_path: Path) -> None:
    path = tmp_path / "country.gpkg"
    classes = ["building"] * 300
    classes[100] = "silo"  # i = 100 is far away: its class still counts
    whole = country(path, classes=classes)
    area = gpd.GeoSeries([AREA], crs=CRS).to_crs("EPSG:4326").iloc[0]
    labels = read_labels(path, near=[("EPSG:4326", area)])
    assert sorted(labels["label_id"]) == expected(whole).tolist()
    assert labels.attrs["classes"] == ["building", "silo"]
    assert set(labels["class"]) == {"building"}


def test_a_far_feature_without_class_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "country.gpkg"
    classes: list[str | None] = ["building"] * 300
    classes[100] = None  # row 100, far from the area
    country(path, classes=classes)
    with pytest.raises(InputVectorError, match=r"1 of 300 features have no value in 'class'.*features 101\)"):
        read_labels(path, near=[(CRS, AREA)])


def test_a_subset_counts_the_features_it_keeps(tmp_path: Path) -> None:
    path = tmp_path / "country.gpkg"
    classes = ["house" if i % 2 else "shed" for i in range(300)]
    country(path, classes=classes)
    source = f"{path}|subset=\"class\" = 'house'"
    whole = read_labels(source)  # the whole read: rows among the selected features
    want = whole.iloc[np.flatnonzero(near_mask(whole.geometry.to_numpy(), CRS, [(CRS, AREA)]))]
    labels = read_labels(source, near=[(CRS, AREA)])
    assert sorted(labels["label_id"]) == sorted(want["label_id"]) and len(want)
    assert labels.attrs["classes"] == ["house"]


def test_layers_that_may_hold_points_and_areas_nothing_meets_read_whole(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.geojson"
    gpd.GeoDataFrame({"class": ["building", "tree"]},
                     geometry=[shapely.box(500_010, 10, 500_016, 15), shapely.Point(510_000, 10_000)],
                     crs=CRS).to_file(mixed)
    assert read_near(mixed, "label", None, [(CRS, AREA)], "class") is None  # the point's class must not count
    assert read_labels(mixed, near=[(CRS, AREA)]).attrs["classes"] == ["building"]

    path = tmp_path / "country.gpkg"
    whole = country(path)
    elsewhere = [(CRS, shapely.box(0, 0, 10, 10))]
    assert read_near(path, "label", None, elsewhere, "class") is None  # nothing near: the caller's diagnosis
    assert len(read_labels(path, near=elsewhere)) == len(whole)


def test_evaluate_clip_reads_a_country_truth_near_the_scene_only(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from conftest import write_raster
    from rasterio.transform import from_origin

    from geoseg.aoi import areas_of, read_within
    from geoseg.cli.main import cli

    truth = tmp_path / "country.gpkg"
    whole = country(truth, delete=(5, 40))
    scene = write_raster(tmp_path / "scene.tif", np.full((1, 200, 200), 100, np.uint8), CRS,
                         from_origin(500_000, 100, 0.5, 0.5))
    near = whole.iloc[expected(whole)]
    pred = tmp_path / "pred.gpkg"
    near.iloc[:-3].to_file(pred)  # three buildings missed

    got_pred, got_truth = read_within(pred, truth, areas_of([scene], True, None))
    assert len(got_truth) == len(near) < len(whole) // 5  # the far truth was never read
    assert list(got_truth.index) == list(range(len(near)))  # as the whole read numbers them

    res = CliRunner().invoke(cli, ["evaluate", str(pred), str(truth), "--scenes", str(scene), "--clip",
                                   "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert (report["tp"], report["fp"], report["fn"]) == (len(near) - 3, 0, 3)


def test_scenes_far_apart_are_read_one_group_at_a_time_without_duplicates(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cities: one spatial filter per group of scenes (not their country-wide envelope), same labels."""
    import geoseg.io.vectors as vectors

    path = tmp_path / "country.gpkg"
    country(path)
    other = shapely.box(520_000, 20_000, 522_000, 22_000)  # a second scene among the far buildings
    road = shapely.Polygon([(500_050, 50), (521_000, 21_000), (521_001, 21_000), (500_051, 50)])  # meets both
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[road], crs=CRS).to_file(path, mode="a")
    whole = gpd.read_file(path)
    areas = [(CRS, AREA), (CRS, other)]
    masks: list[shapely.Geometry] = []
    real = vectors.read_vector

    def spy(*args, **kw):
        if kw.get("mask") is not None:
            masks.append(kw["mask"])
        return real(*args, **kw)

    monkeypatch.setattr(vectors, "read_vector", spy)
    labels = read_labels(path, near=areas)
    assert len(masks) == 2 and all(shapely.area(m) < 10 * shapely.area(other) for m in masks)
    rows = np.flatnonzero(near_mask(whole.geometry.to_numpy(), CRS, areas))
    assert labels["label_id"].tolist() == rows.tolist()  # file order, the road once
    assert len(whole) - 1 in rows and labels.attrs["far"] == len(whole) - len(rows)


def test_evaluate_clip_over_scenes_far_apart_reads_near_each(tmp_path: Path) -> None:
    """The scenes' footprint is one MultiPolygon; its box would span the country between the two scenes."""
    from conftest import write_raster
    from rasterio.transform import from_origin

    from geoseg.aoi import areas_of, read_within

    truth = tmp_path / "country.gpkg"
    whole = country(truth)
    scenes = [write_raster(tmp_path / f"s{k}.tif", np.full((1, 200, 200), 100, np.uint8), CRS,
                           from_origin(x, y, 0.5, 0.5)) for k, (x, y) in enumerate([(500_000, 100), (525_000, 25_000)])]
    _, got = read_within(truth, truth, areas_of(scenes, True, None))
    boxes = [shapely.box(500_000, 0, 500_100, 100), shapely.box(525_000, 24_900, 525_100, 25_000)]
    rows = np.flatnonzero(near_mask(whole.geometry.to_numpy(), CRS, [(CRS, b) for b in boxes]))
    assert len(got) == len(rows) < len(whole) // 5  # not the ~half of the country between them


def test_a_scene_across_the_antimeridian_keeps_its_labels_on_both_sides(tmp_path: Path) -> None:
    # Taveuni (Fiji), which the 180th meridian crosses: a scene in UTM 60S, a country's labels in
    # degrees, 10 on the scene (5 each side of 180°) and 20 elsewhere on the island group's latitudes.
    # The scene's bounds in degrees come west > east; one box from west to east spanned the
    # globe but the scene, so only the far labels were read (and a few of the scene's, by chance).
    utm = "EPSG:32760"
    x0, y0 = 819_661.0, 8_140_276.0
    on = [shapely.box(x0 + 20 + i * 22, y0 - 108 - (i % 3) * 30, x0 + 28 + i * 22, y0 - 100 - (i % 3) * 30)
          for i in range(10)]
    mine = gpd.GeoSeries(on, crs=utm).to_crs(4326)
    lon = shapely.get_coordinates(mine.to_numpy())[:, 0].reshape(10, -1)
    assert (lon.min(axis=1) > 179.99).sum() == 5 and (lon.max(axis=1) < -179.99).sum() == 5
    far = [shapely.box(179.3 + i * 1e-3, -16.8, 179.30005 + i * 1e-3, -16.79995) for i in range(20)]
    path = tmp_path / "fiji.gpkg"
    gpd.GeoDataFrame({"class": ["building"] * 30}, geometry=[*mine, *far], crs=4326).to_file(path)
    scene = [(utm, shapely.box(x0, y0 - 256, x0 + 256, y0))]
    whole = gpd.read_file(path)
    assert near_mask(whole.geometry.to_numpy(), whole.crs, scene).tolist() == [True] * 10 + [False] * 20
    labels = read_labels(path, near=scene)
    kept = shapely.STRtree(labels.to_crs(utm).geometry.to_numpy())
    assert all(len(kept.query(g, predicate="intersects")) for g in on)  # every label of the scene


def test_a_roof_split_at_the_antimeridian_is_one_training_instance(tmp_path: Path) -> None:
    # A country's footprints as RFC 7946 GeoJSON (GDAL's writer) split a roof on the 180th meridian
    # into a MultiPolygon of two halves; tile exploded it into two instances, cut along the meridian.
    from click.testing import CliRunner
    from conftest import write_raster
    from pyproj import Transformer
    from rasterio.transform import from_origin

    from geoseg.cli.main import cli

    utm = "EPSG:32760"
    x180, y = Transformer.from_crs(4326, utm, always_xy=True).transform(180.0, -16.8)
    x0, y0 = round(x180) - 64.0, round(y) + 64.0
    img = np.full((3, 128, 128), 40, np.uint8)
    img[:, 54:74, 54:74] = 220
    scene = write_raster(tmp_path / "taveuni.tif", img, utm, from_origin(x0, y0, 1.0, 1.0))
    roof = shapely.box(x0 + 54, y0 - 74, x0 + 74, y0 - 54)  # 20 m x 20 m across 180°
    side = shapely.box(x0 + 10, y0 - 20, x0 + 20, y0 - 10)  # all west of 180° (in UTM 60S: lower x)
    gpd.GeoDataFrame({"class": ["building"] * 2}, geometry=[roof, side], crs=utm).to_file(
        tmp_path / "fiji.geojson", driver="GeoJSON", RFC7946="YES")
    written = gpd.read_file(tmp_path / "fiji.geojson")
    assert written.geometry.iloc[0].geom_type == "MultiPolygon"  # the split, as users receive it
    res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(tmp_path / "fiji.geojson"), "--out",
                                   str(tmp_path / "p"), "--size", "128", "--overlap", "0", "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "p" / "annotations.json").read_text())
    areas = sorted(a["area"] for a in coco["annotations"])
    assert len(areas) == 2 and areas[1] == pytest.approx(400, abs=20), areas
