#!/usr/bin/env bash
# GPU check for the ASR stage on a single-GPU machine without network access (about 5-8 minutes).
# Trains the wav2vec2-base architecture (randomly initialised) in bf16 on synthetic audio for a few
# hundred steps, ours and the Hugging Face recipe baseline side by side, and prints audio-seconds/s,
# GPU memory peak and MFU for each (bench/asr_throughput.py); then, if time is left, ours again
# without waveform augmentation, which the recipe does not do (EXTRA=0 skips it).
#
#   bash bench/gpu_check.sh                 # defaults: 300 steps, 200 audio-seconds per batch
#   STEPS=200 BATCH_SECONDS=120 bash bench/gpu_check.sh
#   bash bench/gpu_check.sh --augment-prob 0      # further arguments go to bench/asr_throughput.py
#
# Python: .venv/bin/python when present; otherwise the machine's python3, which must have torch and
# transformers (a typical CUDA image does, e.g. torch 2.11, transformers 5.17). What it lacks (datasets,
# omegaconf, jiwer, soundfile, ...) is installed offline from the wheels in bench/wheels/, fetched
# beforehand on a networked machine with `bash bench/fetch_gpu_wheels.sh` and sent along with the
# repository (copy bench/wheels/ along); they go to a temporary folder, not the system.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-300}"
BATCH_SECONDS="${BATCH_SECONDS:-200}"
CLIPS="${CLIPS:-1200}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

NEEDS="import torch, transformers, datasets, omegaconf, jiwer, soundfile"
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  if ! "$PY" -c "$NEEDS" 2>/dev/null; then
    if ! compgen -G "bench/wheels/*.whl" >/dev/null; then
      echo "gpu_check: $PY lacks some of: ${NEEDS#import }; and bench/wheels/ is empty." >&2
      echo "  Run 'bash bench/fetch_gpu_wheels.sh' on a machine with PyPI access and send bench/wheels along." >&2
      exit 2
    fi
    SITE="${TMPDIR:-/tmp}/gpu-check/site-packages"  # 'site-packages' in the path: dill pickles its modules by reference
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" bench/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "$NEEDS"
  fi
fi
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"gpu: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16: {torch.cuda.is_bf16_supported()}")
PY
ARGS=(--synthetic "$CLIPS" --arch base --device cuda --precision bf16 --steps "$STEPS" --batch-seconds "$BATCH_SECONDS")
START=$SECONDS
timeout 420 "$PY" -m bench.asr_throughput "${ARGS[@]}" "$@"
LEFT=$((480 - (SECONDS - START)))
if [ "${EXTRA:-1}" != 0 ] && [ "$LEFT" -gt 90 ]; then
  echo "== ours without augmentation (${LEFT}s left) =="
  timeout "$LEFT" "$PY" -m bench.asr_throughput "${ARGS[@]}" --only ours --augment-prob 0 "$@" || echo "(not finished)"
fi
