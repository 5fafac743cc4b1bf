"""`geoseg export`."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import overwrite_option


@click.command("export")
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="Run directory or .pt checkpoint (for --format tensorrt also an ONNX export directory).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True,
              help="ONNX graphs, or TensorRT engines built from them (needs a GPU and the gpu extra).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export directory to create.")
@click.option("--fp16", is_flag=True, help="Compute in half precision (ONNX: FP16 graphs; TensorRT: FP16 kernels).")
@click.option("--opset", type=int, help="ONNX opset.  [default: the exporter's]")
@click.option("--tolerance", type=float,
              help="Largest max |difference| to the reference accepted.  [default: 1e-3; 5e-2 with --fp16]")
@click.option("--pv-max-side", type=int, default=1024, show_default=True,
              help="TensorRT: largest PV input side, in pixels at 1/scale (predict --block / scale + context).")
@click.option("--ff-max-batch", type=int, default=128, show_default=True,
              help="TensorRT: largest FF batch (predict --ff-batch may not exceed it).")
@overwrite_option
def export_cmd(model: Path, fmt: str, out: Path, fp16: bool, opset: int | None, tolerance: float | None,
               pv_max_side: int, ff_max_batch: int, overwrite: bool) -> None:
    """Export the model's PV and FF graphs to ONNX (or TensorRT engines) and verify them.

    Writes OUT/pv.onnx, OUT/ff.onnx (plus OUT/pv.engine, OUT/ff.engine for tensorrt) and
    OUT/geoseg-export.json, which predict reads with --backend onnx or tensorrt. Each graph
    is run on random inputs in the exported runtime and compared with torch (ONNX) or
    ONNX Runtime (TensorRT); a difference above --tolerance fails and writes nothing.

    A Mask R-CNN model (model.arch: maskrcnn) exports one graph, OUT/detect.onnx (image in;
    boxes, scores, labels, masks out), compared with torch on two sample windows; it has
    no TensorRT engines and no --fp16.

    \b
    $ geoseg export --model runs/b1 --out export/b1
    $ geoseg export --model runs/b1 --format tensorrt --fp16 --out export/b1-trt
    $ geoseg predict scenes/ --model export/b1 --backend onnx --out buildings.gpkg
    """
    from geoseg.export.stage import export_model

    profiles = None
    if fmt == "tensorrt":
        from geoseg.export.tensorrt import TrtProfiles

        profiles = TrtProfiles(pv_max_side=pv_max_side, ff_max_batch=ff_max_batch)
    reports = export_model(model, out, fmt, fp16=fp16, opset=opset, tolerance=tolerance,  # type: ignore[arg-type]
                           overwrite=overwrite, profiles=profiles)
    for report in reports:
        for line in report.lines():
            click.echo(line, err=True)
