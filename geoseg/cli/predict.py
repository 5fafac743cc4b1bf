"""`geoseg predict`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from geoseg.cli.options import overwrite_option, parse_bands, progress_option, scenes_argument, scheduler_option

if TYPE_CHECKING:
    from geoseg.io.sources import SceneSource


def _default(name: str) -> str:
    from geoseg.predict.config import default

    return f"  [default: {default(name)}]"


def _budget(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number in (0, 1] nor 'auto'") from None


def _gsd(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    if value is None or value in ("native", "model"):
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'native', 'model' nor metres per pixel") from None


def _ff_batch(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"{value!r} is neither a whole number >= 1 nor 'auto'")
    return n


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from geoseg.errors import ConfigError
    from geoseg.predict.memory import parse_size

    if value is None:
        return None
    try:
        return parse_size(value, "")
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not a size; write e.g. 8GiB, 512MiB or 8000000000 (bytes)") from None


@click.command("predict")
@scenes_argument
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="Run directory, .pt checkpoint, or export directory (onnx/tensorrt).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .gpkg, .geojson (in EPSG:4326), .fgb, .shp or .parquet (GeoParquet).")
@click.option("--budget", callback=_budget, help="Share of cells run at full resolution (1.0 is dense), "
              "or 'auto': the cells whose utility clears the model's calibrated threshold.  "
              "[default: the model's deadline, else auto when the model is calibrated, else its budget]")
@click.option("--deadline-ms", type=float, help="Per scene: run as many FF cells as this allows.")
@click.option("--backend", type=click.Choice(["torch", "onnx", "tensorrt"]), help=_default("backend"))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help=_default("device"))
@click.option("--block", type=int, help="Block side in pixels." + _default("block"))
@click.option("--watershed-halo", type=int, help="Pixels around a block seen by the watershed "
              "(largest object / 2)." + _default("watershed_halo"))
@click.option("--bands", "band_indexes", callback=parse_bands,
              help="1-based bands to read, e.g. 1,1,1 for a single band.")
@click.option("--simplify", type=float, help="Tolerance in metres." + _default("simplify"))
@click.option("--min-area", type=float, help="Smallest polygon in m²." + _default("min_area"))
@click.option("--regularize/--no-regularize", default=None,
              help="Square the outlines of every class to their dominant directions (--no-regularize: none).  "
              "[default: the model's postprocess.regularize; the buildings presets square 'building']")
@click.option("--regularize-tolerance", type=click.FloatRange(0, min_open=True), metavar="METRES",
              help="Steps smaller than this are squared away." + _default("regularize_tolerance"))
@click.option("--gsd", callback=_gsd, metavar="native|model|METRES",
              help="Ground pixel size scenes are read at: the model's training GSD ('model'), "
              "the scene's own ('native') or metres per pixel; polygons stay in the scene CRS."
              + _default("gsd"))
@click.option("--tta", type=click.Choice(["none", "flip", "d4"]),
              help="Test-time augmentation: average the maps over flips (2x model time) or the "
              "8 rotations and flips (8x)." + _default("tta"))
@click.option("--ff-batch", callback=_ff_batch, metavar="N|auto",
              help="FF cell tiles per model call, or 'auto': chosen by a probe of the FF call from the "
              "memory available, halved when the GPU runs out of memory." + _default("ff_batch"))
@click.option("--max-memory", callback=_size, metavar="SIZE",
              help="RAM this run may hold, e.g. 8GiB or 512MiB: bounds the FF batch and the Dask threads "
              "of a local run (a budget too small for one block is an error).")
@click.option("--overlaps", type=click.Choice(["once", "all"]),
              help="Objects where scenes overlap: once (the polygon of the scene that sees it deeper inside) "
                   "or all (one per scene)." + _default("overlaps"))
@click.option("--crs", metavar="CRS", help="CRS the polygons are written in (EPSG:4326, EPSG:32636, a WKT): one "
              "chosen for scenes far apart.  [default: the first scene's]")
@click.option("--prob-out", type=click.Path(path_type=Path),
              help="Also write extent probabilities as a Cloud-Optimized GeoTIFF.")
@click.option("--aoi", type=click.Path(path_type=Path), metavar="FILE",
              help="Vector file of polygons (any CRS): read only the blocks near them and write only the "
              "objects that meet them, whole.")
@scheduler_option
@overwrite_option
@progress_option
def predict_cmd(scenes: list[SceneSource], model: Path, out: Path, prob_out: Path | None, aoi: Path | None,
                scheduler: str, overwrite: bool, progress: bool | None, **options: object) -> None:
    """Find objects in SCENES (files, folders, URLs of COGs, STAC items) and write them as polygons.

    Routed inference: a cheap pass over every scene picks the cells worth a
    full-resolution pass (--budget or --deadline-ms); instances are cut by watershed
    and vectorized with class, score, area_m2 and scene attributes. A killed run
    resumes where it stopped when rerun with the same options.

    \b
    $ geoseg predict data/sample/kampala_blockB_z20.tif --model runs/b1 --out buildings.gpkg
    $ geoseg predict scenes/ --model export/ --backend onnx --budget 0.25 \\
          --scheduler tcp://10.0.0.5:8786 --out buildings.gpkg --prob-out probs.tif
    $ geoseg predict mosaic/ --model runs/b1 --aoi district.gpkg --out district_buildings.gpkg
    $ geoseg predict --stac-search https://earth-search.aws.element84.com/v1 \\
          --collection naip --bbox -97.75,30.25,-97.74,30.26 --model runs/b1 --out b.gpkg
    """
    from geoseg.config import load_config
    from geoseg.predict import PredictConfig, predict

    # options left out are None: PredictConfig's fields hold the defaults
    cfg = load_config(PredictConfig, None, {**options, "prob_out": str(prob_out) if prob_out else None,
                                            "aoi": str(aoi) if aoi else None})
    summary = predict(scenes, model, out, cfg, scheduler=scheduler, overwrite=overwrite,
                      progress=progress)
    for line in summary.lines():
        click.echo(line, err=True)
    click.echo(f"open {summary.out} in QGIS (Layer > Add Layer > Add Vector Layer)", err=True)
