"""Intervals: the exact Poisson interval, the speaker bootstrap, paired differences, and the eval
stage writing them to metrics.json, the report, W&B and predictions.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, poisson
from test_eval_run import REPO, eval_cfg

from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M
from tests.recording import RecordingTracker

REFS = ["play jazz music", "set an alarm for seven am", "what is the weather in paris", "turn off the lights",
        "play some rock", "call mom", "wake me up at six", "is it going to rain tomorrow"]
HYPS = ["play jazz", "set an alarm for seven am", "what is the whether in paris", "turn of the light",
        "play some rock music", "call mom", "wake me at six", "is it going to rain tomorrow"]


def _rows(refs: list[str], hyps: list[str], speakers: list[str]) -> list[dict]:
    """predictions.jsonl-like rows whose counts come from the metric code, not typed in."""
    rows = []
    for i, (ref, hyp, spk) in enumerate(zip(refs, hyps, speakers)):
        row = {"utterance_id": f"u{i}", "speaker": spk, "edit": M.edit_counts(ref, hyp)}
        row["counts"] = B.clip_counts(row, threshold=None)
        rows.append(row)
    return rows


def test_poisson_interval_is_the_exact_one() -> None:
    # Zero events: the upper end solves P(0 events) = 2.5%, i.e. rate * hours = -ln 0.025.
    low, high = B.poisson_rate_interval(0, 2.0)
    assert low == 0.0 and high == pytest.approx(-math.log(0.025) / 2.0)
    # k events in h hours: at the lower rate, P(X >= k) = 2.5%; at the upper rate, P(X <= k) = 2.5%.
    k, hours = 3, 0.5
    low, high = B.poisson_rate_interval(k, hours)
    assert poisson.sf(k - 1, low * hours) == pytest.approx(0.025)
    assert poisson.cdf(k, high * hours) == pytest.approx(0.025)
    assert low < k / hours < high
    with pytest.raises(ValueError, match="hours > 0"):
        B.poisson_rate_interval(1, 0.0)


def test_point_values_are_the_stage_metrics() -> None:
    speakers = ["a", "a", "b", "b", "c", "c", "d", "d"]
    table = B.clip_table(_rows(REFS, HYPS, speakers))
    point = B.point_values(table)
    assert point["asr/wer"] == pytest.approx(M.wer(REFS, HYPS))
    assert point["asr/cer"] == pytest.approx(M.cer(REFS, HYPS))


def test_bootstrap_resamples_speakers_not_clips() -> None:
    # Four speakers, each saying the same two clips twice over. Resampling speakers only sees
    # per-speaker sums, so the intervals equal those of one merged clip per speaker; a clip-level
    # bootstrap would give narrower ones.
    speakers = ["a", "a", "b", "b", "c", "c", "d", "d"]
    doubled = B.clip_table(_rows(REFS + REFS, HYPS + HYPS, speakers + speakers))
    single = B.clip_table(_rows(REFS, HYPS, speakers))
    assert B.intervals(doubled, 500, seed=3)["asr/wer"] == pytest.approx(B.intervals(single, 500, seed=3)["asr/wer"])
    low, high = B.intervals(single, 500, seed=3)["asr/wer"]
    assert low < M.wer(REFS, HYPS) < high
    # Seeded: the same seed gives the same interval, another seed another one.
    assert B.intervals(single, 500, seed=3) == B.intervals(single, 500, seed=3)
    assert B.intervals(single, 500, seed=4)["asr/wer"] != (low, high)


def test_paired_difference_of_a_model_with_itself_and_with_a_worse_one() -> None:
    speakers = [f"s{i % 4}" for i in range(8)]
    base = B.clip_table(_rows(REFS, HYPS, speakers))
    same = B.paired_differences(base, base, samples=300)
    wer = same.differences["asr/wer"]
    # Every draw gives 0: no interval rather than [0, 0] (formerly expected here), as for a single run
    # whose draws are all alike (test_a_paired_difference_every_draw_gives_alike_is_no_zero_width_interval).
    assert (wer.difference, wer.ci_low, wer.ci_high) == (0.0, None, None)
    assert wer.verdict == "no interval" and (same.clips, same.speakers) == (8, 4)
    # Every clip loses its last word: WER rises on every speaker.
    worse = B.clip_table(_rows(REFS, [h.rsplit(" ", 1)[0] for h in HYPS], speakers))
    diff = B.paired_differences(base, worse, samples=300).differences["asr/wer"]
    assert diff.difference == pytest.approx(M.wer(REFS, [h.rsplit(" ", 1)[0] for h in HYPS]) - M.wer(REFS, HYPS))
    assert diff.ci_low > 0 and diff.verdict == "worse"
    assert B.paired_differences(worse, base, samples=300).differences["asr/wer"].verdict == "better"


def test_one_speaker_or_one_recording_gives_no_interval_rather_than_a_zero_width_one() -> None:
    """Every draw of one speaker is that speaker: a [x, x] interval would read as certainty."""
    one = B.clip_table(_rows(REFS, HYPS, ["s0"] * len(REFS)))
    assert B.intervals(one, samples=200)["asr/wer"] is None
    worse = B.clip_table(_rows(REFS, [h.rsplit(" ", 1)[0] for h in HYPS], ["s0"] * len(REFS)))
    diff = B.paired_differences(one, worse, samples=200).differences["asr/wer"]
    assert diff.difference > 0 and (diff.ci_low, diff.ci_high, diff.verdict) == (None, None, "no interval")
    two = B.clip_table(_rows(REFS, HYPS, ["s0", "s1"] * (len(REFS) // 2)))
    low, high = B.intervals(two, samples=200)["asr/wer"]
    assert low < high
    recording = [{"recording": "test-000", "seconds": 600.0, "false_accepts": 1, "digest": "d0"}]
    rate = B.paired_rate_difference(recording, [{**recording[0], "false_accepts": 3}], samples=200)
    assert rate.difference == pytest.approx(12.0) and rate.ci_low is None and rate.verdict == "no interval"


def _recordings(false_accepts: list[int]) -> list[dict]:
    """eval_details.json's per-recording background counts: ~10-minute recordings."""
    return [{"recording": f"test-{i:03d}", "seconds": 600.0 + i, "false_accepts": n, "digest": f"d{i}"}
            for i, n in enumerate(false_accepts)]


