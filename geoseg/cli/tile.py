"""`geoseg tile`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from geoseg.cli.options import overwrite_option, progress_option, scenes_argument, scheduler_option
from geoseg.config import MAX_SEED

if TYPE_CHECKING:
    from geoseg.io.sources import SceneSource


@click.command("tile")
@scenes_argument
@click.option("--labels", type=click.Path(path_type=Path),
              help="Vector file of instance polygons (GeoPackage, GeoJSON, Shapefile).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML with tile parameters; options given here win.")
@click.option("--size", type=int, help="Chip side in pixels.  [default: 512]")
@click.option("--overlap", type=int, help="Pixels shared by neighbouring chips.  "
              "[default: 64, or --size / 8 under 512]")
@click.option("--min-valid", type=float, help="Skip chips with a smaller share of valid pixels.  [default: 0.5]")
@click.option("--val-fraction", type=float, help="Share of split blocks in validation.  [default: 0.2]")
@click.option("--split-block", type=int, help="Side of a split block in chips.  [default: 4]")
@click.option("--val-scenes", multiple=True, help="Glob of scene names put wholly in validation (repeatable).")
@click.option("--class-field", help="Label column holding the class; none: every label is --class-name "
              "(Overture's mostly empty 'class').  [default: class]")
@click.option("--class-name", help="Class of every label when --class-field is absent.  [default: object]")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="Seed of the train/val split.  [default: 0]")
@click.option("--gsd", type=click.FloatRange(0, min_open=True), metavar="METRES",
              help="Resample every scene to this ground pixel size, so scenes of mixed resolution "
              "train together.  [default: each scene's own]")
@click.option("--aoi", type=click.Path(path_type=Path), metavar="FILE",
              help="Vector file of the labelled area's polygons (any CRS): tile only the windows that meet it, "
              "mask the pixels beyond it, keep the labels that meet it.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable scenes (listed in the summary) instead of failing.")
@scheduler_option
@overwrite_option
@progress_option
def tile_cmd(scenes: list[SceneSource], labels: Path | None, out: Path, config_path: Path | None,
             size: int | None, overlap: int | None, min_valid: float | None,
             val_fraction: float | None, split_block: int | None, val_scenes: tuple[str, ...],
             class_field: str | None, class_name: str | None, seed: int | None,
             gsd: float | None, aoi: Path | None, skip_bad: bool, scheduler: str, overwrite: bool,
             progress: bool | None) -> None:
    """Cut SCENES (files or folders of GeoTIFFs, URLs of COGs, STAC items) into chips with COCO instance masks.

    Writes OUT/images/<scene>_<row>_<col>.tif, OUT/annotations.json (COCO, RLE masks,
    each image with its scene, window, CRS, transform and train/val split) and
    OUT/stats.json (per-band mean/std of the train chips). A rerun resumes.

    \b
    $ geoseg tile data/sample --labels data/sample/labels/buildings.gpkg --out patches/
    $ geoseg tile scenes/*.tif --labels roofs.gpkg --class-field type --size 1024 \\
          --scheduler tcp://10.0.0.5:8786 --out patches/
    $ geoseg tile https://example.org/cogs/kampala.tif items.json --asset visual \\
          --labels roofs.gpkg --out patches/
    $ geoseg tile city/ --labels roofs.gpkg --aoi mapped_tasks.gpkg --out patches/
    """
    from geoseg.config import load_config
    from geoseg.tile import TileConfig, tile

    overrides = {"size": size, "overlap": overlap, "min_valid": min_valid,
                 "val_fraction": val_fraction, "split_block": split_block,
                 "val_scenes": list(val_scenes) or None, "class_field": class_field,
                 "class_name": class_name, "seed": seed, "gsd": gsd, "aoi": str(aoi) if aoi else None}
    cfg = load_config(TileConfig, config_path, overrides)
    summary = tile(scenes, labels, out, cfg, scheduler=scheduler, overwrite=overwrite,
                   skip_bad=skip_bad, progress=progress)
    for line in summary.lines():
        click.echo(line, err=True)
