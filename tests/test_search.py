"""Search by example: the reference detector's parts, and `geoseg search` over scenes."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from click.testing import CliRunner
from conftest import write_raster
from rasterio.transform import from_origin
from scipy import ndimage

from geoseg.bands import BandStats
from geoseg.cli.main import cli
from geoseg.errors import ConfigError
from geoseg.models.checkpoint import save_checkpoint
from geoseg.models.refdet import STRIDE, RefDet, RefDetConfig, decode, xcorr_depthwise
from geoseg.search import SearchConfig, search
from geoseg.search.backend import SearchMeta
from geoseg.search.boxes import average_precision, calibrate_similarity, detections, match
from geoseg.search.losses import SearchLossConfig, assign, search_loss

TINY = RefDetConfig(encoder="convnext_atto", encoder_dims=(16, 32, 64, 128), encoder_depths=(1, 1, 1, 1),
                    fpn_channels=16, template_size=32, heads=2)
STATS = BandStats(mean=(50.0,) * 3, std=(50.0,) * 3, classes=("roof", "tank"), dtype="uint8")


def test_xcorr_shapes_and_batched_kernel_equal_shared() -> None:
    s = torch.randn(3, 8, 20, 24)
    for k in (1, 3, 4, 5, 8):
        z = torch.randn(1, 8, k, k)
        out = xcorr_depthwise(s, z)
        assert out.shape == s.shape
        torch.testing.assert_close(out, xcorr_depthwise(s, z.expand(3, -1, -1, -1).contiguous()))


def test_xcorr_template_matches_exactly_one_location() -> None:
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(1, 6, 5, 5, generator=g)
    search = torch.zeros(1, 6, 30, 30)
    search[..., 11:16, 17:22] = pattern[0]  # centred on row 13, col 19
    score = xcorr_depthwise(search, pattern).sum(1)[0]
    assert divmod(int(score.argmax()), 30) == (13, 19)
    assert float((score == score.max()).sum()) == 1


def test_fusion_is_invariant_to_template_order() -> None:
    torch.manual_seed(0)
    net = RefDet(TINY).eval()
    t = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        a2, a3, ap = net.encode_templates(t)
        b2, b3, bp = net.encode_templates(t[:, [2, 0, 1]])
        c2, _, cp = net.encode_templates(t[:, [1, 1, 1]])
    torch.testing.assert_close(a2, b2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a3, b3, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ap, bp, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ap, cp, atol=1e-3)
    assert ap.shape == (2, TINY.embed)
    torch.testing.assert_close(ap.norm(dim=1), torch.ones(2))  # unit prototypes
    assert not torch.allclose(a2, c2, atol=1e-3)
    assert a2.shape == (2, 16, 3, 3) and a3.shape == (2, 16, 3, 3)  # the kernels: centres of P2, P3


def test_model_maps_at_stride_4() -> None:
    net = RefDet(TINY).eval()
    with torch.no_grad():
        obj, dist, sim = net(torch.randn(2, 3, 64, 96), torch.randn(2, 1, 3, 32, 32))
    assert obj.shape == (2, 1, 16, 24) and dist.shape == (2, 4, 16, 24) and sim.shape == obj.shape
    assert (dist > 0).all()
    assert float(sim.abs().max()) <= 1 + 1e-5 and float(sim.std()) > 0  # cosines, varying by cell


def test_assign_and_losses() -> None:
    boxes = torch.tensor([[10.0, 10.0, 34.0, 30.0]])
    pos, tgt = assign(boxes, 16, 16, 0.3)
    assert 4 <= int(pos.sum()) <= 16
    assert torch.equal(tgt[pos], boxes.expand(int(pos.sum()), -1))
    # a perfect prediction: positives certain, exact distances -> GIoU 0
    c = (torch.arange(16) + 0.5) * STRIDE
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    dist = torch.stack([gx - 10, gy - 10, 34 - gx, 30 - gy]).clamp(min=0.5)[None]
    obj = torch.where(pos.reshape(1, 1, 16, 16), 20.0, -20.0)
    perfect = search_loss(obj, dist, [boxes], SearchLossConfig())
    assert float(perfect["giou"]) < 1e-4 and float(perfect["focal"]) < 1e-4
    b, s, _ = detections(obj[0], dist[0], min_score=0.5)
    assert len(b) == 1 and torch.allclose(b[0], boxes[0], atol=1e-4)
    # the similarity gate drops the box whose cells are unlike the examples, and reports the kept ones'
    sim = torch.where(pos.reshape(1, 16, 16), 0.9, -0.2)
    assert len(detections(obj[0], dist[0], sim, min_score=0.5, min_similarity=0.95).boxes) == 0
    kept = detections(obj[0], dist[0], sim, min_score=0.5, min_similarity=0.5)
    assert len(kept.boxes) == 1 and kept.similarity.tolist() == pytest.approx([0.9])
    assert decode(dist[0]).shape == (256, 4)


def test_calibrated_similarity_threshold_maximises_f1() -> None:
    # five true positives at 0.8-0.9, three of the other kind at 0.3-0.5, one true positive at 0.4
    sims = np.array([0.9, 0.85, 0.5, 0.88, 0.4, 0.3, 0.82, 0.8, 0.45])
    hits = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0], bool)
    threshold, f1 = calibrate_similarity(sims, hits, n_truth=7)
    assert threshold == pytest.approx((0.8 + 0.5) / 2)  # halfway between the last kept and the next
    assert f1 == pytest.approx(2 * 5 / (5 + 7))
    # every detection right: no threshold; nothing to calibrate on: none either
    assert calibrate_similarity(np.array([0.2, 0.9]), np.array([True, True]), 3) == (None, pytest.approx(0.8))
    assert calibrate_similarity(np.zeros(0), np.zeros(0, bool), 3) == (None, 0.0)


def test_average_precision_and_match() -> None:
    truth = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    pred = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 30, 30]])
    hits = match(pred, truth)
    assert hits.tolist() == [True, False, True]
    ap = average_precision(np.array([0.9, 0.8, 0.7]), hits, 2)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.9, 0.8]), np.array([True, True]), 2) == 1.0


# ----------------------------------------------------------------------------- the scene pipeline
class BrightBlobs:
    """A stand-in backend: every bright blob of the window is one object (exact boxes).

    Its similarity is 0.9 on the brightest blobs (value 200, the examples' kind) and 0.2 on
    dimmer ones; its calibrated threshold is ``similarity``.
    """

    def __init__(self, similarity: float | None = 0.6) -> None:
        self.meta = SearchMeta(model=TINY, stats=STATS, classes=STATS.classes, context=1.5, source=Path("x"),
                               similarity=similarity)

    def fuse(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros((1, 16, 8, 8), np.float32), np.zeros((1, 16, 4, 4), np.float32), np.zeros((1, 8))

    def detect(self, images: np.ndarray, z2: np.ndarray, z3: np.ndarray, proto: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, _, h, w = images.shape
        obj = np.full((b, 1, h // 4, w // 4), -10.0, np.float32)
        dist = np.ones((b, 4, h // 4, w // 4), np.float32)
        sim = np.where(images[:, :1, 2::4, 2::4] > 2.5, 0.9, 0.2).astype(np.float32)
        for i in range(b):
            lab, _ = ndimage.label(images[i, 0] > 1.0)
            for k, sl in enumerate(ndimage.find_objects(lab), 1):
                y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                for r in range(h // 4):
                    for c in range(w // 4):
                        cy, cx = (r + 0.5) * 4, (c + 0.5) * 4
                        if lab[int(cy), int(cx)] == k:
                            obj[i, 0, r, c] = 10.0
                            dist[i, :, r, c] = (cx - x0, cy - y0, x1 - cx, y1 - cy)
        return obj, dist, sim


def _scene(path: Path, squares: list[tuple[int, int, int]], size: int = 256, crs: str = "EPSG:32636",
           dim: list[tuple[int, int, int]] = ()) -> Path:  # type: ignore[assignment]
    data = np.zeros((3, size, size), np.uint8)
    for r, c, s in squares:
        data[:, r:r + s, c:c + s] = 200
    for r, c, s in dim:  # another kind: as bright an object for the head, unlike the examples
        data[:, r:r + s, c:c + s] = 120
    return write_raster(path, data, crs, from_origin(500000, 100000, 0.5, 0.5))


@pytest.fixture
def blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = BrightBlobs()
    monkeypatch.setattr("geoseg.search.stage.get_search_backend", lambda *a, **k: backend)


def _examples(path: Path, scene_crs: str, boxes: list[tuple[float, float, float, float]], crs: str) -> Path:
    g = gpd.GeoDataFrame({"kind": ["tank"] * len(boxes)}, geometry=[shapely.box(*b) for b in boxes],
                         crs=scene_crs).to_crs(crs)
    g.to_file(path)
    return path


def test_object_across_a_block_seam_is_one_box_in_the_scene_crs(tmp_path: Path, blobs: None) -> None:
    # 20 px squares: one across the seam at column 128 (block 128), one inside a block
    scene = _scene(tmp_path / "s.tif", [(100, 118, 20), (30, 30, 20), (140, 126, 20)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500015, 99975, 500025, 99985)], "EPSG:4326")
    out = tmp_path / "found.gpkg"
    summary = search([scene], ex, "model", out, SearchConfig(block=128, halo=32, min_score=0.5),
                     scheduler="sync")
    got = gpd.read_file(out)
    assert summary.blocks == 4 and len(got) == 3 == summary.boxes
    assert got.crs.to_epsg() == 32636  # the scene's CRS, not the examples' (EPSG:4326)
    want = [shapely.box(500000 + c * 0.5, 100000 - (r + s) * 0.5, 500000 + (c + s) * 0.5, 100000 - r * 0.5)
            for r, c, s in [(100, 118, 20), (30, 30, 20), (140, 126, 20)]]
    for w in want:
        assert max(w.intersection(g).area / w.union(g).area for g in got.geometry) > 0.9
    assert set(got.columns) >= {"score", "scene", "examples", "geometry"}
    assert (got["examples"] == "ex").all() and (got["scene"] == "s").all()
    assert not list(tmp_path.glob(".found.gpkg.geoseg-cache"))  # cache removed after the write


def test_a_point_example_is_the_template_square_around_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A point (a click in QGIS) reads the template side around it, as a box smaller than that does."""
    seen: list[np.ndarray] = []

    class Recording(BrightBlobs):
        def fuse(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            seen.append(templates)
            return super().fuse(templates)

    monkeypatch.setattr("geoseg.search.stage.get_search_backend", lambda *a, **k: Recording())
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16), (100, 100, 16)])
    centre = (500000 + 28 * 0.5, 100000 - 28 * 0.5)  # the first square's centre
    point = tmp_path / "point.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(centre)], crs="EPSG:32636").to_file(point)
    box = _examples(tmp_path / "box.gpkg", "EPSG:32636",
                    [(centre[0] - 2, centre[1] - 2, centre[0] + 2, centre[1] + 2)], "EPSG:32636")
    for ex in (point, box):
        found = search([scene], ex, "model", tmp_path / f"found_{ex.stem}.gpkg", SearchConfig(block=128, halo=32),
                       scheduler="sync")
        assert found.boxes == 2
    assert seen[0].shape == (1, 3, TINY.template_size, TINY.template_size)
    np.testing.assert_array_equal(seen[0], seen[1])
    assert seen[0].max() > 2.0  # the bright square is in it


