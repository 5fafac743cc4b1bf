"""Remote and catalogued scenes (issue #15): URLs, COGs read by range requests, STAC.

Every file is served by :class:`rangeserver.RangeServer` on 127.0.0.1, which honours
Range requests and counts the bytes it sends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for, write_raster
from rangeserver import RangeServer
from rasterio.shutil import copy as rio_copy
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.errors import ConfigError, InputRasterError
from geoseg.io.rasters import inspect_scene
from geoseg.io.sources import gdal_path, list_scenes, remote_stamp, scene_name
from geoseg.io.stac import search_scenes, stac_scenes
from geoseg.io.stamps import input_stamp
from geoseg.predict import PredictConfig, predict
from geoseg.tile import TileConfig, tile

SPARSE = 1024  # side of the sparse scene
VALID = 160  # its valid corner (an internal mask hides the rest)


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    with RangeServer(root) as srv:
        yield srv


def _item(item_id: str, href: str, key: str = "visual", extra: dict | None = None) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "properties": {"datetime": "2024-01-01T00:00:00Z"},
            "geometry": {"type": "Point", "coordinates": [33.0, 0.4]}, "bbox": [33.0, 0.4, 33.0, 0.4], "links": [],
            "assets": {key: {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                             "roles": ["data"]}, **(extra or {})}}


def test_urls_are_kept_whole_and_named_by_their_stem(served) -> None:
    url = served.url("a/kampala_b.tif?sig=x")
    assert scene_name(url) == "kampala_b"
    assert gdal_path("https://h.org/x.tif") == "/vsicurl/https://h.org/x.tif"
    assert gdal_path("s3://bucket/k/x.tif") == "/vsis3/bucket/k/x.tif"
    (src,) = list_scenes([url])
    assert src.source == url and src.name == "kampala_b"  # http:// keeps both slashes


def test_tile_from_a_url_equals_tiling_the_file(served, tmp_path: Path) -> None:
    boxes = grid_boxes((64, 96))
    scene = bright_boxes_scene(served.root / "scene.tif", (64, 96), boxes)
    labels = labels_for(scene, tmp_path / "l.gpkg", boxes)
    cfg = TileConfig(size=32, overlap=0, val_fraction=0.0)
    local = tile([scene], labels, tmp_path / "local", cfg, scheduler="sync")
    res = CliRunner().invoke(cli, ["tile", served.url("scene.tif"), "--labels", str(labels), "--out",
                                   str(tmp_path / "remote"), "--size", "32", "--overlap", "0",
                                   "--val-fraction", "0", "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "local" / "annotations.json").read_text())
    b = json.loads((tmp_path / "remote" / "annotations.json").read_text())
    assert [im["file_name"] for im in a["images"]] == [im["file_name"] for im in b["images"]]
    assert {im["scene"] for im in b["images"]} == {"scene"}
    assert len(a["annotations"]) == len(b["annotations"]) == local.instances > 0
    for im in a["images"]:
        with rasterio.open(tmp_path / "local" / "images" / im["file_name"]) as x, \
                rasterio.open(tmp_path / "remote" / "images" / im["file_name"]) as y:
            assert np.array_equal(x.read(), y.read()) and x.transform == y.transform
    manifest = json.loads((tmp_path / "remote" / "tile.json").read_text())
    assert manifest["params"]["scenes"][0]["etag"]  # the remote file's identity, not a local mtime


def _sparse_cog(root: Path) -> Path:
    """A COG whose data is a 160 px corner of a 1024 px scene (an internal mask hides the rest)."""
    boxes = [b for b in grid_boxes((VALID, VALID), step=20, seed=3)]
    tmp = bright_boxes_scene(root / "sparse_src.tif", (SPARSE, SPARSE), boxes, seed=4)
    with rasterio.open(tmp) as src:
        data = src.read()
    data[:, VALID:, :] = np.random.default_rng(5).integers(0, 255, data[:, VALID:, :].shape)  # noise: big file
    data[:, :, VALID:] = np.random.default_rng(6).integers(0, 255, data[:, :, VALID:].shape)
    mask = np.zeros((SPARSE, SPARSE), np.uint8)
    mask[:VALID, :VALID] = 255
    write_raster(tmp, data, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5), mask=mask)
    out = root / "sparse.tif"
    rio_copy(tmp, out, driver="COG", blocksize=128, compress="NONE", overview_resampling="average")
    tmp.unlink()
    return out


def test_predict_from_a_url_reads_a_fraction_of_the_file(served, tiny_run: Path, tmp_path: Path) -> None:
    cog = _sparse_cog(served.root)
    cfg = PredictConfig(block=512, watershed_halo=16, simplify=0.0, min_area=1.0, budget=1.0)
    local = predict([cog], tiny_run, tmp_path / "local.gpkg", cfg)
    served.sent.clear()
    remote = predict([served.url("sparse.tif")], tiny_run, tmp_path / "remote.gpkg", cfg)
    a, b = gpd.read_file(tmp_path / "local.gpkg"), gpd.read_file(tmp_path / "remote.gpkg")
    assert len(a) == len(b) == local.polygons == remote.polygons > 5
    assert (b["scene"] == "sparse").all()
    assert a.geometry.normalize().equals(b.geometry.normalize())
    size = cog.stat().st_size
    # PV reads the 2x overview (a quarter of the pixels), FF only the valid corner, the
    # instances the 1-bit mask: far less than the file
    assert served.sent["sparse.tif"] < 0.4 * size, (served.sent, size)


def test_a_stac_item_file_and_item_collection_url_as_scenes(served, tmp_path: Path) -> None:
    bright_boxes_scene(served.root / "visual.tif", (40, 40), [(5, 5, 15, 15)])
    os.makedirs(served.root / "b")
    bright_boxes_scene(served.root / "b" / "visual.tif", (40, 48), [(5, 5, 15, 15)], seed=2)
    # an item file next to its asset (relative href), with another asset that is not chosen
    item = _item("scene-a", "./visual.tif", extra={"thumbnail": {"href": "thumb.png", "type": "image/png"}})
    (served.root / "item.json").write_text(json.dumps(item))
    (src,) = stac_scenes(str(served.root / "item.json"))
    assert src.name == "scene-a" and src.source == str(served.root / "visual.tif")
    # an ItemCollection behind a URL, hrefs relative to it; two assets named "visual.tif"
    coll = {"type": "FeatureCollection", "features": [_item("a", "visual.tif", key="data"),
                                                      _item("b", "b/visual.tif", key="data")]}
    (served.root / "items.json").write_text(json.dumps(coll))
    scenes = list_scenes([served.url("items.json")], asset="data")
    assert [(s.name, s.source) for s in scenes] == [("a", served.url("visual.tif")), ("b", served.url("b/visual.tif"))]
    infos = [inspect_scene(s) for s in scenes]
    assert [(i.name, i.width) for i in infos] == [("a", 40), ("b", 48)]
    res = CliRunner().invoke(cli, ["tile", served.url("items.json"), "--asset", "data", "--out",
                                   str(tmp_path / "p"), "--size", "16", "--overlap", "0", "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    names = {im["scene"] for im in json.loads((tmp_path / "p" / "annotations.json").read_text())["images"]}
    assert names == {"a", "b"}
    # a JSON list of items
    (served.root / "list.json").write_text(json.dumps(coll["features"]))
    assert [s.name for s in stac_scenes(served.url("list.json"), "data")] == ["a", "b"]
    # a missing asset: one line naming the assets there are
    with pytest.raises(ConfigError, match="--asset nir: item scene-a .* has no such asset; choose one of visual, "
                       "thumbnail"):
        stac_scenes(str(served.root / "item.json"), "nir")


def test_a_stac_api_search(served, tmp_path: Path) -> None:
    pytest.importorskip("pystac_client")
    bright_boxes_scene(served.root / "found.tif", (40, 40), [(5, 5, 15, 15)])
    base = served.base
    landing = {"type": "Catalog", "id": "api", "stac_version": "1.0.0", "description": "test API",
               "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                              "https://api.stacspec.org/v1.0.0/item-search"],
               "links": [{"rel": "self", "href": f"{base}/api.json"}, {"rel": "root", "href": f"{base}/api.json"},
                         {"rel": "search", "href": f"{base}/api/search", "type": "application/geo+json",
                          "method": "POST"}]}
    (served.root / "api").mkdir()
    (served.root / "api.json").write_text(json.dumps(landing))
    found = {"type": "FeatureCollection", "features": [_item("s2-1", f"{base}/found.tif")], "links": []}
    (served.root / "api" / "search").write_text(json.dumps(found))
    (src,) = search_scenes(f"{base}/api.json", bbox=(32.5, 0.3, 32.6, 0.4), datetime="2024-01-01/2024-02-01")
    assert src.name == "s2-1" and src.source == f"{base}/found.tif"
    body = json.loads(served.posted[-1])
    assert body["bbox"] == [32.5, 0.3, 32.6, 0.4] and body["datetime"].startswith("2024-01-01")
    res = CliRunner().invoke(cli, ["tile", "--stac-search", f"{base}/api.json", "--bbox", "179.8,-17,-179.8,-16.6",
                                   "--out", str(tmp_path / "p")])  # across the antimeridian, as STAC reads it
    assert json.loads(served.posted[-1])["bbox"] == [179.8, -17, -179.8, -16.6], res.output
    with pytest.raises(InputRasterError, match=f"STAC search at {base}/nope failed"):
        search_scenes(f"{base}/nope")


@pytest.mark.parametrize("what", ["missing", "unreachable"])
def test_a_bad_url_is_one_line_naming_it(served, tmp_path: Path, what: str) -> None:
    url = served.url("nope.tif") if what == "missing" else "http://127.0.0.1:9/scene.tif"
    res = CliRunner().invoke(cli, ["tile", url, "--out", str(tmp_path / "p")])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and url in lines[0], res.output
    assert ("HTTP 404" if what == "missing" else "cannot reach") in lines[0]
    assert "check the URL" in lines[0]
    assert not (tmp_path / "p").exists()


def test_the_stamp_of_a_url_changes_with_the_file(served) -> None:
    path = bright_boxes_scene(served.root / "s.tif", (40, 40), [(5, 5, 15, 15)])
    url = served.url("s.tif")
    first = input_stamp(url)
    assert first == remote_stamp(url) and first["bytes"] == path.stat().st_size and first["etag"]
    bright_boxes_scene(path, (40, 40), [(5, 5, 25, 25)], seed=9)
    os.utime(path, ns=(first["mtime_ns"] + 2_000_000_000,) * 2)
    assert input_stamp(url)["etag"] != first["etag"]  # a predict/tile cache of the old file is not reused


def test_a_pipeline_with_a_url_scene_skips_when_unchanged_and_reruns_when_replaced(served, tmp_path: Path) -> None:
    import yaml

    from geoseg.pipeline.run import run_pipeline

    boxes = grid_boxes((48, 48))
    path = bright_boxes_scene(served.root / "remote_scene.tif", (48, 48), boxes)
    labels_for(path, tmp_path / "l.gpkg", boxes)
    spec = {"tile": {"scenes": [served.url("remote_scene.tif")], "labels": "l.gpkg", "out": "patches",
                     "params": {"size": 16, "overlap": 0, "val_fraction": 0.0}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    (first,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert first.ran
    names = {im["scene"] for im in json.loads((tmp_path / "patches" / "annotations.json").read_text())["images"]}
    assert names == {"remote_scene"}
    (again,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert not again.ran, again.why
    st = path.stat()
    bright_boxes_scene(path, (48, 48), boxes, seed=3)  # another file at the same URL
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    (third,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert third.ran


def test_evaluate_clips_to_the_footprint_of_a_url_scene(served, tmp_path: Path) -> None:
    boxes = [(4, 4, 12, 12), (20, 20, 30, 30)]
    path = bright_boxes_scene(served.root / "ev.tif", (40, 40), boxes)
    truth = labels_for(path, tmp_path / "t.gpkg", boxes, crs="EPSG:32636")
    res = CliRunner().invoke(cli, ["evaluate", str(truth), str(truth), "--scenes", served.url("ev.tif"), "--clip",
                                   "--quicklook", str(tmp_path / "q.png")])
    assert res.exit_code == 0, res.output
    assert "inside the scenes" in res.output or "footprint" in res.output, res.output
    assert (tmp_path / "q.png").stat().st_size > 0


def test_tile_from_a_url_in_worker_processes(served, tmp_path: Path) -> None:
    """Dask tasks in other processes open the URL with the remote settings too."""
    boxes = grid_boxes((32, 64))
    bright_boxes_scene(served.root / "mp.tif", (32, 64), boxes)
    summary = tile([served.url("mp.tif")], None, tmp_path / "p", TileConfig(size=16, overlap=0, val_fraction=0.0),
                   scheduler="processes")
    assert summary.chips_written == 8


def test_an_unreachable_stac_api_is_one_line(tmp_path: Path) -> None:
    """urllib3 logged each of its five retries as a warning, and the error line cut the
    socket's reason off mid-parenthesis ('[Errno 111; check the API URL')."""
    import socket

    pytest.importorskip("pystac_client")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = CliRunner().invoke(cli, ["tile", "--stac-search", f"http://127.0.0.1:{port}/", "--bbox", "1,2,3,4",
                                   "--out", str(tmp_path / "p")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "cannot connect (Connection refused)" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert not (tmp_path / "p").exists()


def test_cli_scene_options_usage_errors(served, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["tile", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "give SCENES" in res.output
    res = runner.invoke(cli, ["tile", "x.tif", "--bbox", "1,2,3,4", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "need --stac-search" in res.output
    res = runner.invoke(cli, ["tile", "--stac-search", served.url("api.json"), "--bbox", "3,2,1", "--out",
                              str(tmp_path / "p")])
    assert res.exit_code == 2 and "west,south,east,north" in res.output
    for bad in ("32.6,0.3,32.5,0.4", "32.5,0.3,32.6,91"):  # swapped longitudes; a latitude off the Earth
        res = runner.invoke(cli, ["tile", "--stac-search", served.url("api.json"), "--bbox", bad, "--out",
                                  str(tmp_path / "p")])
        assert res.exit_code == 2 and ("west > east" in res.output or "west,south" in res.output), res.output
    bright_boxes_scene(served.root / "v.tif", (40, 40), [(5, 5, 15, 15)])
    (served.root / "item.json").write_text(json.dumps(_item("it", "v.tif")))
    res = runner.invoke(cli, ["tile", served.url("item.json"), "--asset", "nir", "--out", str(tmp_path / "p")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "choose one of visual" in lines[0], res.output


def test_a_pipeline_takes_stac_items_by_asset_and_a_stac_search(served, tmp_path: Path) -> None:
    """``asset`` and ``stac_search`` keys of a pipeline's tile/predict sections, as the CLI options."""
    import yaml

    from geoseg.pipeline.model import load_pipeline
    from geoseg.pipeline.run import run_pipeline

    pytest.importorskip("pystac_client")
    boxes = grid_boxes((32, 32))
    bright_boxes_scene(served.root / "a.tif", (32, 32), boxes)
    bright_boxes_scene(served.root / "found.tif", (32, 32), boxes, seed=4)
    coll = {"type": "FeatureCollection", "features": [_item("item-a", "a.tif", key="data")]}
    (served.root / "items.json").write_text(json.dumps(coll))
    base = served.base
    landing = {"type": "Catalog", "id": "api", "stac_version": "1.0.0", "description": "test API",
               "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
               "links": [{"rel": "self", "href": f"{base}/api.json"}, {"rel": "root", "href": f"{base}/api.json"},
                         {"rel": "search", "href": f"{base}/api/search", "type": "application/geo+json",
                          "method": "POST"}]}
    (served.root / "api").mkdir()
    (served.root / "api.json").write_text(json.dumps(landing))
    found = {"type": "FeatureCollection", "features": [_item("item-s", f"{base}/found.tif", key="data")], "links": []}
    (served.root / "api" / "search").write_text(json.dumps(found))
    spec = {"tile": {"scenes": [served.url("items.json")], "asset": "data",
                     "stac_search": {"url": f"{base}/api.json", "bbox": [32.5, 0.3, 33.5, 0.5],
                                     "collections": "imagery"},
                     "out": "patches", "params": {"size": 16, "overlap": 0, "val_fraction": 0.0}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    (first,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert first.ran
    names = {im["scene"] for im in json.loads((tmp_path / "patches" / "annotations.json").read_text())["images"]}
    assert names == {"item-a", "item-s"}  # items named by their ids, the search's as well
    body = json.loads(served.posted[-1])
    assert body["bbox"] == [32.5, 0.3, 33.5, 0.5] and body["collections"] == ["imagery"]
    (again,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert not again.ran, again.why
    # another item found by the search is another input: the stage runs again
    found["features"].append(_item("item-t", f"{base}/a.tif", key="data"))
    (served.root / "api" / "search").write_text(json.dumps(found))
    (third,) = run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    assert third.ran
    # an asset the items lack, or neither scenes nor a search: one line naming the key
    spec["tile"]["asset"] = "nir"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="nir"):
        load_pipeline(tmp_path / "p.yaml")
    del spec["tile"]["scenes"], spec["tile"]["stac_search"], spec["tile"]["asset"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="'scenes' .* or 'stac_search'"):
        load_pipeline(tmp_path / "p.yaml")
    spec["tile"]["stac_search"] = {"url": f"{base}/api.json", "bbox": [33, 0, 32, 1]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="west < east"):
        load_pipeline(tmp_path / "p.yaml")


def test_a_file_replaced_at_its_url_is_read_anew_in_the_same_process(served, tmp_path: Path) -> None:
    """A long-lived process (a Dask worker, a notebook) that read a URL reads the new file after it is replaced.

    GDAL keeps downloaded ranges per URL for the life of the process: without dropping them the
    second run tiles the old pixels under the new file's stamp, and exits 0.
    """
    from geoseg.io.rasters import open_scene

    first, second = [(4, 4, 20, 20)], [(30, 30, 60, 50), (2, 40, 20, 60)]
    path = bright_boxes_scene(served.root / "moving.tif", (64, 64), first, seed=1)
    url = served.url("moving.tif")
    with open_scene(inspect_scene(url)) as src:
        old = src.read()
    st = path.stat()
    bright_boxes_scene(path, (64, 64), second, seed=2)  # same size on disk, other pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert path.stat().st_size == st.st_size
    with rasterio.open(path) as src:
        new = src.read()
    assert not np.array_equal(old, new)
    info = inspect_scene(url)
    with open_scene(info) as src:
        assert np.array_equal(src.read(), new)
    # and a whole run in this process: the chips are the new file's
    cfg = TileConfig(size=32, overlap=0, val_fraction=0.0)
    tile([url], None, tmp_path / "remote", cfg, scheduler="threads")
    tile([path], None, tmp_path / "local", cfg, scheduler="sync")
    for chip in sorted((tmp_path / "local" / "images").iterdir()):
        with rasterio.open(chip) as x, rasterio.open(tmp_path / "remote" / "images" / chip.name) as y:
            assert np.array_equal(x.read(), y.read())


def test_search_from_a_url_equals_searching_the_file(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`geoseg search` over a URL: the examples' crops and the blocks read by range requests."""
    from test_search import BrightBlobs, _examples, _scene

    from geoseg.search import SearchConfig, search

    monkeypatch.setattr("geoseg.search.stage.get_search_backend", lambda *a, **k: BrightBlobs())
    scene = _scene(served.root / "s.tif", [(100, 118, 20), (30, 30, 20), (140, 126, 20)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500015, 99975, 500025, 99985)], "EPSG:4326")
    cfg = SearchConfig(block=128, halo=32, min_score=0.5)
    local = search([scene], ex, "model", tmp_path / "local.gpkg", cfg, scheduler="sync")
    remote = search([served.url("s.tif")], ex, "model", tmp_path / "remote.gpkg", cfg, scheduler="threads")
    a, b = gpd.read_file(tmp_path / "local.gpkg"), gpd.read_file(tmp_path / "remote.gpkg")
    assert local.boxes == remote.boxes == len(a) == len(b) == 3
    assert sorted(g.wkt for g in a.geometry) == sorted(g.wkt for g in b.geometry)
    assert (b["scene"] == "s").all() and served.sent["s.tif"] > 0  # read from the server
