"""Each kind's score on inputs small enough to know the answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.data.annotations import tag_spans
from pipeline.review.acoustic import at_tempo, transcript_gaps
from pipeline.review.crossfit import account_folds, seen_elsewhere, text_folds
from pipeline.review.entities import best_boundary_edit
from pipeline.review.intent import intent_suspects
from pipeline.review.suspects import KINDS
from pipeline.review.transcript import transcript_suspects
from pipeline.review.wake import wake_suspects
from pipeline.runtime import PipelineError


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
    suspects, cleanlab, _ = intent_suspects(rows, x, np.arange(60) % 4, c=1.0)
    top = sorted(suspects, key=lambda s: -s.score)[:2]
    assert {(s.utterance_id, s.model) for s in top} == {("u5", "weather_query"), ("u31", "play_music")}
    assert all(s.score > 0.5 for s in top)
    assert set(cleanlab["find_label_issues"][:2]) == {"u5", "u31"}


def test_an_intent_line_says_what_its_classifier_was_fitted_without() -> None:
    """Before the fix: every intent line told the annotator its classifier was "fitted without this
    account", and the report spoke of account folds, while the intent kind holds out whole texts: a
    clip's own account may well be in the fit, and other takes of its text never are."""
    from pipeline.review.report import section_blocks

    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [0.15]])
    rows = [{"utterance_id": f"u{i}", "split": "train", "intent": a} for i, a in enumerate("aaabbb")]
    suspects, _, _ = intent_suspects(rows, x, np.arange(6) % 3, c=1.0)
    assert suspects and all("fitted without this text," in s.reason for s in suspects)
    summary = {"clips": 6, "accounts": 2, "max_share": 0.5, "budget": 3, "folds": 3, "notes": [], "seconds": {},
               "scored": dict.fromkeys(KINDS, 0), "lines": dict.fromkeys(KINDS, 0), "flagged": dict.fromkeys(KINDS, 0)}
    text = " ".join(str(block[1]) for block in section_blocks([], summary, {}, 10))
    assert "the other 2 of 3 folds of whole texts" in text and "account folds" not in text


def test_wake_flags_the_flag_its_score_contradicts() -> None:
    scores = np.array([-0.5, -1.0, -0.8, -1.2, -0.7, -0.9, -9.0, -8.0, -10.0, -7.5, -8.5, -0.6])
    present = [True] * 6 + [False] * 5 + [False]  # the last clip scores like a wake word
    rows = [{"utterance_id": f"u{i}", "split": "test", "wake_word_present": p} for i, p in enumerate(present)]
    suspects, judged, skipped, _ = wake_suspects(rows, scores, np.arange(12) % 3)
    assert skipped is None and judged.all()
    assert [(s.utterance_id, s.annotated, s.model) for s in suspects] == [("u11", False, True)]
    assert suspects[0].score > 0.5 and "hears the wake word" in suspects[0].reason
    # A model that cannot tell the flags apart contradicts none: the fit would sit at the flags' shares
    # and call every clip of the rarer flag wrong (a smoke model flagged all 21 false wakes).
    mostly = [{**row, "wake_word_present": i < 9} for i, row in enumerate(rows)]  # 9 wake clips, 3 false wakes
    flat = np.full(12, -5.0) + np.tile([0.0, 0.01, 0.0], 4)  # AUC 0.5
    suspects, judged, skipped, _ = wake_suspects(mostly, flat, np.arange(12) % 3)
    assert (suspects, judged.any(), skipped) == ([], False, "wake kind skipped: the keyword score tells the wake flags "
                                                             "apart with AUC 0.50 (< 0.6)")
    everywhere = [{**row, "wake_word_present": True} for row in rows]  # a corpus without false wakes
    suspects, judged, skipped, _ = wake_suspects(everywhere, scores, np.arange(12) % 3)
    assert (suspects, judged.any(), skipped) == ([], False, "wake kind skipped: every clip is marked with the wake word")



