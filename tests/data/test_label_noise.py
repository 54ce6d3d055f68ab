"""Planted annotation errors for scoring the review stage: a known share per kind, valid records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.annotations import parse_inline
from pipeline.data.label_noise import KINDS, corrupt_records, with_label_noise
from pipeline.data.schema import ExportRecord, annotate
from pipeline.runtime import PipelineError

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "utterances.jsonl"


def demo_records(n: int = 400) -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text().splitlines()[:n]]


def test_each_kind_gets_its_share_of_valid_one_error_corruptions() -> None:
    records = demo_records()
    corrupted, planted = corrupt_records(records, 0.05, seed=0)
    by_kind = {k: [p for p in planted if p["kind"] == k] for k in KINDS}
    assert all(1 <= len(v) <= 0.05 * len(records) + 1 for v in by_kind.values())
    assert len({p["utterance_id"] for p in planted}) == len(planted)  # one error per clip
    assert len(by_kind["wake"]) == round(0.05 * (len(records) - len(by_kind["transcript"]) - len(by_kind["intent"])))

    originals = {r["utterance_id"]: r for r in records}
    changed = {p["utterance_id"]: p for p in planted}
    for record in corrupted:
        annotate(ExportRecord.model_validate(record))  # the build accepts every corrupted record
        before = originals[record["utterance_id"]]
        assert record["audio"] == before["audio"]  # the audio still says the true text
        if record["utterance_id"] not in changed:
            assert record == before
            continue
        p = changed[record["utterance_id"]]
        assert p["true"] != p["annotated"]
        if p["kind"] == "transcript":
            old, new = before["transcript"].split(), record["transcript"].split()
            assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1
            assert record["transcript"] == p["annotated"]
        elif p["kind"] == "intent":
            assert record["intent"] == p["annotated"] != before["intent"] is not None
        elif p["kind"] == "wake":
            assert record["wake_word_present"] is (not before["wake_word_present"])
        else:
            plain, spans = parse_inline(record["annotation"])
            old_plain, old_spans = parse_inline(before["annotation"])
            assert plain == old_plain and len(spans) == len(old_spans)
            moved = [(a, b) for a, b in zip(spans, old_spans) if (a.start, a.end) != (b.start, b.end)]
            assert len(moved) == 1 and moved[0][0].type == moved[0][1].type

    assert corrupt_records(records, 0.05, seed=0) == (corrupted, planted)
    assert corrupt_records(records, 0.05, seed=1)[1] != planted


def test_a_span_may_slip_onto_the_first_word_as_onto_any_other() -> None:
    """Before the fix a span starting at word 1 never took in word 0, though the review looks there."""
    from pipeline.data.label_noise import _span_moves

    words = "wake me up at seven".split()
    assert (0, 0, 2) in _span_moves(words, [("person", 1, 2)])  # "wake" taken in
    assert (0, 0, 1) not in _span_moves(words, [("person", 0, 1)])  # nothing before word 0
    assert all(m[1] >= 2 for m in _span_moves(words, [("a", 0, 2), ("b", 2, 3)]) if m[0] == 1)  # spans stay apart


def test_the_noisy_export_is_written_once_beside_the_clean_one(tmp_path: Path) -> None:
    clean = tmp_path / "annotations.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in demo_records(200)))
    assert with_label_noise(clean, 0, seed=0) == clean
    noisy = with_label_noise(clean, 0.1, seed=0)
    manifest = tmp_path / "label_noise.noise-v2-0.1-0.jsonl"
    assert noisy == tmp_path / "annotations.noise-v2-0.1-0.jsonl" and manifest.exists()
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {line["kind"] for line in lines} == set(KINDS)
    stamp = noisy.stat().st_mtime_ns
    assert with_label_noise(clean, 0.1, seed=0) == noisy and noisy.stat().st_mtime_ns == stamp
    with pytest.raises(PipelineError, match="data.demo.label_noise=0.5"):
        with_label_noise(clean, 0.5, seed=0)
