"""The ONNX Runtime backend: ``pv.onnx`` and ``ff.onnx`` of an export directory.

An export of a Mask R-CNN model (``arch: maskrcnn``) holds one ``detect.onnx`` instead;
the backend then runs :meth:`OnnxBackend.detect` (:mod:`geoseg.backends.onnx_detect`) and
has no PV or FF graph.

Sessions use the CUDA execution provider when ONNX Runtime has it (the
``onnxruntime-gpu`` package on a machine with CUDA) and the CPU provider otherwise.

Threads: ONNX Runtime's intra-op threads spin after each run by default, which steals the
cores that Dask's reading and stitching threads need (see STACK.md). Sessions here turn
spinning off, run ops sequentially (one inter-op thread) and use ``threads`` intra-op
threads, by default the cores this process may use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from geoseg.backends.base import Backend, available_cores, export_file, read_export_meta
from geoseg.errors import CheckpointError, ConfigError, DependencyError, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise :class:`DependencyError` with the pip command.

    Its telemetry is turned off (``ORT_DISABLE_TELEMETRY=1`` unless the user set it): it
    would write a device id under the user's cache folder and a session file in TMPDIR,
    and geoseg writes nothing outside the outputs it is asked for.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError('onnxruntime is not installed; pip install -c constraints.txt onnxruntime '
                              '(or onnxruntime-gpu on a machine with CUDA)') from None
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for a device name.

    Args:
        device: ``"auto"`` (CUDA if ONNX Runtime has it, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns:
        Providers in order of preference (the CPU last, as the fallback).

    Raises:
        DependencyError: ``cuda`` asked for but this onnxruntime has no CUDA provider.
    """
    ort = import_onnxruntime()
    has_cuda = CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise DependencyError("onnxruntime has no CUDAExecutionProvider; on a machine with CUDA, "
                              "pip uninstall onnxruntime && pip install -c constraints.txt onnxruntime-gpu, "
                              "or use --device cpu")
    if device == "cpu" or not has_cuda:
        return [CPU]
    return [CUDA, CPU]


def session_options(threads: int | None = None) -> Any:
    """Session options that share the CPU politely (no spinning, sequential ops).

    Args:
        threads: intra-op threads (default: the cores this process may use).

    Returns:
        An ``onnxruntime.SessionOptions``.
    """
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or available_cores())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: no "unused initializer" chatter
    return so


class OnnxBackend(Backend):
    """Both graphs of an export directory in ONNX Runtime sessions.

    Args:
        export_dir: the output of ``geoseg export --format onnx``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`providers_for`).
        ff_batch: most FF tiles per session run.
        threads: intra-op threads per session (default: available cores).

    Raises:
        CheckpointError: not an export directory, or an ONNX file that does not load.
        DependencyError: onnxruntime (or its CUDA provider, for ``cuda``) is missing.
    """

    name: ClassVar[str] = "onnx"

    def __init__(self, export_dir: str | Path, device: str = "auto", ff_batch: int = 32,
                 threads: int | None = None) -> None:
        root = Path(export_dir)
        meta = read_export_meta(root)
        providers = providers_for(device)
        super().__init__(meta, root / "geoseg-export.json", "cuda" if providers[0] == CUDA else "cpu",
                         ff_batch)
        so = session_options(threads)
        self.providers = providers
        if meta.arch == "maskrcnn":  # one detect graph, no PV/FF
            from geoseg.backends.onnx_detect import OnnxDetector

            self._detector = OnnxDetector(self._session(export_file(root, meta, "onnx", "detect"), so, providers))
            return
        self._pv_sess = self._session(export_file(root, meta, "onnx", "pv"), so, providers)
        self._ff_sess = self._session(export_file(root, meta, "onnx", "ff"), so, providers)
        self._pv_in = self._pv_sess.get_inputs()[0].name
        self._ff_in = self._ff_sess.get_inputs()[0].name
        # exports before regions had a fixed FF tile side: such graphs run single cells only
        if any(isinstance(d, int) for d in self._ff_sess.get_inputs()[0].shape[2:]):
            self.region_side = 1

    @staticmethod
    def _session(path: Path, so: Any, providers: list[str]) -> Any:
        ort = import_onnxruntime()
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped exceptions
            first = first_line(err, 160)
            raise CheckpointError(f"onnxruntime cannot load {path} ({first}); the file is corrupt "
                                  "or from a newer exporter: re-run geoseg export") from None

    def detect(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Mask R-CNN detections of a ``detect.onnx`` export, as the torch backend's ``detect``.

        Args:
            images: normalised images (B, C_in, H, W), H and W any.

        Returns:
            Per image ``boxes``, ``scores``, ``labels``, ``masks`` (CPU torch tensors).

        Raises:
            ConfigError: the export is a routed model's (no detect graph).
        """
        detector = self.__dict__.get("_detector")
        if detector is None:
            raise ConfigError(f"{self.source} is a routed model's export: it has no detect graph; run it with pv/ff")
        dets: list[dict[str, Any]] = detector.detect(self._as_input(images, "images"))
        return dets

    def _pv(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._routed()
        logits, utility = self._pv_sess.run(None, {self._pv_in: small})[:2]
        return logits, utility

    def _ff(self, tiles: np.ndarray) -> np.ndarray:
        self._routed()
        out: np.ndarray = self._ff_sess.run(None, {self._ff_in: tiles})[0]
        return out

    def _routed(self) -> None:
        if "_detector" in self.__dict__:
            raise ConfigError(f"{self.source} is a Mask R-CNN export: it has a detect graph, no PV or FF")

    def close(self) -> None:
        """Drop the sessions."""
        self.__dict__.pop("_detector", None)
        self.__dict__.pop("_pv_sess", None)
        self.__dict__.pop("_ff_sess", None)
