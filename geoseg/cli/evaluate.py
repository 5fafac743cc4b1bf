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
              help="Class column; per-class numbers when both files have it.")
@click.option("--boundary-width", type=click.FloatRange(0, min_open=True), metavar="METRES",
              help="Band width of boundary IoU.  [default: 2% of each pair's bbox diagonal]")
def evaluate_cmd(pred: Path, truth: Path, iou: float, json_path: Path | None, class_field: str,
                 boundary_width: float | None) -> None:
    """Compare predicted polygons PRED with true polygons TRUTH (any vector files, any CRS).

    Prints tp, fp, fn, precision, recall, F1 and mean IoU of the matches (one-to-one,
    greedy by IoU, SpaceNet style), COCO-style AP over IoU 0.50:0.05:0.95 ranked by the
    `score` column (ap, ap50, ap75) and mean boundary IoU, overall and per class.

    \b
    $ geoseg evaluate buildings.gpkg data/sample/labels/buildings.gpkg --iou 0.5
    $ geoseg evaluate runs/b1/val.gpkg truth.geojson --class-field type --json metrics.json
    """
    from geoseg.evaluate import evaluate, format_report
    from geoseg.io.atomic import check_writable, write_json

    if json_path is not None:
        check_writable(json_path, "--json")
    report = evaluate(pred, truth, iou=iou, class_field=class_field, boundary_width=boundary_width)
    click.echo(f"IoU >= {iou:g}: {pred} vs {truth}")
    click.echo(format_report(report))
    if json_path is not None:
        write_json(json_path, report, indent=2, what="--json")
