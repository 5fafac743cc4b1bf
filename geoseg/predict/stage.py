"""`geoseg predict`: routed sliding-window inference from scenes to georeferenced polygons.

For each scene (see :mod:`geoseg.predict.phases` for the per-block phases):

1. PV over the whole scene at 1/scale, block by block, read decimated (GDAL uses COG
   overviews when present) → a utility map of the scene's cells;
2. the router picks the top-K cells scene-wide: ``K = ceil(budget × valid cells)``, or
   the K that ``deadline_ms`` allows from the measured FF cost per cell;
3. FF on the chosen cells (windowed full-resolution reads with a halo, batched), pasted
   over the upsampled PV maps, block by block;
4. watershed instances per block with a halo; an instance is kept only by the block
   holding its centroid, so nothing is duplicated or cut along block seams;
5. with ``--regularize``, each block's outlines squared in a task of its own;
6. polygons (``class``, ``score``, ``area_m2``, ``scene``) in the scene CRS, written
   atomically as one GeoPackage layer or GeoJSON (RFC 7946: EPSG:4326).

All phases of all scenes form one Dask graph, so I/O, stitching and vectorizing of one
block overlap with model work on others. Every per-block result is cached next to the
output (``.<out name>.geoseg-cache/``): a killed run resumes without redoing finished
blocks and without duplicates; the cache is removed when the output is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
from dask.delayed import delayed

from geoseg import metrics
from geoseg.backends.cache import adopt, get_backend
from geoseg.bands import band_selection
from geoseg.errors import InputRasterError, OutputExistsError, listed
from geoseg.io.atomic import check_outputs, check_writable, write_json
from geoseg.io.encoding import check_for_model
from geoseg.io.frames import warn_zero_frames
from geoseg.io.outcrs import output_crs, warn_beyond_use
from geoseg.io.radiometry import warn_out_of_range
from geoseg.io.rasters import SceneInfo, inspect_scenes
from geoseg.io.sources import SceneSource, list_scenes
from geoseg.io.stamps import digest, input_stamp, read_stamp
from geoseg.io.vectors import split_layer
from geoseg.models.meta import ModelMeta
from geoseg.models.postprocess import squared_classes
from geoseg.parallel import check_scheduler, compute
from geoseg.predict.area import near_owners
from geoseg.predict.choose import cells_of_block, choose_cells, dense_run, k_rule
from geoseg.predict.config import PredictConfig
from geoseg.predict.gsd import gsd_note, target_gsd, warn_coarse_simplify, warn_upsampling
from geoseg.predict.heap import bound_heap
from geoseg.predict.memory import plan_ff, summary_line
from geoseg.predict.overlaps import warn_abutting
from geoseg.predict.phases import FfResult, ModelKey, PvResult, ff_block, instances_block, pv_block
from geoseg.predict.plan import BlockPlan, warn_cut
from geoseg.predict.probs import PROBS_WRITTEN, prob_paths, probs_written, write_probs

log = logging.getLogger(__name__)

#: cache file kind of :meth:`BlockPlan.path` -> the phase it resumes
PHASES = {"pv": "PV", "probs": "FF", "polys": "instances"}


@dataclass
class PredictSummary:
    """What a predict run did."""

    out: Path
    scenes: int = 0
    blocks: int = 0
    cells: int = 0
    ff_cells: int = 0
    ff_regions: int = 0
    """Rectangles of cells FF ran on, one halo each (blocks resumed from the cache not counted)."""
    ff_covered: int = 0
    """Cells whose maps FF wrote: ``ff_cells`` plus the other cells of their regions (resumed blocks not counted)."""
    polygons: int = 0
    copies: int = 0
    """Polygons dropped as copies of one object found by overlapping scenes (``--overlaps once``)."""
    model_seconds: float = 0.0
    seconds: float = 0.0
    resumed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES.values(), 0))
    """Blocks per phase whose result came from the cache of a killed run."""
    routing: str = ""
    prob_out: list[Path] = field(default_factory=list)
    regularized: float | None = None
    """The regularization tolerance in metres when outlines were squared (the largest, where a scene's
    pixel raised it: :func:`~geoseg.predict.regularize.square_tolerance`), else None."""
    regularized_raised: bool = False
    """Whether a scene's pixel raised the tolerance above ``--regularize-tolerance``."""
    regularized_classes: tuple[str, ...] | None = None
    """The classes squared when not every class of the model was (``postprocess.regularize``)."""
    gsd: str = ""
    """How scenes were read: at which ground pixel size, from which (empty: all native)."""
    tta: str = "none"
    arch: str = "routed"
    """The model family (``maskrcnn``: no cells, no FF; one detection task per block)."""
    ff_batch: str = ""
    """The FF batch used and why (probe, --max-memory, --ff-batch; halved after running out of memory)."""
    aoi: str = ""
    """With ``--aoi``: the blocks computed and the scenes skipped."""
    outside_aoi: int = 0
    """With ``--aoi``: objects found near the area that do not meet it, dropped."""

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        share = self.ff_cells / max(self.cells, 1)
        routed = self.arch == "routed"
        resumed = self.resumed if routed else {"detections": self.resumed[PHASES["polys"]]}
        return [
            f"scenes: {self.scenes}, blocks: {self.blocks} "
            f"(resumed: {', '.join(f'{k} {v}' for k, v in resumed.items())})",
            f"cells: {self.cells}, FF on {self.ff_cells} ({share:.0%}; {self.routing}) "
            f"in {self.ff_regions} region{'' if self.ff_regions == 1 else 's'}"
            + (f" (FF's maps on the {self.ff_covered - self.ff_cells} other cells they cover too)"
               if self.ff_covered > self.ff_cells else "")
            if routed else f"{self.routing}, detections on every block",
            f"polygons: {self.polygons} -> {self.out}"
            + (f" (regularized, tolerance {self.regularized:.3g} m"
               + (", raised to two of a scene's pixels" if self.regularized_raised else "")
               + (f", {', '.join(self.regularized_classes)} only" if self.regularized_classes else "") + ")"
               if self.regularized else ""),
        ] + ([self.aoi + f"; {self.outside_aoi} objects near it that do not meet it dropped"] if self.aoi else []) \
            + ([f"overlapping scenes: {self.copies} polygons were copies of an object another scene saw deeper "
              "inside, dropped (--overlaps all keeps them)"] if self.copies else []) + [
            f"time: {self.seconds:.1f} s (model {self.model_seconds:.1f} s"
            + (f", test-time augmentation {self.tta}" if self.tta != "none" else "") + ")",
        ] + ([self.ff_batch] if self.ff_batch else []) + ([f"read at {self.gsd}"] if self.gsd else []) \
            + [f"probabilities: {p}" for p in self.prob_out]