def test_a_fold_whose_other_folds_lack_a_flag_is_not_judged_for_it() -> None:
    """Before the fix: when every false wake came from accounts in one fold, that fold's fit had seen
    no false wake, gave the flag no chance at all, and called each of those false wakes "marked as a
    false wake, but the model hears the wake word" at score 1.0, though their keyword scores were far
    below every wake word's."""
    scores = np.array([-0.5, -1.0, -0.8, -1.2] * 5 + [-9.0, -8.0, -10.0, -7.5])
    present = [True] * 20 + [False] * 4  # six accounts of four clips; the false wakes are all the last one's
    fold = np.repeat(np.arange(6), 4) % 3
    rows = [{"utterance_id": f"u{i}", "split": "test", "wake_word_present": p} for i, p in enumerate(present)]
    suspects, judged, note, left = wake_suspects(rows, scores, fold)
    assert suspects == []
    assert judged.tolist() == (fold != 2).tolist()  # the false wakes' fold: no threshold without them
    assert note == ("wake kind: 8 of 24 clips not judged: the other folds' clips carry one wake flag only, so no "
                    "threshold can be learnt for them without their own accounts (the clips with the rarer flag "
                    "come from few accounts)")
    assert left == {"flag_in_one_fold": 8}


def test_the_wake_kind_counts_only_the_clips_it_left_unjudged_for_a_fold() -> None:
    """Before the fix: the clips of a fold whose other folds carry one flag only were named in a note
    alone; summary.json's `not_judged` had no count of them, as it has for every other kind."""
    scores = np.array([-0.5, -1.0, -0.8, -1.2, -0.7, -0.9, -9.0, -8.0, -10.0, -7.5, -8.5, -0.6])
    present = [True] * 6 + [False] * 6
    rows = [{"utterance_id": f"u{i}", "split": "test", "wake_word_present": p} for i, p in enumerate(present)]
    *_, left = wake_suspects(rows, scores, np.arange(12) % 3)  # every fold holds both flags
    assert left == {}
    *_, left = wake_suspects([{**r, "wake_word_present": True} for r in rows], scores, np.arange(12) % 3)
    assert left == {}  # the kind skipped as a whole: its note says so, and it scores no clip
    two = np.array([0] * 6 + [1] * 6)  # each fold holds one flag: neither has a threshold to learn
    suspects, judged, note, left = wake_suspects(rows, scores, two)
    assert (suspects, judged.any(), left) == ([], False, {"flag_in_one_fold": 12})
    assert note is not None and note.startswith("wake kind: 12 of 12 clips not judged")

def _log_probs(tags: list[str], reads: list[str], index: dict[str, int], confidence: float = 0.9) -> np.ndarray:
    """Per-word log-probabilities of a tagger that reads each word as `reads` with `confidence`."""
    p = np.full((len(reads), len(index)), (1 - confidence) / (len(index) - 1))
    for w, tag in enumerate(reads):
        p[w, index[tag]] = confidence
    return np.log(p)


def test_a_span_one_word_too_long_or_short_is_the_best_edit_and_a_clean_one_prefers_none() -> None:
    index = {t: i for i, t in enumerate(["O", "B-genre", "I-genre", "B-place", "I-place"])}
    reads = ["O", "O", "B-genre", "O"]  # alexa play jazz music: the tagger reads "jazz" as the genre
    too_long = ["O", "O", "B-genre", "I-genre"]  # "jazz music"
    edit = best_boundary_edit(_log_probs(too_long, reads, index), too_long, index)
    assert edit is not None and edit.tags == reads and edit.word == 3 and not edit.widen
    # "music": read as O (0.9), annotated I-genre (0.025); the kept "jazz" vouched for at 0.9.
    assert edit.log_ratio == pytest.approx(math.log(0.9 / 0.025) + math.log(0.9))

    reads = ["O", "O", "O", "B-place", "I-place"]  # alexa weather in new york
    too_short = ["O", "O", "O", "B-place", "O"]  # "new"
    edit = best_boundary_edit(_log_probs(too_short, reads, index), too_short, index)
    assert edit is not None and edit.tags == reads and edit.word == 4 and edit.widen and edit.log_ratio > 0

    edit = best_boundary_edit(_log_probs(reads, reads, index), reads, index)  # the annotation is what it reads
    assert edit is not None and edit.log_ratio < 0  # every edit is less likely than the annotation
    assert tag_spans(["O", "B-genre", "I-genre", "B-place", "O", "I-place"]) == [("genre", 1, 3), ("place", 3, 4), ("place", 5, 6)]


