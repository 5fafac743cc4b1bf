"""`geoseg tile`: scenes + vector labels to GeoTIFF chips, COCO instances and band stats.

The flow (see docs/architecture.md):

1. inspect every scene and read the labels before writing anything (bad input fails
   early, nothing half-written);
2. plan a grid of windows per scene; group windows into square *split blocks* that are
   wholly train or wholly val (neighbouring chips overlap, so a chip-level split leaks);
3. one Dask task per (scene, a few windows of one block): windowed reads, chips written atomically, instances
   rasterized, band sums of valid pixels; its result is a small *part file*;
4. assemble ``annotations.json`` and ``stats.json`` from the part files, streaming.

A rerun with the same parameters skips blocks whose part file exists and rewrites nothing.
"""


from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import shapely
from dask.delayed import delayed
from rasterio.windows import Window

from geoseg import __version__, metrics
from geoseg.errors import GeoSegWarning, InputRasterError, InputVectorError
from geoseg.io.atomic import atomic_path, check_writable, write_json
from geoseg.io.datums import to_crs
from geoseg.io.encoding import declared_order
from geoseg.io.frames import warn_zero_frames
from geoseg.io.rasters import SceneInfo, inspect_scenes, open_scene, read_errors, valid_mask, window_footprint
from geoseg.io.sources import SceneSource, list_scenes
from geoseg.io.vectors import CLASS, bounds_text, read_labels
from geoseg.parallel import check_scheduler, compute
from geoseg.tile.area import outside, place
from geoseg.tile.config import TileConfig
from geoseg.tile.grid import (
    check_val_scenes,
    chips_beyond_labels,
    held_mask,
    held_out,
    split_scenes,
    warn_shared_ground,
    window_grid,
)
from geoseg.tile.inputs import drop_small_scenes, same_kind, warn_upsampling
from geoseg.tile.labels import chip_annotations
from geoseg.tile.outputs import (
    PARTS,
    TileSummary,
    chip_profile,
    done_before,
    gsd_stats,
    manifest_of,
    prepare_out_dir,
    remove_leftovers,
    warn_small_labels,
    write_chip,
)

log = logging.getLogger(__name__)

#: Windows per Dask task. Tasks are finer than split blocks so that a few large blocks
#: still keep every core busy; memory per task is bounded by this many chips.
TASK_WINDOWS = 4


@dataclass(frozen=True)
class BlockJob:
    """The work of one Dask task: the windows of one split block of one scene."""

    scene: SceneInfo
    block: tuple[int, int]
    windows: tuple[Window, ...]
    split: Literal["train", "val"]
    geoms: np.ndarray
    category_ids: np.ndarray
    label_ids: np.ndarray
    images_dir: Path
    part_path: Path
    min_valid: float
    compress: str
    held: tuple[Window, ...] = ()  # val windows overlapping a train block: masked out of its chips
    area: Any = None  # --aoi in the scene's CRS: pixels beyond it masked


