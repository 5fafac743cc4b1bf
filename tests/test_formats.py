"""Vector outputs by extension: layer named after the file, CRS kept, atomic, one-line errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import shapely

from geoseg.errors import GeoSegError
from geoseg.io.formats import DRIVERS, VectorFormatError, VectorSink, vector_driver, write_vector

UTM = "EPSG:32636"


@pytest.fixture
def frame() -> gpd.GeoDataFrame:
    boxes = [shapely.box(450000 + 20 * i, 35000, 450010 + 20 * i, 35012) for i in range(3)]
    return gpd.GeoDataFrame({"class": ["building"] * 3, "score": [0.9, 0.8, 0.7],
                             "area_m2": [120.0] * 3, "scene": ["blockB"] * 3}, geometry=boxes, crs=UTM)


def read_back(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".fgb", ".shp", ".parquet"])
def test_every_format_round_trips_with_the_stem_as_layer(frame: gpd.GeoDataFrame, tmp_path: Path,
                                                         ext: str) -> None:
    out = write_vector(frame, tmp_path / f"kampala-buildings{ext}")
    back = read_back(out)
    assert list(back.columns) == ["class", "score", "area_m2", "scene", "geometry"]
    assert len(back) == 3 and back.is_valid.all()
    assert back.crs.to_epsg() == (4326 if ext == ".geojson" else 32636)  # RFC 7946 for GeoJSON
    back = back.sort_values("score", ascending=False)  # FlatGeobuf stores in spatial-index order
    assert back.to_crs(UTM).geometry.iloc[0].hausdorff_distance(frame.geometry.iloc[0]) < 0.05
    if ext != ".parquet":
        assert pyogrio.read_info(out)["layer_name"] == "kampala-buildings"
    if ext == ".geojson":
        assert json.loads(out.read_text())["name"] == "kampala-buildings"
    # nothing but the output (and a Shapefile's sidecars) is left beside it
    names = sorted(p.name for p in tmp_path.iterdir())
    expect = ({f"kampala-buildings{e}" for e in (".shp", ".shx", ".dbf", ".prj", ".cpg")}
              if ext == ".shp" else {out.name})
    assert set(names) == expect


def test_replacing_keeps_old_file_until_success(frame: gpd.GeoDataFrame, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = write_vector(frame, tmp_path / "b.shp")
    (tmp_path / "b.qix").write_bytes(b"stale spatial index")
    write_vector(frame.iloc[:1], out)
    assert len(gpd.read_file(out)) == 1 and not (tmp_path / "b.qix").exists()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("driver failed half-way")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", boom)
    with pytest.raises(RuntimeError, match="half-way"):
        write_vector(frame, out)
    assert len(gpd.read_file(out)) == 1  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.cpg", "b.dbf", "b.prj", "b.shp", "b.shx"]


def test_unknown_extension_is_one_line_listing_the_supported(frame: gpd.GeoDataFrame, tmp_path: Path) -> None:
    with pytest.raises(VectorFormatError) as err:
        write_vector(frame, tmp_path / "b.kml")
    msg = str(err.value)
    assert isinstance(err.value, GeoSegError) and "\n" not in msg and "b.kml" in msg
    assert all(ext in msg for ext in DRIVERS)
    assert vector_driver("B.FGB") == "FlatGeobuf"
    with pytest.raises(VectorFormatError, match="no CRS"):
        write_vector(frame.set_crs(None, allow_override=True), tmp_path / "b.gpkg")
    assert list(tmp_path.iterdir()) == []


def test_geoparquet_reads_back_as_an_input(frame: gpd.GeoDataFrame, tmp_path: Path) -> None:
    """`geoseg evaluate b.parquet truth.gpkg` reads what predict wrote."""
    from geoseg.io.vectors import read_vector

    back = read_vector(write_vector(frame, tmp_path / "b.parquet"), "prediction")
    assert back.crs == UTM and len(back) == 3


def test_geojson_splits_a_roof_on_the_antimeridian(tmp_path: Path) -> None:
    """A roof across 180° (UTM 60N, Fiji/Kiribati): two parts at ±180, never a polygon round the globe."""
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 32660, always_xy=True).transform(180.0, -16.5)
    roof = shapely.box(x - 8, y - 6, x + 8, y + 6)
    frame = gpd.GeoDataFrame({"class": ["building"]}, geometry=[roof], crs="EPSG:32660")
    back = gpd.read_file(write_vector(frame, tmp_path / "fiji.geojson"))
    geom = back.geometry.iloc[0]
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert all(p.bounds[2] - p.bounds[0] < 1e-3 for p in geom.geoms)  # each part a few metres wide
    assert sorted(round(p.centroid.x) for p in geom.geoms) == [-180, 180]
    # back in UTM the two parts are the roof again
    assert back.to_crs("EPSG:32660").area.iloc[0] == pytest.approx(roof.area, rel=1e-3)
    # and evaluate scores the two parts as the one roof (repaired into one polygon), not as two objects
    from geoseg.evaluate import evaluate_frames

    r = evaluate_frames(back.assign(score=0.9), frame)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0) and r["mean_iou"] > 0.99
    # predict's streamed output (staged in a GeoPackage, then copied into GeoJSON) cuts it the same way
    with VectorSink(tmp_path / "streamed.geojson", frame.iloc[:0]) as sink:
        sink.append(frame)
        sink.commit()
    streamed = gpd.read_file(tmp_path / "streamed.geojson").geometry.iloc[0]
    assert streamed.geom_type == "MultiPolygon" and streamed.normalize().equals_exact(geom.normalize(), 1e-9)
    # any format in degrees (predict --crs EPSG:4326, a scene in EPSG:4326 first): cut the same way; before,
    # a GeoPackage held the polygon round the globe, from -179.9999 to 179.9999, exit 0
    degrees = frame.to_crs(4326)
    assert degrees.total_bounds[2] - degrees.total_bounds[0] > 359  # what to_crs gives
    for ext in (".gpkg", ".fgb", ".parquet"):
        whole = read_back(write_vector(degrees, tmp_path / f"whole{ext}")).geometry.iloc[0]
        with VectorSink(tmp_path / f"sink{ext}", degrees.iloc[:0]) as sink:
            sink.append(degrees)
            sink.commit()
        for got in (whole, read_back(tmp_path / f"sink{ext}").geometry.iloc[0]):
            assert got.geom_type == "MultiPolygon" and got.normalize().equals_exact(geom.normalize(), 1e-6), ext


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".fgb", ".shp", ".parquet"])
def test_a_sink_written_chunk_by_chunk_equals_the_whole_written_at_once(
        frame: gpd.GeoDataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str) -> None:
    """predict streams its polygons block by block: the file is the one write_vector makes of them all."""
    import geoseg.io.formats as formats

    monkeypatch.setattr(formats, "SINK_ROWS", 2)  # several appends (GeoParquet: row groups)
    many = gpd.GeoDataFrame(pd.concat([frame.assign(score=frame["score"] - k / 10,
                                                    geometry=frame.geometry.translate(yoff=30.0 * k))
                                       for k in range(3)], ignore_index=True), crs=UTM)
    whole = read_back(write_vector(many, tmp_path / "whole" / f"b{ext}"))
    out = tmp_path / "sink" / f"b{ext}"
    with VectorSink(out, many.iloc[:0]) as sink:
        for chunk in (many.iloc[:4], many.iloc[:0], many.iloc[4:5], many.iloc[5:]):
            sink.append(chunk)
        assert not out.exists()  # nothing in place before the commit
        sink.commit()
    assert sink.count == 9  # and the same files: the Shapefile's sidecars, no staging left
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    back = read_back(out)
    assert back.crs == whole.crs and list(back.columns) == list(whole.columns) and len(back) == 9
    key = ["score", "area_m2"]
    a, b = back.sort_values(key).reset_index(drop=True), whole.sort_values(key).reset_index(drop=True)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=1e-9).all()
    if ext == ".gpkg":  # QGIS's "zoom to layer" reads the extent of gpkg_contents: of every chunk
        import sqlite3

        with contextlib.closing(sqlite3.connect(out)) as db:
            extent = db.execute("SELECT min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name = 'b'")
            assert list(extent.fetchone()) == pytest.approx(list(many.total_bounds))
    if ext != ".parquet":
        assert pyogrio.read_info(out)["layer_name"] == "b"
    else:
        import pyarrow.parquet as pq

        geo = json.loads(pq.read_schema(out).metadata[b"geo"])["columns"]["geometry"]
        assert geo["bbox"] == pytest.approx(list(many.total_bounds)) and geo["geometry_types"] == ["Polygon"]
        assert pq.ParquetFile(out).num_row_groups == 2  # 4 rows, then 1 + 4 buffered
        from geoseg.io.parquet import _groups_near, parquet_info

        info = parquet_info(out)  # a bbox covering (GeoParquet 1.1): evaluate --clip reads the groups near it
        assert info is not None and geo["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
        # the groups' bbox statistics: rows 0-3 lie at y 35000-35042, rows 4-8 at 35030-35072
        assert _groups_near(info, [shapely.box(*many.iloc[:3].total_bounds)]) == [0]
        assert _groups_near(info, [shapely.box(*many.iloc[6:].total_bounds)]) == [1]


@pytest.mark.parametrize("ext", [".gpkg", ".parquet"])
def test_a_sink_left_by_an_error_leaves_nothing_and_the_old_file_whole(frame: gpd.GeoDataFrame, tmp_path: Path,
                                                                        ext: str) -> None:
    out = write_vector(frame.iloc[:1], tmp_path / f"b{ext}")
    with pytest.raises(RuntimeError, match="killed"), VectorSink(out, frame.iloc[:0]) as sink:
        sink.append(frame)
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == [out.name] and len(read_back(out)) == 1
    with VectorSink(out, frame.iloc[:0]) as sink:  # no row: the empty layer, with its columns
        sink.commit()
    back = read_back(out)
    assert len(back) == 0 and list(back.columns) == list(frame.columns) and back.crs == frame.crs


def test_styles_saved_by_qgis_survive_a_rewrite_of_the_geopackage(frame: gpd.GeoDataFrame, tmp_path: Path) -> None:
    """Styled in QGIS and saved in the file (layer_styles), then rewritten: the style is carried over."""
    from geoseg.io.formats import check_replace

    out = write_vector(frame, tmp_path / "b.gpkg")
    style = pd.DataFrame({"f_table_name": ["b"], "styleName": ["b"], "styleQML": ["<qgis/>"],
                          "useAsDefault": [True]})
    pyogrio.write_dataframe(style, out, layer="layer_styles")
    check_replace(out, overwrite=True)  # not "other layers"
    write_vector(frame.iloc[:1], out)
    assert len(gpd.read_file(out, layer="b")) == 1
    assert pyogrio.read_dataframe(out, layer="layer_styles")["styleQML"].tolist() == ["<qgis/>"]
    with VectorSink(out, frame.iloc[:0]) as sink:
        sink.append(frame)
        sink.commit()
    assert len(gpd.read_file(out, layer="b")) == 3
    assert pyogrio.read_dataframe(out, layer="layer_styles")["styleQML"].tolist() == ["<qgis/>"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg"]