def test_false_accepts_on_background_are_paired_over_its_recordings() -> None:
    base = _recordings([0, 1, 0, 0, 2, 0, 0, 1])
    hours = sum(r["seconds"] for r in base) / 3600.0
    same = B.paired_rate_difference(base, base, samples=300)  # every draw gives 0: no interval, not [0, 0]
    assert (same.base, same.difference, same.ci_low, same.ci_high) == (pytest.approx(4 / hours), 0.0, None, None)
    assert same.resampled == "8 background recordings" and same.verdict == "no interval"
    # One or three more false accepts in every recording: worse on every draw of recordings.
    more = _recordings([r["false_accepts"] + 1 + 2 * (i % 2) for i, r in enumerate(base)])
    diff = B.paired_rate_difference(base, more, samples=300)
    assert diff.difference == pytest.approx(16 / hours) and diff.ci_low > 0 and diff.verdict == "worse"
    assert B.paired_rate_difference(more, base, samples=300).verdict == "better"
    # One more in a single recording: a draw without that recording shows no difference.
    one = _recordings([n + (i == 3) for i, n in enumerate(r["false_accepts"] for r in base)])
    diff = B.paired_rate_difference(base, one, samples=300)
    assert diff.difference == pytest.approx(1 / hours) and diff.ci_low == 0.0 and diff.verdict == "no detectable difference"
    # Only the recordings both streamed are paired, and the rest counted (formerly left out unsaid:
    # "5 background recordings" was expected here); a recording of another length is other audio.
    assert B.paired_rate_difference(base, more[:5], samples=100).resampled == (
        "5 background recordings; left out: 3 only the baseline streamed, 0 only the other run")
    with pytest.raises(ValueError, match="test-002 lasts 602.00 s in one run and 10.00 s"):
        B.paired_rate_difference(base, [{**base[2], "seconds": 10.0}])
    # A model of 30 ms frames scores 0.99 s of the first window's context where one of 20 ms frames
    # scores 1.00 s: the same audio, paired (compare refused the human-voices recipe against the demo's).
    coarser = [{**r, "seconds": r["seconds"] + 0.01} for r in base]
    assert B.paired_rate_difference(base, coarser, samples=100).resampled == "8 background recordings"
    with pytest.raises(ValueError, match="no background recording in common"):
        B.paired_rate_difference(base, [{**base[0], "recording": "other"}])
    # Before the fix: two folders of device recordings cut into chunks of one length share names and
    # lengths; only the samples' digest tells that the runs heard other audio.
    with pytest.raises(ValueError, match=r"test-004 is other audio in the two runs \(its samples' digests differ\)"):
        B.paired_rate_difference(base, [{**r, "digest": r["digest"] + "x" * (i == 4)} for i, r in enumerate(more)])
    # Counts written before the digests existed cannot tell, and are refused with the way out.
    with pytest.raises(ValueError, match="test-000 has no digest of its audio in the baseline .*evaluate.py run="):
        B.paired_rate_difference([{k: v for k, v in r.items() if k != "digest"} for r in base], more)


