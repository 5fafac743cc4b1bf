"""`geoseg calibrate`."""

from __future__ import annotations

from pathlib import Path

import click


def _threshold(t: float) -> str:
    return "never calibrated" if t != t else "FF on every cell" if t == float("-inf") else (
        "FF on no cell" if t == float("inf") else f"{t:.3g}")


@click.command("calibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--patches", type=click.Path(path_type=Path),
              help="Output of geoseg tile whose validation chips to calibrate on (default: the run's own).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the model runs.")
def calibrate_cmd(model: Path, patches: Path | None, device: str) -> None:
    """Set the --budget auto threshold of a trained model again, on validation chips, without training.

    Training sets it on its own validation chips. Calibrate again on labelled chips like
    the scenes you predict (empty land included: a dense training area lacks it, and auto
    then runs FF everywhere), or on the run's own chips after an upgrade of geoseg changed
    the rule. MODEL's checkpoint (a run's checkpoints/best.pt, or a .pt file) is rewritten;
    export again for --backend onnx/tensorrt.

    \b
    $ geoseg tile rural_scenes/ --labels rural.gpkg --val-fraction 1 --out rural_chips/
    $ geoseg calibrate runs/b1 --patches rural_chips/
    $ geoseg predict rural_scenes/ --model runs/b1 --budget auto --out buildings.gpkg
    """
    from geoseg.train.recalibrate import recalibrate

    r = recalibrate(model, patches, device)
    click.echo(f"{r.checkpoint}: --budget auto threshold {_threshold(r.after)} (was {_threshold(r.before)}); "
               f"{r.share:.0%} of the cells of {r.chips} validation chips run FF", err=True)