def tile_block(job: BlockJob) -> dict[str, int]:
    """Tile the windows of one block; write its chips and its part file.

    Chips that exist already (complete: they are renamed into place) are not rewritten.

    Returns:
        Counts: ``written``, ``existing``, ``low_valid`` (mostly invalid pixels), ``held`` (valid, but
        mostly another split's or beyond ``--aoi``), ``chips``, ``instances``.
    """
    counts = {"written": 0, "existing": 0, "low_valid": 0, "held": 0, "chips": 0, "instances": 0}
    scene = job.scene
    tree = shapely.STRtree(job.geoms)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    sums = np.zeros(scene.count)
    sumsq = np.zeros(scene.count)
    npix = 0
    met: set[int] = set()  # labels with an area in a chip: those without an annotation are under a pixel
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), open_scene(scene) as src:
        for win in job.windows:
            with read_errors(scene.source, win):
                data = src.read(list(range(1, scene.count + 1)), window=win)  # not a warp's alpha
                mask = valid_mask(data, src.dataset_mask(window=win))
            cut = held_mask(win, job.held)  # val pixels: never trained on; beyond --aoi: unlabelled
            if job.area is not None:
                cut |= outside(win, job.area, scene)
            whole = float(mask.mean())  # valid before the cut: mostly nodata, or mostly held
            if cut.any():
                mask &= ~cut
                if scene.nodata is not None:
                    data[:, cut] = scene.nodata
            frac = float(mask.mean())
            if frac < job.min_valid:
                counts["low_valid" if whole < job.min_valid else "held"] += 1
                continue
            row, col = int(win.row_off), int(win.col_off)
            name = f"{scene.name}_{row}_{col}.tif"
            path = job.images_dir / name
            profile = chip_profile(scene, win, job.compress)
            if path.exists():
                counts["existing"] += 1
            else:
                write_chip(path, profile, data, mask, scene)
                counts["written"] += 1
            if mask.any():  # per split: stats.json takes train's, val's when all chips are val
                flat = data.reshape(scene.count, -1)
                valid = (flat if mask.all() else flat[:, mask.ravel()]).astype(np.float64)
                sums += valid.sum(axis=1)
                sumsq += np.einsum("ij,ij->i", valid, valid)
                npix += int(mask.sum())
            shape = (int(win.height), int(win.width))
            local = len(images)
            for ann in chip_annotations(job.geoms, job.category_ids, job.label_ids,
                                        profile["transform"], shape, tree, met):
                ann["image"] = local
                anns.append(ann)
            images.append({
                "file_name": name, "width": shape[1], "height": shape[0],
                "scene": scene.name, "window": [col, row, shape[1], shape[0]],
                "crs": scene.crs, "transform": list(profile["transform"])[:6],
                "split": job.split, "valid_fraction": round(frac, 6), "gsd": round(scene.gsd, 6),
            })
    counts["chips"] = len(images)
    counts["instances"] = len(anns)
    write_json(job.part_path, {"images": images, "annotations": anns, "counts": counts,
                               "stats": {"sum": sums.tolist(), "sumsq": sumsq.tolist(), "count": npix},
                               "unrasterized": sorted(met - {a["label_id"] for a in anns})})
    return counts