def test_clips_without_counts_are_named() -> None:
    with pytest.raises(ValueError, match="clip u7 has no per-clip counts"):
        B.clip_table([{"utterance_id": "u7", "speaker": "s"}])


def test_eval_stage_writes_intervals_everywhere(tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.eval.run import run_eval_stage

    tracker = RecordingTracker()
    cfg = eval_cfg(asr_model=str(tiny_models / "asr"), nlu_model=str(tiny_models / "nlu"),
                   **{"eval.bootstrap_samples": 200})
    metrics = run_eval_stage(cfg, tmp_path / "a", tiny_dataset_path, tracker)
    assert metrics["eval/bootstrap_samples"] == 200
    for key in B.INTERVAL_KEYS:
        low, high = metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"]
        if low is None:  # the random model finds no entity in its own transcripts: F1 0 on every draw
            assert (key, metrics[key], high) == ("slu/entity_f1", 0.0, None)
            continue
        assert high is not None and low <= high, key
        assert tracker.summary[f"{key}_ci_low"] == low, "W&B gets the same keys"
    # The bootstrap recomputes the stage's own figures from the per-clip counts in predictions.jsonl.
    rows = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    point = B.point_values(B.clip_table(rows))
    for key in B.INTERVAL_KEYS:
        if key != "wake/fa_per_hour":
            assert point[key] == pytest.approx(metrics[key]), key
    # False accepts per hour: the Poisson interval on the count over the negative hours.
    counts = {k: sum(r["counts"][k] for r in rows) for k in ("wake_false_accepts", "wake_negative_seconds")}
    assert (metrics["wake/fa_per_hour_ci_low"], metrics["wake/fa_per_hour_ci_high"]) == pytest.approx(
        B.poisson_rate_interval(int(counts["wake_false_accepts"]), counts["wake_negative_seconds"] / 3600))
    # What a paired comparison needs, per clip, and no device or annotator column.
    assert all({"utterance_id", "speaker", "counts", "wake_score"} <= set(r) and not {"device", "annotator"} & set(r)
               for r in rows)
    report = (tmp_path / "a" / "report.md").read_text()
    wer = metrics["asr/wer"]
    assert f"{wer:.3f} [{metrics['asr/wer_ci_low']:.3f}, {metrics['asr/wer_ci_high']:.3f}]" in report
    assert "resample speakers" in report and "scoring: project" in report
    details = json.loads((tmp_path / "a" / "eval_details.json").read_text())
    assert details["test_data"]["split"] == "test" and details["test_data"]["clips"] == len(rows)
    # Seeded: the same evaluation gives the same intervals.
    again = run_eval_stage(cfg, tmp_path / "b", tiny_dataset_path, RecordingTracker())
    assert {k: v for k, v in again.items() if "_ci_" in k} == {k: v for k, v in metrics.items() if "_ci_" in k}
    assert np.isfinite(metrics["asr/wer_ci_high"])

    # The promotion gate on these real per-clip results: a model against itself passes the default
    # rules under both policies, every paired difference exactly 0 on every resample, so no interval
    # (a zero-width [0, 0] was expected here before) and the point values decide.
    import yaml

    from pipeline.ops.gate import GATE_POLICIES, gate_on_runs

    rules = yaml.safe_load((REPO / "conf" / "retrain.yaml").read_text())["retrain"]["gate"]
    for policy in GATE_POLICIES:
        checks = gate_on_runs(tmp_path / "b", tmp_path / "a", again, metrics, rules, policy, 200, 0)
        assert all(c.passed for c in checks), [c.detail for c in checks]
        assert all((c.ci_low, c.ci_high) == (None, None) and "judged on the point values" in c.detail
                   and c.candidate == c.incumbent for c in checks), [c.detail for c in checks]


def test_a_rate_measured_elsewhere_gets_its_own_poisson_interval() -> None:
    # e.g. detections over hours of streamed background audio rather than over the test clips.
    table = B.clip_table(_rows(REFS, HYPS, ["a", "a", "b", "b", "c", "c", "d", "d"]))
    out = B.interval_metrics(table, {"asr/wer": 0.1, "wake/fa_per_hour": 1.5}, 100, 0,
                             rates={"wake/fa_per_hour": (3, 2.0)})
    assert (out["wake/fa_per_hour_ci_low"], out["wake/fa_per_hour_ci_high"]) == B.poisson_rate_interval(3, 2.0)
    assert out["eval/bootstrap_samples"] == 100 and out["asr/wer_ci_low"] is not None


def test_resampled_auc_and_eer_equal_the_wake_metrics_on_the_drawn_clips() -> None:
    from sklearn.metrics import roc_auc_score

    from pipeline.eval.wake import equal_error_rate

    rng = np.random.default_rng(1)
    labels = rng.random(60) < 0.6
    scores = np.round(rng.normal(labels.astype(float), 1.0), 1)  # rounded: ties, as real scores have
    scores[3] = -np.inf  # a clip too short for the keyword
    weights = rng.integers(0, 3, size=(20, 60)).astype(float)
    got = B._ranking_samples(labels, scores, weights)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(60), w.astype(int))  # the drawn clips, each as often as drawn
        finite = np.where(np.isfinite(scores), scores, scores[np.isfinite(scores)].min() - 1.0)
        assert got["wake/auc"][b] == pytest.approx(roc_auc_score(labels[idx], finite[idx]))
        assert got["wake/eer"][b] == pytest.approx(equal_error_rate(labels[idx], scores[idx]))


