"""What every benchmark shares: its arguments are checked before anything runs, and a failed worker's
own error is shown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench.cli import check_common, interleaved, median_run  # noqa: E402
from bench.data_build import run_measured  # noqa: E402


@pytest.mark.parametrize(("argv", "error"), [
    (["--repeats", "0"], "--repeats 0: give 1 or more"),
    (["--dataset", "/nonexistent/build"], "--dataset /nonexistent/build: not a built dataset (no dataset_dict.json there)"),
    (["--asr", "nosuch"], "--asr nosuch: no conf/asr/nosuch.yaml; one of base, large, tiny, tiny_budget"),
])
def test_a_bad_shared_argument_is_one_argparse_line(argv: list[str], error: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """They were an UnboundLocalError after the runs, a FileNotFoundError from a worker, a Hydra traceback."""
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset")
    parser.add_argument("--asr", default="tiny")
    args = parser.parse_args(argv)
    with pytest.raises(SystemExit) as exit_info:
        check_common(parser, args)
    assert exit_info.value.code == 2 and error in capsys.readouterr().err
    check_common(parser, parser.parse_args([]))  # the defaults pass


def test_a_failed_worker_shows_its_own_error() -> None:
    """Its stderr went to /dev/null: "failed with exit code 1" and nothing else."""
    with pytest.raises(SystemExit, match=r"failed with exit code 3:\n.*data.num_proc=0: use a positive number"):
        run_measured([sys.executable, "-c", "import sys; sys.stderr.write('data.num_proc=0: use a positive number\\n'); "
                                            "sys.exit(3)"])


def test_the_nlu_speed_baseline_trains_like_the_joint_model(tmp_path: Path) -> None:
    """Before the fix: the intent-only baseline always trained on the CPU in fp32 with no loader
    workers, whatever the joint model's `trainer` settings: with `trainer.precision=bf16`, or on a
    machine with a GPU (trainer.device=auto), the two sides of the ratio ran different work."""
    from bench.nlu_bench import _config, baseline_arguments
    from pipeline.config import TrainerConfig, checked
    from pipeline.nlu.config import NLUConfig
    from pipeline.nlu.train import training_arguments

    cfg = _config(["trainer.device=cpu", "trainer.precision=bf16", "trainer.num_workers=1", "nlu.max_steps=7"])
    joint = training_arguments(checked(cfg.nlu, NLUConfig, "nlu"), checked(cfg.trainer, TrainerConfig, "trainer"),
                               5, tmp_path / "joint", has_eval=False)
    base = baseline_arguments(joint, tmp_path / "baseline")
    same = ("device", "bf16", "fp16", "dataloader_num_workers", "max_steps", "per_device_train_batch_size",
            "learning_rate", "seed", "data_seed")
    assert {k: getattr(base, k) for k in same} == {k: getattr(joint, k) for k in same}
    assert joint.bf16 and base.max_steps == 7


def test_sides_alternate_which_runs_first_and_the_median_run_is_kept() -> None:
    """The data build and evaluation benchmarks ran their baseline first in every repeat (the data
    build once only), so a machine that sped up or slowed down over the run favoured one side."""
    order = list(interleaved(4, ("baseline", "ours")))
    assert order == [(0, "baseline"), (0, "ours"), (1, "ours"), (1, "baseline"),
                     (2, "baseline"), (2, "ours"), (3, "ours"), (3, "baseline")]
    runs = [{"seconds": s, "repeat": i} for i, s in enumerate([5.0, 3.0, 9.0, 4.0])]
    median = median_run(runs)
    assert median["repeat"] == 0 and median["seconds"] == 5.0  # of an even count, the slower middle run
    assert median["seconds_all"] == [5.0, 3.0, 9.0, 4.0]
    assert median_run(runs[:3])["seconds"] == 5.0
