"""The promotion gate: may the candidate replace the promoted model?

Each rule names one metric and how far it may move the wrong way, measured against the promoted
model on the same test split (both evaluated now, so a changed test split cannot fake a gain):

    retrain.gate.wer: {metric: asr/wer, max_increase: 0.005}      # 0.5 WER points
    retrain.gate.slu_f1: {metric: slu/slu_f1, max_decrease: 0.0}

On a few hundred clips a point difference of 0.005 WER is mostly noise, so `check_gate_paired`
judges each rule on the candidate-minus-promoted difference over the same clips and its 95%
paired speaker-bootstrap interval (pipeline.eval.bootstrap), under `retrain.gate_policy`:

    not_worse     (default) reject only when the whole interval is worse than the limit
    non_inferior  promote only when the whole interval is within the limit

False accepts per hour streamed over background recordings are paired over those recordings
(`with_background_pairs`), so a candidate that lowers its false rejects by accepting more of the
background is caught by a rule on wake/fa_per_hour.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.data.privacy import is_recording_pseudonym
from pipeline.eval import bootstrap as B
from pipeline.eval.coverage import ALL_KEYS as METRIC_KEYS
from pipeline.runtime import PipelineError

# Floating-point noise: the same model evaluated twice may differ in the last bits.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class GateCheck:
    name: str
    metric: str
    rule: str            # max_increase | max_decrease
    limit: float
    candidate: float | None
    incumbent: float | None
    passed: bool
    detail: str
    # The paired judgement (None when judged on point values alone). `difference` is also kept when
    # the per-clip counts reproduce both metrics.json but give no interval (e.g. one speaker).
    difference: float | None = None   # candidate minus promoted, on the same clips
    ci_low: float | None = None       # its 95% paired bootstrap interval
    ci_high: float | None = None
    policy: str | None = None
    clips: int | None = None
    speakers: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


GATE_LIMITS = ("max_increase", "max_decrease")
# Which way is better for every gateable metric with a direction, not only those with an interval:
# a rule the wrong way round rejects every candidate that improves the metric and passes any that
# worsens it. eval/rtf is audio seconds per second of compute, so faster is higher. (wake/threshold,
# wake/background_hours, eval/num_clips and eval/audio_hours have no better side.)
RULE_HIGHER_IS_BETTER: dict[str, bool] = {
    **B.HIGHER_IS_BETTER, "asr/wer_greedy": False, "asr/cer_greedy": False, "eval/rtf": True,
    "nlu/intent_macro_f1": True, "slu/intent_macro_f1": True,
    **{key: False for key in METRIC_KEYS if key.startswith("wake/frr_at_")},
}


def rule_problem(name: str, rule: Mapping[str, Any]) -> str | None:
    """What is wrong with the rule `retrain.gate.<name>`, or None (checked up front in
    pipeline.ops.config, and again by the gate for a caller that passes its own rules)."""
    if "metric" not in rule or sum(k in rule for k in GATE_LIMITS) != 1:
        return f"retrain.gate.{name} must have `metric` and exactly one of max_increase / max_decrease, got {dict(rule)}"
    kind = next(k for k in GATE_LIMITS if k in rule)
    limit = rule[kind]
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
        # Else nan passes every comparison as False and rejects every candidate after training.
        return (f"retrain.gate.{name}.{kind}={limit!r} is not a finite number; give how far the metric may move "
                "the wrong way (0 = not at all; a negative limit demands that much improvement)")
    metric = str(rule["metric"])
    per_source = metric.startswith("by_source/") and metric.count("/") >= 3
    base = metric.split("/", 2)[2] if per_source else metric
    if base not in METRIC_KEYS:
        # Else a typo trains all night, then finds the metric missing and rejects every candidate.
        return (f"retrain.gate.{name}.metric={metric!r} is no metric the evaluation writes; use one of "
                f"{', '.join(METRIC_KEYS)} (or by_source/<source>/<metric>)")
    if base in RULE_HIGHER_IS_BETTER and (kind == "max_decrease") != RULE_HIGHER_IS_BETTER[base]:
        # Else `max_increase` on an F1 rejects every candidate that improves it and passes any that falls.
        wrong, right = ("falls", "max_decrease") if RULE_HIGHER_IS_BETTER[base] else ("rises", "max_increase")
        return (f"retrain.gate.{name}.{kind}: {metric} gets worse when it {wrong}, so the rule needs {right} "
                f"(how far it may move the wrong way), not {kind}")
    return None


def _rule(name: str, rule: Mapping[str, Any]) -> tuple[str, str, float]:
    problem = rule_problem(name, rule)
    if problem:
        raise PipelineError(problem)
    kind = next(k for k in GATE_LIMITS if k in rule)
    return str(rule["metric"]), kind, float(rule[kind])


def check_gate(candidate: Mapping[str, Any], incumbent: Mapping[str, Any],
               rules: Mapping[str, Mapping[str, Any]], unmeasurable: Mapping[str, str] | None = None) -> list[GateCheck]:
    """Each rule on the two models' point values alone. `unmeasurable`: metric -> why the test clips
    give it to neither model (both runs' eval_details.json, not_computed); such a rule is not judged."""
    checks = []
    for name, rule in rules.items():
        metric, kind, limit = _rule(name, rule)
        new, old = _number(candidate.get(metric)), _number(incumbent.get(metric))
        if new is None and old is None and metric in (unmeasurable or {}):
            # The test clips give the metric to no model (a split without a clip lacking the wake word
            # has no FRR or false accepts): both evaluated on the same clips, so nothing says the
            # candidate is worse, and rejecting would reject every candidate on such a corpus. (A
            # metric missing without such a reason, a mistyped by_source/<source>/..., still fails.)
            checks.append(GateCheck(name, metric, kind, limit, None, None, True,
                                    f"{metric} computed for neither model on these test clips "
                                    f"({unmeasurable[metric]}): not judged"))
            continue
        if new is None or old is None:
            which = "candidate" if new is None else "promoted model"
            checks.append(GateCheck(name, metric, kind, limit, new, old, False,
                                    f"{metric} missing or not a number for the {which}"))
            continue
        worse = new - old if kind == "max_increase" else old - new
        passed = worse <= limit + TOLERANCE
        direction = "rose" if kind == "max_increase" else "fell"
        if limit < 0:  # a rule that demands improvement
            moved = (f"{direction} by {worse:.4f}" if worse > 0 else f"improved by {-worse:.4f}" if worse < 0
                     else "unchanged")
            detail = f"{metric} {old:.4f} -> {new:.4f}: {moved}; {_allowance(kind, limit)}"
        else:
            detail = (f"{metric} {old:.4f} -> {new:.4f}: "
                      + (f"{direction} by {worse:.4f}, limit {limit:.4f}" if worse > 0 else "no worse"))
        checks.append(GateCheck(name, metric, kind, limit, new, old, passed, detail))
    return checks


GATE_POLICIES = ("not_worse", "non_inferior")


def check_gate_paired(
    paired: B.Paired, candidate: Mapping[str, Any], incumbent: Mapping[str, Any],
    rules: Mapping[str, Mapping[str, Any]], policy: str = "not_worse", unmeasurable: Mapping[str, str] | None = None,
) -> list[GateCheck]:
    """Each rule on the paired difference (candidate - promoted) and its interval; a rule on a
    metric without per-clip counts (e.g. eval/rtf) falls back to the point values and says so.
    `candidate` / `incumbent` are the two metrics.json, kept in each check for the record."""
    if policy not in GATE_POLICIES:
        raise PipelineError(f"retrain.gate_policy={policy!r}: use one of {list(GATE_POLICIES)}")
    checks = []
    for name, rule in rules.items():
        metric, kind, limit = _rule(name, rule)
        diff = paired.differences.get(metric)
        new, old = _number(candidate.get(metric)), _number(incumbent.get(metric))
        if new is None and old is None and metric in (unmeasurable or {}):  # not judged (check_gate says why)
            checks.append(replace(check_gate(candidate, incumbent, {name: rule}, unmeasurable)[0], policy=policy))
            continue
        if diff is None or diff.ci_low is None or diff.ci_high is None or not _reproduced(diff, new, old):
            # No per-clip counts for this metric, or they measure something else than metrics.json
            # (e.g. a rate over streamed background audio rather than over clips), or too few
            # speakers or recordings to resample (pipeline.eval.bootstrap.MIN_UNITS), or every resampled
            # set gives the same difference: the Difference says which (why_no_interval).
            few = diff is not None and diff.ci_low is None and _reproduced(diff, new, old)
            why = "no per-clip interval"
            if few and diff.why_no_interval:
                why = f"{diff.why_no_interval}: no interval"
            elif diff is not None and diff.resampled and not _reproduced(diff, new, old):
                why = f"no interval: paired over {diff.resampled}, which does not give the metrics.json figures"
            point = check_gate(candidate, incumbent, {name: rule})[0]
            # Counts that reproduce both metrics.json still give the paired difference (only its
            # interval is missing): kept in the record, like a judged one. Counts that do not
            # reproduce them measure something else, so their difference is left out.
            paired_on = ({"difference": diff.difference, "clips": None if diff.resampled else paired.clips,
                          "speakers": None if diff.resampled else paired.speakers} if few else {})
            checks.append(GateCheck(**{**point.as_dict(), **paired_on, "policy": policy,
                                       "detail": point.detail + f" ({why}: judged on the point values)"}))
            continue
        # The interval in the rule's "worse" direction: positive is worse for both kinds of rule.
        sign = 1.0 if kind == "max_increase" else -1.0
        worse_low, worse_high = sorted((sign * diff.ci_low, sign * diff.ci_high))
        passed = (worse_low if policy == "not_worse" else worse_high) <= limit + TOLERANCE
        checks.append(GateCheck(
            name, metric, kind, limit, new, old, passed,
            _paired_detail(metric, kind, limit, policy, diff, paired, worse_low, worse_high, passed),
            difference=diff.difference, ci_low=diff.ci_low, ci_high=diff.ci_high, policy=policy,
            # Drawn over background recordings, not the clips' speakers: the detail names them.
            clips=None if diff.resampled else paired.clips, speakers=None if diff.resampled else paired.speakers,
        ))
    return checks


def _reproduced(diff: B.Difference, candidate: float | None, incumbent: float | None) -> bool:
    """The per-clip counts give the same figures as the two metrics.json."""
    return (candidate is not None and incumbent is not None and math.isclose(diff.other, candidate, abs_tol=1e-6)
            and math.isclose(diff.base, incumbent, abs_tol=1e-6))


def _allowance(kind: str, limit: float) -> str:
    """What the rule allows: a negative limit demands that much improvement."""
    if limit < 0:
        return f"the rule demands it {'fall' if kind == 'max_increase' else 'rise'} by {-limit:.4f}"
    return f"may {'rise' if kind == 'max_increase' else 'fall'} by {limit:.4f}"


def _paired_detail(metric: str, kind: str, limit: float, policy: str, diff: B.Difference, paired: B.Paired,
                   worse_low: float, worse_high: float, passed: bool) -> str:
    """One line a person can act on: the difference, its interval, and why the policy decided so."""
    drawn = diff.resampled or f"{paired.clips} clips, {paired.speakers} speakers"
    head = (f"{metric} {diff.base:.4f} -> {diff.other:.4f}: candidate - promoted {diff.difference:+.4f} "
            f"[{diff.ci_low:+.4f}, {diff.ci_high:+.4f}] (95%, {drawn}); {_allowance(kind, limit)}")
    if policy == "not_worse":
        if passed:
            return head + f"; not_worse: the interval's best end ({worse_low:+.4f}) is within the limit, so not shown worse"
        return head + f"; not_worse: the whole interval is worse than the limit (at least {worse_low:+.4f})"
    if passed:
        return head + f"; non_inferior: the whole interval is within the limit (at worst {worse_high:+.4f})"
    return head + (f"; non_inferior: the interval reaches {worse_high:+.4f}, beyond the limit, so these clips cannot "
                   "show the candidate is no worse (the difference may be noise; more test clips narrow the interval)")


def load_clip_table(run_dir: Path, metrics: Mapping[str, Any] | None = None) -> B.ClipTable:
    """A run's per-clip results (predictions.jsonl), as the bootstrap reads them. With the run's
    `metrics`, a file that holds another number of clips than they were computed on is refused: a
    file cut short pairs only the clips it kept, and every verdict would be on those."""
    path = Path(run_dir) / "predictions.jsonl"
    redo = "re-evaluate with `python evaluate.py run=<run folder>`"
    if not path.is_file():
        raise PipelineError(f"{run_dir} has no per-clip results ({path.name} does not exist); {redo}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise PipelineError(f"{path} line {number} is not valid JSON ({err.msg}): the file is damaged or "
                                    f"half written; {redo}") from None
    metrics = metrics or {}
    if isinstance(metrics.get("eval/num_clips"), (int, float)):
        # Less the lines erasure took from a kept run (erase.count_erased_clips).
        expected = int(metrics["eval/num_clips"] - metrics.get("eval/clips_erased", 0))
        if len(rows) != expected:
            raise PipelineError(f"{path} holds {len(rows)} clips where metrics.json counts {expected}: the file is "
                                f"cut short or from another evaluation; {redo}")
    try:
        return B.clip_table(rows)
    except ValueError as err:
        raise PipelineError(f"{path}: {err}") from None
    except KeyError as err:
        raise PipelineError(f"{path}: a row lacks {err}; the file is damaged or from an older evaluation; {redo}") from None


def load_background_counts(run_dir: Path) -> list[dict[str, Any]] | None:
    """Each test background recording's scored seconds and false accepts (eval_details.json), or
    None when the run streamed no background (its false accepts then come from negative clips)."""
    path = Path(run_dir) / "eval_details.json"
    if not path.is_file():
        return None
    try:
        details = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path} is not valid JSON ({err}); re-evaluate with `python evaluate.py run=<run>`") from None
    return (details.get("wake_background") or {}).get("per_recording") or None


