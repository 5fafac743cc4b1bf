"""`geoseg export`: the routed model's two graphs as ONNX and TensorRT engines, verified.

What is exported (see docs/architecture.md, "export")::

    pv.onnx   small (B, C_in, h, w)            -> pv_logits (B, C, h, w), utility (B, h', w')
    ff.onnx   tiles (N, C_in, cell+2h, cell+2h) -> ff_logits (N, C, cell, cell)

``downsample``, ``pad``, the router and ``fuse`` stay in Python. Enhance is inside both
graphs. Axes marked dynamic: PV batch, height and width; FF batch.

Every export is checked before it is kept (:mod:`geoseg.export.verify`): each graph runs on
random inputs of two batch sizes (and, for PV, two spatial sizes) in the exported runtime
and in the reference (torch for ONNX, ONNX Runtime for TensorRT); the largest absolute
difference must stay within a tolerance (1e-3, or 5e-2 for FP16) or :class:`ExportError`
is raised. The output directory is written under a temporary name and renamed when
complete, so a failed export leaves nothing behind. Format: ``docs/export.md``.

- :mod:`geoseg.export.onnx`: :func:`export_onnx`;
- :mod:`geoseg.export.maskrcnn`: a Mask R-CNN model's one ``detect`` graph (TorchScript
  exporter, dynamic height and width), verified on sample windows against torch;
- :mod:`geoseg.export.tensorrt`: engines built from an ONNX export (GPU extra);
- :mod:`geoseg.export.verify`: the comparison of two backends;
- :mod:`geoseg.export.stage`: :func:`~geoseg.export.stage.export_model`, what `geoseg export` runs.
"""

from geoseg.export.onnx import export_onnx
from geoseg.export.report import ExportReport
from geoseg.export.verify import DEFAULT_TOLERANCE, FP16_TOLERANCE, ExportError

__all__ = ["DEFAULT_TOLERANCE", "FP16_TOLERANCE", "ExportError", "ExportReport", "export_onnx"]