def _nlu_rows(speakers: int, clips: int, entities: dict[int, dict[str, int]], wrong_intent: set[int]) -> list[dict]:
    """Rows of scored NLU clips: `entities` gives a speaker's clips entity counts (others have none)."""
    rows = []
    for s in range(speakers):
        for c in range(clips):
            row = {"utterance_id": f"s{s}-{c}", "speaker": f"s{s}", "edit": M.edit_counts("play jazz", "play jazz"),
                   "intent": "play_music", "nlu_scored": True,
                   "nlu_intent": "weather_query" if s in wrong_intent else "play_music",
                   "nlu_entity_counts": entities.get(s, {"tp": 0, "fp": 0, "fn": 0})}
            row["counts"] = B.clip_counts(row, threshold=None)
            rows.append(row)
    return rows


def test_entity_f1_is_not_scored_zero_on_samples_that_drew_no_entity() -> None:
    # Entities in two speakers of twenty: about a tenth of the samples draw neither. F1 is undefined
    # there, not 0, and scoring them 0 would pull the interval's lower end down to 0.
    table = B.clip_table(_nlu_rows(20, 3, {0: {"tp": 9, "fp": 1, "fn": 0}, 1: {"tp": 8, "fp": 0, "fn": 1}}, set()))
    point = B.point_values(table)["nlu/entity_f1"]
    assert point == pytest.approx(2 * 17 / (2 * 17 + 2))
    low, high = B.intervals(table, samples=500)["nlu/entity_f1"]
    assert 0.85 < low <= point <= high <= 1.0
    # A split with no entity at all: the point value is Counts.f1's 0, and there is no interval.
    empty = B.clip_table(_nlu_rows(20, 3, {}, set()))
    assert B.point_values(empty)["nlu/entity_f1"] == 0.0
    assert B.intervals(empty, samples=200)["nlu/entity_f1"] is None


