"""The output folder of `geoseg tile`: its manifest, chip profiles, leftovers of killed runs."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from geoseg import __version__
from geoseg.errors import GeoSegWarning, OutputExistsError
from geoseg.io.atomic import atomic_path, write_json
from geoseg.io.rasters import SceneInfo
from geoseg.io.stamps import input_stamp, read_stamp
from geoseg.tile.config import TileConfig

log = logging.getLogger(__name__)

PARTS = ".parts"
MANIFEST = "tile.json"
OWNED = ("images", PARTS, "annotations.json", "stats.json", MANIFEST)
#: Temporary names of :func:`geoseg.io.atomic.atomic_path` (``.<stem>.<random 8>.<ext>``);
#: a killed run leaves them behind.
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)*$")


def chip_profile(scene: SceneInfo, window: Window, compress: str) -> dict[str, Any]:
    """The GeoTIFF profile of the chip of ``window``: the scene's georeferencing, composed."""
    h, w = int(window.height), int(window.width)
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": w, "height": h, "count": scene.count, "dtype": scene.dtype,
        "crs": scene.rio_crs, "transform": rasterio.windows.transform(window, scene.affine),
        "nodata": scene.nodata,
    }
    if compress != "none":
        profile["compress"] = compress
        if np.issubdtype(np.dtype(scene.dtype), np.integer):
            profile["predictor"] = 2
    if w % 16 == 0 and h % 16 == 0:
        profile.update(tiled=True, blockxsize=min(256, w), blockysize=min(256, h))
    return profile


def write_chip(path: Path, profile: dict[str, Any], data: np.ndarray, mask: np.ndarray, scene: SceneInfo) -> None:
    """Write one chip (atomically): its pixels as stored, the scene's declarations, its mask.

    Declarations: the bands' scales/offsets and what each holds (colour interpretation or description).
    """
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        if scene.scaling:  # what the stored values stand for, as in the scene (QGIS shows them)
            dst.scales, dst.offsets = zip(*scene.scaling, strict=True)
        if any(scene.meaning):  # what each band holds, as the scene declares it (a BGR scene stays BGR)
            names = ColorInterp.__members__
            dst.colorinterp = [names[m] if m in names else ColorInterp.undefined for m in scene.meaning]
            for i, m in enumerate(scene.meaning, 1):
                if m and m not in names:
                    dst.set_band_description(i, m)
        if scene.nodata is None and (scene.has_mask or not mask.all()):
            dst.write_mask(mask)  # NaN/inf pixels too: invalid in the chip


def manifest_of(cfg: TileConfig, scenes: Sequence[SceneInfo], labels: Path | None,
                split: tuple[int, Mapping[tuple[str, tuple[int, int]], str]] | None = None) -> dict[str, Any]:
    """What a rerun must match to resume: parameters, input stamps, how each scene is read, the split.

    How a scene is read (:func:`~geoseg.io.stamps.read_stamp`: its grid, bands, validity) is in
    it so that chips another geoseg revision cut otherwise from the same file with the same
    options (a stretched grid not squared, an alpha band read as data) never resume; so is the
    train/val split (the block side and the val blocks), which another revision may draw
    otherwise: resumed, its chips' held pixels would follow one split and the new ones another.
    """
    sb, splits = split if split is not None else (0, {})
    return {
        "split": {"block": sb, "val": sorted(f"{n}:{b[0]},{b[1]}" for (n, b), v in splits.items() if v == "val")},
        "tile": cfg.model_dump(mode="json"),
        "scenes": [input_stamp(s.source) for s in scenes],
        "read": [read_stamp(s) for s in scenes],
        "labels": input_stamp(labels) if labels is not None else None,
        "aoi": input_stamp(Path(cfg.aoi).resolve()) if cfg.aoi else None,
    }


#: What differs between a manifest and a rerun's, in the words of tile's refusal.
_DIFFERS = {"tile": "tile options", "scenes": "the scene files", "labels": "the labels", "aoi": "the --aoi file",
            "read": "how the scenes are read: another geoseg revision, or their grid, bands or mask changed",
            "split": "the train/val split: another geoseg revision draws it otherwise"}


