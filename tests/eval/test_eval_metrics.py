"""Each metric against an example worked out by hand in the comments."""

from __future__ import annotations

import json

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


def test_error_rates_are_wer_and_cer_from_one_alignment() -> None:
    refs, hyps = ["ab cd", "set an alarm", ""], ["ab ce", "set alarm now", "words on a silent clip"]
    # clip 1: 1 of 2 words, 1 of 5 characters; clip 2: a deletion and an insertion (2 of 3 words;
    # "set an alarm" -> "set alarm now": 7 character edits of 12); clip 3 has no transcript: not scored.
    assert M.error_rates(refs, hyps) == (pytest.approx(3 / 5), pytest.approx(8 / 17))
    assert M.error_rates(refs, hyps) == (M.wer(refs, hyps), M.cer(refs, hyps))


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


def test_intent_macro_f1_averages_over_gold_intents_only() -> None:
    """An intent only ever predicted (`no_command`) is no gold class: it is not averaged in as a
    zero-F1 class, while the clip it was predicted on still costs its true intent the recall."""
    gold = ["a", "a", "b", "b"]
    predicted = ["a", "no_command", "b", "b"]
    # a: tp1 fn1 -> F1 2/3; b: tp2 -> F1 1. Macro over {a, b}: (2/3 + 1) / 2 = 5/6.
    scores = M.intent_scores(gold, predicted)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["accuracy"] == pytest.approx(3 / 4)
    # One gold class, a perfect score on it: a phantom class never pulls the mean below 1.
    assert M.intent_scores(["a", "a"], ["a", "a"])["macro_f1"] == 1.0


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


# Three SLURP records. Gold fillers: SLURP's scorer joins the span's tokens ("jessica 's"); the
# project takes the annotation's text ("jessica's").
SLURP_RECORDS = [
    {"slurp_id": 1, "tokens": [{"surface": s} for s in ["play", "Jessica", "'s", "playlist"]],
     "entities": [{"span": [1, 2], "type": "person"}]},
    {"slurp_id": 2, "tokens": [{"surface": s} for s in ["wake", "me", "at", "7", "am"]],
     "entities": [{"span": [3, 4], "type": "time"}]},
    {"slurp_id": 3, "tokens": [{"surface": s} for s in ["what", "is", "on", "today"]],
     "entities": [{"span": [3], "type": "date"}]},
]
PROJECT_GOLD = [[{"type": "person", "value": "jessica's"}], [{"type": "time", "value": "7 am"}],
                [{"type": "date", "value": "today"}]]
INTENTS = ["play_music", "alarm_set", "calendar_query"]
# Predictions: record 1 in SLURP's token format, record 2 with capitals and digits spelled out,
# record 3 has no prediction at all.
PRED_INTENTS = ["play_music", "alarm_set", None]
PRED_ENTITIES = [[{"type": "person", "value": "jessica 's"}], [{"type": "time", "value": "Seven AM"}], None]


def test_slurp_scoring_matches_slurps_scorer_on_a_hand_made_fixture() -> None:
    gold = [M.slurp_gold_entities(r) for r in SLURP_RECORDS]
    assert gold[0] == [{"type": "person", "value": "jessica 's"}]  # lower-cased tokens, space-joined
    result = M.slurp_scores(INTENTS, gold, PRED_INTENTS, PRED_ENTITIES)
    # Record 3 has no prediction: skipped. Records 1 and 2: both intents right -> accuracy 1.
    assert (result["records"], result["scored"], result["intent_accuracy"]) == (3, 2, 1.0)
    # Span F1 on raw strings: "jessica 's" matches (TP); "Seven AM" != "7 am" (FP + FN).
    # tp 1, fp 1, fn 1 -> 2 / (2 + 1 + 1) = 0.5
    assert result["entity"]["f1"] == pytest.approx(0.5)
    # SLU-F1: both predictions pair with the gold entity of their type.
    # word: record 1 distance 0; record 2 "7 am" -> "Seven AM": 2 substitutions / 2 words = 1.0.
    # char: record 1 distance 0; record 2: 4 insertions + 3 substitutions (only the space matches,
    #       case counts) over the longer length 8 = 7/8.
    # summed: tp 2 + 2 = 4, fp = fn = 1 + 7/8 -> F1 = 8 / (8 + 2 * 1.875) = 8 / 11.75
    assert result["slu"]["f1"] == pytest.approx(8 / 11.75)


def test_project_scoring_of_the_same_fixture() -> None:
    # The project normalises both sides and counts the missing prediction as an error.
    preds = [p or [] for p in PRED_ENTITIES]
    # Intents: 2 of 3 right (record 3 predicted nothing).
    assert M.intent_scores(INTENTS, [p or "" for p in PRED_INTENTS])["accuracy"] == pytest.approx(2 / 3)
    # "jessica 's" normalises to "jessica s", not "jessica's": FP + FN. "Seven AM" and "7 am" both
    # normalise to "seven am": TP. Record 3's date is never found: FN. tp 1, fp 1, fn 2 -> 2 / 5.
    assert M.entity_scores(PROJECT_GOLD, preds)["f1"] == pytest.approx(2 / 5)
    # SLU-F1. word: record 1 "jessica's" -> "jessica s" is 1 substitution + 1 insertion over 1 word = 2;
    # record 2 distance 0; record 3 one FN. -> tp 2, fp 2, fn 3.
    # char: record 1: one substitution (' -> space) over 9 characters = 1/9; record 3 one FN.
    # -> tp 2, fp 1/9, fn 1 + 1/9. Summed: tp 4, fp 2 + 1/9, fn 4 + 1/9 -> F1 = 8 / (8 + 6 + 2/9).
    assert M.slu_f1(PROJECT_GOLD, preds)["f1"] == pytest.approx(8 / (14 + 2 / 9))