def test_a_span_widens_onto_the_first_word_and_onto_the_last() -> None:
    """Before the fix: the previous word was taken in only from word 2 on, so a span that had lost
    the utterance's first word ("taylor swift songs" annotated with "swift" alone) was never
    proposed whole, however surely the tagger read it."""
    index = {t: i for i, t in enumerate(["O", "B-artist", "I-artist"])}
    gold = ["O", "B-artist", "O"]
    reads = ["B-artist", "I-artist", "O"]
    edit = best_boundary_edit(_log_probs(gold, reads, index), gold, index)
    assert edit is not None and edit.word == 0 and edit.widen and edit.tags == reads
    # "taylor" and "swift" re-read (0.9 over 0.05 each), the span's least likely tag at 0.9.
    assert edit.log_ratio == pytest.approx(2 * math.log(0.9 / 0.05) + math.log(0.9))

    gold = ["O", "B-artist", "O"]  # play adele songs: "songs", the last word, read inside
    reads = ["O", "B-artist", "I-artist"]
    edit = best_boundary_edit(_log_probs(gold, reads, index), gold, index)
    assert edit is not None and edit.word == 2 and edit.widen and edit.tags == reads


def test_a_first_word_the_tagger_reads_outside_is_not_taken_in() -> None:
    index = {t: i for i, t in enumerate(["O", "B-name", "I-name"])}
    gold = ["O", "B-name", "O"]  # alexa call mom: the tagger reads "alexa" outside, as annotated
    edit = best_boundary_edit(_log_probs(gold, gold, index), gold, index)
    assert edit is not None and edit.log_ratio < 0


def test_transcript_scores_a_misheard_word_within_its_split() -> None:
    # Per character gaps; "text" is the annotation, the alternative what the model hears.
    rows = [
        {"utterance_id": "t0", "split": "train", "text": "alexa play jazz"},          # heard as annotated
        {"utterance_id": "t1", "split": "train", "text": "alexa play chicago"},       # one word misheard
        {"utterance_id": "t2", "split": "train", "text": "alexa stop"},
        {"utterance_id": "v0", "split": "test", "text": "alexa set an alarm"},        # a voice heard badly
        {"utterance_id": "v1", "split": "test", "text": "alexa what time is it"},
        {"utterance_id": "v2", "split": "test", "text": "alexa call mom"},
    ]
    alternatives = ["alexa play jazz", "alexa play jazz", "alexa stop", "alex sat and alum", "alexa what time is it",
                    "alexa call mom"]
    gaps = [0.0, 0.5, -0.1, 0.8, 0.0, 0.1]
    suspects = {s.utterance_id: s for s in transcript_suspects(rows, [gaps], [alternatives])}
    assert set(suspects) == {"t1", "v0"}  # lines only where the texts differ
    # t1: 0.5 x 18 characters on one word = 9.0 nats; v0: 0.8 x 18 over four words = 3.6 nats each.
    assert "9.0 nats per disputed word" in suspects["t1"].reason and "3.6 nats" in suspects["v0"].reason
    assert "as much as or more than 100% of train clips' annotations" in suspects["t1"].reason
    # Each is the most doubtful clip of its own split, whatever the other split's gaps.
    assert suspects["t1"].score == 1.0 and suspects["v0"].score == 1.0
    assert suspects["t1"].model == "alexa play jazz"
    # An annotation the model finds at least as likely as its own reading (the CTC sum over alignments
    # can beat the single best path) has nothing against it: no line, however it ranks in its split.
    assert transcript_suspects(rows[:2], [[0.0, -0.2]], [alternatives[:2]]) == []
    assert transcript_suspects(rows[:3], [[0.5, 0.0, 0.1]], [["alexa play", *alternatives[1:3]]])[0].model == "alexa play"
    # A clip in which the model hears nothing is not advised to read "".
    silent = transcript_suspects(rows[:2], [[0.0, 0.9]], [["alexa play jazz", ""]])
    assert [s.reason.split(": ", 1)[1] for s in silent] == [
        "the model hears no words in it: listen for speech, and correct or flag the clip"]