def _plan(scene: SceneInfo, meta: ModelMeta, cfg: PredictConfig, cache: Path) -> BlockPlan:
    band_indexes = band_selection(scene.source, scene.count, cfg.band_indexes, meta.band_count,
                                  declared=scene.meaning, wanted=meta.band_stats.meaning or ())
    if min(scene.width, scene.height) < meta.scale:  # PV reads it at 1/scale: not one pixel left
        raise InputRasterError(
            f"{scene.source} is {scene.width}x{scene.height} pixels"
            + (f" read at {scene.gsd:.3g} m/px (--gsd)" if scene.moved else "")
            + f", too small for the model (at least {meta.scale}x{meta.scale}, its PV scale); "
            + ("read it at a finer --gsd" if scene.resample > 1.0 else "remove it from the inputs"))
    block = math.ceil(cfg.block / meta.multiple) * meta.multiple
    # the scene's cache folder is named by its resolved path or URL, never by a name the user chose
    return BlockPlan(scene=scene, block=block, watershed_halo=min(cfg.watershed_halo, block),
                     cell=meta.cell, scale=meta.scale, tile_halo=meta.tile_halo,
                     multiple=meta.multiple, band_indexes=tuple(band_indexes),
                     cache=cache / f"scene-{digest(scene.source)[:16]}", tta=cfg.tta,
                     dense=meta.arch == "routed" and dense_run(cfg, meta))


