"""`make compare`: a table of recent runs, straight from the run folders, with no W&B server.

Every run folder holds its resolved `config.yaml` and (after evaluation) `metrics.json`; showing
only the config keys that differ between the listed runs answers "what changed, and did it help".

    python -m pipeline.ops.compare [ROOT ...] [--last 10] [--metrics asr/wer,slu/slu_f1]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HEADLINE = ("asr/wer", "asr/cer", "wake/auc", "wake/frr", "nlu/intent_accuracy", "nlu/entity_f1",
            "slu/slu_f1")
# Different for every run by construction, so never a "difference" worth a column.
IGNORED_KEYS = ("run_dir", "hydra")


@dataclass
class RunSummary:
    path: Path
    mtime: float
    config: dict[str, Any]
    metrics: dict[str, Any]


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + sep, sep))
        else:
            out[name] = value
    return out


def find_runs(roots: list[Path]) -> list[Path]:
    """Run folders are those holding the resolved `config.yaml` that every run writes first."""
    runs = {p.parent for root in roots if root.is_dir() for p in root.rglob("config.yaml")
            if p.parent.name != ".hydra" and "wandb" not in p.parts}
    return sorted(runs)


def load_run(path: Path) -> RunSummary:
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    metrics_file = path / "metrics.json"
    metrics = flatten(json.loads(metrics_file.read_text()), sep="/") if metrics_file.is_file() else {}
    decision_file = path / "decision.json"
    if decision_file.is_file():
        metrics["decision"] = json.loads(decision_file.read_text()).get("decision")
    return RunSummary(path, (path / "config.yaml").stat().st_mtime, flatten(config), metrics)


def differing_keys(runs: list[RunSummary]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config if not k.startswith(IGNORED_KEYS)})
    return [k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in runs}) > 1]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(runs: list[RunSummary], keys: list[str], metrics: list[str], base: Path) -> str:
    header = ["run", *keys, *metrics]
    rows = []
    for r in runs:
        try:
            name = str(r.path.relative_to(base))
        except ValueError:
            name = str(r.path)
        rows.append([name, *(_cell(r.config.get(k)) for k in keys), *(_cell(r.metrics.get(m)) for m in metrics)])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ops.compare", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("outputs"), Path("multirun")],
                        help="folders to search for run folders (default: outputs multirun)")
    parser.add_argument("--last", type=int, default=10, help="how many of the most recent runs")
    parser.add_argument("--metrics", default=",".join(HEADLINE), help="comma-separated metric names")
    args = parser.parse_args(argv)
    runs = sorted((load_run(p) for p in find_runs(args.roots)), key=lambda r: r.mtime)[-args.last:]
    if not runs:
        print(f"no run folders under {', '.join(map(str, args.roots))}")
        return 0
    metrics = [m for m in args.metrics.split(",") if m]
    if any("decision" in r.metrics for r in runs):
        metrics.append("decision")
    print(format_table(runs, differing_keys(runs), metrics, Path.cwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