def test_transcript_reads_every_tempo_and_quotes_the_one_most_in_doubt() -> None:
    # t1's wrong word was learnt as recorded (the texts agree at 1.0x); played faster the model hears "jazz".
    rows = [{"utterance_id": f"t{i}", "split": "train", "text": t}
            for i, t in enumerate(["alexa play jazz", "alexa play chicago", "alexa stop", "alexa call mom"])]
    as_recorded = ["alexa play jazz", "alexa play chicago", "alexa stop", "alexa call mum"]
    faster = ["alexa play jazz", "alexa play jazz", "alexa stop", "alexa call mom"]
    gaps = [[0.0, -0.1, 0.0, 0.2], [0.1, 0.5, 0.0, 0.0]]
    suspects = {s.utterance_id: s for s in transcript_suspects(rows, gaps, [as_recorded, faster], [1.0, 1.15])}
    assert set(suspects) == {"t1", "t3"}
    # t1: first of four at 1.15x, no line at 1.0x -> (1.0 + 0) / 2; t3 the reverse.
    assert suspects["t1"].score == pytest.approx(0.5) and suspects["t3"].score == pytest.approx(0.5)
    assert suspects["t1"].model == "alexa play jazz" and "(played at 1.15x)" in suspects["t1"].reason
    assert suspects["t3"].model == "alexa call mum" and "played at" not in suspects["t3"].reason


@pytest.mark.parametrize("tempo", [0.85, 1.15])
def test_a_tempo_change_keeps_the_audio_and_scales_its_length(tempo: float) -> None:
    rate = 16000
    t = np.arange(rate) / rate
    wave = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    played = at_tempo(wave, tempo)
    assert len(played) == pytest.approx(rate / tempo, abs=2)
    spectrum = np.abs(np.fft.rfft(played))
    assert np.argmax(spectrum) * rate / len(played) == pytest.approx(440 * tempo, rel=0.01)  # pitch moves with it
    assert at_tempo(wave, 1.0) is wave


def test_a_span_the_tagger_does_not_know_is_not_a_boundary_slip() -> None:
    index = {t: i for i, t in enumerate(["O", "B-song", "I-song"])}
    gold = ["O", "O", "B-song", "I-song"]  # alexa play green day: annotated right, a song the tagger never saw
    p = np.array([[0.98, 0.01, 0.01], [0.98, 0.01, 0.01], [0.6, 0.3, 0.1], [0.6, 0.1, 0.3]])
    edit = best_boundary_edit(np.log(p), gold, index)
    assert edit is not None and edit.tags == ["O", "O", "B-song", "O"]  # dropping "day" is its best edit...
    assert math.log(0.6 / 0.3) > 0 > edit.log_ratio  # preferred alone, but "green" itself is only at 0.3


def test_text_kinds_hold_out_whole_texts_so_copies_of_a_wrong_label_do_not_vouch_for_it() -> None:
    """Before the fix: with folds of accounts, a sentence recorded under several accounts (SLURP by
    take) was scored by a model fitted on exact copies of it, its wrong label included."""
    rng = np.random.default_rng(0)
    intents = ["play_music", "weather_query", "set_alarm", "iot_lights"]
    centers = rng.normal(size=(4, 16)) * 3
    rows, x, speakers, texts = [], [], [], []
    noisy = {0, 10, 20, 30}  # texts whose every take carries another intent
    for t in range(40):
        vector = centers[t % 4] + rng.normal(size=16)
        annotated = intents[(t + 1) % 4] if t in noisy else intents[t % 4]
        for take in range(4):  # four takes of each text, under random accounts
            rows.append({"utterance_id": f"t{t}-{take}", "split": "train", "intent": annotated})
            x.append(vector)
            speakers.append(f"acct{rng.integers(20)}")
            texts.append(f"Text  {t}" if take else f"text {t}")  # case and spacing do not make another text
    x = np.array(x)
    fold = text_folds(texts, 5)
    assert all(len({f for f, t in zip(fold, texts) if t.lower().split() == ["text", str(n)]}) == 1 for n in range(40))
    found, _, _ = intent_suspects(rows, x, fold, c=1.0)
    assert {f"t{n}" for n in noisy} <= {s.utterance_id.split("-")[0] for s in found}
    leaky, _, _ = intent_suspects(rows, x, account_folds(speakers, 5).fold, c=1.0)
    assert not {s.utterance_id.split("-")[0] for s in leaky} & {f"t{n}" for n in noisy}  # what folds of accounts found
    with pytest.raises(PipelineError, match=r"review.folds=5 is more than the 3 distinct texts of the clips with an intent"):
        text_folds(["a", "A", "b", "c"], 5)


