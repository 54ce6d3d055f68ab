"""The promotion gate on the paired difference over the same test clips, under both policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M
from pipeline.ops.gate import GATE_POLICIES, gate_on_runs
from pipeline.runtime import PipelineError

RULES = {"wer": {"metric": "asr/wer", "max_increase": 0.005},
         "intent": {"metric": "slu/intent_accuracy", "max_decrease": 0.0}}
# 40 clips of 5 words from 20 speakers: 200 reference words, so one word error is 0.005 WER.
REFS = [f"turn the kitchen light {w}" for w in ("on", "off", "up", "down")] * 10
SPEAKERS = [f"acct_{i // 2:02d}" for i in range(40)]


def _write_run(folder: Path, hyps: list[str], speakers: list[str] = SPEAKERS) -> dict:
    """A run folder with predictions.jsonl whose per-clip counts come from the metric code."""
    folder.mkdir(parents=True)
    rows = []
    for i, (ref, hyp, spk) in enumerate(zip(REFS, hyps, speakers)):
        row = {"utterance_id": f"utt-{i:02d}", "speaker": spk, "intent": "iot_lights", "slu_scored": True,
               "slu_intent": "iot_lights", "edit": M.edit_counts(ref, hyp)}
        row["counts"] = B.clip_counts(row, threshold=None)
        rows.append(row)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"asr/wer": M.wer(REFS, hyps), "slu/intent_accuracy": 1.0}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def _gate(tmp: Path, incumbent: list[str], candidate: list[str], policy: str, speakers: list[str] = SPEAKERS) -> list:
    old = _write_run(tmp / policy / "incumbent", incumbent, speakers)
    new = _write_run(tmp / policy / "candidate", candidate, speakers)
    return gate_on_runs(tmp / policy / "candidate", tmp / policy / "incumbent", new, old, RULES, policy, 500, 0)


def _with_error(hyp: str) -> str:
    return hyp.replace("kitchen", "kitten")  # one substituted word


def _fixed(hyp: str) -> str:
    return hyp.replace("kitten", "kitchen")


PROMOTED = [_with_error(r) if i % 5 == 0 else r for i, r in enumerate(REFS)]  # 8 errors: WER 0.04


@pytest.mark.parametrize("policy", GATE_POLICIES)
def test_a_model_against_itself_passes_under_both_policies(tmp_path: Path, policy: str) -> None:
    # Every resample of speakers gives the difference 0: no interval (formerly a zero-width [0, 0]
    # was expected here), so the point values decide, and say why.
    checks = _gate(tmp_path, PROMOTED, PROMOTED, policy)
    assert all(c.passed for c in checks), [c.detail for c in checks]
    wer = checks[0]
    assert (wer.ci_low, wer.ci_high, wer.policy) == (None, None, policy)
    assert wer.detail.endswith("(every resampled set of speakers gives the same difference: no interval: "
                               "judged on the point values)"), wer.detail


@pytest.mark.parametrize("policy", GATE_POLICIES)
def test_a_clearly_worse_model_is_rejected(tmp_path: Path, policy: str) -> None:
    # An early checkpoint: it drops the last word of every clip, and of every third clip the last two
    # (WER 0.04 -> 0.31). Not the same on every speaker: a resample of speakers that all worsen
    # alike would give no interval.
    early = [h.rsplit(" ", 1 + (i % 3 == 0))[0] for i, h in enumerate(PROMOTED)]
    wer = _gate(tmp_path, PROMOTED, early, policy)[0]
    assert not wer.passed and wer.difference == pytest.approx(0.27)
    assert wer.ci_low > 0.005, "the whole interval is beyond the limit"
    assert ("worse than the limit" if policy == "not_worse" else "beyond the limit") in wer.detail


def test_a_paired_rule_that_demands_improvement_says_so(tmp_path: Path) -> None:
    old = _write_run(tmp_path / "incumbent", PROMOTED)
    new = _write_run(tmp_path / "candidate", [_with_error(h) if i == 1 else h for i, h in enumerate(PROMOTED)])
    rules = {"wer": {"metric": "asr/wer", "max_increase": -0.01}}
    wer = gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, rules, "not_worse", 500, 0)[0]
    assert not wer.passed and "; the rule demands it fall by 0.0100; not_worse:" in wer.detail


def test_a_difference_inside_the_noise_is_promoted_only_under_not_worse(tmp_path: Path) -> None:
    # The candidate fixes 3 of the promoted model's errors and makes 4 new ones, on other speakers:
    # one net word error (+0.005 WER, exactly the limit), well inside the noise of 40 clips.
    candidate = list(PROMOTED)
    for i in (0, 5, 10):
        candidate[i] = _fixed(candidate[i])
    for i in (3, 13, 23, 33):
        candidate[i] = _with_error(candidate[i])
    assert M.wer(REFS, candidate) - M.wer(REFS, PROMOTED) == pytest.approx(0.005)

    lenient = _gate(tmp_path, PROMOTED, candidate, "not_worse")[0]
    strict = _gate(tmp_path, PROMOTED, candidate, "non_inferior")[0]
    assert lenient.passed and not strict.passed
    assert (lenient.ci_low, lenient.ci_high) == (strict.ci_low, strict.ci_high)
    assert lenient.ci_low < 0.005 < lenient.ci_high
    assert "not shown worse" in lenient.detail
    assert "non_inferior: the interval reaches" in strict.detail and "beyond the limit" in strict.detail
    assert "40 clips, 20 speakers" in strict.detail
    record = strict.as_dict()  # what decision.json keeps per rule
    assert {"difference", "ci_low", "ci_high", "policy", "clips", "speakers"} <= set(record)


def test_bad_policy_and_missing_per_clip_results_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="retrain.gate_policy='lenient'"):
        _gate(tmp_path, PROMOTED, PROMOTED, "lenient")
    (tmp_path / "old").mkdir()
    with pytest.raises(PipelineError, match="predictions.jsonl does not exist"):
        gate_on_runs(tmp_path / "lenient" / "candidate", tmp_path / "old", {}, {}, RULES, "not_worse", 10, 0)


def test_a_metric_the_per_clip_results_do_not_reproduce_is_judged_on_point_values(tmp_path: Path) -> None:
    old = _write_run(tmp_path / "incumbent", PROMOTED)
    new = _write_run(tmp_path / "candidate", PROMOTED)
    new = {**new, "asr/wer": new["asr/wer"] + 0.001}  # measured on something else than these clips
    wer = gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, RULES, "non_inferior", 100, 0)[0]
    assert wer.passed and wer.difference is None and "judged on the point values" in wer.detail


def _with_background(folder: Path, metrics: dict, false_accepts: list[int]) -> dict:
    """A run that streamed 2 h of background: 12 ten-minute recordings, as eval_details.json records them."""
    per = [{"recording": f"rec_{i:016x}", "seconds": 600.0, "false_accepts": n, "digest": f"d{i}"}
                for i, n in enumerate(false_accepts)]
    (folder / "eval_details.json").write_text(json.dumps({"wake_background": {"per_recording": per}}))
    return {**metrics, "wake/fa_per_hour": sum(false_accepts) / (600.0 * len(per) / 3600.0)}


def test_false_accepts_on_background_are_judged_over_its_recordings(tmp_path: Path) -> None:
    rules = {"fa": {"metric": "wake/fa_per_hour", "max_increase": 0.0}}
    old = _with_background(tmp_path / "incumbent", _write_run(tmp_path / "incumbent", PROMOTED), [0] * 12)
    # A lower threshold: 0, 1 or 2 false accepts in each recording, 6 an hour against none.
    new = _with_background(tmp_path / "lower", _write_run(tmp_path / "lower", PROMOTED), [1, 0, 2] * 4)
    fa = gate_on_runs(tmp_path / "lower", tmp_path / "incumbent", new, old, rules, "not_worse", 300, 0)[0]
    assert not fa.passed and fa.difference == pytest.approx(6.0) and 0 < fa.ci_low < 6.0 < fa.ci_high
    assert "12 background recordings" in fa.detail and (fa.clips, fa.speakers) == (None, None)
    # One false accept more in the 2 hours is within the noise: promoted only under not_worse.
    new = _with_background(tmp_path / "one", _write_run(tmp_path / "one", PROMOTED), [1] + [0] * 11)
    passed = {p: gate_on_runs(tmp_path / "one", tmp_path / "incumbent", new, old, rules, p, 300, 0)[0].passed
              for p in GATE_POLICIES}
    assert passed == {"not_worse": True, "non_inferior": False}
    # A promoted model evaluated before the counts were written: the point values decide.
    (tmp_path / "incumbent" / "eval_details.json").unlink()
    fa = gate_on_runs(tmp_path / "one", tmp_path / "incumbent", new, old, rules, "not_worse", 300, 0)[0]
    assert not fa.passed and fa.difference is None and "judged on the point values" in fa.detail


def test_a_run_that_named_its_background_recordings_as_written_is_re_evaluated_not_paired(tmp_path: Path) -> None:
    """An evaluation from before recordings were pseudonymised names them as written (a file name
    with a device serial): its names match no pseudonym, and quoting them would put the serial in
    the gate's decision. The gate says which run to re-evaluate, and how, without the names."""
    from pipeline.ops.gate import with_background_pairs

    rules = {"fa": {"metric": "wake/fa_per_hour", "max_increase": 0.0}}
    old = _with_background(tmp_path / "incumbent", _write_run(tmp_path / "incumbent", PROMOTED), [0] * 12)
    new = _with_background(tmp_path / "candidate", _write_run(tmp_path / "candidate", PROMOTED), [0] * 12)
    details = json.loads((tmp_path / "incumbent" / "eval_details.json").read_text())
    for i, r in enumerate(details["wake_background"]["per_recording"]):
        r["recording"] = f"test/kitchen-DSN{i:05d}.flac"
    (tmp_path / "incumbent" / "eval_details.json").write_text(json.dumps(details))
    with pytest.raises(PipelineError, match=rf"wake/fa_per_hour: {tmp_path}/incumbent/eval_details\.json names its "
                                            r"background recordings as written, not by pseudonyms .*re-evaluate it: "
                                            rf"`python evaluate\.py run={tmp_path}/incumbent`") as caught:
        gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, rules, "not_worse", 300, 0)
    assert "DSN" not in str(caught.value)
    # Without a rule on false accepts (and in compare) the reason is given, and the rest is judged.
    paired, why = with_background_pairs(B.Paired({}, 0, 0, 100), tmp_path / "incumbent", tmp_path / "candidate", 100, 0)
    assert "wake/fa_per_hour" not in paired.differences and "re-evaluate it" in why and "DSN" not in why
    wer = {"wer": {"metric": "asr/wer", "max_increase": 0.0}}
    assert gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, wer, "not_worse", 300, 0)[0].passed


