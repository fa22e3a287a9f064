#!/usr/bin/env bash
# One GPU or TPU host, under 10 minutes: installs the accelerator extra (.[cuda12] where
# nvidia-smi lists a GPU, .[tpu] on a TPU host), then runs the parity tests, the default
# run and bf16 LoRA / full SmolLM2 train steps with MFU on the device, and writes one
# JSON (benchmarks/accelerator_check.py). On a CPU-only host it installs nothing and
# skips the device parts, saying so.
#   bash benchmarks/accelerator_check.sh [--out FILE] [--fast] [--model M --data D]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { python3 -m venv .venv && PY=.venv/bin/python; }
extra=$(PYTHONPATH=. "$PY" benchmarks/accelerator_check.py --detect)
if [ "$extra" != none ]; then
  echo "accelerator_check: found $extra hardware: installing .[$extra,test]"
  "$PY" -m pip install -q -e ".[$extra,test]"
else
  echo "accelerator_check: no GPU or TPU found: no extra to install, device parts skipped"
  "$PY" -c "import ftjax" 2>/dev/null || "$PY" -m pip install -q -e ".[test]"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=.
"$PY" benchmarks/accelerator_check.py --accelerator "$extra" "$@"
