"""`make compare`: a table of recent runs, straight from the run folders, with no W&B server.

Every run folder holds its resolved `config.yaml` and (after evaluation) `metrics.json`; showing
only the config keys that differ between the listed runs answers "what changed, and did it help".

"Did it help" needs more than two point values: below the table, each run evaluated on the same
test data as the baseline (the oldest listed, or --baseline; same dataset fingerprint and split) gets
each metric's paired difference against it, its 95% interval from a paired speaker bootstrap over the per-clip results
in predictions.jsonl, and a verdict (better, worse, no detectable difference). False accepts per
hour streamed over background recordings are paired over the recordings both runs streamed. Runs on
other test data cannot be compared clip for clip; they get their own intervals only.

    python -m pipeline.ops.compare [ROOT ...] [--last 10] [--metrics asr/wer,slu/slu_f1] [--samples 1000]
                                   [--baseline RUN]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.eval import bootstrap as B
from pipeline.ops.gate import load_clip_table, with_background_pairs
from pipeline.ops.inventory import DO_NOT_SYNC, searched_roots
from pipeline.run_folder import EVAL_CONFIG_DIR
from pipeline.runtime import PipelineError, first_line, flatten, table_cell

# wake/frr beside wake/fa_per_hour: a threshold that sits lower trades one for the other.
HEADLINE = ("asr/wer", "asr/cer", "wake/auc", "wake/frr", "wake/fa_per_hour", "nlu/intent_accuracy",
            "nlu/entity_f1", "slu/slu_f1")
# Different for every run by construction, so never a "difference" worth a column.
IGNORED_KEYS = ("run_dir", "paths.run_dir", "hydra")


@dataclass
class RunSummary:
    path: Path
    created: float  # when the run was made (`made_at`): the listing order and the default baseline
    config: dict[str, Any]
    metrics: dict[str, Any]
    test_data: dict[str, Any] | None = None  # eval_details.json's record of what was evaluated
    evaluation: bool = False  # an evaluate.py folder, whose config is evaluate.yaml's, not a training run's
    recorded: float = 0.0  # the time of Hydra's record of the job: orders runs `created` the same second

    def order(self) -> tuple[float, float]:
        return self.created, self.recorded


def find_runs(roots: list[Path]) -> list[Path]:
    """Run folders are those holding the resolved `config.yaml` that every training run writes first,
    and evaluation folders (`python evaluate.py asr_model=... dataset=...`), whose config is only in
    `.hydra-evaluate/`: two models scored on one dataset are the comparison users ask for most. An
    evaluation folder without metrics.json stopped before it scored (a wrong path, say): nothing to show."""
    runs = set()
    for path in (p for root in roots if root.is_dir() for p in root.rglob("config.yaml") if "wandb" not in p.parts):
        if path.parent.name == EVAL_CONFIG_DIR:
            if (path.parent.parent / "metrics.json").is_file():
                runs.add(path.parent.parent)
        elif path.parent.name != ".hydra":
            runs.add(path.parent)
    return sorted(runs)


def _config_file(path: Path) -> Path:
    own = path / "config.yaml"
    return own if own.is_file() else path / EVAL_CONFIG_DIR / "config.yaml"


def _read(file: Path, parse: Any) -> dict[str, Any]:
    """A run file parsed, or a ValueError that names it (a run killed mid-write leaves half a file,
    which may still parse: `stag` is a YAML string, `0.5` a JSON number)."""
    try:
        value = parse(file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{file} is unreadable ({err.__class__.__name__}: {first_line(err)})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{file} is unreadable (a {type(value).__name__}, not a mapping)")
    return value


# What an evaluate.py folder's config says about its evaluation; the rest of conf/evaluate.yaml
# (asr, data) are placeholders evaluate.py does not read, and would show as false differences.
EVALUATION_KEYS = ("asr_model", "nlu_model", "dataset", "eval")


def load_run(path: Path) -> RunSummary:
    config = _read(_config_file(path), yaml.safe_load)
    if _config_file(path).parent.name == EVAL_CONFIG_DIR:
        config = {k: v for k, v in config.items() if k in EVALUATION_KEYS}
    metrics_file = path / "metrics.json"
    metrics = flatten(_read(metrics_file, json.loads), sep="/") if metrics_file.is_file() else {}
    decision_file = path / "decision.json"
    if decision_file.is_file():
        metrics["decision"] = _read(decision_file, json.loads).get("decision")
    details_file = path / "eval_details.json"
    test_data = _read(details_file, json.loads).get("test_data") if details_file.is_file() else None
    config_file = _config_file(path)
    created, recorded = made_at(path, config_file)
    return RunSummary(path, created, flatten(config), metrics, test_data,
                      evaluation=config_file.parent.name == EVAL_CONFIG_DIR, recorded=recorded)


_DATE, _TIME = re.compile(r"\d{4}-\d{2}-\d{2}"), re.compile(r"(\d{2}-\d{2}-\d{2})(-\d+)?")


def made_at(path: Path, config_file: Path) -> tuple[float, float]:
    """When the run was made, as nothing done to it later changes: not config.yaml's modification time,
    which `evaluate.py run=` rewrites (re-evaluating the oldest run made another one the baseline).

    The `<date>/<time>` its folder is named by (conf/*.yaml's hydra.run.dir and sweep.dir, retraining's
    `<time>-<pid>`; local time, as Hydra's `now` writes it), the innermost such pair; for a folder named
    otherwise, the time of Hydra's record of the job that made it (`.hydra/hydra.yaml`; an evaluate.py
    folder's `.hydra-evaluate/hydra.yaml`), else of config.yaml. Returned with that record's time,
    which orders a sweep's jobs (they share the sweep's stamp)."""
    record = config_file.parent / "hydra.yaml" if config_file.parent.name == EVAL_CONFIG_DIR else path / ".hydra" / "hydra.yaml"
    recorded = (record if record.is_file() else config_file).stat().st_mtime
    parts = path.parts
    for date, clock in reversed(list(zip(parts, parts[1:]))):
        found = _TIME.fullmatch(clock)
        if _DATE.fullmatch(date) and found:
            try:
                stamp = time.mktime(time.strptime(f"{date} {found.group(1)}", "%Y-%m-%d %H-%M-%S"))
            except ValueError:  # 2026-13-45: not a time after all
                continue
            return stamp, recorded
    return recorded, recorded



def _unresolved(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """Keys whose values differ between the runs; a key one run lacks counts (a setting added since,
    say). An evaluation folder's config is Hydra's unresolved one: a value still holding `${...}`
    says nothing to compare."""
    keys = sorted({k for r in runs for k in r.config if not k.startswith(IGNORED_KEYS)})

    def values(key: str) -> set[str]:
        return {json.dumps(r.config.get(key), default=str) for r in runs if not _unresolved(r.config.get(key))}

    return [k for k in keys if len(values(k)) > 1]


def format_table(runs: list[RunSummary], keys: list[str], metrics: list[str], base: Path) -> str:
    header = ["run", *keys, *metrics]
    rows = []
    for r in runs:
        try:
            name = str(r.path.relative_to(base))
        except ValueError:
            name = str(r.path)
        rows.append([name, *(table_cell(r.config.get(k)) for k in keys), *(table_cell(r.metrics.get(m)) for m in metrics)])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _name(run: RunSummary, base: Path) -> str:
    try:
        return str(run.path.relative_to(base))
    except ValueError:
        return str(run.path)


def _per_clip(run: RunSummary) -> tuple[B.ClipTable | None, str]:
    """The run's per-clip results, as the gate reads them, or why there are none to pair."""
    try:
        return load_clip_table(run.path, run.metrics), ""
    except PipelineError as err:
        return None, str(err)


def _test_data_label(run: RunSummary) -> str:
    data = run.test_data or {}
    return f"dataset {data.get('dataset_fingerprint') or '?'} split {data.get('split') or '?'}"


def _names_its_clips(run: RunSummary) -> bool:
    """Whether eval_details.json says which clips were scored (a build fingerprint or a clips digest)."""
    data = run.test_data or {}
    return bool(data.get("dataset_fingerprint") or data.get("clips_digest"))


def same_test_data(a: RunSummary, b: RunSummary) -> bool:
    """Clip for clip only on the same dataset build and split (the fingerprint covers the data, the
    pseudonym key and so the splits); without a fingerprint, on the same clips digest."""
    if not a.test_data or not b.test_data or a.test_data.get("split") != b.test_data.get("split"):
        return False
    fa, fb = a.test_data.get("dataset_fingerprint"), b.test_data.get("dataset_fingerprint")
    if fa and fb:
        return fa == fb
    digest = a.test_data.get("clips_digest")
    return digest is not None and digest == b.test_data.get("clips_digest")


def _own_intervals(run: RunSummary, metrics: list[str]) -> str:
    cells = []
    for key in metrics:
        value, low, high = (run.metrics.get(k) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            cells.append(f"{key} {value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""))
    return ", ".join(cells) or "no metrics"


def evaluated_run(run: RunSummary) -> bool:
    return any(k in run.metrics for k in B.INTERVAL_KEYS)


def _why_no_per_clip(runs: list[tuple[RunSummary, str]], base: Path) -> str:
    """Each run's reason (a missing, damaged or cut-short predictions.jsonl names the file). An erased
    run (trained on data a deletion request named) lost its predictions with its models, so
    re-evaluating it, the fix for the others, is no fix."""
    erased = [r for r, _ in runs if (r.path / DO_NOT_SYNC).is_file()]
    reasons = [why or f"{_name(r, base)} has no record of its test data (eval_details.json); re-evaluate with "
               "`python evaluate.py run=<run folder>`" for r, why in runs if r not in erased]
    if erased:
        reasons.append(f"{' and '.join(_name(r, base) for r in erased)} lost per-clip results and models to "
                       f"erasure after a deletion request ({DO_NOT_SYNC}) and cannot be re-evaluated; name "
                       "the runs to compare without it (`python -m pipeline.ops.compare <run> <run> ...`)")
    return "; ".join(reasons)


def paired_report(runs: list[RunSummary], metrics: list[str], base: Path, samples: int, seed: int,
                  chosen: bool = False) -> str:
    """Each later run against the first (the baseline): paired differences where the test data is
    the same, and otherwise why not, with each run's own intervals. Unless the baseline was `chosen`
    (--baseline), runs erasure emptied are passed over for it: against one, nothing pairs."""
    evaluated = [r for r in runs if evaluated_run(r)]
    if len(evaluated) < 2:
        return ""
    first = evaluated[0] if chosen else next((r for r in evaluated if not (r.path / DO_NOT_SYNC).is_file()), evaluated[0])
    others = [r for r in evaluated if r is not first]
    lines = [f"Paired against the baseline, {_name(first, base)} "
             f"(difference = run - baseline, 95% paired speaker bootstrap, {samples} samples):"]
    passed_over = evaluated[:evaluated.index(first)]
    if passed_over:
        lines.append(f"(older {', '.join(_name(r, base) for r in passed_over)}: per-clip results erased after a deletion "
                     "request, so not the baseline)")
    lines += [f"{_name(r, base)}: left out: not evaluated (no test metrics in metrics.json); "
              "`python evaluate.py run=<run folder>` evaluates it" for r in runs if r not in evaluated]
    first_table, first_why = _per_clip(first)
    header = ["run", "metric", "baseline", "value", "difference [95%]", "verdict"]
    rows: list[list[str]] = []
    shown_own = False
    for run in others:
        name = _name(run, base)
        table, why = _per_clip(run)
        lacking = [(r, w) for r, t, w in ((first, first_table, first_why), (run, table, why))
                   if t is None or not _names_its_clips(r)]
        if lacking:
            lines.append(f"{name}: no paired comparison: {_why_no_per_clip(lacking, base)}")
            continue
        if not same_test_data(first, run):
            lines.append(f"{name}: evaluated on other test data ({_test_data_label(run)}, the baseline: "
                         f"{_test_data_label(first)}): not comparable clip for clip; each run's own intervals below")
            if not shown_own:
                lines.append(f"  {_name(first, base)}: {_own_intervals(first, metrics)}")
                shown_own = True
            lines.append(f"  {name}: {_own_intervals(run, metrics)}")
            continue
        try:
            paired = B.paired_differences(first_table, table, samples, seed)  # type: ignore[arg-type]
        except ValueError as err:  # e.g. the same build and split, but a clip's speaker differs
            lines.append(f"{name}: no paired comparison: {err}")
            continue
        paired, why_not = with_background_pairs(paired, first.path, run.path, samples, seed)
        lines.append(f"{name}: {paired.clips} shared test clips of {paired.speakers} speakers drawn")
        if why_not and "wake/fa_per_hour" in metrics:
            lines.append(f"{name}: {why_not}")
        unpaired = [k for k in metrics if k not in paired.differences]
        if unpaired:
            lines.append(f"{name}: no paired difference for {', '.join(unpaired)} (no per-clip counts to resample: "
                         "point values in the table above only)")
        for key in metrics:
            diff = paired.differences.get(key)
            if diff is None:
                continue
            stated = (first.metrics.get(key), run.metrics.get(key))
            if None in stated:  # not measured in one of the runs (e.g. evaluated without NLU)
                continue
            if not all(isinstance(v, (int, float)) and abs(v - p) < 1e-6 for v, p in zip(stated, (diff.base, diff.other))):
                # The per-clip counts measure something else (e.g. a rate over streamed background audio).
                if not (why_not and key == "wake/fa_per_hour"):  # said above, with the reason
                    over = f" (paired over {diff.resampled})" if diff.resampled else ""
                    lines.append(f"{name}: {key} is not reproduced by the per-clip results{over}; no paired "
                                 "difference for it")
                continue
            interval = "" if diff.ci_low is None else f" [{diff.ci_low:+.4f}, {diff.ci_high:+.4f}]"
            said = [part for part in (diff.resampled, diff.why_no_interval and f"no interval: {diff.why_no_interval}")
                    if part]
            if said:
                interval += f" ({'; '.join(said)})"
            rows.append([name, key, f"{diff.base:.4f}", f"{diff.other:.4f}", f"{diff.difference:+.4f}{interval}",
                         diff.verdict])
    if rows:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        lines[1:1] = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ops.compare", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[],
                        help="folders to search for run folders (default: outputs multirun)")
    parser.add_argument("--last", type=int, default=10, help="how many of the most recent runs (1 or more)")
    parser.add_argument("--metrics", default=",".join(HEADLINE), help="comma-separated metric names")
    parser.add_argument("--samples", type=int, default=B.DEFAULT_SAMPLES, help="bootstrap samples for paired differences")
    parser.add_argument("--seed", type=int, default=B.DEFAULT_SEED, help="bootstrap seed (same seed, same intervals)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="the run folder the others are paired against (default: the oldest listed)")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last {args.last}: give how many runs to list, 1 or more")
    if args.samples < B.MIN_SAMPLES:
        parser.error(f"--samples {args.samples}: give {B.MIN_SAMPLES} or more (fewer cannot place a 95% interval)")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        parser.error(f"--metrics {args.metrics!r}: name at least one metric, e.g. --metrics asr/wer,slu/slu_f1")
    args.roots = searched_roots(parser, args.roots, [Path("outputs"), Path("multirun")])
    loaded = []
    for path in find_runs(args.roots):
        try:
            loaded.append(load_run(path))
        except ValueError as err:  # a run killed mid-write must not hide the rest
            print(f"note: {path} left out: {err}", file=sys.stderr)
    for root in args.roots:  # a run folder named on the command line is never left out unsaid
        if (root / "metrics.json").is_file() and not _config_file(root).is_file():
            print(f"note: {root} left out: it has metrics.json but no config.yaml, the record of how the run was "
                  "made; restore it from a copy of the run", file=sys.stderr)
    runs = sorted(loaded, key=RunSummary.order)[-args.last:]
    if not runs:
        print(f"no run folders under {', '.join(map(str, args.roots))}")
        return 0
    if args.baseline is not None:  # first in the pairing; listed even when older than --last reaches
        base = args.baseline.resolve()
        chosen = [r for r in runs if r.path.resolve() == base]
        if not chosen:
            if base not in {p.resolve() for p in find_runs([base])}:
                parser.error(f"--baseline {args.baseline}: not a run folder (no config.yaml)")
            try:
                chosen = [load_run(base)]
            except ValueError as err:
                parser.error(f"--baseline {args.baseline}: {err}")
        if not evaluated_run(chosen[0]):
            parser.error(f"--baseline {args.baseline}: not evaluated (no test metrics in metrics.json), so nothing "
                         f"pairs against it; evaluate it first: python evaluate.py run={args.baseline}")
    pairing = runs if args.baseline is None else [*chosen, *(r for r in runs if r.path.resolve() != base)]
    unknown = [m for m in metrics if not any(m in r.metrics for r in runs)]
    if unknown:
        print(f"note: {', '.join(unknown)} in none of these runs' metrics.json (names as in metrics.json, "
              "e.g. asr/wer)", file=sys.stderr)
    if any("decision" in r.metrics for r in runs):
        metrics.append("decision")
    keys = differing_keys(runs)
    # Beside an evaluation folder, a training run's nlu.*, trainer.*, ... are not differences, only
    # another entry point's settings: show the keys every run has, and count the rest.
    mixed = len({r.evaluation for r in runs}) > 1
    shown = [k for k in keys if all(k in r.config for r in runs)] if mixed else keys
    print(format_table(runs, shown, metrics, Path.cwd()))
    if mixed:
        print(f"(training runs beside evaluation folders: only settings both have are shown; {len(keys) - len(shown)} set by one only)")
    paired = paired_report(pairing, [m for m in metrics if m != "decision"], Path.cwd(), args.samples, args.seed,
                           chosen=args.baseline is not None)
    if paired:
        print("\n" + paired)
    return 0


if __name__ == "__main__":
    sys.exit(main())