def with_background_pairs(paired: B.Paired, base_dir: Path, other_dir: Path, samples: int, seed: int,
                          same_audio: bool = False) -> tuple[B.Paired, str | None]:
    """`paired` with wake/fa_per_hour paired over the background recordings both runs streamed,
    when both did; otherwise as it is, with the reason when only one run has such counts or they
    are not the same recordings (the clip-level difference then does not reproduce metrics.json,
    and callers fall back on the point values). `same_audio`: counts of other recordings are an
    error instead, as other test clips are for the gate (point values of different audio could
    pass a worse model)."""
    base, other = load_background_counts(base_dir), load_background_counts(other_dir)
    if base is None and other is None:
        return paired, None
    if base is None or other is None:
        missing = base_dir if base is None else other_dir
        return paired, (f"wake/fa_per_hour: {missing} has no per-recording background counts "
                        "(evaluated without background, or before they were written)")
    # A run evaluated before recordings were named by pseudonyms names them as written: those names
    # match no pseudonym, and repeating them here would put a serial a file name holds in the output.
    unnamed = [d for d, counts in ((base_dir, base), (other_dir, other))
               if not all(is_recording_pseudonym(str(r.get("recording"))) for r in counts)]
    if unnamed:
        why = (f"wake/fa_per_hour: {unnamed[0]}/eval_details.json names its background recordings as written, not by "
               "pseudonyms (evaluated before they were pseudonymised), so they cannot be paired; re-evaluate it: "
               f"`python evaluate.py run={unnamed[0]}`")
        if same_audio:
            raise PipelineError(f"{other_dir} vs {base_dir}: {why}")
        return paired, why
    try:
        diff = B.paired_rate_difference(base, other, samples, seed)
    except ValueError as err:
        if same_audio:
            raise PipelineError(f"{other_dir} vs {base_dir}: wake/fa_per_hour: {err}; evaluate both on the same "
                                "background (`python evaluate.py run=<run> eval.background=<folder>`)") from None
        return paired, f"wake/fa_per_hour: {err}"
    return replace(paired, differences={**paired.differences, diff.key: diff}), None


