"""What every benchmark shares: its arguments are checked before anything runs, and a failed worker's
own error is shown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench.cli import check_common  # noqa: E402
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
