"""The ops commands and train.py's config checks start without the model libraries: the test suite
and the daily jobs spawn them many times, and torch, transformers, scipy.stats and datasets cost
seconds to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "scipy.stats", "datasets")


def test_ops_commands_and_config_checks_import_no_model_library() -> None:
    modules = ["pipeline.ops.audit", "pipeline.ops.compare", "pipeline.ops.erase", "pipeline.ops.gate",
               "pipeline.ops.promote", "pipeline.ops.retrain", "pipeline.ops.sync", "pipeline.stages",
               "pipeline.asr.config", "pipeline.data.config", "pipeline.eval.config", "pipeline.nlu.config",
               "pipeline.review.config"]
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