def test_similarity_gate_auto_fixed_and_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16), (100, 100, 16)], dim=[(180, 40, 16), (40, 180, 16)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500010, 99980, 500018, 99988)], "EPSG:32636")

    def run(backend: BrightBlobs, **kw: object) -> tuple[gpd.GeoDataFrame, list[str]]:
        monkeypatch.setattr("geoseg.search.stage.get_search_backend", lambda *a, **k: backend)
        out = tmp_path / "found.gpkg"
        summary = search([scene], ex, "model", out, SearchConfig(block=256, **kw), scheduler="sync",
                         overwrite=True)
        return gpd.read_file(out), summary.lines()

    got, lines = run(BrightBlobs(0.6))  # auto: the calibrated 0.6 keeps the examples' kind only
    assert len(got) == 2 and (got["similarity"] > 0.8).all()
    assert "similarity: >= 0.600 (calibrated in training)" in lines
    got, lines = run(BrightBlobs(0.6), min_similarity=0.1)  # a fixed threshold below both kinds
    assert len(got) == 4 and sorted(got["similarity"].round(2)) == [0.2, 0.2, 0.9, 0.9]
    got, lines = run(BrightBlobs(-1.0))  # calibrated, and no threshold helped
    assert len(got) == 4 and "similarity: no threshold" in lines
    with caplog.at_level("WARNING", logger="geoseg.search.stage"):
        got, _ = run(BrightBlobs(None))  # a model from before calibration: every box, and a warning
    assert len(got) == 4 and "no calibrated similarity threshold" in caplog.text