def _stamp(model_path: Path, cfg: PredictConfig, scenes: Sequence[SceneInfo]) -> str:
    # the model's stamp covers a run directory's contents: a checkpoint retrained in place
    # changes it even though the folder's own mtime does not move
    payload = {"model": [str(model_path), input_stamp(model_path)],
               "cfg": cfg.model_dump(mode="json", exclude={"prob_out", "regularize", "regularize_tolerance",
                                                           "ff_batch", "max_memory", "overlaps", "crs"}),  # same caches
               # how it is read: another revision reading the same file with the same options never resumes
               "scenes": [[s.source, input_stamp(s.source), read_stamp(s)] for s in scenes],
               "aoi": [str(Path(cfg.aoi).resolve()), input_stamp(cfg.aoi)] if cfg.aoi else None}
    return digest(payload)


def predict(
    scenes: Sequence[str | Path | SceneSource],
    model: str | Path,
    out: str | Path,
    cfg: PredictConfig | None = None,
    *,
    scheduler: Any = "threads",
    overwrite: bool = False,
    progress: bool | None = None,
) -> PredictSummary:
    """Detect objects in scenes and write them as polygons.

    Args:
        scenes: raster files, directories of rasters, URLs, STAC documents
            (:func:`geoseg.io.sources.list_scenes`).
        model: run directory, ``.pt`` checkpoint, or export directory (onnx/tensorrt).
        out: ``.gpkg``, ``.geojson``, ``.fgb``, ``.shp`` or ``.parquet`` file (one layer
            for the whole run, named after its stem; :mod:`geoseg.io.formats`).
        cfg: parameters (defaults when None).
        scheduler: Dask scheduler (see :func:`geoseg.parallel.compute`).
        overwrite: replace an existing output.
        progress: show a progress bar (None: on a TTY).

    Returns:
        A :class:`PredictSummary`.

    Raises:
        InputRasterError: unreadable scene, or bands that do not fit the model.
        CheckpointError / ConfigError / DependencyError: model, backend or options at fault.
        OutputExistsError: ``out`` exists and ``overwrite`` is False, or is a GeoPackage holding
            other layers (:func:`geoseg.io.formats.check_replace`).
    """
    from geoseg.io.formats import check_replace
    from geoseg.predict.vectorize import vector_driver

    t0 = time.perf_counter()
    bound_heap()  # block buffers freed to the system: RSS bounded by the block (predict/heap.py)
    cfg = cfg or PredictConfig()
    check_scheduler(scheduler)
    out = Path(out).resolve()
    vector_driver(out)  # unknown extension: fail before any work
    out_crs = output_crs(cfg.crs, out)
    check_replace(out, overwrite)
    check_writable(out, "--out")
    if cfg.prob_out:
        check_writable(cfg.prob_out, "--prob-out")
    infos, _ = inspect_scenes(list_scenes(scenes))
    model_key = ModelKey(str(Path(model).resolve()), cfg.backend, cfg.device, cfg.ff_batch)
    backend = get_backend(model_key)
    meta = backend.meta
    stats = meta.band_stats
    native = infos
    infos = [s.at_gsd(target_gsd(cfg, meta, s.gsd)) for s in infos]  # windows, cells, polygons on this grid
    warn_upsampling(native, infos, cfg)
    warn_coarse_simplify(infos, cfg)
    cache = out.parent / f".{out.name}.geoseg-cache"
    plans = [_plan(s, meta, cfg, cache) for s in infos]  # bad bands fail before anything is written
    check_for_model([(p.scene, p.band_indexes) for p in plans], stats)  # stored values of another meaning
    near = None
    if cfg.aoi:  # only the blocks near the area are read; scenes it does not come near, not at all
        from geoseg.predict.area import restrict

        near = restrict(plans, cfg.aoi)
        plans = near.plans
    warn_abutting([p.scene for p in plans], infos[0].crs)  # scenes the --aoi leaves out are not read: no seam
    warn_beyond_use(out_crs, [p.scene for p in plans], "polygons")
    probs = prob_paths(cfg, plans)
    check_outputs({"--out": out, "--prob-out": probs}, {"a scene": [s.source for s in native], "the model": model,
                                                         "the AOI": split_layer(cfg.aoi)[0] if cfg.aoi else None})
    stamp = _stamp(backend.source, cfg, infos)
    ours = probs_written(cache, stamp)  # by a killed run of this same job: replaced, as a resume
    if not overwrite and (old_probs := [p for p in probs if p.exists() and str(p) not in ours]):
        raise OutputExistsError(f"--prob-out {old_probs[0]} exists; pass --overwrite to replace it",
                                path=str(old_probs[0]))
    warn_out_of_range([(p.scene, p.band_indexes) for p in plans], stats)  # the inputs passed: a sample of each
    warn_zero_frames([p.scene for p in plans])
    ff_plan = plan_ff(backend, cfg, plans, scheduler)  # the batch kept for the run (halved on OOM)
    model_key = adopt(model_key._replace(ff_batch=ff_plan.batch), backend)
    k_of, routing = (k_rule(cfg.model_copy(update={"ff_batch": model_key.ff_batch}), meta, backend)
                     if meta.arch == "routed" else (None, "Mask R-CNN: no routing"))
    if meta.arch == "routed" and dense_run(cfg, meta):
        routing += ": FF everywhere, the plain dense network (PV not run)"
    if cache.exists():
        old = cache / "stamp.json"
        same = old.exists() and json.loads(old.read_text()).get("stamp") == stamp
        if not same:
            shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    write_json(cache / "stamp.json", {"stamp": stamp})
    for p in plans:
        p.cache.mkdir(exist_ok=True)

    summary = PredictSummary(out=out, scenes=len(plans), routing=routing, arch=meta.arch,
                             gsd=gsd_note(native, infos, cfg), tta=cfg.tta)
    if near is not None:
        summary.aoi = (f"--aoi {Path(str(cfg.aoi)).name}: {near.computed} of {near.blocks} blocks computed, "
                       f"{near.owners} near the area"
                       + (f"; {len(near.outside)} scene(s) away from it skipped" if near.outside else ""))
    tasks: list[Any] = []
    final: list[tuple[BlockPlan, int, int, Any]] = []
    if meta.arch == "maskrcnn":  # one detection task per block, then the same polygons
        from geoseg.predict.maskrcnn_phase import maskrcnn_graph

        tasks, final = maskrcnn_graph(plans, model_key, meta, cfg)
        summary.blocks = len(final)
        summary.resumed[PHASES["polys"]] = sum(p.path("polys", i, j).exists() for p, i, j, _ in final)
    for plan in plans if meta.arch == "routed" else []:
        summary.blocks += len(plan.blocks())
        for kind, phase in PHASES.items():
            summary.resumed[phase] += sum(plan.path(kind, i, j).exists() for i, j in plan.blocks())
        pv = {(i, j): delayed(pv_block, pure=False)(plan, i, j, model_key, stats) for i, j in plan.blocks()}
        chosen = delayed(choose_cells, pure=False)(list(pv.values()), plan, k_of)
        ff = {}
        for (i, j) in pv:
            nb = [pv[(a, b)] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2) if (a, b) in pv]
            cells = delayed(cells_of_block, pure=False)(chosen, plan, i, j)
            ff[(i, j)] = delayed(ff_block, pure=False)(plan, i, j, cells, model_key, stats, *nb)
        for (i, j) in plan.owned():  # --aoi: the ring around the owners is context only
            nb = [ff[(a, b)] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2) if (a, b) in ff]
            polys = delayed(instances_block, pure=False)(plan, i, j, meta.postprocess, meta.classes,
                                                         cfg.simplify, cfg.min_area, *nb)
            final.append((plan, i, j, polys))
        tasks += list(pv.values()) + [chosen] + list(ff.values())
    outputs = [f[3] for f in final]
    squared = squared_classes(meta.postprocess.regularize if cfg.regularize is None else cfg.regularize,
                              meta.classes)
    if squared:  # per block, in parallel: each outline is squared alone (those of the classes squared)
        from geoseg.predict.regularize import regularize_file, square_tolerance

        only = None if len(squared) == len(meta.classes) else tuple(squared)
        outputs = [delayed(regularize_file, pure=False)(
            f[3], square_tolerance(cfg.regularize_tolerance, f[0].scene), classes=only) for f in final]
        summary.regularized_classes = only
    with dask.config.set(num_workers=ff_plan.threads) if ff_plan.threads else contextlib.nullcontext():
        results = compute(tasks + outputs, scheduler=scheduler, desc="predict", progress=progress)
    n_pv = 0
    used: list[int] = []
    empty: list[str] = []
    if meta.arch == "maskrcnn":
        summary.model_seconds = sum(r.model_s for r in results[:len(tasks)])
        k = 0
        for plan in plans:  # one task per block, scene after scene
            n = len(plan.owned())
            if not any(r.any_valid for r in results[k:k + n]):
                empty.append(plan.scene.name)
            k += n
    for plan in plans if meta.arch == "routed" else []:
        n_blocks = len(plan.blocks())
        block_results = results[n_pv:n_pv + 2 * n_blocks + 1]
        n_pv += len(block_results)
        pvs: list[PvResult] = block_results[:n_blocks]
        ffs: list[FfResult] = block_results[n_blocks + 1:]
        summary.model_seconds += sum(r.model_s for r in pvs) + sum(r.model_s for r in ffs)
        summary.ff_cells += sum(r.cells for r in ffs)
        summary.ff_regions += sum(r.regions for r in ffs)
        summary.ff_covered += sum(r.covered for r in ffs)
        used += [r.ff_batch for r in ffs if r.ff_batch]
        if not any(r.allowed.any() for r in pvs):
            empty.append(plan.scene.name)
    if empty:  # a scene outside the imagery of a mosaic, say: no polygon, and the user told why
        log.warning("%d scene(s) hold no valid pixel (nodata, masked, or NaN everywhere%s): no polygon from %s",
                    len(empty), " near the --aoi" if near is not None else "",
                    listed(empty, 5))
    summary.ff_batch = (summary_line(int(model_key.ff_batch), ff_plan.why, min(used, default=None))
                        if meta.arch == "routed" else f"memory: {ff_plan.why}" if ff_plan.threads else "")
    for plan in plans if meta.arch == "routed" else []:
        gh, gw = plan.cells_shape
        per = plan.block // plan.cell
        near_cells = None if plan.dense else near_owners(plan)  # routed --aoi: the cells that compete for FF
        if near_cells is not None:
            summary.cells += int(near_cells.sum())
        elif plan.only is None:
            summary.cells += gh * gw
        else:  # dense --aoi: the cells of the blocks computed
            summary.cells += sum(min(per, gh - i * per) * min(per, gw - j * per) for i, j in plan.blocks())

    from geoseg.predict.collect import write_polygons

    for plan, path in zip(plans, probs, strict=False):  # probs: none without --prob-out
        write_probs(plan, path)
        summary.prob_out.append(path)
        write_json(cache / PROBS_WRITTEN, {"stamp": stamp, "paths": [str(p) for p in summary.prob_out]})
    areas = {p.scene.name: a for p, a in zip(near.plans, near.areas, strict=True)} if near is not None else None
    done = write_polygons([(f[0].scene, r) for f, r in zip(final, results[len(tasks):], strict=True)], out,
                          [p.scene for p in plans], once=cfg.overlaps == "once", areas=areas, progress=progress,
                          crs=out_crs)
    warn_cut(done.cut, plans[0], meta.arch)
    if out_crs is None and len({p.scene.crs for p in plans}) > 1:
        log.info("scenes have several CRSs; polygons are written in the first's, %s (--crs to choose)",
                 plans[0].scene.crs)
    summary.polygons, summary.copies, summary.outside_aoi = done.polygons, done.copies, done.outside_aoi
    if squared:
        summary.regularized = max((square_tolerance(cfg.regularize_tolerance, p.scene) for p in plans),
                                 default=cfg.regularize_tolerance)
        summary.regularized_raised = summary.regularized > cfg.regularize_tolerance
    shutil.rmtree(cache, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    metrics.summary({**vars(summary), "ff_share": summary.ff_cells / max(1, summary.cells)})
    return summary
