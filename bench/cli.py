"""The arguments every benchmark shares, checked before anything runs: a mistyped dataset folder or
`--repeats 0` is one line from argparse, not a traceback from a worker minutes later."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    repeats = getattr(args, "repeats", None)
    if repeats is not None and repeats < 1:
        parser.error(f"--repeats {repeats}: give 1 or more (a median needs a run)")
    dataset = getattr(args, "dataset", None)
    if dataset is not None and not (Path(dataset) / "dataset_dict.json").is_file():
        parser.error(f"--dataset {dataset}: not a built dataset (no dataset_dict.json there); build one with "
                     "`python train.py stages=[data]` and pass the dataset_path its build_report.json names")
    asr = getattr(args, "asr", None)
    if isinstance(asr, str) and not (ROOT / "conf" / "asr" / f"{asr}.yaml").is_file():
        known = sorted(p.stem for p in (ROOT / "conf" / "asr").glob("*.yaml"))
        parser.error(f"--asr {asr}: no conf/asr/{asr}.yaml; one of {', '.join(known)}")


def interleaved(repeats: int, sides: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(repeat, side): each side once per repeat, their order reversed every other repeat (ABBA). A
    neighbour's busy spell then slows one repeat of every side, and a machine that drifts (warming
    caches, a throttling CPU) favours no side by always running it first."""
    sides = list(sides)
    for repeat in range(repeats):
        for side in (sides if repeat % 2 == 0 else sides[::-1]):
            yield repeat, side


def median_run(runs: list[dict]) -> dict:
    """The median of a side's runs by wall seconds (of an even count, the slower middle one), with
    every run's seconds for the spread."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "seconds_all": [r["seconds"] for r in runs]}