def _assemble(out: Path, jobs: Sequence[BlockJob], classes: list[str], cfg: TileConfig,
              scenes: Sequence[SceneInfo], summary: TileSummary) -> None:
    """Write annotations.json (streamed, two passes over the parts) and stats.json."""
    count = scenes[0].count
    sums = {s: np.zeros(count) for s in ("train", "val")}
    sumsq = {s: np.zeros(count) for s in ("train", "val")}
    npix = {"train": 0, "val": 0}
    offsets: list[int] = []
    chips_of: dict[str, int] = {}
    gsds: list[float] = []
    small: set[int] = set()  # labels in chips that cover no pixel centre in any
    categories = [{"id": i + 1, "name": c, "supercategory": "object"}
                  for i, c in enumerate(classes)]
    with atomic_path(out / "annotations.json") as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write('{"info": ' + json.dumps({"description": "geoseg tile", "version": __version__}))
        f.write(', "licenses": [], "categories": ' + json.dumps(categories) + ', "images": [')
        n_img = 0
        for job in jobs:
            part = json.loads(job.part_path.read_text())
            offsets.append(n_img)
            for img in part["images"]:
                n_img += 1
                f.write(("," if n_img > 1 else "") + json.dumps({"id": n_img, **img}))
            summary.chips_train += len(part["images"]) * (job.split == "train")
            summary.chips_val += len(part["images"]) * (job.split == "val")
            st = part["stats"]
            sums[job.split] += st["sum"]
            sumsq[job.split] += st["sumsq"]
            npix[job.split] += st["count"]
            chips_of[job.scene.name] = chips_of.get(job.scene.name, 0) + len(part["images"])
            small.update(part.get("unrasterized", ()))  # absent in parts of earlier versions
            if job.split == "train" or not gsds:
                gsds += [job.scene.gsd] * len(part["images"])
        if npix["train"] + npix["val"] == 0:
            names = ", ".join(s.source for s in scenes)
            raise InputRasterError(
                f"no valid pixel to compute band statistics in {names}: every pixel is "
                f"nodata, NaN/inf, a fill value (magnitude 1e30 or more) or masked (or in chips below min_valid "
                f"{cfg.min_valid}); "
                "check the scenes' nodata and data")
        for sc in scenes:
            if not chips_of.get(sc.name):
                warnings.warn(f"{sc.source} gave no chip: no window has min_valid "
                              f"{cfg.min_valid} of valid pixels (not nodata, NaN/inf, fill values or masked)",
                              GeoSegWarning, stacklevel=3)
        f.write('], "annotations": [')
        n_ann = 0
        for job, off in zip(jobs, offsets, strict=True):
            part = json.loads(job.part_path.read_text())
            for ann in part["annotations"]:
                n_ann += 1
                ann["image_id"] = off + 1 + ann.pop("image")
                small.discard(ann["label_id"])  # it has pixels in another block's chips
                f.write(("," if n_ann > 1 else "") + json.dumps({"id": n_ann, **ann}))
        f.write("]}")
    summary.instances, summary.labels_small = n_ann, len(small)
    warn_small_labels(summary, gsds)
    src = "train" if npix["train"] > 0 else "val"
    n = npix[src]
    mean = sums[src] / n
    std = np.sqrt(np.maximum(sumsq[src] / n - mean * mean, 0.0))
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):  # e.g. float64 overflow
        raise InputRasterError(f"band statistics of {out} are not finite (mean {mean.tolist()}, "
                               f"std {std.tolist()}); check the scenes for extreme values")
    write_json(out / "stats.json", {
        "bands": count, "dtype": scenes[0].dtype, "scaling": [list(p) for p in scenes[0].scaling],
        "meaning": list(declared_order(scenes).meaning),
        "mean": mean.tolist(), "std": std.tolist(), "pixels": int(npix[src]), "stats_split": src,
        "classes": classes, "chips": {"train": summary.chips_train, "val": summary.chips_val},
        "labels_under_a_pixel": summary.labels_small,
        "tile": cfg.model_dump(mode="json"), **gsd_stats(gsds),
    }, indent=2)


