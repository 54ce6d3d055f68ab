#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, the wheels bench/gpu_check.sh needs on a GPU machine that
# has no network but already has torch, transformers, numpy, pyarrow and pandas (e.g. a CUDA
# image with Python 3.12, torch 2.11, transformers 5.17). They land in bench/wheels/ (git-ignored, ~6 MB);
# copy that folder to the GPU machine along with the repository.
#
#   bash bench/fetch_gpu_wheels.sh                    # Python 3.12, manylinux x86_64
#   PYVER=3.11 bash bench/fetch_gpu_wheels.sh         # for another interpreter
#
# The list is what the check imports beyond that image: datasets (+ dill, multiprocess), omegaconf
# (+ antlr4, which PyPI has only as source: built here into a pure-Python wheel), jiwer (+ rapidfuzz),
# soundfile (+ cffi, pycparser), and fsspec at the newest version datasets accepts. Versions are those of
# this project's .venv. pyarrow (55 MB) goes to bench/wheels/fallback/, which gpu_check.sh installs
# only when the machine's own pyarrow is older than datasets needs; FALLBACK=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
OUT=bench/wheels
PIP="${PIP:-python3 -m pip}"
mkdir -p "$OUT"
rm -f "$OUT"/*.whl
$PIP download --quiet --no-deps --only-binary=:all: --dest "$OUT" \
  --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 omegaconf==2.3.1 jiwer==4.0.0 rapidfuzz==3.14.6 \
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 fsspec==2026.9.0
if [ "${FALLBACK:-1}" = 1 ]; then
  mkdir -p "$OUT/fallback"
  rm -f "$OUT"/fallback/*.whl
  $PIP download --quiet --no-deps --only-binary=:all: --dest "$OUT/fallback" \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    pyarrow==26.0.1
fi
$PIP wheel --quiet --no-deps --wheel-dir "$OUT" antlr4-python3-runtime==4.9.3
ls -1R "$OUT"
du -sh "$OUT"