def test_max_results_and_min_score(tmp_path: Path, blobs: None) -> None:
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16), (100, 100, 16), (180, 40, 16)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500010, 99980, 500018, 99988)], "EPSG:32636")
    out = tmp_path / "found.geojson"
    search([scene], ex, "model", out, SearchConfig(block=256, max_results=2), scheduler="sync")
    assert len(gpd.read_file(out)) == 2


def test_crs_writes_the_boxes_in_the_crs_asked(tmp_path: Path, blobs: None) -> None:
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16), (100, 100, 16)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500010, 99980, 500018, 99988)], "EPSG:32636")
    search([scene], ex, "model", tmp_path / "a.gpkg", SearchConfig(block=256), scheduler="sync")
    search([scene], ex, "model", tmp_path / "b.gpkg", SearchConfig(block=256, crs="EPSG:4326"), scheduler="sync")
    a, b = gpd.read_file(tmp_path / "a.gpkg"), gpd.read_file(tmp_path / "b.gpkg")
    assert (a.crs.to_epsg(), b.crs.to_epsg()) == (32636, 4326) and len(a) == len(b) == 2
    assert b.to_crs(a.crs).geom_equals_exact(a.geometry, tolerance=1e-3).all()
    with pytest.raises(ConfigError, match="RFC 7946"):
        search([scene], ex, "model", tmp_path / "c.geojson", SearchConfig(crs="EPSG:32636"), scheduler="sync")


