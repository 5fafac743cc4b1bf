"""What one export wrote and how closely it matches its reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Mask R-CNN exports: box corners may differ by this many times the tolerance, in pixels.
BOX_FACTOR = 10.0


@dataclass
class ExportReport:
    """What one export wrote and how closely it matches its reference.

    Attributes:
        out_dir: the export directory.
        format: ``"onnx"`` or ``"tensorrt"``.
        reference: what the graphs were compared with (``"torch"`` or ``"onnxruntime"``).
        max_abs_diff: largest absolute difference per graph (``pv``, ``ff``); for a Mask
            R-CNN export per output of its detect graph (``boxes`` in pixels, ``scores``, ``masks``).
        tolerance: the largest accepted.
        files: the files written.
        exporter: per graph, the ONNX exporter used (``"dynamo"`` or ``"torchscript"``).
        opset: ONNX opset of the graphs.
        fp16: whether the graphs compute in FP16.
        seconds: wall time of the export and its verification.
        detections: Mask R-CNN: detections compared (None for the routed model's graphs).
    """

    out_dir: Path
    format: str
    reference: str
    max_abs_diff: dict[str, float]
    tolerance: float
    files: list[Path] = field(default_factory=list)
    exporter: dict[str, str] = field(default_factory=dict)
    opset: int | None = None
    fp16: bool = False
    seconds: float = 0.0
    detections: int | None = None

    def lines(self) -> list[str]:
        """Human-readable summary: differences per graph, then the output paths."""
        how = ", ".join(f"{g} {e}" for g, e in self.exporter.items())
        extra = f"; exporter {how}, opset {self.opset}" if self.exporter else ""
        diffs = ", ".join(f"{g} {d:.2e}{' px' if g == 'boxes' else ''}" for g, d in self.max_abs_diff.items())
        tol = f"{self.tolerance:.0e}"
        if self.detections is not None:
            diffs += f" over {self.detections} detections"
            tol += f", boxes {BOX_FACTOR * self.tolerance:.0e} px"
        return [
            f"{self.format}{' (fp16)' if self.fp16 else ''}: max |difference| vs {self.reference}: "
            f"{diffs} (tolerance {tol}{extra}; {self.seconds:.1f} s)",
            *[f"wrote {p}" for p in self.files],
        ]
