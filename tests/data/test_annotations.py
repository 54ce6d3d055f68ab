import re

import pytest

from pipeline.data.annotations import (
    AnnotationError,
    Entity,
    align_to_transcript,
    bio_tags,
    parse_inline,
    resolve_spans,
    tags_to_entities,
)


def test_parse_inline_gives_text_and_spans() -> None:
    text, ents = parse_inline("play [artist_name : taylor swift] in the [house_place : kitchen]")
    assert text == "play taylor swift in the kitchen"
    assert ents == [Entity("artist_name", "taylor swift", 5, 17), Entity("house_place", "kitchen", 25, 32)]
    assert [text[e.start : e.end] for e in ents] == ["taylor swift", "kitchen"]


@pytest.mark.parametrize(
    "bad", ["play [artist_name : taylor swift", "play artist_name : taylor] swift", "play [ : x]", "[a b : c]"]
)
def test_broken_brackets_are_rejected(bad: str) -> None:
    with pytest.raises(AnnotationError):
        parse_inline(bad)


@pytest.mark.parametrize("annotation", ["play [artist_name] please", "set an alarm for [time]"])
def test_a_bracket_without_a_colon_is_named_for_the_missing_colon(annotation: str) -> None:
    """Before the fix: `[type]` (a closed bracket with no ':' between type and value) was reported as an
    "unbalanced bracket", which sent the annotator looking for a bracket that is not missing."""
    entity = re.search(r"\[\w+\]", annotation).group(0)  # type: ignore[union-attr]
    with pytest.raises(AnnotationError, match=rf"^entity {re.escape(repr(entity))} has no ':' between its type and "
                                             r"value in .*; write it as \[type : value\], or drop the brackets"):
        parse_inline(annotation)
    with pytest.raises(AnnotationError, match=r"^unbalanced bracket near"):  # a bracket really left open
        parse_inline("play [artist_name : taylor swift")


def test_align_tolerates_case_but_not_other_words() -> None:
    plain, ents = parse_inline("wake me up [date : this Friday]")
    moved = align_to_transcript("wake me up this friday", plain, ents)
    assert moved == [Entity("date", "this friday", 11, 22)]
    with pytest.raises(AnnotationError):
        align_to_transcript("wake me up next monday", plain, ents)


def test_resolve_spans_checks_offsets_and_finds_repeats() -> None:
    text = "from two to two thirty"
    ents = resolve_spans(text, [{"type": "time", "value": "two"}, {"type": "time", "value": "two thirty"}])
    assert [(e.start, e.end) for e in ents] == [(5, 8), (12, 22)]
    with pytest.raises(AnnotationError, match="not in the transcript"):
        resolve_spans(text, [{"type": "time", "value": "noon"}])
    with pytest.raises(AnnotationError, match="cover"):
        resolve_spans(text, [{"type": "time", "value": "two", "start": 0, "end": 3}])


def test_bio_round_trip() -> None:
    text = "alexa play taylor swift in the kitchen"
    ents = resolve_spans(text, [{"type": "artist_name", "value": "taylor swift"}, {"type": "house_place", "value": "kitchen"}])
    words, tags = bio_tags(text, ents)
    assert tags == ["O", "O", "B-artist_name", "I-artist_name", "O", "O", "B-house_place"]
    assert tags_to_entities(text, tags) == ents


def test_tags_to_entities_is_lenient_with_stray_inside_tags() -> None:
    text = "set alarm for seven am"
    got = tags_to_entities(text, ["O", "O", "O", "I-time", "I-time"])
    assert got == [Entity("time", "seven am", 14, 22)]


def test_an_empty_intent_and_a_scenario_without_an_intent() -> None:
    """An exporter's "" meant no intent on a false wake; on a command it may be a label left out, and
    the NLU learnt "" as a class of its own. A scenario without an intent (SLURP's scenario whose
    action is missing) was kept and trained as no command."""
    from pipeline.data.schema import ExportRecord, annotate

    def row(**over: object) -> dict:
        base = {"utterance_id": "u1", "transcript": "alexa stop", "account_id": "a1", "intent": None}
        return annotate(ExportRecord.model_validate({**base, **over}))

    assert row(intent="", wake_word_present=False)["intent"] is None
    assert row(intent="  ", wake_word_present=False, scenario="")["scenario"] is None
    with pytest.raises(AnnotationError, match="intent is empty; give the intent, or null for the wake word"):
        row(intent="")
    with pytest.raises(AnnotationError, match="scenario 'alarm' without an intent; give the intent"):
        row(scenario="alarm")
    assert row()["intent"] is None  # the wake word with no command after it
    assert row(intent="alarm_set")["scenario"] == "alarm"