def tile(
    scenes: Sequence[str | Path | SceneSource],
    labels: str | Path | None,
    out: str | Path,
    cfg: TileConfig | None = None,
    *,
    scheduler: Any = "threads",
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> TileSummary:
    """Tile scenes into chips with COCO instance annotations and band stats.

    Args:
        scenes: raster files, directories of rasters, URLs, STAC documents
            (:func:`geoseg.io.sources.list_scenes`).
        labels: vector file of instance polygons (None: negatives only).
        out: output directory (layout in docs/formats.md).
        cfg: tiling parameters (defaults when None).
        scheduler: Dask scheduler (see :func:`geoseg.parallel.compute`).
        overwrite: replace outputs of an earlier run with other parameters.
        skip_bad: skip unreadable scenes instead of failing.
        progress: show a progress bar (None: on a TTY).

    Returns:
        A :class:`TileSummary`.

    Raises:
        InputRasterError: a bad or too small scene (unless ``skip_bad``), band counts
            that differ, or no valid (finite, not nodata) pixel to compute statistics.
        InputVectorError: unreadable labels, labels without CRS or without geometry.
        OutputExistsError: ``out`` holds other outputs and ``overwrite`` is False.
    """
    t0 = time.perf_counter()
    cfg = cfg or TileConfig()
    check_scheduler(scheduler)
    out = check_writable(Path(out).resolve(), "--out", directory=True)
    good, bad = inspect_scenes(list_scenes(scenes), skip_bad=skip_bad)
    good, native = [s.at_gsd(cfg.gsd) for s in good], good  # --gsd: chips of every scene at one scale
    read_at = (native, good)  # warned of once the labels passed their checks
    good = drop_small_scenes(good, skip_bad, bad)
    if not good:
        raise InputRasterError("no readable scene to tile; check the inputs")
    same_kind(good)  # band counts, data types, declared scales/offsets
    grids = {s.name: window_grid(s.width, s.height, cfg.size, cfg.overlap) for s in good}
    area = place(cfg.aoi, good, grids) if cfg.aoi else None  # the labelled area: only its windows are tiled
    good = [s for s in good if area is None or s.name in area.keep]
    near = [(s.crs, s.footprint) for s in good]  # a country's labels for a few scenes: only theirs are repaired
    gdf = read_labels(labels, cfg.class_field, cfg.class_name, near=near) if labels is not None else None
    classes = (gdf.attrs.get("classes") if gdf is not None else None) or [cfg.class_name]  # of every label
    cat_of = {c: i + 1 for i, c in enumerate(classes)}
    by_crs: dict[str, Any] = {}  # the labels in each scene's CRS, before any warning: a reprojection may refuse them
    for s in good:
        if gdf is not None and s.crs not in by_crs:
            g = to_crs(gdf, s.crs, f"--labels {labels}")  # warns where PROJ lacks a datum grid
            by_crs[s.crs] = (g.geometry.to_numpy(), g.sindex)
    warn_upsampling(*read_at)
    summary = TileSummary(out_dir=out, scenes=len(good), scenes_skipped=bad,
                          labels=0 if gdf is None else len(gdf) + gdf.attrs["far"])  # far ones: outside

    if area is not None:
        summary.aoi = (f"--aoi {Path(cfg.aoi or '').name}: {sum(map(len, area.keep.values()))} of "
                       f"{sum(len(r) for s in good for r in grids[s.name])} windows meet it"
                       + (f"; {len(area.outside)} scene(s) away from it not tiled" if area.outside else ""))
    keep = area.keep if area is not None else None
    check_val_scenes(cfg.val_scenes, [s.name for s in good], {  # one held out but not tiled: told why
        **{Path(str(src)).stem: "skipped, --skip-bad" for src, _ in bad},
        **{n: "the --aoi does not meet it" for n in (area.outside if area is not None else [])}})
    sb, blocks, splits = split_scenes(good, grids, cfg, keep=keep)
    warn_shared_ground(good, grids, sb, splits, keep)
    warn_zero_frames(good)  # corners of 0 the scenes do not declare nodata
    summary.split_block = sb

    touched: set[int] = set()
    in_area: set[int] = set()
    jobs: list[BlockJob] = []
    beyond = [0, 0]  # chips over a chip away from the labels' extent, chips in all
    for s in good:
        inside = area.keep[s.name] if area is not None else None
        kept = [(i, j, w) for i, row in enumerate(grids[s.name]) for j, w in enumerate(row)
                if inside is None or (i, j) in inside]
        geoms, sindex = by_crs.get(s.crs, (np.empty(0, dtype=object), None))
        if sindex is not None:
            touched.update(sindex.query(s.footprint, predicate="intersects").tolist())
            beyond[0] += chips_beyond_labels(s, [w for _, _, w in kept], geoms)
            beyond[1] += len(kept)
        split_of = {b: splits[(s.name, b)] for b in blocks[s.name]}
        for b in blocks[s.name]:
            held = held_out(grids[s.name], sb, split_of, b) if gdf is not None else ()  # unlabelled: all used
            block_wins = [w for i, j, w in kept if (i // sb, j // sb) == b]
            for k in range(0, len(block_wins), TASK_WINDOWS):
                wins = tuple(block_wins[k:k + TASK_WINDOWS])
                outline = window_footprint(rasterio.windows.union(*wins), s.affine)
                idx = (np.sort(sindex.query(outline, predicate="intersects"))
                       if sindex is not None else np.empty(0, dtype=int))
                if area is not None:  # labels beyond the labelled area are not trusted: those meeting it, whole
                    idx = idx[shapely.intersects(area.geoms[s.name], geoms[idx])]
                    in_area.update(idx.tolist())
                jobs.append(BlockJob(
                    scene=s, block=b, windows=wins, split=splits[(s.name, b)], geoms=geoms[idx],
                    category_ids=np.array([cat_of[c] for c in gdf[CLASS].to_numpy()[idx]], dtype=int)
                    if gdf is not None else np.empty(0, dtype=int),
                    label_ids=gdf["label_id"].to_numpy()[idx] if gdf is not None
                    else np.empty(0, dtype=int),
                    images_dir=out / "images",
                    part_path=out / PARTS / f"{s.name}__{b[0]}_{b[1]}_{k // TASK_WINDOWS}.json",
                    min_valid=cfg.min_valid, compress=cfg.compress, held=held,
                    area=area.geoms[s.name] if area is not None else None,
                ))
    summary.labels_outside = summary.labels - len(touched)
    if touched and beyond[0] >= max(4, beyond[1] / 4):
        log.warning("%d of %d chips lie over a chip away from the labels' extent and are written as negatives: if "
                    "that land is unlabelled rather than empty, tile only the labelled area (--aoi with its "
                    "polygons) or add its labels", beyond[0], beyond[1])
    if gdf is not None and len(gdf) and not touched:  # before anything is written
        s = good[0]
        raise InputVectorError(
            f"none of the {len(gdf)} polygons of {labels} touches a scene (in {s.crs}: labels "
            f"{bounds_text(by_crs[s.crs][0])}, scene {s.name} {bounds_text([s.footprint])}); check that the labels' "
            "CRS is the one of their coordinates, or tile without --labels for negative chips only")
    if area is not None and touched and not in_area:  # an AOI of another district: negatives only, exit 0
        raise InputVectorError(f"none of the {len(touched)} labels of {labels} on the scenes meets --aoi {cfg.aoi}; "
                               "check that the AOI is the area those labels were mapped in (and its CRS)")
    manifest = manifest_of(cfg, good, Path(labels).resolve() if labels is not None else None, (sb, splits))
    prepare_out_dir(out, manifest, overwrite)
    chip_names = {f"{s.name}_{int(w.row_off)}_{int(w.col_off)}.tif"
                  for s in good for row in grids[s.name] for w in row}
    for p in remove_leftovers(out, keep=chip_names):
        log.info("removed %s, left by a killed run", p)

    pending = []
    for j in jobs:
        done = done_before(j.part_path, j.images_dir)
        if done is None:
            pending.append(j)
        else:
            summary.chips_done_before += done["chips"]
            summary.chips_low_valid += done["low_valid"]
            summary.chips_held += done.get("held", 0)  # part files of before the split count both as low_valid
    log.info("%d blocks to tile (%d done before)", len(pending), len(jobs) - len(pending))
    tasks = [delayed(tile_block, pure=False)(j) for j in pending]
    for c in compute(tasks, scheduler=scheduler, desc="tile", progress=progress):
        summary.chips_written += c["written"]
        summary.chips_done_before += c["existing"]
        summary.chips_low_valid += c["low_valid"]
        summary.chips_held += c["held"]

    finished = (out / "annotations.json").exists() and (out / "stats.json").exists()
    if pending or not finished:
        _assemble(out, jobs, classes, cfg, good, summary)
    else:
        summary.rewrote_outputs = False
        stats = json.loads((out / "stats.json").read_text())
        summary.chips_train, summary.chips_val = stats["chips"]["train"], stats["chips"]["val"]
        summary.labels_small = int(stats.get("labels_under_a_pixel", 0))
        with (out / "annotations.json").open() as f:
            summary.instances = len(json.load(f)["annotations"])
    summary.seconds = time.perf_counter() - t0
    metrics.summary(vars(summary))
    return summary
