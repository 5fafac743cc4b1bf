"""The ``detect`` graph of a Mask R-CNN export in ONNX Runtime (``geoseg export`` of ``arch: maskrcnn``).

The graph (:mod:`geoseg.export.maskrcnn`) takes one normalised image ``image`` (1, C_in, H, W),
H and W any, and returns ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) int64 and
``masks`` (N, 1, M, M): :meth:`geoseg.models.maskrcnn.MaskRCNNModel.detect` of that image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Output names of the detect graph, in order.
DETECT_OUTPUTS = ("boxes", "scores", "labels", "masks")


class OnnxDetector:
    """One ONNX Runtime session of a ``detect`` graph.

    Args:
        session: an ``onnxruntime.InferenceSession`` of the graph.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self._input = session.get_inputs()[0].name

    def detect(self, images: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """Detections per image, as :meth:`MaskRCNNModel.detect` returns them (CPU tensors).

        Args:
            images: normalised float32 images; each runs alone (the graph takes one).

        Returns:
            Per image ``boxes``, ``scores``, ``labels`` and ``masks``, best score first.

        Shape:
            - images: (B, C_in, H, W)
        """
        out = []
        for image in images:
            got = self.session.run(None, {self._input: np.ascontiguousarray(image[None], dtype=np.float32)})
            out.append({name: torch.from_numpy(np.asarray(value))
                        for name, value in zip(DETECT_OUTPUTS, got, strict=True)})
        return out