def test_align_keeps_the_annotated_one_of_a_repeated_word() -> None:
    """Searching the value again found the first "ten", not the one the annotation marks."""
    plain, ents = parse_inline("Set the volume to ten out of [level : ten]")
    moved = align_to_transcript("set the volume to ten out of ten", plain, ents)
    assert moved == [Entity("level", "ten", 29, 32)]


@pytest.mark.parametrize(
    "transcript, annotation, value",
    [
        ("play taylor  swift", "play [artist_name : taylor swift]", "taylor  swift"),
        ("play taylor swift", "play [artist_name : taylor  swift]", "taylor swift"),
        ("play  Taylor swift now", "play [artist_name : taylor   swift] now", "Taylor swift"),
    ],
)
def test_align_tolerates_spacing_inside_an_entity(transcript: str, annotation: str, value: str) -> None:
    plain, ents = parse_inline(annotation)
    (moved,) = align_to_transcript(transcript, plain, ents)
    assert (moved.value, transcript[moved.start : moved.end]) == (value, value)
    assert bio_tags(transcript, [moved])[1][1:3] == ["B-artist_name", "I-artist_name"]


def test_align_moves_offsets_past_a_capital_that_lowers_to_two_letters() -> None:
    plain, ents = parse_inline("İstanbul or [place_name : paris]")
    transcript = "i̇stanbul or paris"
    assert align_to_transcript(transcript, plain, ents) == [Entity("place_name", "paris", 13, 18)]
    plain, ents = parse_inline("[letter : i]\u0307stanbul")
    with pytest.raises(AnnotationError, match="'letter' \\('i'\\) starts or ends inside a letter"):
        align_to_transcript("İstanbul", plain, ents)


def test_resolve_spans_finds_values_as_whole_words() -> None:
    """A raw substring search tagged "listen" as the number "ten"."""
    text = "listen to ten songs"
    ents = resolve_spans(text, [{"type": "number", "value": "ten"}])
    assert ents == [Entity("number", "ten", 10, 13)]
    assert bio_tags(text, ents)[1] == ["O", "O", "B-number", "O"]
    with pytest.raises(AnnotationError, match="entity 0 \\(number\\) value 'ten' is not in the transcript as whole words"):
        resolve_spans("listen often", [{"type": "number", "value": "ten"}])


def test_resolve_spans_offsets_are_on_the_transcript_not_its_lower_case() -> None:
    """"İ" lowers to two characters, which shifted every later span by one."""
    text = "İstanbul weather in paris"
    assert resolve_spans(text, [{"type": "place_name", "value": "paris"}]) == [Entity("place_name", "paris", 20, 25)]
    assert resolve_spans(text, [{"type": "place_name", "value": "istanbul"}]) == [Entity("place_name", "İstanbul", 0, 8)]


def test_resolve_spans_tolerates_spacing_inside_a_value() -> None:
    text = "play taylor  swift"
    want = [Entity("artist_name", "taylor  swift", 5, 18)]
    assert resolve_spans(text, [{"type": "artist_name", "value": "Taylor Swift"}]) == want
    assert resolve_spans(text, [{"type": "artist_name", "value": "taylor swift", "start": 5, "end": 18}]) == want
    assert resolve_spans("play taylor swift", [{"type": "artist_name", "value": "taylor  swift"}]) == [
        Entity("artist_name", "taylor swift", 5, 17)
    ]


def test_two_entities_in_one_word_are_refused() -> None:
    """The word's one tag kept the second entity; the first stayed in the gold entities only."""
    plain, ents = parse_inline("set [time : 5]-[time : 6] pm")
    moved = align_to_transcript("set 5-6 pm", plain, ents)
    with pytest.raises(AnnotationError, match="entities 'time' \\('5'\\) and 'time' \\('6'\\) share the word '5-6'"):
        bio_tags("set 5-6 pm", moved)

