"""Each non-canonical source format (SLURP, NeMo, MASSIVE text) through the real build."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from datasets import load_from_disk
from omegaconf import OmegaConf

from pipeline.data.build import run_data_stage
from pipeline.data.features import dataset_features
from pipeline.tracking import NullTracker

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # samples of SLURP devel and MASSIVE en-US


def _tone(path: Path, seconds: float = 1.0, sr: int = 44100, freq: float = 500.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def _build(tmp_path: Path, **data: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = OmegaConf.create({
        "cache_dir": str(tmp_path / "cache"),
        "privacy": {"key_env": "PIPELINE_TEST_DATA_KEY_UNSET", "key_file": str(tmp_path / "key")},
        "data": {"deletions": None, "min_duration_s": 0.2, "max_duration_s": 30, "quarantine_flags": ["sensitive"],
                 "split": {"validation": 0.3, "test": 0.3}, "num_proc": 1, **data},
    })
    report = run_data_stage(cfg, tmp_path / "run", NullTracker())
    quarantine = [json.loads(x) for x in (tmp_path / "run" / "quarantine.jsonl").read_text().splitlines()]
    assert report["records_in"] == report["records_kept"] + report["records_quarantined"] == report["records_kept"] + len(quarantine)
    return report, quarantine


def test_slurp_one_clip_per_recording(tmp_path: Path) -> None:
    lines = (FIXTURES / "slurp_devel_sample.jsonl").read_text().splitlines()
    chosen = [lines[0], lines[1]]  # qa_currency with two entities; a truncated `intent: query` (weather)
    audio_dir = tmp_path / "slurp_real"
    files = [r["file"] for line in chosen for r in json.loads(line)["recordings"]]
    for i, file in enumerate(files):
        _tone(audio_dir / file, freq=300 + 40 * i)
    manifest = tmp_path / "devel.jsonl"
    manifest.write_text("\n".join([*chosen, '{"slurp_id": 1, "recordings": []}']) + "\n")

    report, quarantine = _build(tmp_path, source="slurp", path=str(manifest), audio_dir=str(audio_dir))
    assert report["records_in"] == len(files) + 1 and report["records_kept"] == len(files)
    assert quarantine == [{"source": "slurp", "line": 3, "reason": "invalid_record",
                           "detail": "a SLURP record needs a non-empty `recordings` list"}]
    dd = load_from_disk(report["dataset_path"])
    rows = [r for ds in dd.values() for r in ds.remove_columns("audio")]
    currency = [r for r in rows if r["utterance_id"] == "slurp-13804-audio-1434542201-headset"][0]
    assert currency["intent"] == "qa_currency"
    assert [e["value"] for e in currency["entities"]] == ["american dollar", "japanese yen"]
    assert currency["bio_tags"][-2:] == ["B-currency_name", "I-currency_name"]
    assert {r["intent"] for r in rows if r["utterance_id"].startswith("slurp-1197-")} == {"weather_query"}
    # Both microphones of one take are one account, hence one split.
    split = {r["utterance_id"]: name for name, ds in dd.items() for r in ds.remove_columns("audio")}
    assert split["slurp-13804-audio-1434542201-headset"] == split["slurp-13804-audio-1434542201"]


def test_nemo_manifest_with_extra_fields(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    _tone(root / "wavs" / "a.wav", seconds=2.0, sr=22050)
    _tone(root / "wavs" / "b.wav")
    _tone(tmp_path / "elsewhere.wav")
    manifest = root / "manifest.json"
    entries = [
        {"audio_filepath": "wavs/a.wav", "duration": 2.0, "text": "turn on the kitchen lights",
         "intent": "iot_hue_lighton", "annotation": "turn on the [house_place : kitchen] lights", "speaker": "SPK-RAW-1"},
        {"audio_filepath": str(root / "wavs" / "b.wav"), "duration": 1.0, "text": "what time is it"},
        {"audio_filepath": str(tmp_path / "elsewhere.wav"), "duration": 1.0, "text": "hello"},
        {"duration": 1.0, "text": "no audio path"},
    ]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))

    report, quarantine = _build(tmp_path, source="nemo", path=str(manifest))
    assert report["records_kept"] == 2
    assert {q["reason"] for q in quarantine} == {"path_outside_root", "invalid_record"}
    dd = load_from_disk(report["dataset_path"])
    rows = {r["utterance_id"]: r for ds in dd.values() for r in ds}
    assert set(rows) == {"wavs/a", "wavs/b"}
    assert rows["wavs/a"]["entities"][0]["type"] == "house_place" and abs(rows["wavs/a"]["duration"] - 2.0) < 0.01
    assert rows["wavs/a"]["speaker"].startswith("acct_") and rows["wavs/b"]["intent"] is None
    assert b"SPK-RAW-1" not in b"".join(p.read_bytes() for p in Path(report["dataset_path"]).rglob("*") if p.is_file())


def test_massive_text_without_audio(tmp_path: Path) -> None:
    def copy(name: str, n: int) -> Path:
        with open(FIXTURES / name) as f:
            lines = list(islice(f, n))
        out = tmp_path / name
        out.write_text("".join(lines) + '{"id": "x1", "utt": "play jazz", "annot_utt": "play [genre : jazz", "intent": "play_music"}\n')
        return out

    train, dev = copy("en-US.train.jsonl", 30), copy("en-US.dev.jsonl", 20)
    report, quarantine = _build(tmp_path, source="massive_text", train_path=str(train), dev_path=str(dev))
    assert report["records_in"] == 52 and report["quarantine_reasons"] == {"bad_annotation": 1, "duplicate_id": 1}
    assert report["splits"]["train"] == 30 and report["splits"]["validation"] + report["splits"]["test"] == 20
    assert min(report["splits"].values()) > 0
    dd = load_from_disk(report["dataset_path"])
    assert dd["train"].features == dataset_features(with_audio=False, with_source=True)
    assert all(d == 0.0 for d in dd["validation"]["duration"])
    # The dev halves are a fixed function of the MASSIVE id.
    again, _ = _build(tmp_path / "again", source="massive_text", train_path=str(train), dev_path=str(dev))
    assert load_from_disk(again["dataset_path"])["test"]["utterance_id"] == dd["test"]["utterance_id"]
