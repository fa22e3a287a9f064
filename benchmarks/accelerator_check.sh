#!/usr/bin/env bash
# One GPU or TPU host, under 10 minutes: install the accelerator extra, then run the
# parity tests, the default run and bf16 LoRA / full steps of SmolLM2 on the device
# (benchmarks/accelerator_check.py); writes accelerator_check.json. On a CPU-only host
# it installs nothing and skips the device parts, saying so.
#   bash benchmarks/accelerator_check.sh [--fast] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=cuda12
elif ls /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1; then
  extra=tpu
else
  extra=""
fi
if [ -n "$extra" ]; then
  echo "accelerator_check: installing .[${extra},test]"
  "$PY" -m pip install -q -e ".[${extra},test]"
else
  echo "accelerator_check: no GPU or TPU found: installing nothing, device parts skipped"
fi
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=. "$PY" benchmarks/accelerator_check.py "$@"
