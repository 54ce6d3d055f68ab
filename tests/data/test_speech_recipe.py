"""data=demo_speech and data=speech_wake (pipeline/data/speech_recipe.py), through train.py on small
folders shaped like ../shared/data/speech: speakers held out per corpus, the human keyword clips
never in training and only in the wake-word test set, the demo's "computer" commands, and a clear
stop when the shared folder is missing."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from pipeline.data.demo import (DEMO_DIR, FLITE_PREFIX, FLITE_VOICES, PIPER_PREFIX, extra_take_records, flite_take_records,
                                lone_word_records, piper_decoy_records)
from pipeline.data.speech_recipe import clip_split, faster_alone_clips, heldout_speakers, other_wake_records
from pipeline.runtime import PipelineError
from tests.data.test_readme_examples import _corpora

REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, run: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "PIPELINE_PSEUDONYM_KEY": "speech-recipe-key",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(REPO / "train.py"), "stages=[data]", "logger=none", f"hydra.run.dir={tmp_path / run}",
            *overrides]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_each_corpus_holds_out_at_least_one_speaker_the_same_way_every_time() -> None:
    four = ["george", "jackson", "nicolas", "theo"]
    split = heldout_speakers(four, "fsdd", 0.1, 0.15, seed=0)
    assert sorted(split.values()) == ["test", "train", "train", "train"]
    assert heldout_speakers(list(reversed(four)) * 3, "fsdd", 0.1, 0.15, seed=0) == split  # order, repeats
    many = heldout_speakers([f"{i:08x}" for i in range(150)], "speech_commands", 0.1, 0.15, seed=0)
    counts = {s: list(many.values()).count(s) for s in ("train", "validation", "test")}
    assert counts == {"train": 113, "validation": 15, "test": 22}
    assert heldout_speakers(four, "fsdd", 0.1, 0.15, seed=1) != split or heldout_speakers(four, "x", 0.1, 0.15, 0) != split
    shares = [clip_split(f"clip{i}", "mycroft", 0.1, 0.15, 0) for i in range(2000)]
    assert 0.12 < shares.count("test") / 2000 < 0.18 and 0.07 < shares.count("validation") / 2000 < 0.13


def test_shares_that_add_up_to_one_hold_out_every_speaker_and_clip() -> None:
    four = ["george", "jackson", "nicolas", "theo"]
    assert "train" in heldout_speakers(four, "fsdd", 0.5, 0.45, seed=0).values()  # below 1: one left to train
    for validation, test in ((0.5, 0.5), (0.7, 0.3), (0.0, 1.0)):
        split = heldout_speakers(four, "fsdd", validation, test, seed=0)
        assert set(split) == set(four) and "train" not in split.values()
        assert list(split.values()).count("test") == max(1, round(test * 4))
        clips = [clip_split(f"clip{i}", "mycroft", validation, test, 0) for i in range(500)]
        assert "train" not in clips and abs(clips.count("test") / 500 - test) < 0.08
    assert heldout_speakers(["theo"] * 3, "fsdd", 0.5, 0.5, 0) == {"theo": "test"}  # a lone speaker: where figures are read
    # The people first drawn to test stay in test when everyone is held out.
    assert {s for s, v in heldout_speakers(four, "fsdd", 0.1, 0.15, 0).items() if v == "test"} <= {
        s for s, v in heldout_speakers(four, "fsdd", 0.35, 0.65, 0).items() if v == "test"}


def test_the_demo_speaks_a_share_of_its_commands_with_the_second_keyword() -> None:
    records = [{"utterance_id": f"demo-{i}", "transcript": f"alexa play song {i}", "intent": "play_music",
                "annotation": f"alexa play song {i}", "wake_word_present": True} for i in range(200)]
    records.append({"utterance_id": "demo-x", "transcript": "turn the news on", "intent": None, "wake_word_present": False})
    extra = other_wake_records(records, "computer", 0.3, seed=0)
    assert 40 < len(extra) < 80
    for r in extra:
        assert r["transcript"].startswith("computer play song ") and r["annotation"] == r["transcript"]
        assert r["intent"] is None and r["wake_word_present"] is False  # a false wake for "alexa"
        assert r["audio"] == f"audio/{r['utterance_id']}.wav"
        assert r["copy_of"] == r["utterance_id"].removesuffix("-computer")  # deleted with its original
    assert extra == other_wake_records(records, "computer", 0.3, seed=0)


def test_a_share_of_the_second_keyword_clips_says_it_alone_or_after_hey() -> None:
    records = [{"utterance_id": f"demo-{i}", "transcript": f"alexa play song {i}", "intent": "play_music",
                "annotation": f"alexa play song {i}", "wake_word_present": True} for i in range(400)]
    with_commands = other_wake_records(records, "computer", 0.3, seed=0)
    mixed = other_wake_records(records, "computer", 0.3, seed=0, alone=0.5)
    # The same commands are chosen; only what is said changes.
    assert [r["utterance_id"] for r in mixed] == [r["utterance_id"] for r in with_commands]
    said = [r["transcript"] for r in mixed]
    alone, hey = said.count("computer"), said.count("hey computer")
    assert alone + hey + sum(s.startswith("computer play song ") for s in said) == len(mixed)
    assert 0.3 < (alone + hey) / len(mixed) < 0.7 and alone > 10 and hey > 10
    assert all(r["annotation"] == r["transcript"] and r["wake_word_present"] is False for r in mixed)
    assert all(r["transcript"].startswith("computer play song ") for r in with_commands)  # alone=0: as before
    assert [r["said_alone"] for r in mixed] == [len(r["transcript"].split()) <= 2 for r in mixed]


def test_decoys_say_the_command_s_longest_word_alone_in_place_of_the_keyword() -> None:
    records = [{"utterance_id": f"demo-{i}", "transcript": t, "annotation": t, "wake_word_present": True}
               for i, t in enumerate(["alexa play yesterday by the band"] * 100 + ["alexa stop"] * 100)]
    said = {r["utterance_id"]: r["transcript"] for r in other_wake_records(records, "computer", 1.0, seed=0, alone=1.0, decoys=0.5)}
    long, short = [said[f"demo-{i}-computer"] for i in range(100)], [said[f"demo-{i}-computer"] for i in range(100, 200)]
    assert set(long) == {"computer", "hey computer", "yesterday", "hey yesterday"}
    assert 0.3 < sum("yesterday" in s for s in long) / len(long) < 0.7
    assert set(short) == {"computer", "hey computer"}  # no word of five letters or more: the keyword stays


def test_faster_alone_clips_speeds_up_only_the_clips_said_alone() -> None:
    records = [{"utterance_id": f"demo-{i}", "transcript": f"alexa play song {i}", "annotation": f"alexa play song {i}",
                "wake_word_present": True, "speed": 150} for i in range(200)]
    spoken = records + other_wake_records(records, "computer", 1.0, seed=0, alone=0.5)
    spoken += [{**r, "utterance_id": r["utterance_id"] + "-take1"} for r in spoken]  # takes keep the marker
    faster = faster_alone_clips(spoken, "computer", 1.6, seed=0)
    assert faster == faster_alone_clips(spoken, "computer", 1.6, seed=0)
    changed = [(a["speed"], b["speed"]) for a, b in zip(spoken, faster) if a.get("said_alone")]
    assert len(changed) > 100 and all(150 <= s <= 240 for _, s in changed)
    assert sum(s for _, s in changed) / len(changed) > 180  # a spread of rates, not the command's
    assert all(a == b for a, b in zip(spoken, faster) if not a.get("said_alone"))


def _commands(voices: list[str]) -> list[dict]:
    """40 demo-like commands spoken by `voices` in turn, and one keyword clip derived from the first."""
    records = [{"utterance_id": f"demo-{i}", "transcript": f"alexa play song {i}", "voice": voices[i % len(voices)],
                "speed": 140 + i, "pitch": 30 + i, "account_id": f"acct-{i % 5}"} for i in range(40)]
    return records + [{**records[0], "utterance_id": "demo-0-computer", "copy_of": "demo-0"}]


def _takes_by_original(takes: list[dict], records: list[dict], marker: str) -> dict[str, list[dict]]:
    """The takes grouped by the record they re-speak, after the checks every kind of take must pass:
    training only, naming the shipped clip (for deletions), same words and account, corpus rates."""
    by_id = {r["utterance_id"]: r for r in records}
    by_original: dict[str, list[dict]] = {}
    for t in takes:
        original = t["utterance_id"].rsplit(marker, 1)[0]
        by_original.setdefault(original, []).append(t)
        assert t["train_only"] is True and t["kind"] == "extra_take"
        assert t["copy_of"] == original.removesuffix("-computer")
        assert t["account_id"] == by_id[original]["account_id"] and t["transcript"] == by_id[original]["transcript"]
        assert 140 <= t["speed"] <= 179
    return by_original


def test_extra_takes_use_voices_no_clip_speaks_with_and_are_training_only() -> None:
    records = _commands(["en-us", "en-us+m3", "en-gb+f2", "en-gb"])  # 2 accents x 2 variants; en-gb+m3, en-us+f2 unused
    takes = extra_take_records(records, 2, seed=0)
    assert len(takes) == 2 * len(records)
    for pair in _takes_by_original(takes, records, "-take").values():
        assert {t["voice"] for t in pair} == {"en-gb+m3", "en-us+f2"}  # two different unheard voices
        assert all(30 <= t["pitch"] <= 69 for t in pair)
    assert takes == extra_take_records(records, 2, seed=0)
    assert takes != extra_take_records(records, 2, seed=1)
    assert {t["voice"] for t in extra_take_records(records, 1, seed=0, voice="en-us")} == {"en-us"}
    with pytest.raises(PipelineError, match="extra_takes=3: only 2 voice"):
        extra_take_records(records, 3, seed=0)


def test_flite_takes_are_training_only_clips_of_different_flite_voices_at_the_corpus_rates() -> None:
    records = _commands(["en-us"])
    takes = flite_take_records(records, 2, seed=0)
    assert len(takes) == 2 * len(records)
    for pair in _takes_by_original(takes, records, "-flite").values():
        assert len({t["voice"] for t in pair}) == 2
        for t in pair:
            voice = t["voice"].removeprefix(FLITE_PREFIX)
            assert t["voice"].startswith(FLITE_PREFIX) and voice in FLITE_VOICES
            assert 0.85 * FLITE_VOICES[voice] - 1 <= t["pitch"] <= 1.15 * FLITE_VOICES[voice] + 1  # Hz, around the voice's own
    assert {t["voice"] for t in takes} == {FLITE_PREFIX + v for v in FLITE_VOICES}  # every voice is used
    assert takes == flite_take_records(records, 2, seed=0)
    assert takes != flite_take_records(records, 2, seed=1)
    with pytest.raises(PipelineError, match=f"other_wake_flite_takes=5: flite has {len(FLITE_VOICES)} voices"):
        flite_take_records(records, 5, seed=0)


def test_lone_words_are_each_word_said_alone_by_voices_no_demo_account_speaks_with() -> None:
    records = lone_word_records(["yes", "seven"], {"espeak": 3, "flite": 2, "piper": 1})
    assert len(records) == 2 * (3 + 2 + 1) and len({r["utterance_id"] for r in records}) == len(records)
    shipped = {json.loads(line)["voice"] for line in (DEMO_DIR / "utterances.jsonl").read_text().splitlines() if line}
    for word in ("yes", "seven"):
        takes = [r for r in records if r["transcript"] == word]
        voices = [r["voice"] for r in takes]
        espeak = [v for v in voices if not v.startswith((FLITE_PREFIX, PIPER_PREFIX))]
        assert len(set(espeak)) == 3 and not set(espeak) & shipped  # no test account's voice is heard saying it
        assert len({v for v in voices if v.startswith(FLITE_PREFIX)}) == 2
        assert sum(v.startswith(PIPER_PREFIX) for v in voices) == 1
        assert all(137 <= r["speed"] <= 193 for r in takes)  # the corpus's rates
    # A word's clips depend on the word alone: a longer list keeps them.
    assert lone_word_records(["seven"], {"espeak": 3, "flite": 2, "piper": 1}) == [r for r in records if r["transcript"] == "seven"]
    with pytest.raises(PipelineError, match="unknown engine\\(s\\) \\['festival'\\]"):
        lone_word_records(["yes"], {"festival": 1})
    with pytest.raises(PipelineError, match="flite 0-4"):
        lone_word_records(["yes"], {"flite": 5})


def test_a_missing_speech_folder_stops_the_build_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "speech"
    done = _train(tmp_path, "run", "data=demo_speech", f"data.speech_dir={missing}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{missing}" in done.stderr and "data.speech_dir" in done.stderr
    assert not (tmp_path / "cache" / "demo").exists()  # stopped before synthesising the demo
    assert "data=demo" in done.stderr
    # The wake-word test on a folder without one of the corpora: the same stop, naming that corpus.
    speech = tmp_path / "speech"
    _corpora(speech)
    (speech / "fsdd").rename(tmp_path / "fsdd_elsewhere")
    done = _train(tmp_path, "wake", "data=speech_wake", f"data.speech_dir={speech}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{speech / 'fsdd'}" in done.stderr and "leave this corpus out" in done.stderr


# README.md, the recipe with a corpus from the hub.
HUB_RECIPE = ("python train.py data=demo_speech data.sources.0.path=google/speech_commands "
              "data.sources.0.config_name=v0.02 data.sources.0.split=train "
              "data.sources.0.columns.transcript=label +data.sources.0.columns.utterance_id=file")


def test_a_corpus_given_as_a_hub_id_is_loaded_from_the_hub(tmp_path: Path) -> None:
    assert HUB_RECIPE in (REPO / "README.md").read_text()
    speech = tmp_path / "speech"
    _corpora(speech)
    overrides = shlex.split(HUB_RECIPE)[2:]
    done = _train(tmp_path, "run", *overrides, f"data.speech_dir={speech}")
    # Offline (HF_HUB_OFFLINE=1): the hub's own error, naming the id, not the missing-folder one.
    assert done.returncode == 2, done.stderr[-2000:]
    assert "data.path=google/speech_commands" in done.stderr and "hub is unreachable" in done.stderr
    # ... and, since a missing relative folder reads like a hub id too, the folder it would have been.
    assert f"as a folder, {REPO / 'google/speech_commands'} does not exist" in done.stderr
    assert not (tmp_path / "cache" / "demo").exists()  # stopped before synthesising the demo


def test_piper_decoys_say_another_word_of_the_command_alone_never_the_keyword() -> None:
    commands = {"demo-1": "alexa play the beatles playlist loudly", "demo-2": "alexa what is the weather",
                "demo-3": "alexa set it"}  # demo-3: no word of five letters or more
    alone = [{"utterance_id": f"{uid}-computer", "copy_of": uid, "transcript": said, "said_alone": True,
              "voice": "en-us", "speed": 150 + i, "pitch": 50, "account_id": f"acct-{i}"}
             for i, (uid, said) in enumerate([("demo-1", "computer"), ("demo-2", "hey computer"), ("demo-3", "computer")])]
    decoy = {**alone[1], "utterance_id": "demo-4-computer", "copy_of": "demo-4", "transcript": "hey playlist"}
    command = {**alone[0], "utterance_id": "demo-5-computer", "copy_of": "demo-5", "said_alone": False,
               "transcript": "computer play jazz"}
    commands |= {"demo-4": "alexa shuffle my playlist please", "demo-5": "alexa play jazz"}
    takes = piper_decoy_records([*alone, decoy, command], 3, seed=0, commands=commands)
    by_original: dict[str, list[dict]] = {}
    for t in takes:
        by_original.setdefault(t["utterance_id"].rsplit("-piper", 1)[0], []).append(t)
    # Only clips said alone, and only those whose command has a long word to say instead.
    assert sorted(by_original) == ["demo-1-computer", "demo-2-computer", "demo-4-computer"]
    for original, group in by_original.items():
        source = next(r for r in [*alone, decoy] if r["utterance_id"] == original)
        assert [t["utterance_id"] for t in group] == [f"{original}-piper{k}" for k in (1, 2, 3)]
        for t in group:
            assert t["voice"].startswith(PIPER_PREFIX) and t["train_only"] is True and t["kind"] == "extra_take"
            assert t["copy_of"] == source["copy_of"] and t["account_id"] == source["account_id"]  # deletions, splits
            words = t["transcript"].split()
            assert words[:-1] == (["hey"] if source["transcript"].startswith("hey ") else [])
            assert words[-1] in commands[source["copy_of"]].split()[1:] and len(words[-1]) >= 5
            assert words[-1] not in ("computer", *source["transcript"].split())  # never the keyword, nor the clip's own word
            assert t["annotation"] == t["transcript"]
            assert 150 <= t["speed"] <= 153 and 400 <= t["pitch"] <= 900  # corpus rates; generator noise x 1000
    assert takes == piper_decoy_records([*alone, decoy, command], 3, seed=0, commands=commands)
    assert takes != piper_decoy_records([*alone, decoy, command], 3, seed=1, commands=commands)


@pytest.mark.slow
def test_training_build_keeps_keyword_clips_out_and_the_wake_build_scores_them(tmp_path: Path) -> None:
    speech = tmp_path / "speech"
    _corpora(speech)  # 12 + 6 speakers; mycroft: amelia, athena, computer, hey computer x 4, 4 other words
    done = _train(tmp_path, "train", "data=demo_speech", f"data.speech_dir={speech}", "data.num_proc=1",
                  "data.sources.3.demo.max_utterances=40", "data.sources.3.demo.extra_takes=1",
                  "data.sources.4.words=[yes,seven]", "data.sources.4.voices={espeak: 2, flite: 1, piper: 0}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "train" / "build_report.json").read_text())
    # The keyword clips (computer, hey computer) and athena/amelia are quarantined unread: only the 4 other
    # words reach the dataset, and every row is accounted for.
    assert report["by_source"]["mycroft"]["records_in"] == 20
    assert report["quarantine_reasons"]["held_out_keyword"] == 16
    assert report["records_in"] == report["records_kept"] + report["records_quarantined"]
    built = load_from_disk(report["dataset_path"])
    rows = [(split, r) for split in built for r in built[split]]
    assert not any(r["source"] == "mycroft" and "computer" in r["text"] for _, r in rows)
    # Mycroft names no speakers: each clip is its own account, made up from its id, which stays readable.
    assert sorted(r["utterance_id"] for _, r in rows if r["source"] == "mycroft") == [
        f"mycroft/audio/notwakeword-{i}" for i in range(4)]
    spoken = [r for _, r in rows if r["source"] == "demo" and r["text"].startswith("computer ")]
    assert spoken and not any(r["wake_word_present"] for r in spoken)
    # Extra takes: training audio only; a take of a held-out clip is quarantined, never moved to train.
    demo = [(split, r["utterance_id"]) for split, r in rows if r["source"] == "demo"]
    takes = [(split, uid) for split, uid in demo if "-take" in uid]
    assert takes and {split for split, _ in takes} == {"train"}
    originals = {uid: split for split, uid in demo if not any(m in uid for m in ("-take", "-flite", "-piper"))}
    assert {uid.removesuffix("-take1") for _, uid in takes} == {u for u, split in originals.items() if split == "train"}
    # flite's take of each keyword clip (other_wake_flite_takes=1): training audio only, likewise.
    flite = [(split, uid) for split, uid in demo if "-flite" in uid]
    assert flite and {split for split, _ in flite} == {"train"}
    keyword = {u: split for u, split in originals.items() if u.endswith("-computer")}
    assert {uid.removesuffix("-flite1") for _, uid in flite} == {u for u, split in keyword.items() if split == "train"}
    # The piper voice's lone decoy words (other_wake_piper_decoys=2): training audio only, of keyword clips.
    piper = [(split, uid) for split, uid in demo if "-piper" in uid]
    assert {split for split, _ in piper} <= {"train"}
    assert {uid.rsplit("-piper", 1)[0] for _, uid in piper} <= {u for u, split in keyword.items() if split == "train"}
    quarantined = [json.loads(line) for line in (tmp_path / "train" / "quarantine.jsonl").read_text().splitlines()]
    held_piper = [q["utterance_id"] for q in quarantined if q["reason"] == "train_only" and "-piper" in q["utterance_id"]]
    assert {uid.rsplit("-piper", 1)[0] for uid in held_piper} <= {u for u, split in keyword.items() if split != "train"}
    assert report["quarantine_reasons"]["train_only"] == (sum(split != "train" for split in originals.values())
                                                          + sum(split != "train" for split in keyword.values())
                                                          + len(held_piper))
    # The lone words: every word by every voice, training audio only.
    lone = [(split, r) for split, r in rows if r["source"] == "lone_words"]
    assert sorted(r["text"] for _, r in lone) == ["seven"] * 3 + ["yes"] * 3 and {split for split, _ in lone} == {"train"}
    for corpus in ("speech_commands", "fsdd"):
        by_split = {s: {r["speaker"] for split, r in rows if split == s and r["source"] == corpus} for s in built}
        assert by_split["test"] and by_split["train"]
        assert not by_split["train"] & (by_split["test"] | by_split["validation"])
    heard = {r["speaker"] for split, r in rows if split == "train" and r["source"] != "demo"}
    # FSDD names its files after the speaker: the id the dataset and the quarantine report show is the
    # utterance's pseudonym, so the raw name goes no further than the speaker column does.
    fsdd_ids = [r["utterance_id"] for _, r in rows if r["source"] == "fsdd"]
    assert fsdd_ids and all(re.fullmatch(r"utt_[0-9a-f]{16}", u) for u in fsdd_ids)
    assert any(r["utterance_id"].startswith("speech_commands/") for _, r in rows)  # nothing to hide there
    names = ("george", "jackson", "nicolas", "theo", "yweweler", "lucas")
    assert not any(n in line for n in names for line in (tmp_path / "train" / "quarantine.jsonl").read_text().splitlines())

    done = _train(tmp_path, "wake", "data=speech_wake", f"data.speech_dir={speech}", "data.num_proc=1")
    assert done.returncode == 0, done.stderr[-3000:]
    wake_report = json.loads((tmp_path / "wake" / "build_report.json").read_text())
    wake = load_from_disk(wake_report["dataset_path"])
    assert len(wake["train"]) == 0
    # What training heard is quarantined from the wake-word test, so every input row is accounted for.
    # (athena / amelia, kept out of the training build as keywords, are negatives here: those drawn to train too.)
    in_train = sum(split == "train" and r["source"] != "demo" for split, r in rows)
    assert wake_report["quarantine_reasons"]["heard_in_training"] >= in_train > 0
    assert wake_report["records_in"] == 24 + 24 + 20  # every row of the three corpora
    assert wake_report["records_in"] == wake_report["records_kept"] + wake_report["records_quarantined"]
    clips = [r for split in ("validation", "test") for r in wake[split]]
    positives = [r for r in clips if r["wake_word_present"]]
    assert sorted({r["text"] for r in positives}) == ["computer", "hey computer"] and len(positives) == 8
    assert all(wake[s].filter(lambda r: r["wake_word_present"]).num_rows for s in ("validation", "test"))
    negatives = [r for r in clips if not r["wake_word_present"]]
    assert negatives and not {r["speaker"] for r in negatives} & heard  # only people training never heard
    assert not any(n in r["utterance_id"] for n in names for r in clips)


def test_keyword_labels_spelt_otherwise_or_in_another_column_still_mark_the_keyword_clips(tmp_path: Path) -> None:
    """A wake-word corpus that writes "Hey Computer" or "hey_computer" where the shared one writes
    "hey computer": its keyword clips are still the positives, not negatives that say the keyword.
    One without the shared corpus's `wake_word` column is named, and read from the column given.
    With no training build in the cache (people no model heard), the wake build keeps every clip."""
    speech = tmp_path / "speech"
    _corpora(speech)
    metadata = speech / "mycroft_wake_words" / "metadata.jsonl"
    spelling = {"computer": "COMPUTER", "hey computer": "Hey_Computer", "athena": "Athena"}
    rows = [json.loads(line) for line in metadata.read_text().splitlines()]
    metadata.write_text("".join(json.dumps({**r, "wake_word": spelling.get(r["wake_word"], r["wake_word"])}) + "\n"
                                for r in rows))
    done = _train(tmp_path, "wake", "data=speech_wake", f"data.speech_dir={speech}", "data.num_proc=1",
                  "data.speech_heldout={validation: 0.5, test: 0.5}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "wake" / "build_report.json").read_text())
    assert "heard_in_training" not in report["quarantine_reasons"]
    wake = load_from_disk(report["dataset_path"])
    assert len(wake["train"]) == 0 and report["records_kept"] == len(wake["validation"]) + len(wake["test"])
    for corpus, speakers in (("speech_commands", 12), ("fsdd", 6)):
        by_split = {s: {r["speaker"] for r in wake[s] if r["source"] == corpus} for s in ("validation", "test")}
        assert len(by_split["validation"]) == len(by_split["test"]) == speakers // 2
        assert not by_split["validation"] & by_split["test"]
    clips = [r for split in ("validation", "test") for r in wake[split]]
    assert sorted(r["text"] for r in clips if r["wake_word_present"]) == ["computer"] * 4 + ["hey computer"] * 4
    assert not any("computer" in r["text"] for r in clips if not r["wake_word_present"])
    # A corpus with no such column: a stop naming the column, the folder and what to set.
    metadata.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "wake_word"}) + "\n" for r in rows))
    done = _train(tmp_path, "wake2", "data=speech_wake", f"data.speech_dir={speech}", "data.num_proc=1",
                  "data.speech_heldout={validation: 0.5, test: 0.5}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "keyword_column='wake_word' is not a column of" in done.stderr and "set that entry's keyword_column" in done.stderr
    done = _train(tmp_path, "wake3", "data=speech_wake", f"data.speech_dir={speech}", "data.num_proc=1",
                  "data.speech_heldout={validation: 0.5, test: 0.5}", "data.sources.2.keyword_column=transcription")
    assert done.returncode == 0, done.stderr[-3000:]
    wake = load_from_disk(json.loads((tmp_path / "wake3" / "build_report.json").read_text())["dataset_path"])
    assert sum(r["wake_word_present"] for split in ("validation", "test") for r in wake[split]) == 8


def _records(tmp_path: Path, path: Path, **entry: object) -> list:
    """The records a speech source gives, each with its split and exclusion (the build's input)."""
    from pipeline.config import checked
    from pipeline.data.config import SourceConfig
    from pipeline.data.speech_recipe import speech_source

    cfg = checked({"source": "speech", "name": "corpus", "path": str(path), "heldout": {"validation": 0.1, "test": 0.15},
                   **entry}, SourceConfig, "data.sources[0]")
    source = speech_source(cfg, tmp_path / "cache", "corpus")
    try:
        return list(source.records)
    finally:
        source.close()


def _clip_folder(folder: Path, rows: list[dict]) -> Path:
    import numpy as np
    import soundfile as sf

    (folder / "audio").mkdir(parents=True)
    noise = np.random.default_rng(0).normal(0, 0.1, 8000).astype("float32")
    for i, row in enumerate(rows):
        sf.write(folder / "audio" / f"c{i:03d}.wav", noise, 16000)
        row["file_name"] = f"audio/c{i:03d}.wav"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_one_person_given_as_a_constant_is_held_out_or_trained_on_whole(tmp_path: Path) -> None:
    """Before the fix: a corpus of one speaker named by `constants.account_id` was split clip by clip,
    so that person was in training and in test."""
    folder = _clip_folder(tmp_path / "alice", [{"transcription": f"word {i}"} for i in range(40)])
    records = _records(tmp_path, folder, columns={"transcript": "transcription"}, constants={"account_id": "alice"})
    assert len(records) == 40 and {r.split for r in records} == {"train"}


def test_class_label_columns_are_read_by_their_names(tmp_path: Path) -> None:
    """Before the fix: hub datasets store labels as codes; a keyword column of codes never matched
    "computer" (its clips were trained on), and a speaker column of codes stopped the build with KeyError."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    folder = _clip_folder(tmp_path / "raw", [{"transcription": f"say {w}"} for w in ("computer", "athena") * 10])
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    words, people = ["computer", "athena", "none"], ["ann", "bob", "cy", "dee", "eve"]
    features = Features({"audio": Audio(), "transcription": Value("string"), "wake_word": ClassLabel(names=words),
                         "speaker_id": ClassLabel(names=people)})
    data = Dataset.from_dict({"audio": [str(folder / r["file_name"]) for r in rows],
                              "transcription": [r["transcription"] for r in rows],
                              "wake_word": [i % 2 for i in range(20)], "speaker_id": [i % 5 for i in range(20)]},
                             features=features)
    data.save_to_disk(str(tmp_path / "saved"))
    records = _records(tmp_path, tmp_path / "saved", columns={"transcript": "transcription", "account_id": "speaker_id"},
                       keywords=["computer"], keyword_column="wake_word")
    assert len(records) == 20
    keyword = [r for r in records if r.data["transcript"] == "say computer"]
    assert all(r.excluded and r.excluded[0] == "held_out_keyword" for r in keyword) and len(keyword) == 10
    others = [r for r in records if r.data["transcript"] == "say athena"]
    assert {r.split for r in others} == {"train", "test"}  # five people, one of them held out whole
    split_of = {r.data["account_id"]: r.split for r in others}
    assert all(split_of[r.data["account_id"]] == r.split for r in others)


def test_a_clip_that_says_the_keyword_under_another_label_is_a_keyword_clip(tmp_path: Path) -> None:
    """Before the fix: a clip labelled with no wake word that says "ok computer" was trained on, and
    in the keyword test scored as a negative."""
    rows = [{"transcription": t, "wake_word": w} for t, w in
            [("computer", "computer"), ("ok computer", None), ("my computers", None), ("athena", "athena"),
             ("compute this", None)] * 4]
    folder = _clip_folder(tmp_path / "wake", rows)
    train = _records(tmp_path, folder, columns={"transcript": "transcription"}, keywords=["computer", "athena"],
                     keyword_column="wake_word")
    kept = sorted({r.data["transcript"] for r in train if not r.excluded})
    assert kept == ["compute this"]
    said = next(r for r in train if r.data["transcript"] == "ok computer")
    assert said.excluded[0] == "held_out_keyword" and "its transcript says 'computer'" in said.excluded[1]
    test = _records(tmp_path, folder, columns={"transcript": "transcription"}, keywords=["computer", "hey computer"],
                    keyword_column="wake_word", role="wake_test", heldout={"validation": 0.5, "test": 0.5})
    positives = {r.data["transcript"] for r in test if r.data["wake_word_present"]}
    assert positives == {"computer", "ok computer", "my computers"}


def test_the_card_states_a_speech_corpus_s_own_split_rule(tmp_path: Path) -> None:
    """Before the fix: the dataset card said a speech corpus was split "by a keyed hash of the
    account ... so no account is in two splits", while its speakers are held out by the corpus's own
    seeded ranking and, in a wake-word test, its keyword clips go to validation or test clip by clip,
    whoever speaks them: here one speaker is in both, as the card now says."""
    from pipeline.config import checked
    from pipeline.data.card import split_rule
    from pipeline.data.config import SourceConfig
    from pipeline.data.speech_recipe import speech_source

    rows = [{"transcription": "hey computer" if i % 2 else "go", "speaker_id": "ann", "wake_word": None} for i in range(20)]
    folder = _clip_folder(tmp_path / "corpus", rows)
    for role, keywords in (("wake_test", ["hey computer"]), ("train", None)):
        cfg = checked({"source": "speech", "name": "corpus", "path": str(folder), "role": role, "keywords": keywords,
                       "columns": {"transcript": "transcription", "account_id": "speaker_id"},
                       "heldout": {"validation": 0.1, "test": 0.15}}, SourceConfig, "data.sources[0]")
        source = speech_source(cfg, tmp_path / "cache", "corpus")
        try:
            splits = {r.split for r in source.records if r.excluded is None}
        finally:
            source.close()
        rule = split_rule(source.kind, source.options)
        assert "keyed hash" not in rule and "no account is in two splits" not in rule
        assert "held-out speakers" in rule and "0.15 of them" in rule
        if role == "wake_test":
            assert splits == {"validation", "test"} and "one speaker may be in both" in rule
        else:
            assert splits == {"train"} and "may be in both" not in rule
    assert split_rule("lone_words", {"speech": {"role": "train", "heldout": [0.0, 0.0]}}) == "none: every clip is training audio"


def test_an_account_a_speech_corpus_holds_out_is_held_out_in_every_source(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before the fix: a speech corpus held out its speaker "tom" by rank while an export of the same
    accounts put "tom" in train by the account's hash, so his voice was trained on and judged. Now
    his training clips follow him into test (train_only ones are quarantined), the report names his
    moved records by line (no id nor pseudonym: a report stays as written, and his account may be
    deleted later), and the other accounts keep their splits."""
    from tests.data.test_build import build, record, split_of, write_export

    corpus = _clip_folder(tmp_path / "corpus", [{"transcription": f"word {i}", "speaker_id": s}
                                                for i, s in enumerate(["tom"] * 4 + ["rosa"] * 4)])
    assert heldout_speakers(["tom", "rosa"], "corpus", 0.0, 0.5, 0) == {"tom": "test", "rosa": "train"}
    export = write_export(tmp_path / "export", [record(0, account="tom"), record(1, account="tom"),
                                                record(2, account="tom", train_only=True), record(3, account="rosa"),
                                                record(4, account="someone-else")])
    sources = [{"source": "jsonl", "name": "export", "path": str(export)},
               {"source": "speech", "name": "corpus", "path": str(corpus), "heldout": {"validation": 0.0, "test": 0.5},
                "columns": {"transcript": "transcription", "account_id": "speaker_id"}}]
    # The export's own shares put every account in train, so tom's export clips would be trained on.
    report, quarantine = build(tmp_path, sources=sources, split_shares={"validation": 0.0, "test": 0.0}, split=None)
    splits = split_of(report["dataset_path"])
    assert splits["u000"] == splits["u001"] == "test" and splits["u003"] == splits["u004"] == "train"
    assert [(q["utterance_id"], q["reason"]) for q in quarantine] == [("u002", "train_only")]
    dd = load_from_disk(report["dataset_path"])
    by_speaker: dict[str, set[str]] = {}
    for name, ds in dd.items():
        for speaker in ds["speaker"]:
            by_speaker.setdefault(speaker, set()).add(name)
    assert all(len(s) == 1 for s in by_speaker.values()), by_speaker  # every account in one split
    tom = next(r["speaker"] for r in dd["test"] if r["utterance_id"] == "u000")
    assert by_speaker[tom] == {"test"} and sum(r["speaker"] == tom for r in dd["test"]) == 6
    assert report["accounts_trained_and_held_out"] == {"accounts": 1, "clips_moved": 2, "where": [
        {"moved_to": "test", "clips_moved": 2, "train_only_quarantined": 1, "sources": ["export"],
         "at": [{"source": "export", "line": 1}, {"source": "export", "line": 2}, {"source": "export", "line": 3}]}]}
    assert tom not in json.dumps(report) and '"tom"' not in json.dumps(report) and '"tom"' not in json.dumps(quarantine)
    assert "1 account(s) held out by one source were trained on in another; their 2 training clip(s) moved" in caplog.text
    assert tom not in caplog.text
