# The two commands: `make train` and `make test`. Both set everything up on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := espeak-ng flite ffmpeg libsndfile1 g++
NPROC ?= 2
# Test processes: one per core (pytest-xdist); TEST_WORKERS=0 runs the suite in this process. One more
# than the cores was no faster on 2 cores (docs/experiments.md, "the test suite's order and processes").
TEST_WORKERS ?= auto
ARGS ?=

.PHONY: setup system-packages train train-ddp test test-fast evaluate review retrain promote rollback erase audit-deletions compare sync bench bench-data bench-asr bench-nlu bench-eval bench-erase clean

setup: system-packages $(STAMP)

# espeak-ng synthesises the demo audio and flite the human-voices recipe's keyword takes;
# ffmpeg decodes audio for datasets/torchcodec; g++ compiles torch.compile's CPU kernels (asr.compile;
# installed where we may, else its tests skip).
system-packages:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v flite >/dev/null || missing="$$missing flite"; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	ldconfig -p 2>/dev/null | grep -q libsndfile.so || missing="$$missing libsndfile1"; \
	if [ "$$(id -u)" = 0 ]; then command -v g++ >/dev/null || missing="$$missing g++"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing system packages:$$missing. Run: sudo apt-get install -y $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

# Re-installs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: setup
	$(PY) train.py $(ARGS)

# Several GPUs (or CPU processes) on one machine: make train-ddp NPROC=4. Every process must write
# into one folder, so it is named here (Hydra's own ${now:} is read per process); smoke runs go to
# outputs/debug/ as with train.py.
train-ddp: setup
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) train.py hydra.run.dir=$(if $(and $(findstring debug=,$(ARGS)),$(findstring smoke,$(ARGS))),outputs/debug,outputs)/$$(date +%F/%H-%M-%S) $(ARGS)

evaluate: setup
	@test -n "$(RUN)" || { echo "usage: make evaluate RUN=outputs/<date>/<time>"; exit 2; }
	$(PY) evaluate.py run=$(RUN) $(ARGS)

# Annotation review of a finished run with its own models: <run>/review/queue.jsonl and a report section.
review: setup
	@test -n "$(RUN)" || { echo "usage: make review RUN=outputs/<date>/<time>"; exit 2; }
	$(PY) -m pipeline.review $(RUN) $(ARGS)

# Scheduled retraining. Exit codes (0 promoted/nothing to do, 1 crash, 2 config, 3 rejected,
# 4 busy) are retrain.py's; make reports any failure as 2, so schedulers call retrain.py directly.
retrain: setup
	$(PY) retrain.py $(ARGS)

# Promote a candidate a person reviewed (its id is in the rejected run's decision.json), as it is:
# no training, no gate. Refused (exit 2) if it was trained on deleted data or its weights are gone.
promote: setup
	@test -n "$(MODEL)" || { echo "usage: make promote MODEL=<model id from a decision.json>"; exit 2; }
	$(PY) retrain.py "retrain.promote='$(MODEL)'" $(ARGS)

# Back to the previous promoted model that still has its weights (never one retired for a deletion).
rollback: setup
	$(PY) retrain.py retrain.rollback=true $(ARGS)

# Erase every copy of data with a deletion request (make retrain does this too); then prove it:
# audit-deletions exits 0 clean, 3 when a trace is left, 2 on a bad config or unreadable root
# (make turns any failure into 2, so scripts call `python -m pipeline.ops.audit` directly).
erase: setup
	$(PY) -m pipeline.ops.erase $(ARGS)

audit-deletions: setup
	$(PY) -m pipeline.ops.audit $(ARGS)

compare: setup
	$(PY) -m pipeline.ops.compare $(ARGS)

sync: setup
	$(PY) -m pipeline.ops.sync $(ARGS)

# Benchmarks (minutes each; data, erase and the GPU check also write bench/results/). Each compares against its baseline in one run.
bench: bench-data bench-asr bench-nlu bench-eval

bench-data: setup
	$(PY) -m bench.data_build --sizes 1000 10000 --baseline-max 1000

bench-asr: setup
	$(PY) -m bench.asr_throughput --synthetic 300 --steps 60

bench-nlu: setup
	$(PY) -m bench.nlu_bench speed --steps 60

bench-eval: setup
	$(PY) -m bench.eval_throughput --clips 48

bench-erase: setup
	$(PY) -m bench.erase --repeats 5

# The whole suite, slow end-to-end tests included (CI runs exactly this). A test file stays in one
# process (--dist loadfile), so its module fixtures are built once; files are handed out in the order
# tests/conftest.py puts them (slow files first), not xdist's (most tests first).
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(PYTEST) $(ARGS)

# Everything but the slow end-to-end tests.
test-fast: setup
	$(PYTEST) -m "not slow" $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