def _tiny_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    torch.manual_seed(0)
    cfg = {"task": "search", "model": TINY.model_dump(mode="json"), "episodes": {"context": 1.5}}
    save_checkpoint(run / "checkpoints" / "best.pt", {"config": cfg, "stats": STATS.to_dict(),
                                                       "classes": list(STATS.classes),
                                                       "model": RefDet(TINY).state_dict()})
    return run


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.mark.parametrize("case", ["no_geometry", "empty", "outside", "missing"])
def test_bad_examples_are_one_line(tmp_path: Path, case: str) -> None:
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16)])
    run = _tiny_run(tmp_path)
    ex = tmp_path / "ex.gpkg"
    if case == "no_geometry":
        ex = tmp_path / "ex.csv"
        ex.write_text("name,x\na,1\n")
    elif case == "empty":
        _examples(ex, "EPSG:32636", [], "EPSG:32636")
    elif case == "outside":
        _examples(ex, "EPSG:32636", [(600000, 99980, 600010, 99990)], "EPSG:32636")
    code, out = _cli("search", scene, "--examples", ex, "--model", run, "--out", tmp_path / "o.gpkg")
    assert code == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), out
    assert str(ex) in lines[0] or ex.name in lines[0]
    assert {"no_geometry": "no geometry", "empty": "no geometry", "outside": "lies in a scene",
            "missing": "does not exist"}[case] in lines[0]
    assert not (tmp_path / "o.gpkg").exists()