def test_a_share_of_zero_or_one_gets_the_exact_interval_over_speakers() -> None:
    # Every intent right on 20 speakers: each bootstrap sample is 1.0 again. The interval is the
    # Clopper-Pearson one for 20 of 20 trials, a speaker a trial (its lower end solves p^20 = 2.5%).
    table = B.clip_table(_nlu_rows(20, 4, {}, set()))
    low, high = B.intervals(table, samples=200)["nlu/intent_accuracy"]
    assert low == pytest.approx(0.025 ** (1 / 20)) and high == 1.0
    # No wake-word clip missed among 12 speakers' positives: [0, 1 - 0.025^(1/12)].
    rows = []
    for s in range(12):
        for c in range(3):
            row = {"utterance_id": f"s{s}-{c}", "speaker": f"s{s}", "edit": M.edit_counts("alexa", "alexa"),
                   "wake_score": -1.0, "wake_word_present": c < 2, "duration": 2.0}
            row["counts"] = B.clip_counts(row, threshold=-2.0 if c < 2 else 0.0)
            rows.append(row)
    low, high = B.intervals(B.clip_table(rows), samples=200)["wake/frr"]
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 12))
    # A share between 0 and 1 keeps its bootstrap interval.
    low, high = B.intervals(B.clip_table(_nlu_rows(20, 4, {}, {3, 7})), samples=500)["nlu/intent_accuracy"]
    assert low < 0.9 <= high and low > 0.5


def test_a_value_every_speaker_shares_is_no_zero_width_interval() -> None:
    """Before the fix: four speakers, each with 1 of 2 intents right and the same entity counts. Every
    draw gives 0.5 and the same F1: the share had no interval and the report blamed too few speakers;
    the F1 had a zero-width one, read as certainty."""
    rows = _nlu_rows(4, 2, {s: {"tp": 1, "fp": 1, "fn": 0} for s in range(4)}, set())
    for row in rows[1::2]:
        row["nlu_intent"] = "weather_query"
        row["counts"] = B.clip_counts(row, threshold=None)
    found = B.intervals(B.clip_table(rows), samples=200)
    # Clopper-Pearson with a speaker a trial: 2 of 4.
    assert found["nlu/intent_accuracy"] == pytest.approx((beta.ppf(0.025, 2, 3), beta.ppf(0.975, 3, 2)))
    assert found["nlu/entity_f1"] is None


def test_a_metric_whose_trials_all_come_from_one_speaker_gets_no_interval_nor_paired_one() -> None:
    # Ten speakers, wake-word positives only from s0: every draw has s0's clips or none, so the FRR
    # and its paired difference would be a zero-width interval read as certainty.
    def rows(missed: int) -> list[dict]:
        out = []
        for s in range(10):
            for c in range(3):
                positive = s == 0
                row = {"utterance_id": f"s{s}-{c}", "speaker": f"s{s}",
                       "edit": M.edit_counts("alexa", "alexa" if s % 2 else "alexia"),
                       "wake_score": -3.0 if positive and c < missed else -1.0 if positive else -5.0,
                       "wake_word_present": positive, "duration": 2.0}
                row["counts"] = B.clip_counts(row, threshold=-2.0)
                out.append(row)
        return out

    base, other = B.clip_table(rows(2)), B.clip_table(rows(1))
    assert B.point_values(base)["wake/frr"] == pytest.approx(2 / 3)
    assert B.intervals(base, samples=200)["wake/frr"] is None
    assert B.intervals(base, samples=200)["asr/wer"] is not None  # every speaker has words
    frr = B.paired_differences(base, other, samples=200).differences["wake/frr"]
    assert frr.difference == pytest.approx(-1 / 3) and frr.ci_low is None and frr.verdict == "no interval"
    # AUC and EER too: every draw holds the one speaker's positives or none.
    assert B.intervals(base, samples=200)["wake/auc"] is None and B.intervals(base, samples=200)["wake/eer"] is None
    assert B.paired_differences(base, other, samples=200).differences["wake/auc"].ci_low is None