def test_takes_of_one_text_differing_in_punctuation_share_a_fold() -> None:
    """Before the fix: texts were compared lowercased with spaces squeezed only, so "Play jazz." and
    "play jazz" (two takes of one prompt) counted as two texts and could fall in different folds,
    where each would vouch for the other's label."""
    texts = ["Play jazz.", "play jazz", "stop now", "go home!", "Go home"]
    fold = text_folds(texts, 2)
    assert fold[0] == fold[1] and fold[3] == fold[4]
    with pytest.raises(PipelineError, match=r"more than the 3 distinct texts"):
        text_folds(texts, 4)



def test_a_label_is_seen_elsewhere_only_where_another_fold_holds_it() -> None:
    labels = np.array(["a", "a", "b", "b", "c", "c", "d"])
    fold = np.array([0, 1, 0, 0, 1, 2, 2])
    # "b": two texts that fell into one fold; "d": one text.
    assert seen_elsewhere(labels, fold).tolist() == [True, True, False, False, True, True, False]


def test_an_intent_with_one_phrasing_is_not_judged_but_a_swapped_one_still_is() -> None:
    """Before the fix: the five takes of the one podcast text came first, at 1.0: held out with their
    text, their intent was one the classifier judging them had never seen."""
    rng = np.random.default_rng(0)
    intents = ["play_music", "weather_query", "set_alarm", "iot_lights"]
    centers = rng.normal(size=(5, 16)) * 3
    rows, x, texts = [], [], []
    for t in range(40):
        for take in range(2):
            annotated = intents[(t + 1) % 4] if t == 13 else intents[t % 4]  # text 13: a swapped intent
            rows.append({"utterance_id": f"t{t}-{take}", "split": "train", "intent": annotated})
            x.append(centers[t % 4] + rng.normal(size=16))
            texts.append(f"text {t}")
    for take in range(5):
        rows.append({"utterance_id": f"podcast-{take}", "split": "train", "intent": "play_podcasts"})
        x.append(centers[4] + rng.normal(size=16))
        texts.append("play my podcast")
    found, cleanlab, judged = intent_suspects(rows, np.array(x), text_folds(texts, 5), c=1.0)
    assert [r["utterance_id"] for r, yes in zip(rows, judged) if not yes] == [f"podcast-{k}" for k in range(5)]
    assert not [s for s in found if s.utterance_id.startswith("podcast")]
    from pipeline.review.intent import one_fold_lines

    held = one_fold_lines([{**r, "words": t.split()} for r, t in zip(rows, texts)], judged)
    assert [(s.utterance_id, s.annotated, s.score, s.not_judged) for s in held] == [
        (f"podcast-{k}", "play_podcasts", None, "label_in_one_fold") for k in range(5)]
    assert "carry the intent play_podcasts (one text)" in held[0].reason
    assert not [u for u in cleanlab["find_label_issues"] if u.startswith("podcast")]
    top = sorted(found, key=lambda s: -s.score)[:2]
    assert {s.utterance_id for s in top} == {"t13-0", "t13-1"} and all(s.model == "weather_query" for s in top)


