"""`geoseg search`: find objects like a few examples in scenes, as boxes in the scene CRS.

1. The examples (polygons or boxes, any CRS, in one vector file) are reprojected to each
   scene; each example lies in the scene holding its centre, and the square around it
   (``context`` × its box side, as in training) is read and resized to the template side.
2. The templates are fused once (the template graph) into kernels shared by every window.
3. Each scene is cut in blocks (:class:`geoseg.predict.plan.BlockPlan`); one Dask task per
   block reads the block grown by ``halo`` px (windowed read, reflect padding), runs the
   search graph, decodes boxes, and keeps those whose centre lies in the block (so an
   object across a seam is found by one block); its boxes are cached next to the output.
4. Per scene, a last non-maximum suppression removes what two blocks saw of one object;
   boxes become polygons in the scene CRS with ``score``, ``similarity``, ``scene`` and
   ``examples``; a box is kept when its score reaches ``min_score`` and its similarity
   (cosine of its kind embedding with the examples') reaches ``min_similarity`` (``auto``:
   the threshold calibrated on validation episodes in training);
   ``max_results`` best over the run; written atomically. A rerun resumes from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import geopandas as gpd
import numpy as np
import shapely
import torch
from dask.delayed import delayed
from pydantic import Field, field_validator
from rasterio.windows import Window
from torchvision.ops import nms

from geoseg.bands import band_selection, normalize
from geoseg.config import Strict
from geoseg.errors import InputVectorError
from geoseg.io.atomic import atomic_path, check_outputs, check_writable, write_json
from geoseg.io.datums import to_crs
from geoseg.io.encoding import check_for_model
from geoseg.io.formats import check_replace, vector_driver, write_vector
from geoseg.io.frames import warn_zero_frames
from geoseg.io.npy import load_npz
from geoseg.io.outcrs import output_crs, warn_beyond_use
from geoseg.io.radiometry import warn_out_of_range
from geoseg.io.rasters import SceneInfo, inspect_scenes, open_scene
from geoseg.io.sources import SceneSource, list_scenes
from geoseg.io.stamps import digest, input_stamp, read_stamp
from geoseg.io.vectors import read_vector, split_layer
from geoseg.models.refdet import MULTIPLE
from geoseg.parallel import check_scheduler, compute
from geoseg.predict.overlaps import warn_abutting
from geoseg.predict.plan import BlockPlan, read_window
from geoseg.search.backend import SearchMeta, get_search_backend
from geoseg.search.boxes import MIN_SCORE, detections

log = logging.getLogger(__name__)


class SearchConfig(Strict):
    """Options of `geoseg search` (every default once)."""

    min_score: float = Field(MIN_SCORE, ge=0, le=1, description="keep boxes scoring at least this")
    min_similarity: Annotated[float, Field(ge=-1, le=1)] | Literal["auto"] = Field(
        "auto", description="keep boxes whose similarity to the examples reaches this; auto: the "
                            "threshold calibrated in training, -1: no threshold")
    max_results: int | None = Field(None, ge=1, description="keep the best N boxes of the run")
    nms_iou: float = Field(0.4, gt=0, le=1)
    block: int = Field(1024, ge=64, description="block side in px (memory bound)")
    halo: int = Field(64, ge=0, description="px read around a block (>= half the largest object)")
    backend: Literal["torch", "onnx"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    band_indexes: tuple[int, ...] | None = None
    name: str | None = Field(None, description="name of the example set (default: the file's stem)")
    aoi: str | None = Field(None, description="vector file of polygons: only the blocks near them are searched, "
                            "the boxes meeting them kept (geoseg.predict.area)")
    crs: str | None = Field(None, description="CRS the boxes are written in; None: the first scene's")

    @field_validator("crs")
    @classmethod
    def _crs(cls, value: str | None) -> str | None:
        from geoseg.io.outcrs import check_crs

        return check_crs(value)


@dataclass
class SearchSummary:
    """What a search run did."""

    out: Path
    scenes: int = 0
    examples: int = 0
    blocks: int = 0
    resumed: int = 0
    boxes: int = 0
    seconds: float = 0.0
    similarity: float | None = None
    calibrated: bool = False
    aoi: str = ""

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        return [f"scenes: {self.scenes}, examples: {self.examples}, blocks: {self.blocks} "
                f"(resumed: {self.resumed})", f"boxes: {self.boxes} -> {self.out}",
                "similarity: " + ("no threshold" if self.similarity is None else
                                  f">= {self.similarity:.3f}" + (" (calibrated in training)" if self.calibrated
                                                                 else "")),
                f"time: {self.seconds:.1f} s"] + ([self.aoi] if self.aoi else [])


def _plan(scene: SceneInfo, cfg: SearchConfig, bands: int, cache: Path, wanted: Sequence[str] = ()) -> BlockPlan:
    idx = band_selection(scene.source, scene.count, cfg.band_indexes, bands, "search model", scene.meaning, wanted)
    block = math.ceil(cfg.block / MULTIPLE) * MULTIPLE
    halo = math.ceil(cfg.halo / MULTIPLE) * MULTIPLE
    return BlockPlan(scene=scene, block=block, watershed_halo=min(halo, block), cell=MULTIPLE, scale=1,
                     tile_halo=0, multiple=MULTIPLE, band_indexes=tuple(idx),
                     cache=cache / f"scene-{digest(scene.source)[:16]}")


def read_examples(path: str | Path) -> gpd.GeoDataFrame:
    """The example polygons, with at least one non-empty geometry.

    Raises:
        InputVectorError: unreadable, without geometry or CRS, or without any example.
    """
    gdf = read_vector(path, "examples")
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if len(gdf) == 0:
        raise InputVectorError(f"examples file {path} holds no geometry; draw at least one polygon or box "
                               "around an object to search for")
    return gdf


def templates_for(examples: gpd.GeoDataFrame, plans: Sequence[BlockPlan], meta: SearchMeta,
                  source: str | Path) -> np.ndarray:
    """Normalised templates (K, bands, T, T), one per example inside a scene.

    Raises:
        InputVectorError: no example lies in any scene.
    """
    import torch.nn.functional as F  # noqa: N812

    from geoseg.search.episodes import template_side

    size = meta.model.template_size
    out: list[torch.Tensor] = []
    taken = np.zeros(len(examples), dtype=bool)
    for plan in plans:
        s = plan.scene
        geoms = to_crs(examples.geometry, s.crs, "the examples").to_numpy()
        px = shapely.affinity.affine_transform
        inv = (~s.affine).to_shapely()
        with open_scene(s) as src:  # on the grid planned (square ground pixels)
            for i, g in enumerate(geoms):
                if taken[i] or g is None or not s.footprint.contains(g.centroid):
                    continue
                x0, y0, x1, y1 = px(g, inv).bounds
                side = template_side((x0, y0, x1, y1), meta.context, size)
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                win = Window(int(round(cx - side / 2)), int(round(cy - side / 2)), side, side)
                raw, valid = read_window(src, plan, win)
                z = torch.from_numpy(normalize(raw, meta.stats, valid=valid))[None].float()
                out.append(F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False,
                                         antialias=True)[0])
                taken[i] = True
    if not out:
        raise InputVectorError(f"no example of {source} lies in a scene (their centres are outside every "
                               "scene's footprint); draw the examples over the scenes you search")
    if not taken.all():
        log.warning("%d of %d examples of %s lie outside every scene and are not used",
                    int((~taken).sum()), len(taken), source)
    return torch.stack(out).numpy()


def _block_path(plan: BlockPlan, bi: int, bj: int) -> Path:
    return plan.cache / f"boxes_{bi}_{bj}.npz"


def search_block(plan: BlockPlan, bi: int, bj: int, key: tuple[str, str, str],
                 kernels: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: SearchConfig,
                 min_similarity: float | None) -> Path:
    """Boxes (scene pixels), scores and similarities of the objects whose centre lies in block (bi, bj)."""
    path = _block_path(plan, bi, bj)
    if path.exists():
        return path
    backend = get_search_backend(*key)
    core = plan.core(bi, bj)
    h = plan.watershed_halo
    side_h = math.ceil((core.height + 2 * h) / MULTIPLE) * MULTIPLE
    side_w = math.ceil((core.width + 2 * h) / MULTIPLE) * MULTIPLE
    win = Window(core.col_off - h, core.row_off - h, side_w, side_h)
    with open_scene(plan.scene) as src:
        raw, valid = read_window(src, plan, win)
    x = normalize(raw, backend.meta.stats, valid=valid)[None].astype(np.float32)
    boxes = np.zeros((0, 4), np.float32)
    scores = sims = np.zeros(0, np.float32)
    if valid.any():
        obj, dist, sim = (torch.from_numpy(m[0]) for m in backend.detect(x, *kernels))
        det = detections(obj, dist, sim, min_score=cfg.min_score, min_similarity=min_similarity,
                         nms_iou=cfg.nms_iou)
        b = det.boxes.numpy() + np.array([win.col_off, win.row_off] * 2, dtype=np.float32)
        mid = (b[:, :2] + b[:, 2:]) / 2
        own = ((mid[:, 0] >= core.col_off) & (mid[:, 0] < core.col_off + core.width)
               & (mid[:, 1] >= core.row_off) & (mid[:, 1] < core.row_off + core.height))
        boxes, scores, sims = b[own], det.scores.numpy()[own], det.similarity.numpy()[own]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, boxes=boxes, scores=scores, similarity=sims)
    return path


def _scene_frame(plan: BlockPlan, paths: list[Path], cfg: SearchConfig, name: str) -> gpd.GeoDataFrame:
    boxes, scores, sims = [], [], []
    for p in paths:
        b_, s_, sim_ = load_npz(p, "boxes", "scores", "similarity")
        boxes.append(b_)
        scores.append(s_)
        sims.append(sim_)
    b, s, sim = np.concatenate(boxes), np.concatenate(scores), np.concatenate(sims)
    if len(b):
        keep = nms(torch.from_numpy(b), torch.from_numpy(s), cfg.nms_iou).numpy()
        b, s, sim = b[keep], s[keep], sim[keep]
    s_info = plan.scene
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, s_info.width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, s_info.height)
    px = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    geo = shapely.transform(px, lambda c: np.stack(s_info.affine @ (c[:, 0], c[:, 1]), 1))
    return gpd.GeoDataFrame({"score": s.astype(float), "similarity": sim.astype(float), "scene": s_info.name,
                             "examples": name},
                            geometry=geo, crs=s_info.crs)


def _similarity_gate(cfg: SearchConfig, meta: SearchMeta) -> float | None:
    """The similarity threshold of a run (None: no threshold)."""
    if cfg.min_similarity != "auto":
        return None if cfg.min_similarity <= -1 else cfg.min_similarity
    if meta.similarity is None:
        log.warning("%s holds no calibrated similarity threshold (trained by an older geoseg): boxes of "
                    "other kinds are not filtered out; retrain, or pass --min-similarity (e.g. 0.7)", meta.source)
        return None
    return None if meta.similarity <= -1 else meta.similarity


def _stamp(meta: SearchMeta, cfg: SearchConfig, scenes: Sequence[SceneInfo], examples: Path) -> str:
    return digest({"model": [str(meta.source), input_stamp(meta.source)],
                   "cfg": cfg.model_dump(mode="json", exclude={"crs"}),  # the boxes' CRS: the same caches
                   "examples": [str(examples), input_stamp(examples)],
                   "scenes": [[s.source, input_stamp(s.source), read_stamp(s)] for s in scenes],
                   "aoi": [str(Path(cfg.aoi).resolve()), input_stamp(cfg.aoi)] if cfg.aoi else None})


def search(scenes: Sequence[str | Path | SceneSource], examples: str | Path, model: str | Path, out: str | Path,
           cfg: SearchConfig | None = None, *, scheduler: Any = "threads", overwrite: bool = False,
           progress: bool | None = None) -> SearchSummary:
    """Find objects like ``examples`` in ``scenes`` and write their boxes as polygons to ``out``.

    Raises:
        InputVectorError: examples unreadable, empty, or outside every scene.
        InputRasterError / CheckpointError / ConfigError: scenes, model or options at fault.
        OutputExistsError: ``out`` exists and ``overwrite`` is False, or is a GeoPackage holding
            other layers (:func:`geoseg.io.formats.check_replace`).
    """
    t0 = time.perf_counter()
    cfg = cfg or SearchConfig()
    check_scheduler(scheduler)
    out = Path(out).resolve()
    vector_driver(out)
    out_crs = output_crs(cfg.crs, out)
    check_outputs({"--out": out}, {"the examples": split_layer(examples)[0],  # before --overwrite may apply
                                   "the AOI": split_layer(cfg.aoi)[0] if cfg.aoi else None})
    check_replace(out, overwrite)
    check_writable(out, "--out")
    ex_path = Path(examples).resolve()
    ex = read_examples(ex_path)
    infos, _ = inspect_scenes(list_scenes(scenes))
    infos = [s.at_gsd(None) for s in infos]  # pixels not square on the ground: read square, as tile and predict do
    key = (str(Path(model).resolve()), cfg.backend, cfg.device)
    backend = get_search_backend(*key)
    meta = backend.meta
    cache = out.parent / f".{out.name}.geoseg-cache"
    plans = [_plan(s, cfg, meta.model.bands, cache, meta.stats.meaning or ()) for s in infos]
    check_for_model([(p.scene, p.band_indexes) for p in plans], meta.stats)  # stored values of another meaning
    temps = templates_for(ex, plans, meta, ex_path)  # examples may lie beyond the --aoi
    kernels = backend.fuse(temps)
    areas: dict[int, Any] = {}
    if cfg.aoi:  # each block reads its own halo: the blocks near the area, without predict's ring
        from geoseg.predict.area import restrict

        near = restrict(plans, cfg.aoi)
        plans = [dataclasses.replace(p, only=p.owners) for p in near.plans]
        areas = {id(p): a for p, a in zip(plans, near.areas, strict=True)}
    # boxes across a seam are cut, as predict's polygons (scenes the --aoi leaves out are not read: no seam)
    warn_abutting([p.scene for p in plans], infos[0].crs, "search")
    warn_beyond_use(out_crs, [p.scene for p in plans], "boxes")
    warn_out_of_range([(p.scene, p.band_indexes) for p in plans], meta.stats)  # the inputs passed: a sample
    warn_zero_frames([p.scene for p in plans])
    stamp = _stamp(meta, cfg, infos, ex_path)
    if cache.exists():
        old = cache / "stamp.json"
        if not (old.exists() and json.loads(old.read_text()).get("stamp") == stamp):
            shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    write_json(cache / "stamp.json", {"stamp": stamp})
    gate = _similarity_gate(cfg, meta)
    summary = SearchSummary(out=out, scenes=len(plans), examples=len(temps), similarity=gate,
                            calibrated=cfg.min_similarity == "auto")
    if cfg.aoi:
        summary.aoi = (f"--aoi {Path(cfg.aoi).name}: {near.owners} of {near.blocks} blocks searched"
                       + (f"; {len(near.outside)} scene(s) away from it skipped" if near.outside else ""))
    tasks: list[Any] = []
    spans: list[tuple[BlockPlan, int, int]] = []
    for plan in plans:
        plan.cache.mkdir(exist_ok=True)
        start = len(tasks)
        for i, j in plan.blocks():
            summary.resumed += _block_path(plan, i, j).exists()
            tasks.append(delayed(search_block, pure=False)(plan, i, j, key, kernels, cfg, gate))
        spans.append((plan, start, len(tasks)))
    summary.blocks = len(tasks)
    results = compute(tasks, scheduler=scheduler, desc="search", progress=progress)
    name = cfg.name or ex_path.stem
    frames = [_scene_frame(plan, results[a:b], cfg, name) for plan, a, b in spans]
    if areas:  # --aoi: the boxes that meet the area, whole
        from geoseg.predict.area import meeting

        frames = [meeting(f, areas[id(plan)]) for f, (plan, _, _) in zip(frames, spans, strict=True)]
    target = plans[0].scene.crs if out_crs is None else out_crs
    if out_crs is None and len({p.scene.crs for p in plans}) > 1:
        log.info("scenes have several CRSs; boxes are written in the first's, %s (--crs to choose)", target)
    gdf = gpd.GeoDataFrame(gpd.pd.concat([to_crs(f, target, "the boxes") if f.crs != target else f for f in frames],
                                         ignore_index=True), crs=target)
    gdf = gdf.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    if cfg.max_results is not None:
        gdf = gdf.head(cfg.max_results)
    write_vector(gdf, out, layer=out.stem if out.suffix.lower() == ".gpkg" else None)
    shutil.rmtree(cache, ignore_errors=True)
    summary.boxes = len(gdf)
    summary.seconds = time.perf_counter() - t0
    return summary
