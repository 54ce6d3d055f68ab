"""Each kind's score on inputs small enough to know the answer."""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.review.acoustic import transcript_gaps
from pipeline.review.intent import intent_suspects
from pipeline.review.wake import wake_suspects


def test_transcript_gap_is_small_for_what_was_heard_and_infinite_when_it_cannot_fit() -> None:
    # Four frames that clearly say a, blank, b, blank (vocabulary: 0 blank, 1 a, 2 b).
    probs = torch.full((1, 4, 3), 0.015)
    for t, token in enumerate([1, 0, 2, 0]):
        probs[0, t, token] = 0.97
    log_probs = probs.log().expand(3, 4, 3).contiguous()
    gaps, best = transcript_gaps(log_probs, torch.tensor([4, 4, 4]), [[1, 2], [2, 1], [1, 1, 1]], blank=0)
    assert best[0].tolist() == [1, 0, 2, 0]
    assert gaps[0] <= 0  # every alignment of "ab" together is at least as likely as the best path
    assert gaps[1] > 2.0  # "ba": each character against what the frames say
    assert math.isinf(gaps[2])  # "aaa" needs 5 frames (a blank between repeats): it cannot be in 4


def test_intent_ranks_the_swapped_labels_first_and_names_the_right_intent() -> None:
    rng = np.random.default_rng(0)
    intents = ["alarm_set", "play_music", "weather_query"]
    truth = [intents[i % 3] for i in range(60)]
    centers = rng.normal(size=(3, 8)) * 4
    x = np.stack([centers[intents.index(t)] + rng.normal(size=8) for t in truth])
    annotated = list(truth)
    annotated[5], annotated[31] = "play_music", "alarm_set"  # truth: weather_query, play_music
    rows = [{"utterance_id": f"u{i}", "split": "train", "intent": a} for i, a in enumerate(annotated)]
    suspects, cleanlab = intent_suspects(rows, x, np.arange(60) % 4, c=1.0)
    top = sorted(suspects, key=lambda s: -s.score)[:2]
    assert {(s.utterance_id, s.model) for s in top} == {("u5", "weather_query"), ("u31", "play_music")}
    assert all(s.score > 0.5 for s in top)
    assert set(cleanlab["find_label_issues"][:2]) == {"u5", "u31"}


def test_wake_flags_the_flag_its_score_contradicts() -> None:
    scores = np.array([-0.5, -1.0, -0.8, -1.2, -0.7, -0.9, -9.0, -8.0, -10.0, -7.5, -8.5, -0.6])
    present = [True] * 6 + [False] * 5 + [False]  # the last clip scores like a wake word
    rows = [{"utterance_id": f"u{i}", "split": "test", "wake_word_present": p} for i, p in enumerate(present)]
    suspects = wake_suspects(rows, scores, np.arange(12) % 3)
    assert [(s.utterance_id, s.annotated, s.model) for s in suspects] == [("u11", False, True)]
    assert suspects[0].score > 0.5 and "hears the wake word" in suspects[0].reason