def test_a_pairing_over_part_of_the_background_says_how_many_recordings_it_left_out(tmp_path: Path) -> None:
    """Before the fix: the promoted model streamed 9 of the candidate's 12 recordings; the pairing
    over those 9 missed the candidate's metrics.json, and the rule fell back on the point values
    saying only "no per-clip interval", not that 3 recordings were left out of the pairing."""
    rules = {"fa": {"metric": "wake/fa_per_hour", "max_increase": 0.0}}
    old = _with_background(tmp_path / "incumbent", _write_run(tmp_path / "incumbent", PROMOTED), [0] * 9)
    new = _with_background(tmp_path / "candidate", _write_run(tmp_path / "candidate", PROMOTED), [0] * 9 + [3] * 3)
    fa = gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, rules, "not_worse", 300, 0)[0]
    assert not fa.passed and fa.difference is None
    assert ("paired over 9 background recordings; left out: 0 only the baseline streamed, 3 only the other run"
            in fa.detail), fa.detail


def test_a_test_split_of_one_speaker_is_judged_on_point_values_and_says_why(tmp_path: Path) -> None:
    wer = _gate(tmp_path, PROMOTED, [_fixed(h) for h in PROMOTED], "non_inferior", ["acct_00"] * len(REFS))[0]
    assert wer.passed and wer.ci_low is None and wer.candidate == 0.0
    assert wer.detail.endswith("(one speaker: no interval: judged on the point values)"), wer.detail