def gate_on_runs(
    candidate_dir: Path, incumbent_dir: Path, candidate: Mapping[str, Any], incumbent: Mapping[str, Any],
    rules: Mapping[str, Mapping[str, Any]], policy: str, samples: int, seed: int,
) -> list[GateCheck]:
    """The gate for two evaluation folders of the same test split (retraining evaluates both now).
    Other clips on either side are refused: paired on the shared ones, the point values (which the
    gate falls back on without an interval) would still be of different clips, and an easier test
    set could pass a worse model."""
    old, new = load_clip_table(incumbent_dir, incumbent), load_clip_table(candidate_dir, candidate)
    only_old, only_new = set(old.utterances) - set(new.utterances), set(new.utterances) - set(old.utterances)
    if only_old or only_new:
        raise PipelineError(
            f"{candidate_dir} vs {incumbent_dir}: not evaluated on the same test clips ({len(only_new)} only in the "
            f"candidate's predictions.jsonl, {len(only_old)} only in the promoted model's, e.g. "
            f"{sorted(only_new or only_old)[0]}); evaluate both on one dataset (`python evaluate.py run=<run> "
            "dataset=<dataset_path>`)")
    try:
        paired = B.paired_differences(old, new, samples, seed)
    except ValueError as err:
        raise PipelineError(f"{candidate_dir} vs {incumbent_dir}: {err}") from None
    judged = any(str(rule.get("metric")) == "wake/fa_per_hour" for rule in rules.values())
    paired, _ = with_background_pairs(paired, incumbent_dir, candidate_dir, samples, seed, same_audio=judged)
    unmeasurable = {k: v for k, v in not_computed(candidate_dir).items() if k in not_computed(incumbent_dir)}
    return check_gate_paired(paired, candidate, incumbent, rules, policy, unmeasurable)


def not_computed(run_dir: Path) -> dict[str, str]:
    """The metrics a run's evaluation could not compute, with why (eval_details.json, not_computed)."""
    path = Path(run_dir) / "eval_details.json"
    if not path.is_file():
        return {}
    try:
        details = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path} is not valid JSON ({err}); re-evaluate with `python evaluate.py run=<run>`") from None
    reasons = details.get("not_computed") if isinstance(details, dict) else None
    return {str(k): str(v) for k, v in reasons.items()} if isinstance(reasons, dict) else {}
