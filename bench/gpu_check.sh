#!/usr/bin/env bash
# One prepared GPU check: everything in geoseg that needs CUDA, in one run, one JSON report.
#
#   bash bench/gpu_check.sh [REPORT.json]        # or: make gpu-check
#
# Runs on a bare machine with only this repository: it creates the virtual environment
# ($VENV, default .venv) with `pip install -c constraints.txt -e ".[dev]"` when geoseg is not
# installed there, then tries the optional GPU packages (onnxruntime-gpu, tensorrt), and
# goes on without whichever does not install. GPU_CHECK_NO_INSTALL=1 installs nothing: the
# checks run in $PYTHON as it is (a machine without registries, its packages carried in and
# put on PYTHONPATH with the repository root). The checks themselves (bench/gpu_check.py)
# get at most 8 minutes on one H100/H200; each section that the machine cannot run (no
# GPU, no package, no time left) is reported as skipped with its reason. The report is
# rewritten after every section, so a run cut short still leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPORT="${1:-outputs/gpu-check.json}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-480}"
export NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# the optional GPU packages: give up soon on an index that does not answer
export PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-30}" PIP_RETRIES="${PIP_RETRIES:-1}"

if "$VENV/bin/python" -c "import geoseg" 2>/dev/null; then
    PY="$VENV/bin/python"
elif [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ] && "$PYTHON" -c "import geoseg" 2>/dev/null; then
    PY="$PYTHON"  # an environment the caller prepared (a machine without registries: PYTHONPATH)
else
    echo "gpu-check: installing geoseg into $VENV (pip, constraints.txt)"
    "$PYTHON" -m venv "$VENV" || exit 1
    "$VENV/bin/pip" install -q -c constraints.txt -e ".[dev]" || exit 1
    PY="$VENV/bin/python"
fi
if [ "${GPU_CHECK_NO_INSTALL:-0}" != 1 ] \
        && "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if ! "$PY" -c "import onnxruntime as o,sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
        echo "gpu-check: trying onnxruntime-gpu"
        "$VENV/bin/pip" install -q -c constraints.txt onnxruntime-gpu \
            && "$VENV/bin/pip" uninstall -q -y onnxruntime \
            && "$VENV/bin/pip" install -q --force-reinstall --no-deps -c constraints.txt onnxruntime-gpu \
            || echo "gpu-check: onnxruntime-gpu did not install; its section will say so"
    fi
    if ! "$PY" -c "import tensorrt" 2>/dev/null; then
        echo "gpu-check: trying tensorrt"
        "$VENV/bin/pip" install -q -c constraints.txt tensorrt \
            || echo "gpu-check: tensorrt did not install; its section will say so"
    fi
fi
mkdir -p "$(dirname "$REPORT")"
timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PY" bench/gpu_check.py --out "$REPORT" \
    --budget-s "$((LIMIT_S - 45))" "${@:2}"
rc=$?
[ -s "$REPORT" ] && echo "gpu-check: report in $REPORT"
exit $rc