def test_slurp_mode_reads_token_fillers_for_slurp_clips_only(tmp_path) -> None:
    from omegaconf import OmegaConf

    from pipeline.eval.run import _scoring_gold

    gold_file = tmp_path / "test.jsonl"
    gold_file.write_text("".join(json.dumps(r) + "\n" for r in SLURP_RECORDS))
    rows = [{"utterance_id": "slurp-1-audio-1434-headset", "gold_entities": PROJECT_GOLD[0]},
            {"utterance_id": "demo-0007", "gold_entities": []}]
    cfg = OmegaConf.create({"data": {"source": "slurp", "path": str(gold_file)},
                            "eval": {"split": "test", "slu_scoring": "slurp", "slurp_gold": None}})
    scoring = _scoring_gold(cfg, cfg.eval, rows)
    assert (scoring["mode"], scoring["clips"], scoring["scored"]) == ("slurp", 2, 1)
    assert rows[0]["scoring_entities"] == [{"type": "person", "value": "jessica 's"}]
    assert rows[1]["scoring_entities"] is None  # not a SLURP record: not scored in slurp mode


# Settings on top of slurp scoring of a demo build; `<dir>` stands for the test's folder, which holds
# `test.jsonl` (SLURP_RECORDS) and `broken.jsonl` (a record without tokens on line 2).
@pytest.mark.parametrize(("overrides", "error"), [
    pytest.param({}, r"eval\.slu_scoring=slurp needs SLURP's own jsonl .* set eval\.slurp_gold=", id="slurp-without-gold"),
    pytest.param({"eval.slu_scoring": "nemo"}, r"eval\.slu_scoring='nemo': use one of \['project', 'slurp'\]",
                 id="unknown-scoring"),
    pytest.param({"eval.slurp_gold": "<dir>/missing.jsonl"}, r"eval\.slurp_gold=<dir>/missing\.jsonl: no such file",
                 id="gold-file-missing"),
    pytest.param({"eval.slurp_gold": "<dir>/broken.jsonl"}, r"<dir>/broken\.jsonl line 2: not a SLURP record",
                 id="gold-record-broken"),
    pytest.param({"eval.slurp_gold": "<dir>/test.jsonl", "eval.split": "dev"},
                 r"no clip of split 'dev' is a record of <dir>/test\.jsonl", id="no-clip-in-gold"),
])
def test_slurp_mode_errors_name_the_setting_or_record(overrides: dict[str, str], error: str, tmp_path) -> None:
    import re

    from omegaconf import OmegaConf

    from pipeline.eval.run import _scoring_gold
    from pipeline.runtime import PipelineError

    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SLURP_RECORDS))
    (tmp_path / "broken.jsonl").write_text(json.dumps(SLURP_RECORDS[0]) + "\n" + json.dumps({"slurp_id": 9}) + "\n")
    rows = [{"utterance_id": "demo-0007", "gold_entities": []}]  # a demo clip: no SLURP record has it
    cfg = OmegaConf.create({"data": {"source": "demo"},
                            "eval": {"split": "test", "slu_scoring": "slurp", "slurp_gold": None}})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value.replace("<dir>", str(tmp_path)))
    with pytest.raises(PipelineError, match=error.replace("<dir>", re.escape(str(tmp_path)))):
        _scoring_gold(cfg, cfg.eval, rows)


def test_a_clip_without_a_transcript_is_not_scored_and_a_split_without_any_has_no_wer() -> None:
    from pipeline.eval.coverage import by_source, label_reasons

    # A corpus that labels only leaves transcripts empty: words heard there are not errors we can tell.
    refs, hyps = ["play jazz", ""], ["play jazz", "hey computer play"]
    assert M.wer(refs, hyps) == 0.0 == M.cer(refs, hyps)
    totals = [M.edit_counts(r, h) for r, h in zip(refs, hyps)]
    assert sum(t["word_errors"] for t in totals) == 0 and sum(t["ref_words"] for t in totals) == 2
    # A source (or split) of wake-word clips labelled without transcripts: its WER is left out, said why.
    rows = [{"source": "labels", "reference": "", "hypothesis": "hey", "greedy_hypothesis": "hey", "duration": 1.0},
            {"source": "demo", "reference": "play jazz", "hypothesis": "play jazz", "greedy_hypothesis": "play", "duration": 1.0}]
    per_source = by_source(rows, {"asr/wer": 0.5}, None)
    assert "asr/wer" not in per_source["labels"] and per_source["demo"]["asr/wer_greedy"] == 0.5
    assert label_reasons("test", [], None, True, False, have_words=False)["asr/wer"] == "split 'test' has no clip with a transcript"
