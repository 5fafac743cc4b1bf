"""`geoseg evaluate`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("evaluate")
@click.argument("pred", type=click.Path(path_type=Path))
@click.argument("truth", type=click.Path(path_type=Path))
@click.option("--iou", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="IoU at which a predicted and a true polygon match (tp/fp/fn, F1).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the numbers to this JSON file (same key names).")
@click.option("--class-field", default="class", show_default=True,
              help="Class column; per-class numbers when both files have it; none: match regardless of class.")
@click.option("--score-field", default="score", show_default=True,
              help="Confidence column of PRED that ranks it for AP (another tool's: confidence, prob...).")
@click.option("--boundary-width", type=click.FloatRange(0, min_open=True), metavar="METRES",
              help="Band width of boundary IoU.  [default: 2% of each pair's bbox diagonal]")
@click.option("--multipart", type=click.Choice(["parts", "whole"]), default="parts", show_default=True,
              help="A MultiPolygon feature is one object per part (as tile trains) or one object.")
@click.option("--scenes", "scenes", multiple=True, metavar="SCENE",
              help="The predicted rasters (files or folders; repeat the option): --clip's footprint "
              "and --quicklook's background.")
@click.option("--clip", is_flag=True,
              help="Compare only inside the footprint of --scenes (where they hold valid pixels).")
@click.option("--aoi", type=click.Path(path_type=Path), metavar="FILE",
              help="Compare only inside the polygons of this vector file (any CRS).")
@click.option("--quicklook", "quicklook_png", type=click.Path(path_type=Path), metavar="PNG",
              help="Also draw the first scene (or a grey canvas) with both outlines into this PNG.")
def evaluate_cmd(pred: Path, truth: Path, iou: float, json_path: Path | None, class_field: str, score_field: str,
                 boundary_width: float | None, multipart: str, scenes: tuple[str, ...], clip: bool, aoi: Path | None,
                 quicklook_png: Path | None) -> None:
    """Compare predicted polygons PRED with true polygons TRUTH (any vector files, any CRS).

    Prints tp, fp, fn, precision, recall, F1 and mean IoU of the matches (one-to-one,
    greedy by IoU, SpaceNet style), COCO-style AP over IoU 0.50:0.05:0.95 ranked by the
    `--score-field` column (ap, ap50, ap75) and mean boundary IoU, overall and per class, then the
    outline quality of the matches: median corners per polygon (vertices, truth_vertices,
    vertex_ratio) and mean rectangularity (area over the minimum rotated rectangle's).

    \b
    $ geoseg evaluate buildings.gpkg data/sample/labels/buildings.gpkg --iou 0.5
    $ geoseg evaluate runs/b1/val.gpkg truth.geojson --class-field type --json metrics.json
    $ geoseg evaluate b.gpkg truth.gpkg --scenes data/sample/kampala_blockB_z20.tif --clip \\
          --quicklook look.png
    """
    from geoseg.aoi import areas_of, evaluate_within, read_within
    from geoseg.evaluate import format_report
    from geoseg.io.atomic import check_outputs, check_writable, write_json
    from geoseg.io.sources import list_scenes, scene_name
    from geoseg.quicklook import png_path

    if scenes and not clip and quicklook_png is None:  # before: read for nothing, the truth beyond them missed
        raise click.UsageError("--scenes is read by --clip and --quicklook only: add --clip to compare only "
                               "where the scenes hold data (else the truth beyond them counts as missed)")
    for path, what in ((json_path, "--json"), (quicklook_png, "--quicklook")):
        if path is not None:
            check_writable(path, what)
    if quicklook_png is not None:
        png_path(quicklook_png)
    rasters = [s.source for s in list_scenes(scenes)] if scenes else []
    check_outputs({"--json": json_path, "--quicklook": quicklook_png},
                  {"the predictions": pred, "the truth": truth, "a scene": rasters, "the AOI": aoi})
    areas = areas_of(rasters, clip, aoi)  # a country's truth for a few scenes: read only near them
    pred_gdf, truth_gdf = read_within(pred, truth, areas)
    report, pred_gdf, truth_gdf, notes = evaluate_within(
        pred_gdf, truth_gdf, scenes=rasters, clip=clip, aoi=aoi, multipart=multipart, areas=areas, iou=iou,
        class_field=class_field, score_field=score_field, boundary_width=boundary_width)
    click.echo(f"IoU >= {iou:g}: {pred} vs {truth}" + (f" ({', '.join(notes)})" if notes else ""))
    click.echo(format_report(report))
    if json_path is not None:
        write_json(json_path, report, indent=2, what="--json")
    if quicklook_png is not None:
        from geoseg.quicklook import quicklook

        title = f"{scene_name(rasters[0]) if rasters else pred.name}: F1 {report['f1']:.3f} at IoU {iou:g}"
        quicklook(rasters[0] if rasters else None, quicklook_png, pred=pred_gdf, truth=truth_gdf, title=title)
        click.echo(f"quick-look: {quicklook_png}", err=True)