def test_an_interval_is_the_2_5th_to_97_5th_percentile_of_the_speaker_draws() -> None:
    # Recomputed by hand from the same draws: each draw's corpus WER from its speakers' summed counts.
    speakers = ["a", "a", "b", "c", "c", "d", "e", "f"]
    table = B.clip_table(_rows(REFS, HYPS, speakers))
    units = sorted(set(speakers))
    draws = B.resample_counts(len(units), 400, 7)[:, [units.index(s) for s in speakers]]  # per clip
    edits = [M.edit_counts(r, h) for r, h in zip(REFS, HYPS)]
    errors, words = (draws @ np.array([e[k] for e in edits], dtype=float) for k in ("word_errors", "ref_words"))
    assert B.intervals(table, samples=400, seed=7)["asr/wer"] == pytest.approx(tuple(np.percentile(errors / words, [2.5, 97.5])))
    assert B.intervals(table, samples=400, seed=7, confidence=0.5)["asr/wer"] == pytest.approx(
        tuple(np.percentile(errors / words, [25, 75])))


def test_a_fractional_value_every_speaker_shares_is_no_zero_width_interval() -> None:
    """Before the fix: SLU-F1 sums fractional distances, so draws of speakers who all score alike
    differed in the last bit, and the interval [0.6680938671952035, 0.6680938671952036] passed the
    zero-width check: a width of 1e-16 read as certainty."""
    fp, fn = np.random.default_rng(1).random(3), np.random.default_rng(2).random(3)
    rows = [{"utterance_id": f"s{s}-{c}", "speaker": f"s{s}",
             "counts": {"slu_f1_tp": 1.0, "slu_f1_fp": float(fp[c]), "slu_f1_fn": float(fn[c])}}
            for s in range(13) for c in range(3)]
    assert B.intervals(B.clip_table(rows), samples=1000)["slu/slu_f1"] is None


def test_a_paired_difference_every_draw_gives_alike_is_no_zero_width_interval() -> None:
    """Before the fix: four speakers who each score alike in both runs (one word error in ten, then
    two) gave the WER difference +0.1 on every draw of speakers, so the paired interval was
    [+0.1, +0.1] and the verdict "worse": certainty the single-run interval already refuses. The same
    for background recordings that each gain one false accept."""
    refs = ["one two three four five six seven eight nine ten"] * 8
    speakers = [f"s{i % 4}" for i in range(8)]
    base = B.clip_table(_rows(refs, [r.replace("two", "too") for r in refs], speakers))
    other = B.clip_table(_rows(refs, [r.replace("two", "too").replace("six", "sex") for r in refs], speakers))
    assert B.intervals(base, samples=200)["asr/wer"] is None  # the single-run rule this follows
    wer = B.paired_differences(base, other, samples=200).differences["asr/wer"]
    assert wer.difference == pytest.approx(0.1)
    assert (wer.ci_low, wer.ci_high, wer.verdict) == (None, None, "no interval")
    assert wer.why_no_interval == "every resampled set of speakers gives the same difference"
    # Alike within rounding counts too, as for single runs: fractional SLU-F1 sums.
    rng = np.random.default_rng(1)
    fp, fn = rng.random(3), rng.random(3)
    rows = [{"utterance_id": f"s{s}-{c}", "speaker": f"s{s}",
             "counts": {"slu_f1_tp": 1.0, "slu_f1_fp": float(fp[c]), "slu_f1_fn": float(fn[c])}}
            for s in range(13) for c in range(3)]
    better = [{**r, "counts": {**r["counts"], "slu_f1_fp": r["counts"]["slu_f1_fp"] / 3}} for r in rows]
    f1 = B.paired_differences(B.clip_table(rows), B.clip_table(better), samples=300).differences["slu/slu_f1"]
    assert f1.difference > 0 and f1.verdict == "no interval"
    recordings = [{"recording": f"test-{i:03d}", "seconds": 600.0, "false_accepts": 0, "digest": f"d{i}"}
                  for i in range(6)]
    rate = B.paired_rate_difference(recordings, [{**r, "false_accepts": 1} for r in recordings], samples=200)
    assert rate.difference == pytest.approx(6.0) and (rate.ci_low, rate.verdict) == (None, "no interval")
    assert rate.why_no_interval == "every resampled set of background recordings gives the same difference"


