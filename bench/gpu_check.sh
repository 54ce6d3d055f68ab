#!/usr/bin/env bash
# GPU check for the ASR stage on a single-GPU machine without network access (about 10 minutes).
# Trains the wav2vec2-base architecture (randomly initialised) in bf16 on synthetic audio, default
# augmentation on, and measures side by side (bench/asr_throughput.py, each run in its own process):
#   1. ours as configured for speed: max_batch_seconds=auto (the memory probe), asr.compile=true, sdpa,
#      loader workers (trainer.num_workers=auto), torch.profiler over a window for the GPU busy share;
#   2. the run_speech_recognition_ctc.py recipe (map() features, Trainer, group_by_length) at the
#      batch seconds ours chose;
#   3. ours as the eager reference (no compile, eager attention, same batches; bf16 autocast over
#      fp32 master weights), for validation loss at equal steps.
# It prints audio-seconds/s, MFU, peak GPU memory, batch seconds, validation loss and busy share for
# each, the checks (>= 6,000 audio-s/s, >= 5x the recipe, loss within 2% of the eager reference,
# busy >= 90%), and writes them all to bench/results/gpu_check-<time>.json.
#
#   bash bench/gpu_check.sh                          # defaults: 150 steps per run
#   STEPS=100 bash bench/gpu_check.sh
#   DRY_RUN=1 bash bench/gpu_check.sh                # the same scripts on the CPU with a tiny model (a minute)
#
# Python: .venv/bin/python when present; otherwise the machine's python3, which must have torch and
# transformers (a typical CUDA image does, e.g. torch 2.11, transformers 5.17). What it lacks (datasets,
# omegaconf, jiwer, soundfile, ...; miniaudio is optional) is installed offline from the wheels in bench/wheels/, fetched
# beforehand on a networked machine with `bash bench/fetch_gpu_wheels.sh` and sent along with the
# repository (copy bench/wheels/ along); they go to a temporary folder, not the system.
set -euo pipefail
cd "$(dirname "$0")/.."
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

if [ "${DRY_RUN:-0}" = 1 ]; then
  STEPS="${STEPS:-4}"; CLIPS="${CLIPS:-40}"
  COMMON=(--arch tiny --device cpu --precision fp32 --threads 1)
  FAST=(--batch-seconds auto --profile)   # on the CPU auto falls back; compiling is left to the GPU run
  LIMIT_OURS=300; LIMIT_OTHER=300
  RESULTS="${RESULTS:-$(mktemp -d)}"     # a dry run's figures are not results
else
  STEPS="${STEPS:-150}"; CLIPS="${CLIPS:-1200}"
  "$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"gpu: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16: {torch.cuda.is_bf16_supported()}")
PY
  COMMON=(--arch base --device cuda --precision bf16)
  # Four padded lengths: each is compiled once (about a minute each for wav2vec2-base), and fewer
  # buckets would pad more.
  FAST=(--batch-seconds auto --compile --compile-buckets "${BUCKETS:-4}" --profile)
  LIMIT_OURS=330; LIMIT_OTHER=120
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" -c "from bench.asr_throughput import synthetic_dataset; from pathlib import Path; synthetic_dataset($CLIPS, Path('$WORK/data'), 1234)"
ARGS=(--dataset "$WORK/data" "${COMMON[@]}" --steps "$STEPS")

echo "== 1. ours, fast settings =="
timeout "$LIMIT_OURS" "$PY" -m bench.asr_throughput "${ARGS[@]}" --only ours "${FAST[@]}" --json-out "$WORK/ours.json" "$@" \
  || echo "(ours did not finish)"
SECONDS_CHOSEN=$("$PY" -c "import json; print(json.load(open('$WORK/ours.json'))['ours']['max_batch_seconds'])" 2>/dev/null || echo 200)
echo "== 2. the recipe at $SECONDS_CHOSEN batch seconds =="
timeout "$LIMIT_OTHER" "$PY" -m bench.asr_throughput "${ARGS[@]}" --only baseline --batch-seconds "$SECONDS_CHOSEN" \
  --json-out "$WORK/recipe.json" "$@" || echo "(the recipe did not finish)"
echo "== 3. ours, eager reference at $SECONDS_CHOSEN batch seconds =="
timeout "$LIMIT_OTHER" "$PY" -m bench.asr_throughput "${ARGS[@]}" --only ours --batch-seconds "$SECONDS_CHOSEN" --attn eager \
  --json-out "$WORK/eager.json" "$@" || echo "(the eager reference did not finish)"
"$PY" -m bench.gpu_summary --ours "$WORK/ours.json" --recipe "$WORK/recipe.json" --eager "$WORK/eager.json" --out "${RESULTS:-bench/results}"