def test_a_rule_judged_on_point_values_keeps_the_paired_difference_it_knows(tmp_path: Path) -> None:
    """One speaker gives no interval, but the per-clip counts reproduce both metrics.json: the
    paired difference and the clips it was taken over go into the record all the same."""
    fixed = [_fixed(h) for h in PROMOTED]
    wer = _gate(tmp_path, PROMOTED, fixed, "not_worse", ["acct_00"] * len(REFS))[0]
    assert wer.ci_low is None and "judged on the point values" in wer.detail
    assert wer.difference == pytest.approx(M.wer(REFS, fixed) - M.wer(REFS, PROMOTED))
    assert (wer.clips, wer.speakers) == (len(REFS), 1)
    # False accepts over one background recording: the difference, drawn over no clips or speakers.
    rules = {"fa": {"metric": "wake/fa_per_hour", "max_increase": 1.0}}
    old = _with_background(tmp_path / "incumbent", _write_run(tmp_path / "incumbent", PROMOTED), [0])
    new = _with_background(tmp_path / "candidate", _write_run(tmp_path / "candidate", PROMOTED), [1])
    fa = gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, rules, "not_worse", 100, 0)[0]
    assert fa.ci_low is None and "one recording: no interval" in fa.detail
    assert fa.difference == pytest.approx(new["wake/fa_per_hour"] - old["wake/fa_per_hour"]) and fa.difference > 0
    assert (fa.clips, fa.speakers) == (None, None)