def test_background_recordings_only_one_run_streamed_are_counted_as_left_out() -> None:
    """Before the fix: recordings only one of the two runs streamed were dropped from the pairing
    without a word: "5 background recordings" read as the whole of both runs' background."""
    base = _recordings([0, 1, 0, 0, 2, 0, 0, 1])
    other = _recordings([1, 1, 2, 0, 3, 0, 1, 2])
    extra = {"recording": "test-100", "seconds": 600.0, "false_accepts": 1, "digest": "d100"}
    diff = B.paired_rate_difference(base, other[:5] + [extra], samples=100)
    assert diff.resampled == "5 background recordings; left out: 3 only the baseline streamed, 1 only the other run"
    assert diff.left_out == (3, 1)
    whole = B.paired_rate_difference(base, other, samples=100)
    assert whole.resampled == "8 background recordings" and whole.left_out == (0, 0)


def test_speaker_zero_is_a_speaker_and_only_a_missing_one_makes_a_clip_its_own_unit() -> None:
    """Before the fix: `speaker or clip:<id>` made speaker 0 (numbered speakers, as LibriSpeech's)
    four units of one clip each, so its clips were resampled as if independent."""
    speakers: list = [0, 0, 0, 0, 1, 1, None, ""]
    table = B.clip_table(_rows(REFS, HYPS, speakers))
    assert table.speakers == ["0", "0", "0", "0", "1", "1", "clip:u6", "clip:u7"]
    assert B.paired_differences(table, table, samples=100).speakers == 4


def test_a_repeated_utterance_id_is_refused_by_name_not_collapsed() -> None:
    """Before the fix: `align` paired the two runs through {id: position}, so a clip id the other
    run held twice kept only its last row, and one the baseline held twice was paired twice with
    it: a clip scored twice, or two clips under one id, silently weighed in the comparison."""
    speakers = [f"s{i % 4}" for i in range(8)]
    rows = _rows(REFS, HYPS, speakers)
    doubled = rows[:5] + [{**rows[5], "utterance_id": "u3", "speaker": rows[3]["speaker"]}] + rows[6:]
    with pytest.raises(B.DuplicateUtteranceError, match=r"utterance id u3 appears 2 times \(rows 4 and 6\)"):
        B.clip_table(doubled)
    # A table made otherwise: align names the run that repeats the id.
    table = B.clip_table(rows)
    repeated = B.ClipTable(utterances=[*table.utterances[:5], "u3", *table.utterances[6:]],
                           speakers=[*table.speakers[:5], table.speakers[3], *table.speakers[6:]],
                           counts=table.counts)
    with pytest.raises(B.DuplicateUtteranceError, match=r"u3 appears 2 times \(rows 4 and 6\) in the other run"):
        B.align(table, repeated)
    with pytest.raises(B.DuplicateUtteranceError, match=r"u3 appears 2 times \(rows 4 and 6\) in the baseline"):
        B.align(repeated, table)