def test_lines_the_kinds_could_not_judge_come_after_every_ranked_one_in_a_fixed_order() -> None:
    """Before the fix: a queue line had no `not_judged` and every line a score, so a clip a kind could
    not judge had no line at all."""
    from pipeline.review.suspects import Suspect, rank, ranked

    held = [Suspect("b", "train", "entities", [], None, None, "not scored", "label_in_one_fold"),
            Suspect("a", "test", "intent", "x", None, None, "not scored", "label_in_one_fold"),
            Suspect("c", "train", "intent", "x", None, None, "not scored", "label_in_one_fold"),
            Suspect("a", "train", "intent", "x", None, None, "not scored", "label_in_one_fold")]
    judged = [Suspect("d", "train", "wake", True, False, 0.2, "r"), Suspect("e", "train", "intent", "x", "y", 0.9, "r"),
              Suspect("f", "train", "transcript", "a", "b", 0.01, "r")]
    for order in (held + judged, judged[::-1] + held[::-1]):
        queue = rank(order)
        assert [(s.kind, s.split, s.utterance_id) for s in queue] == [
            ("intent", "train", "e"), ("wake", "train", "d"), ("transcript", "train", "f"),
            ("intent", "test", "a"), ("intent", "train", "a"), ("intent", "train", "c"), ("entities", "train", "b")]
        assert ranked(queue) == queue[:3]
    line = held[0].as_dict()
    assert line["score"] is None and line["not_judged"] == "label_in_one_fold"
    assert judged[1].as_dict()["not_judged"] is None and judged[1].as_dict()["score"] == 0.9


def test_an_entity_tag_with_one_phrasing_is_not_judged() -> None:
    """Before the fix: "hip hop" was the one two-word genre, so the tagger judging it had never seen
    I-genre, and dropping "hop" from the span scored about 1.0 on every take."""
    from pipeline.data.annotations import tags_to_entities
    from pipeline.review.entities import entity_suspects, one_fold_lines

    rng = np.random.default_rng(0)
    vocabulary = ["play", "some", "jazz", "rock", "blues", "soul", "funk", "pop", "hip", "hop", "now"]
    vectors = {w: rng.normal(size=8) for w in vocabulary}
    genre = rng.normal(size=8) * 3
    phrasings = [["play", "some", g, "now"] for g in ("jazz", "rock", "blues", "soul", "funk", "pop")]
    phrasings.append(["play", "some", "hip", "hop", "now"])
    rows, words, pooled, texts = [], [], [], []
    for n, phrase in enumerate(phrasings):
        tags = ["O", "O", "B-genre", "I-genre", "O"] if "hip" in phrase else ["O", "O", "B-genre", "O"]
        for take in range(3):
            w = np.stack([vectors[x] + (genre if t != "O" else 0) + 0.1 * rng.normal(size=8) for x, t in zip(phrase, tags)])
            transcript = " ".join(phrase)
            rows.append({"utterance_id": f"p{n}-{take}", "split": "train", "words": phrase, "bio_tags": tags,
                         "transcript": transcript,
                         "entities": [e.as_dict() for e in tags_to_entities(transcript, tags)]})
            words.append(w)
            pooled.append(w.mean(0))
            texts.append(transcript)
    found, judged, unseen = entity_suspects(rows, words, np.array(pooled), text_folds(texts, 3), c=1.0)
    assert [r["utterance_id"] for r, yes in zip(rows, judged) if not yes] == ["p6-0", "p6-1", "p6-2"]
    assert unseen == ["I-genre"]
    assert not [s for s in found if s.utterance_id.startswith("p6-")]
    # Queued unscored instead, naming the word whose tag no other fold holds: a span an annotator
    # widened by one word makes such a tag too.
    held = one_fold_lines(rows, judged, unseen)
    assert [(s.utterance_id, s.kind, s.score, s.model, s.not_judged) for s in held] == [
        (f"p6-{take}", "entities", None, None, "label_in_one_fold") for take in range(3)]
    assert held[0].annotated == [{"type": "genre", "value": "hip hop"}]
    assert held[0].reason.startswith('not scored: only texts of this clip\'s fold carry the tag of "hop" I-genre')