def test_per_clip_results_short_by_erasure_are_read_and_a_damaged_row_is_named(tmp_path: Path) -> None:
    """Erasure trims a kept run's predictions and counts it (`eval/clips_erased`); a row without its
    fields raised a KeyError out of compare."""
    from pipeline.ops.gate import load_clip_table

    rows = [{"utterance_id": f"u{i}", "speaker": f"acct_{i % 3}", "edit": M.edit_counts("turn it on", "turn it on")}
            for i in range(6)]
    for row in rows:
        row["counts"] = B.clip_counts(row, threshold=None)
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    assert len(load_clip_table(tmp_path, {"eval/num_clips": 6, "eval/clips_erased": 2}).utterances) == 4
    with pytest.raises(PipelineError, match="holds 4 clips where metrics.json counts 6"):
        load_clip_table(tmp_path, {"eval/num_clips": 6})
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"counts": rows[0]["counts"]}) + "\n")
    with pytest.raises(PipelineError, match="a row lacks 'utterance_id'"):
        load_clip_table(tmp_path)


def test_runs_evaluated_on_different_clips_are_refused(tmp_path: Path) -> None:
    # The candidate's second half is other, easier clips: paired on the shared half the two models are
    # alike, and the point values of different clips would pass it. Refused, naming a clip.
    hyps = [_with_error(r) if i % 4 == 0 else r for i, r in enumerate(REFS)]
    old = _write_run(tmp_path / "incumbent", hyps)
    new = _write_run(tmp_path / "candidate", hyps[:20] + REFS[20:])
    rows = (tmp_path / "candidate" / "predictions.jsonl").read_text().splitlines()
    renamed = [r.replace('"utt-', '"new-') if i >= 20 else r for i, r in enumerate(rows)]
    (tmp_path / "candidate" / "predictions.jsonl").write_text("\n".join(renamed) + "\n")
    with pytest.raises(PipelineError, match=r"not evaluated on the same test clips \(20 only in the candidate's "
                                            r"predictions\.jsonl, 20 only in the promoted model's, e\.g\. new-20\)"):
        gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", new, old, RULES, "non_inferior", 100, 0)


def test_false_accepts_streamed_over_other_background_recordings_are_refused(tmp_path: Path) -> None:
    """Before the fix: two runs that streamed different background audio (recordings of the same
    names, other digests) were judged on their point values, as if on the same audio: a candidate
    scored on quieter recordings could pass with more false accepts."""
    rules = {"fa": {"metric": "wake/fa_per_hour", "max_increase": 0.0}}
    old = _with_background(tmp_path / "incumbent", _write_run(tmp_path / "incumbent", PROMOTED), [1] * 12)
    new = _with_background(tmp_path / "other", _write_run(tmp_path / "other", PROMOTED), [0] * 12)
    details = json.loads((tmp_path / "other" / "eval_details.json").read_text())
    for r in details["wake_background"]["per_recording"]:
        r["digest"] = "x" + r["digest"]
    (tmp_path / "other" / "eval_details.json").write_text(json.dumps(details))
    with pytest.raises(PipelineError, match=r"wake/fa_per_hour: background recording rec_0000000000000000 is other audio in the "
                                            r"two runs .*evaluate both on the same background"):
        gate_on_runs(tmp_path / "other", tmp_path / "incumbent", new, old, rules, "not_worse", 300, 0)
    # Without a rule on false accepts the other metrics are judged as before.
    wer = {"wer": {"metric": "asr/wer", "max_increase": 0.0}}
    assert gate_on_runs(tmp_path / "other", tmp_path / "incumbent", new, old, wer, "not_worse", 300, 0)[0].passed