def prepare_out_dir(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Check that ``out`` is empty or an earlier run with the same manifest; create it.

    Raises:
        OutputExistsError: ``out`` holds other outputs and ``overwrite`` is False.
    """
    mpath = out / MANIFEST
    if overwrite:
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif mpath.exists():
        try:
            old = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is None or old.get("params") != manifest:
            params = old.get("params") if isinstance(old, dict) else None
            before = params if isinstance(params, dict) else {}
            what = ([_DIFFERS[k] for k in _DIFFERS if before.get(k) != manifest.get(k)] if before
                    else [f"an unreadable {MANIFEST}"])
            what = what[:-1] if len(what) > 1 and what[-1] == _DIFFERS["split"] else what  # follows the others
            raise OutputExistsError(
                f"{out} holds chips tiled with other parameters or inputs ({', '.join(what)}); "
                "pass --overwrite to replace them, or choose another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise OutputExistsError(
            f"{out} is not empty and was not written by geoseg tile; "
            "pass --overwrite or choose an empty --out"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / PARTS).mkdir(exist_ok=True)
    if not mpath.exists():
        write_json(mpath, {"geoseg_version": __version__, "params": manifest}, indent=2)




def remove_leftovers(out: Path, keep: Collection[str] = ()) -> list[Path]:
    """Remove the temporary files a killed run left in ``out``, ``images/`` and the parts.

    Writes are atomic (a temporary name, then a rename), so a kill leaves temporaries
    (and their GDAL side-cars) but never a half-written file under its final name.

    Args:
        out: the output folder of `geoseg tile`.
        keep: names never removed (the chips of this run, whatever their names).

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    for folder in (out, out / "images", out / PARTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name not in keep and _TEMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def gsd_stats(gsds: Sequence[float]) -> dict[str, Any]:
    """``gsd`` (median metres per pixel of the train chips) and ``gsd_range`` for stats.json.

    A checkpoint carries ``gsd`` so that predict reads scenes at the scale the model learned.
    """
    g = np.asarray([v for v in gsds if np.isfinite(v)], dtype=np.float64)
    if not len(g):
        return {}
    return {"gsd": round(float(np.median(g)), 6), "gsd_range": [round(float(g.min()), 6), round(float(g.max()), 6)]}


def done_before(part_path: Path, images_dir: Path) -> dict[str, int] | None:
    """The counts of a task an earlier run finished; None when it must run (again).

    A task runs again when its part file is missing or unreadable, or when a chip it
    lists is gone (deleted by hand): a rerun repairs the output instead of trusting it.
    """
    if not part_path.exists():
        return None
    try:
        part = json.loads(part_path.read_text())
        counts: dict[str, int] = part["counts"]
        names = [im["file_name"] for im in part["images"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((images_dir / n).is_file() for n in names):
        log.info("%s lists chips that are missing: tiling them again", part_path.name)
        return None
    return counts


@dataclass
class TileSummary:
    """What a `geoseg tile` run did."""

    out_dir: Path
    scenes: int = 0
    scenes_skipped: list[tuple[str, str]] = field(default_factory=list)
    chips_written: int = 0
    chips_done_before: int = 0
    chips_low_valid: int = 0  # under min_valid valid pixels (nodata, NaN, masked)
    chips_held: int = 0  # valid, but under min_valid once another split's pixels (or beyond --aoi) are cut
    chips_train: int = 0
    chips_val: int = 0
    instances: int = 0
    labels: int = 0
    labels_outside: int = 0
    labels_small: int = 0  # labels in chips that cover no pixel centre of any (under the GSD)
    rewrote_outputs: bool = True
    split_block: int = 0
    seconds: float = 0.0
    aoi: str = ""

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [
            f"scenes: {self.scenes} tiled, {len(self.scenes_skipped)} skipped",
            f"chips: {self.chips_written} written, {self.chips_done_before} already done, "
            f"{self.chips_low_valid + self.chips_held} skipped ({self.chips_low_valid} mostly nodata, "
            f"{self.chips_held} mostly the other split's pixels{' or beyond --aoi' if self.aoi else ''}); "
            f"{self.chips_train} train / {self.chips_val} val (split blocks of "
            f"{self.split_block}x{self.split_block} chips)",
            f"instances: {self.instances} in chips; labels: {self.labels}, "
            f"{self.labels_outside} outside every scene"
            + (f", {self.labels_small} covering no pixel centre" if self.labels_small else ""),
            f"output: {self.out_dir} ({self.seconds:.1f} s)",
        ] + ([self.aoi] if self.aoi else [])
        out += [f"skipped {p}: {why}" for p, why in self.scenes_skipped]
        return out


def warn_small_labels(summary: TileSummary, gsds: list[float]) -> None:
    """Warn when 1 % or more of the labels on the scenes cover no pixel centre of any chip.

    They are in no chip's masks, so their pixels train as background: buildings mapped
    from 50 cm imagery tiled at 10 m, or points buffered by a few centimetres.
    """
    on = summary.labels - summary.labels_outside
    n = summary.labels_small
    if not n or n < 0.01 * on:
        return
    gsd = f"{min(gsds):.3g} m" if gsds and min(gsds) == max(gsds) else (
        f"{min(gsds):.3g}-{max(gsds):.3g} m" if gsds else "the chips' ground pixel size")
    warnings.warn(f"{n} of the {on} labels on the scenes ({100 * n / on:.0f} %) cover no pixel centre of any chip "
                  f"at {gsd} (objects of about a pixel or less): they are in no mask and their pixels train as "
                  "background; tile at a finer --gsd (imagery that shows them), or leave such objects out of "
                  "the labels", GeoSegWarning, stacklevel=3)
