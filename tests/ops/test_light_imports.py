"""The ops commands, train.py's config checks and evaluate.py's config errors come without the
model libraries: the test suite and the daily jobs spawn them many times, and torch, transformers,
scipy.stats and datasets cost seconds to import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.ops.test_retrain_cli import _env as retrain_env

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


def _run_script(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python <argv>` in a child that prints, after the script ends, its exit code ("exit <code>")
    and then the model libraries it imported ("heavy: ...")."""
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "try:\n"
            f"    runpy.run_path({argv[0]!r}, run_name='__main__')\n"
            "except SystemExit as stop:\n"
            "    print('exit', stop.code)\n"
            f"print('heavy:', ' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_evaluate_py_refuses_a_missing_dataset_before_importing_a_model_library(tmp_path: Path) -> None:
    """`evaluate.py asr_model=...` without dataset= (and without run=) is a config error: it is
    answered before torch loads, not seconds later."""
    out = _run_script(["evaluate.py", f"asr_model={tmp_path / 'asr'}", f"hydra.run.dir={tmp_path / 'out'}",
                       "logger=none"], dict(os.environ))
    assert "no dataset to evaluate on: give dataset=" in out.stderr, out.stderr
    assert "exit 2" in out.stdout, out.stdout
    assert out.stdout.strip().endswith("heavy:"), f"imported before the config error: {out.stdout}"


def test_a_retraining_job_with_nothing_new_imports_no_model_library(tmp_path: Path) -> None:
    """The scheduled job runs often and mostly finds nothing new: its intake, erasure and decision
    need no model library (the erasure's clip lists imported the data build, and torch with it)."""
    (tmp_path / "inbox").mkdir()
    argv = ["retrain.py", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", f"erase.outputs={tmp_path / 'runs'}",
            f"erase.multirun={tmp_path / 'multirun'}"]
    out = _run_script(argv, retrain_env(tmp_path))
    assert "nothing_to_do" in out.stderr + out.stdout and "exit 0" in out.stdout, out.stderr[-2000:]
    assert out.stdout.strip().endswith("heavy:"), f"imported by a job with nothing to do: {out.stdout}"