def test_routed_checkpoint_and_unknown_config_key_are_one_line(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500010, 99980, 500018, 99988)], "EPSG:32636")
    run = tmp_path / "routed"
    save_checkpoint(run / "checkpoints" / "best.pt", {"config": {"model": {}}, "stats": STATS.to_dict(),
                                                      "classes": ["a"], "model": {}})
    code, out = _cli("search", scene, "--examples", ex, "--model", run, "--out", tmp_path / "o.gpkg")
    assert code == 1 and "not a search model" in out and len(out.strip().splitlines()) == 1
    before = ex.read_bytes()  # --out over the examples, --overwrite given: refused, not deleted
    code, out = _cli("search", scene, "--examples", ex, "--model", run, "--out", ex, "--overwrite")
    assert code == 1 and "is the examples: it would be overwritten" in out and ex.read_bytes() == before
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("task: search\nepisodes:\n  crops: 64\n")
    code, out = _cli("train", cfg, "--patches", tmp_path, "--out", tmp_path / "r")
    assert code == 1 and "unknown key 'episodes.crops'" in out
    # --set reaches the search config too, validated the same way
    cfg.write_text("task: search\n")
    code, out = _cli("train", cfg, "--patches", tmp_path, "--out", tmp_path / "r", "--set", "episodes.crops=64")
    assert code == 1 and "unknown key 'episodes.crops' in" in out and "with --set" in out


def test_onnx_export_parity_and_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    from geoseg.search.export import export_search_onnx

    run = _tiny_run(tmp_path)
    info = export_search_onnx(run, tmp_path / "export")
    assert info["max_rel_diff"] < 1e-3
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"template.onnx", "search.onnx",
                                                                  "search-export.json"}
    meta = tmp_path / "export" / "search-export.json"
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16), (100, 120, 20)], size=128)
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500010, 99980, 500018, 99988)], "EPSG:32636")
    found = {}
    for backend, model in (("torch", run), ("onnx", tmp_path / "export")):
        out = tmp_path / f"{backend}.gpkg"
        search([scene], ex, model, out, SearchConfig(backend=backend, min_score=0.0, max_results=20),
               scheduler="sync")
        found[backend] = gpd.read_file(out)
    assert len(found["torch"]) == len(found["onnx"]) > 0
    # an untrained model scores many boxes alike: the best ones agree, ties below may swap
    np.testing.assert_allclose(found["torch"]["score"][:5], found["onnx"]["score"][:5], atol=1e-4)
    np.testing.assert_allclose(found["torch"]["similarity"][:5], found["onnx"]["similarity"][:5], atol=1e-4)
    # an export of an older format (no similarity output) is named, not misread
    import json

    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 1}))
    code, msg = _cli("search", str(scene), "--examples", str(ex), "--model", str(tmp_path / "export"),
                     "--backend", "onnx", "--out", str(tmp_path / "old.gpkg"))
    assert code == 1 and "exported by an older geoseg" in msg and len(msg.strip().splitlines()) == 1

    # the run retrained since the export: the export still runs, with a warning naming both
    import geoseg.search.backend as sb

    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": sb.EXPORT_FORMAT}))
    warned: list[str] = []
    monkeypatch.setattr(sb.log, "warning", lambda msg, *args: warned.append(msg % args))
    sb.OnnxSearch(tmp_path / "export")
    assert warned == []
    torch.manual_seed(1)
    cfg = {"task": "search", "model": TINY.model_dump(mode="json"), "episodes": {"context": 1.5}}
    save_checkpoint(run / "checkpoints" / "best.pt", {"config": cfg, "stats": STATS.to_dict(),
                                                      "classes": list(STATS.classes),
                                                      "model": RefDet(TINY).state_dict()})
    sb.OnnxSearch(tmp_path / "export")
    assert len(warned) == 1 and "which has changed since (retrained)" in warned[0], warned


def test_aoi_searches_the_near_blocks_with_examples_beyond_it(tmp_path: Path, blobs: None) -> None:
    # the 4th square lies in a block near the area, not in it: found, then dropped
    scene = _scene(tmp_path / "s.tif", [(20, 20, 16), (100, 110, 16), (200, 200, 16), (135, 135, 10)])
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500100, 99892, 500108, 99900)], "EPSG:32636")  # 3rd
    area = shapely.box(500000, 100000 - 120 * 0.5, 500000 + 120 * 0.5, 100000)  # pixels 0-119: the 2nd crosses it
    gpd.GeoDataFrame(geometry=[area], crs="EPSG:32636").to_crs(4326).to_file(tmp_path / "aoi.geojson")
    out = tmp_path / "found.gpkg"
    summary = search([scene], ex, "model", out, SearchConfig(block=64, halo=32, aoi=str(tmp_path / "aoi.geojson")),
                     scheduler="sync")
    got = gpd.read_file(out)
    assert summary.blocks == 9 and len(got) == 2  # blocks 0-2 of 4 a side lie within 32 px of the area
    assert "--aoi aoi.geojson: 9 of 16 blocks searched" in summary.lines()
    assert max(shapely.area(got.geometry.to_numpy())) == pytest.approx(64, rel=0.05)  # 16 px square, whole


