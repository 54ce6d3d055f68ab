"""Each metric against an example worked out by hand in the comments."""

from __future__ import annotations

import pytest

from pipeline.eval import metrics as M


def test_wer_is_corpus_level_and_normalised() -> None:
    # clip 1: one inserted word ("music"); clip 2: one deleted word ("an"); 6 reference words.
    refs = ["Alexa, play jazz!", "set an alarm"]
    hyps = ["alexa play jazz music", "set alarm"]
    assert M.wer(refs, hyps) == pytest.approx(2 / 6)
    # "7" is spelled "seven" by the shared normaliser on both sides.
    assert M.wer(["wake me at 7"], ["wake me at seven"]) == 0.0


def test_cer_counts_characters_including_spaces() -> None:
    # "ab cd" -> "ab ce": one substitution over 5 characters.
    assert M.cer(["ab cd"], ["ab ce"]) == pytest.approx(1 / 5)


def test_wer_by_slice_and_duration_buckets() -> None:
    refs, hyps = ["a b", "c d", "e f"], ["a b", "c x", "x x"]
    slices = M.wer_by_slice(refs, hyps, ["s1", "s1", "s2"])
    assert slices == {"s1": {"wer": 0.25, "clips": 2}, "s2": {"wer": 1.0, "clips": 1}}
    edges = [2.0, 4.0, 8.0]
    assert [M.duration_bucket(d, edges) for d in (1.0, 2.0, 5.5, 8.0, 30.0)] == [
        "<2s", "2-4s", "4-8s", ">=8s", ">=8s"
    ]


def test_intent_accuracy_and_macro_f1() -> None:
    # a: tp1 fn1 -> F1 2/3; b: tp1 fp1 -> F1 2/3; c: F1 1 -> macro 7/9. Accuracy 3/4.
    scores = M.intent_scores(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx(7 / 9)


def test_entity_f1_exact_match_micro_and_per_type() -> None:
    gold = [[{"type": "time", "value": "seven am"}, {"type": "date", "value": "today"}], []]
    # "7 am" normalises to "seven am": a match. "tomorrow" is a wrong date: 1 FP and 1 FN.
    # The second clip has no gold entity: its prediction is one more date FP.
    pred = [[{"type": "time", "value": "7 am"}, {"type": "date", "value": "tomorrow"}],
            [{"type": "date", "value": "monday"}]]
    scores = M.entity_scores(gold, pred)
    # micro: tp1 fp2 fn1 -> 2 / (2 + 2 + 1)
    assert scores["f1"] == pytest.approx(2 / 5)
    assert scores["per_type"]["time"]["f1"] == 1.0
    assert scores["per_type"]["date"] == {"f1": 0.0, "tp": 0, "fp": 2, "fn": 1}


def test_entity_matching_is_one_to_one() -> None:
    # Two predictions of the same value, one gold: one TP and one FP -> F1 = 2/3.
    scores = M.entity_scores([[{"type": "x", "value": "a"}]], [[{"type": "x", "value": "a"}] * 2])
    assert scores["f1"] == pytest.approx(2 / 3)


def test_slurp_distances() -> None:
    # word distance is the WER of the prediction against gold, not capped at 1.
    assert M.word_distance("new york", "new work") == pytest.approx(0.5)
    assert M.word_distance("york", "new york city") == pytest.approx(2.0)
    # char distance: one substitution (y -> w) over the longer length, 8.
    assert M.char_distance("new york", "new work") == pytest.approx(1 / 8)
    assert M.char_distance("abc", "") == 1.0


def test_slu_f1_sums_word_and_char_counts() -> None:
    gold = [[{"type": "place_name", "value": "new york"}, {"type": "time", "value": "seven am"}]]
    pred = [[{"type": "place_name", "value": "new work"}, {"type": "date", "value": "today"}]]
    # word: place tp1 fp.5 fn.5; date fp1 (no gold date); time fn1 (never predicted).
    # char: place tp1 fp.125 fn.125; date fp1; time fn1.
    # summed: tp 2, fp 2.625, fn 2.625 -> F1 = 2*2 / (2*2 + 2.625 + 2.625) = 4 / 9.25
    result = M.slu_f1(gold, pred)
    assert result["f1"] == pytest.approx(4 / 9.25)
    assert result["per_type"]["place_name"]["tp"] == 2
    assert result["per_type"]["place_name"]["fp"] == pytest.approx(0.625)


def test_slu_f1_pairs_with_the_closest_gold_entity() -> None:
    gold = [[{"type": "place_name", "value": "paris"}, {"type": "place_name", "value": "london"}]]
    pred = [[{"type": "place_name", "value": "londn"}]]
    # pairs with "london": word d 1, char d 1/6; "paris" is left: fn 1 in each.
    # tp 2, fp 1 + 1/6, fn 2 + 1 + 1/6 -> F1 = 4 / (4 + 7/6 + 19/6)
    assert M.slu_f1(gold, pred)["f1"] == pytest.approx(4 / (4 + 7 / 6 + 19 / 6))
    # A perfect prediction scores 1.
    assert M.slu_f1(gold, [gold[0][::-1]])["f1"] == 1.0


def test_worst_utterances_ranks_by_wer() -> None:
    rows = [{"utterance_id": "a", "wer": 0.5, "reference": "x y"},
            {"utterance_id": "b", "wer": 1.0, "reference": "x"},
            {"utterance_id": "c", "wer": 0.0, "reference": "x"},
            {"utterance_id": "d", "wer": None, "reference": ""}]
    assert [r["utterance_id"] for r in M.worst_utterances(rows, 2)] == ["b", "a"]