def test_false_accepts_of_a_model_with_other_frames_are_judged_over_the_recordings(tmp_path: Path) -> None:
    """Before the fix: the candidate's rate was recomputed over the promoted model's scored seconds. A
    model of other frame length scores each recording a few hundredths of a second longer (the same
    audio, paired), so the recomputed rate missed its metrics.json by a little, and the rule fell back
    on the point values with "no per-clip interval" instead of the paired interval."""
    rules = {"fa": {"metric": "wake/fa_per_hour", "max_increase": 0.0}}
    old = _with_background(tmp_path / "incumbent", _write_run(tmp_path / "incumbent", PROMOTED), [1] * 12)
    new = _with_background(tmp_path / "coarser", _write_run(tmp_path / "coarser", PROMOTED), [2, 3] * 6)
    details = json.loads((tmp_path / "coarser" / "eval_details.json").read_text())
    for r in details["wake_background"]["per_recording"]:
        r["seconds"] += 0.03
    (tmp_path / "coarser" / "eval_details.json").write_text(json.dumps(details))
    new["wake/fa_per_hour"] = 30 / (12 * 600.03 / 3600.0)  # its own scored hours, as the evaluation writes it
    fa = gate_on_runs(tmp_path / "coarser", tmp_path / "incumbent", new, old, rules, "not_worse", 300, 0)[0]
    assert fa.difference == pytest.approx(new["wake/fa_per_hour"] - 6.0), fa.detail
    assert not fa.passed and fa.ci_low > 0 and "12 background recordings" in fa.detail


@pytest.mark.parametrize(("metric", "kind", "right"), [
    ("nlu/intent_macro_f1", "max_increase", "max_decrease"), ("slu/intent_macro_f1", "max_increase", "max_decrease"),
    ("by_source/demo/nlu/intent_macro_f1", "max_increase", "max_decrease"), ("eval/rtf", "max_increase", "max_decrease"),
    ("asr/wer_greedy", "max_decrease", "max_increase"), ("wake/frr_at_1_fa_per_hour", "max_decrease", "max_increase"),
])
def test_a_rule_the_wrong_way_round_is_refused_for_every_metric_with_a_direction(metric: str, kind: str, right: str) -> None:
    """Before the fix: only the metrics with an interval had a direction, so {metric: nlu/intent_macro_f1,
    max_increase: 0.0} was accepted and rejected every candidate that raised the macro F1 while passing
    any that lowered it (likewise a greedy WER, the real-time speed, or an FRR at a fixed rate)."""
    from pipeline.ops.gate import rule_problem

    assert f"so the rule needs {right}" in (rule_problem("x", {"metric": metric, kind: 0.0}) or "")
    assert rule_problem("x", {"metric": metric, right: 0.0}) is None


def test_the_gate_on_two_runs_does_not_judge_what_neither_evaluation_could_compute(tmp_path: Path) -> None:
    """gate_on_runs takes why from both runs' eval_details.json (not_computed). Before the fix a rule
    on wake/frr over a test split without a clip lacking the wake word rejected every candidate."""
    reason = "split 'test' has no clip without the wake word (40 clips), so no false accept can be measured"
    hyps = list(REFS)
    metrics = {}
    for name in ("incumbent", "candidate"):
        metrics[name] = _write_run(tmp_path / name, hyps)
        (tmp_path / name / "eval_details.json").write_text(json.dumps({"not_computed": {"wake/frr": reason}}))
    rules = {**RULES, "frr": {"metric": "wake/frr", "max_increase": 0.0}}
    checks = gate_on_runs(tmp_path / "candidate", tmp_path / "incumbent", metrics["candidate"], metrics["incumbent"],
                          rules, "non_inferior", 500, 0)
    assert all(c.passed for c in checks) and reason in checks[-1].detail, [c.detail for c in checks]