def test_search_on_pixels_not_square_on_the_ground_reads_the_grid_it_plans(tmp_path: Path, blobs: None) -> None:
    """Scenes are planned on square ground pixels (tile and predict too): the crops and blocks read that grid."""
    data = np.zeros((3, 256, 512), np.uint8)
    squares = [(40, 60, 20), (150, 300, 20), (200, 420, 20)]  # row, col, side in 0.5 m rows: 10 m squares
    for r, c, s in squares:
        data[:, r:r + s, c:c + 2 * s] = 200
    scene = write_raster(tmp_path / "wide.tif", data, "EPSG:32636", from_origin(500000, 100000, 0.25, 0.5))
    want = [shapely.box(500000 + c * 0.25, 100000 - (r + s) * 0.5, 500000 + (c + 2 * s) * 0.25, 100000 - r * 0.5)
            for r, c, s in squares]
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [want[0].bounds], "EPSG:32636")
    summary = search([scene], ex, "model", tmp_path / "found.gpkg", SearchConfig(block=128, halo=32, min_score=0.5),
                     scheduler="sync")
    got = gpd.read_file(tmp_path / "found.gpkg")
    assert summary.blocks == 4 and len(got) == 3  # 256 x 256 square pixels of 0.5 m: 2 x 2 blocks
    for w in want:
        assert max(w.intersection(g).area / w.union(g).area for g in got.geometry) > 0.9


def test_search_on_scenes_that_abut_warns_that_objects_across_a_seam_are_cut(tmp_path: Path, blobs: None,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    import logging

    data = np.zeros((3, 128, 256), np.uint8)
    data[:, 40:60, 118:138] = 200  # a square across column 128
    data[:, 80:100, 20:40] = 200  # the example, inside t0
    for k, col in enumerate((0, 128)):
        write_raster(tmp_path / f"t{k}.tif", data[:, :, col:col + 128], "EPSG:32636",
                     from_origin(500000 + col * 0.5, 100000, 0.5, 0.5))
    ex = _examples(tmp_path / "ex.gpkg", "EPSG:32636", [(500010, 99950, 500020, 99960)], "EPSG:32636")
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.overlaps"):
        search([tmp_path / "t0.tif", tmp_path / "t1.tif"], ex, "model", tmp_path / "found.gpkg",
               SearchConfig(block=128, halo=32, min_score=0.5), scheduler="sync")
    assert "scenes t0 and t1 abut without overlap (1 such pairs)" in caplog.text
    caplog.clear()  # an --aoi far from the seam: t1 is not read, so nothing is cut
    far = tmp_path / "far"
    far.mkdir()
    wide = np.zeros((3, 128, 1024), np.uint8)
    wide[:, 80:100, 20:40] = 200
    for k, col in enumerate((0, 512)):
        write_raster(far / f"t{k}.tif", wide[:, :, col:col + 512], "EPSG:32636",
                     from_origin(500000 + col * 0.5, 100000, 0.5, 0.5))
    gpd.GeoDataFrame(geometry=[shapely.box(500005, 99950, 500025, 99970)], crs="EPSG:32636").to_file(far / "aoi.gpkg")
    with caplog.at_level(logging.WARNING, logger="geoseg.predict.overlaps"):
        summary = search([far / "t0.tif", far / "t1.tif"], ex, "model", far / "found.gpkg",
                         SearchConfig(block=128, halo=32, min_score=0.5, aoi=str(far / "aoi.gpkg")), scheduler="sync")
    assert "1 scene(s) away from it skipped" in " ".join(summary.lines())
    assert "abut" not in caplog.text
