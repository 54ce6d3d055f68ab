#!/usr/bin/env bash
# GPU check for the ASR stage on a single-GPU machine without network access (about 12 minutes;
# on an H200's 16 cores, compiling the four buckets took 3.5-4.5 of them with inductor's cache cold).
# Trains the wav2vec2-base architecture (randomly initialised) in bf16 on synthetic audio, default
# augmentation on, and measures side by side (bench/asr_throughput.py, each run in its own process):
#   1. ours as the eager reference: not compiled, bf16 autocast over fp32 master weights, sdpa (eager
#      attention's score matrices would not fit the batch), max_batch_seconds=auto (the memory probe,
#      capped at AUTO_MAX padded seconds so that the recipe's run fits the time below);
#   2. the run_speech_recognition_ctc.py recipe (map() features, Trainer, group_by_length) at the
#      batch seconds the probe chose, for RECIPE_STEPS steps (its throughput only);
#   3. ours as configured for speed at those batch seconds: asr.compile=true, sdpa, loader workers
#      (trainer.num_workers=auto); validation loss at equal steps is checked against run 1.
# Runs 1 and 3 run torch.profiler over a window before the timed span, for the GPU busy share.
# Throughput counts the steps after WARM (RECIPE_WARM for the recipe): compilation and warm-up are
# reported apart, as the whole run's figure. It prints audio-seconds/s, MFU, peak GPU memory, batch
# seconds, validation loss and busy share for each, the checks (>= 6,000 audio-s/s, >= 5x the recipe,
# loss within 2% of the eager reference, busy >= 90%), and writes them all to
# $RESULTS/gpu_check-<time>.json (default bench/results), with each run's report and log beside it.
#
#   bash bench/gpu_check.sh                          # defaults: 60 steps (30 timed), the recipe 30 (20 timed)
#   STEPS=100 WARM=40 bash bench/gpu_check.sh
#   DRY_RUN=1 bash bench/gpu_check.sh                # the same scripts on the CPU with a tiny model (a minute)
#   RECIPE_STEPS=0 bash bench/gpu_check.sh           # leave the recipe out (its figure does not change with our code)
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
      echo "  With PyPI access here: 'make setup' (the project's .venv, which this script then uses)." >&2
      echo "  Without: run 'bash bench/fetch_gpu_wheels.sh' on a machine with PyPI access and send bench/wheels along." >&2
      exit 2
    fi
    SITE="${TMPDIR:-/tmp}/gpu-check/site-packages"  # 'site-packages' in the path: dill pickles its modules by reference
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" bench/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c "$NEEDS" && compgen -G "bench/wheels/fallback/*.whl" >/dev/null; then
      # datasets needs a newer pyarrow than some images have (fetch_gpu_wheels.sh FALLBACK=1)
      echo "gpu_check: installing bench/wheels/fallback/ too" >&2
      "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" bench/wheels/fallback/*.whl
    fi
    "$PY" -c "$NEEDS"
  fi
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
  STEPS="${STEPS:-6}"; WARM="${WARM:-3}"; RECIPE_STEPS="${RECIPE_STEPS:-4}"; RECIPE_WARM="${RECIPE_WARM:-2}"; CLIPS="${CLIPS:-40}"
  COMMON=(--arch tiny --device cpu --precision fp32 --threads 1)
  PROBE=(--batch-seconds auto)   # on the CPU auto falls back
  FAST=(--profile)               # compiling is left to the GPU run
  LIMIT_OURS=300; LIMIT_RECIPE=300; LIMIT_EAGER=300
  RESULTS="${RESULTS:-$(mktemp -d)}"     # a dry run's figures are not results
else
  STEPS="${STEPS:-60}"; WARM="${WARM:-30}"; RECIPE_STEPS="${RECIPE_STEPS:-30}"; RECIPE_WARM="${RECIPE_WARM:-10}"; CLIPS="${CLIPS:-2000}"
  "$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"gpu: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16: {torch.cuda.is_bf16_supported()}")
PY
  COMMON=(--arch base --device cuda --precision bf16)
  # Four padded lengths: one graph each, compiled once; fewer would pad more.
  PROBE=(--batch-seconds auto --auto-max-seconds "${AUTO_MAX:-1600}")
  FAST=(--compile --compile-buckets "${BUCKETS:-4}" --profile)
  LIMIT_EAGER="${LIMIT_EAGER:-160}"; LIMIT_RECIPE="${LIMIT_RECIPE:-120}"; LIMIT_OURS="${LIMIT_OURS:-420}"
fi
RESULTS="${RESULTS:-bench/results}"
mkdir -p "$RESULTS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" -c "from bench.asr_throughput import synthetic_dataset; from pathlib import Path; synthetic_dataset($CLIPS, Path('$WORK/data'), 1234)"
ARGS=(--dataset "$WORK/data" "${COMMON[@]}")
EXTRA=("$@")  # this script's own arguments, passed to every run
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"

# One bench.asr_throughput run under its time limit, its report and log in $RESULTS as NAME-STAMP.
# A run that fails or runs out of time leaves no report, and the summary shows it as not measured.
bench_run() {  # NAME LIMIT ARGS...
  local name="$1" limit="$2"
  shift 2
  timeout "$limit" "$PY" -m bench.asr_throughput "${ARGS[@]}" "$@" --json-out "$RESULTS/$name-$STAMP.json" ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 \
    | tee "$RESULTS/$name-$STAMP.log" || true
}

# The uncompiled reference goes first: its memory probe picks the batch seconds for all three, and
# the compiled run, whose compilation time is the least predictable, goes last.
echo "== 1. ours, uncompiled reference (max_batch_seconds=auto) =="
bench_run eager "$LIMIT_EAGER" --steps "$STEPS" --warm-steps "$WARM" --only ours "${PROBE[@]}" --attn sdpa --profile
SECONDS_CHOSEN=$("$PY" -c "import json; print(json.load(open('$RESULTS/eager-$STAMP.json'))['ours']['max_batch_seconds'])" 2>/dev/null \
  || echo "${FALLBACK_SECONDS:-400}")
if [ "$RECIPE_STEPS" -gt 0 ]; then
  echo "== 2. the recipe at $SECONDS_CHOSEN batch seconds =="
  bench_run recipe "$LIMIT_RECIPE" --steps "$RECIPE_STEPS" --warm-steps "$RECIPE_WARM" --only baseline --batch-seconds "$SECONDS_CHOSEN"
else
  echo "== 2. the recipe: skipped (RECIPE_STEPS=0) =="
fi
echo "== 3. ours, fast settings at $SECONDS_CHOSEN batch seconds =="
bench_run ours "$LIMIT_OURS" --steps "$STEPS" --warm-steps "$WARM" --only ours --batch-seconds "$SECONDS_CHOSEN" "${FAST[@]}"
"$PY" -m bench.gpu_summary --ours "$RESULTS/ours-$STAMP.json" --recipe "$RESULTS/recipe-$STAMP.json" --eager "$RESULTS/eager-$STAMP.json" \
  --out "$RESULTS"
