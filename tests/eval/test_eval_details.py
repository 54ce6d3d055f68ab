"""What eval_details.json and the report list next to the headline metrics: built by the eval
stage's scoring from per-clip rows, without any model."""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import OmegaConf

from pipeline.eval import metrics as M
from pipeline.eval.run import Inference, _score
from pipeline.eval.wake import evaluate_wake

ECFG = OmegaConf.create({"duration_buckets": [2.0, 4.0], "slu_scoring": "project", "bootstrap_samples": 100,
                         "bootstrap_seed": 0, "worst_n": 2})


def _row(n: int, wake: bool, score: float | None, threshold: float, intent: str | None = None) -> dict[str, Any]:
    text = "alexa play jazz" if wake else "turn it down"
    return {
        "utterance_id": f"utt_{n}", "speaker": f"spk_{n % 3}", "intent": intent, "scenario": None, "duration": 2.5,
        "wake_word_present": wake, "transcript": text, "reference": text, "gold_entities": [],
        "hypothesis": text, "greedy_hypothesis": text, "wer": 0.0, "edit": M.edit_counts(text, text),
        "wake_score": score, "wake_detected": score is not None and score >= threshold,
    }


def _scored(rows: list[dict[str, Any]], threshold: float) -> tuple[dict[str, Any], dict[str, Any]]:
    scores = np.array([-np.inf if r["wake_score"] is None else r["wake_score"] for r in rows])
    labels = np.array([r["wake_word_present"] for r in rows])
    wake = evaluate_wake(scores, labels, np.array([r["duration"] for r in rows]), threshold)
    inference = Inference([r["hypothesis"] for r in rows], scores, 10.0, 1.0)
    return _score(rows, [], wake, inference, ECFG)


def test_wake_errors_list_the_most_confident_mistakes_of_each_kind() -> None:
    """A person reading the report listens to these clips first: the positives rejected furthest
    below the threshold and the negatives accepted furthest above it.

    Before the fix: the errors were sorted by score, lowest first, and cut at eval.worst_n, so the
    rejected positives filled the list (here: 3 of them for worst_n=2) and no false accept was shown
    at all; and of the false accepts that were shown, the least confident came first."""
    threshold = -5.0
    rows = [_row(0, True, -20.0, threshold), _row(1, True, -9.0, threshold), _row(2, True, None, threshold),
            _row(3, True, -1.0, threshold), _row(4, True, -2.0, threshold),
            _row(5, False, -4.0, threshold), _row(6, False, -0.5, threshold), _row(7, False, -30.0, threshold),
            _row(8, False, -3.0, threshold)]
    _, details = _scored(rows, threshold)
    listed = [(e["utterance_id"], e["wake_word_present"]) for e in details["wake_errors"]]
    missed = [u for u, present in listed if present]
    accepted = [u for u, present in listed if not present]
    assert missed == ["utt_2", "utt_0"]  # no score at all (too short for the keyword), then the lowest
    assert accepted == ["utt_6", "utt_8"]  # the highest-scoring negatives first



def test_the_intent_slice_does_not_call_a_wake_word_clip_without_an_intent_a_false_wake() -> None:
    """A clip with no intent is not a false wake when it holds the wake word (a wake-word corpus
    labels no intents at all), so the WER-by-intent slice must not say so.

    Before the fix: every clip without an intent was sliced as "(false wake)", wake word or not (and in
    a corpus without intents or wake-word labels, every clip was)."""
    threshold = -5.0
    rows = [_row(0, True, -1.0, threshold), _row(1, True, -2.0, threshold),
            _row(2, False, -9.0, threshold), _row(3, True, -1.0, threshold, intent="play_music")]
    _, details = _scored(rows, threshold)
    by_intent = details["wer_by"]["intent"]
    assert by_intent["(no intent)"]["clips"] == 2  # the two wake-word clips without an intent
    assert by_intent["(no intent, no wake word)"]["clips"] == 1
    assert not any("false wake" in key for key in by_intent)
    assert by_intent["play_music"]["clips"] == 1


def test_every_metric_key_is_documented_and_in_the_reports_headline_table() -> None:
    """metrics.json's keys are what W&B, `make compare` and the gate's rules name, so each one is in
    the README's table of metric names and in the report's headline table.

    Before the fix: `wake/threshold`, `nlu/intent_macro_f1` and `slu/intent_macro_f1` were written to
    metrics.json but named nowhere in the README, and the report's headline table left out
    `asr/cer_greedy`, `wake/threshold` and `slu/intent_macro_f1`."""
    import re
    from pathlib import Path

    from pipeline.eval.coverage import ALL_KEYS
    from pipeline.eval.report import _HEADLINE_ROWS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"`([a-z]+/[a-z0-9_.]+)`", readme))
    documented |= {f"wake/frr_at_{r}_fa_per_hour" for r in ("0.5", "1", "2", "5")
                   if "`wake/frr_at_{0.5,1,2,5}_fa_per_hour`" in readme}
    assert [k for k in ALL_KEYS if k not in documented] == []
    assert [k for k in ALL_KEYS if k not in {key for _, _, key in _HEADLINE_ROWS}] == []


def test_a_wake_word_the_model_cannot_spell_is_refused_with_the_fix_that_applies(tmp_path) -> None:
    """Which characters are missing decides what to do: another wake word (or model) for a letter,
    eval.wake_word_boundary=false only for the word delimiter.

    Before the fix: a missing letter also got "or set eval.wake_word_boundary=false", which cannot help."""
    from types import SimpleNamespace

    import pytest

    from pipeline.eval.run import keyword_ids
    from pipeline.runtime import PipelineError

    def processor(chars: str) -> SimpleNamespace:
        vocab = {c: i for i, c in enumerate(["<pad>", *chars])}
        return SimpleNamespace(tokenizer=SimpleNamespace(get_vocab=lambda: vocab, word_delimiter_token="|"))

    with pytest.raises(PipelineError) as letter:
        keyword_ids(processor("aelr|"), "alexa", True, tmp_path / "asr")
    message = str(letter.value)
    assert "['x']" in message and str(tmp_path / "asr" / "vocab.json") in message
    assert "wake_word_boundary" not in message and "eval.wake_word=" in message
    with pytest.raises(PipelineError) as delimiter:
        keyword_ids(processor("aelx"), "alexa", True, tmp_path / "asr")
    assert "eval.wake_word_boundary=false" in str(delimiter.value)
    assert keyword_ids(processor("aelx"), "alexa", False, tmp_path / "asr") == [1, 3, 2, 4, 1]
