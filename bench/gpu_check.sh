#!/usr/bin/env bash
# GPU check for the ASR stage on a single-GPU machine without network access (about 5-8 minutes).
# Trains the wav2vec2-base architecture (randomly initialised) in bf16 on synthetic audio for a few
# hundred steps, ours and the Hugging Face recipe baseline side by side, and prints audio-seconds/s,
# GPU memory peak and MFU for each (bench/asr_throughput.py).
#
#   bash bench/gpu_check.sh                 # defaults: 300 steps, 200 audio-seconds per batch
#   STEPS=200 BATCH_SECONDS=120 bash bench/gpu_check.sh
#
# Python: .venv/bin/python when present; otherwise a venv is made and filled offline from the wheels
# shipped next to this script (bench/wheels/*.whl: `pip download -d bench/wheels -e .` on a
# networked machine); otherwise the system python3, which must have torch/transformers/datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-300}"
BATCH_SECONDS="${BATCH_SECONDS:-200}"
CLIPS="${CLIPS:-1200}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif compgen -G "bench/wheels/*.whl" >/dev/null; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --no-index --find-links bench/wheels -e .
  PY=.venv-gpu/bin/python
else
  PY=python3
fi
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"gpu: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16: {torch.cuda.is_bf16_supported()}")
PY
timeout 480 "$PY" -m bench.asr_throughput --synthetic "$CLIPS" --arch base --device cuda --precision bf16 \
  --steps "$STEPS" --batch-seconds "$BATCH_SECONDS"
