"""`geoseg search` (and the report of `geoseg train` for a ``task: search`` config)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from geoseg.cli.options import overwrite_option, parse_bands, progress_option, scenes_argument, scheduler_option

if TYPE_CHECKING:
    from geoseg.io.sources import SceneSource


@click.command("search")
@scenes_argument
@click.option("--examples", required=True, type=click.Path(path_type=Path),
              help="Vector file of polygons or boxes drawn around examples, or points on small ones "
                   "(any CRS, at least one).")
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="Run directory of a `task: search` training, .pt checkpoint, or its ONNX export folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .gpkg, .geojson, .fgb, .shp or .parquet of boxes as polygons.")
@click.option("--min-score", type=float, help="Keep boxes scoring at least this.  [default: 0.3]")
@click.option("--min-similarity", callback=lambda ctx, param, v: _auto_or_float(v, "--min-similarity"),
              help="Keep boxes whose similarity (cosine of kind embeddings) to the examples reaches this; "
                   "auto: the threshold calibrated in training; -1: none.  [default: auto]")
@click.option("--max-results", type=int, help="Keep the best N boxes of the run.")
@click.option("--name", help="Name of the example set in the output (default: the examples file's stem).")
@click.option("--backend", type=click.Choice(["torch", "onnx"]),
              help="torch, or onnx (ONNX Runtime; a run directory is exported to RUN/search-onnx first).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where the model runs.")
@click.option("--block", type=int, help="Block side in pixels (memory bound).  [default: 1024]")
@click.option("--halo", type=int, help="Pixels read around a block (half the largest object).  [default: 64]")
@click.option("--bands", "band_indexes", callback=parse_bands, help="1-based bands to read, e.g. 1,1,1.")
@click.option("--aoi", type=click.Path(path_type=Path), metavar="FILE",
              help="Vector file of polygons (any CRS): search only the blocks near them, keep the boxes meeting them.")
@click.option("--crs", metavar="CRS", help="CRS the boxes are written in (EPSG:4326, EPSG:32636, a WKT).  "
              "[default: the first scene's]")
@scheduler_option
@overwrite_option
@progress_option
def search_cmd(scenes: list[SceneSource], examples: Path, model: Path, out: Path, scheduler: str,
               overwrite: bool, progress: bool | None, **options: Any) -> None:
    """Find more objects like the EXAMPLES in SCENES, as boxes in the scene CRS (or --crs).

    The chips under the examples are the templates of a reference detector trained
    with `geoseg train` on a `task: search` config; every box has score, similarity
    (to the examples), scene and examples (the example set's name). A killed run
    resumes when rerun.

    \b
    $ geoseg search scenes/ --examples tanks.gpkg --model runs/search --out tanks_found.gpkg
    $ geoseg search scenes/ --examples tanks.gpkg --model runs/search --backend onnx \\
          --min-score 0.5 --max-results 200 --out tanks_found.geojson
    """
    from geoseg.config import load_config
    from geoseg.search import SearchConfig, search

    cfg = load_config(SearchConfig, None, {**options, "aoi": str(options["aoi"]) if options.get("aoi") else None})
    summary = search(list(scenes), examples, model, out, cfg, scheduler=scheduler,
                     overwrite=overwrite, progress=progress)
    for line in summary.lines():
        click.echo(line, err=True)


def _auto_or_float(value: str | None, name: str) -> str | float | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is neither auto nor a number", param_hint=name) from None


def train_search_cmd(config: Path, patches: Path | None, out: Path, sets: Sequence[str] = (),
                     **kwargs: Any) -> None:
    """`geoseg train` on a ``task: search`` config: train a reference detector."""
    from geoseg.config import load_config
    from geoseg.errors import ConfigError
    from geoseg.search.train import SearchTrainConfig, train_search

    cfg = load_config(SearchTrainConfig, config, sets=sets)
    patches = patches or (Path(cfg.patches) if cfg.patches else None)
    if patches is None:
        raise ConfigError(f"no patches directory: pass --patches or set 'patches' in {config}")
    result = train_search(cfg, patches, out, **kwargs)
    last = result.history[-1] if result.history else {}
    click.echo(f"trained {result.epochs} epochs; last AP50 {last.get('ap50', float('nan')):.3f}; "
               f"best AP50 {result.best['value']:.3f} at epoch {result.best['epoch']}", err=True)
    best_row = next((r for r in result.history if r["epoch"] == result.best["epoch"]), {})
    if "min_similarity" in best_row:
        click.echo(f"similarity threshold (search --min-similarity auto): {best_row['min_similarity']:.3f}, "
                   f"validation F1 {best_row['f1_ungated']:.3f} -> {best_row['f1']:.3f}", err=True)
    click.echo(f"run: {out} (checkpoints/best.pt, metrics.csv, curves.png)", err=True)
