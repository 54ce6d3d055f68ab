"""Shared fixtures: a tiny dataset with real (espeak-ng) speech, built straight from the column
contract so model-stage tests do not depend on the data build, plus a tiny export for build tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with end-to-end (`slow`) tests first. `make test` hands out whole files (`--dist loadfile
    --no-loadscope-reorder`), each to the next free process, so the files that take minutes start
    early and the hundreds of short tests fill in behind them. xdist's own order (most tests first)
    left two minutes-long files for the end, one process running them while the other sat idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: collection order otherwise


@pytest.fixture(autouse=True)
def _restore_environment():
    """Stages called in-process set defaults such as WANDB_DATA_DIR (runtime.configure_environment);
    without this, they would leak into later tests' subprocesses and point them at another test's
    folders."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _forget_hydra_job():
    """Tests that compose a job's config in-process set Hydra's job record (HydraConfig), which a
    process keeps for its one job. Left set, a later test in the same process read that job's command
    line as its own: `data=...` there kept the call's data settings over a run's recorded ones."""
    yield
    hydra_config = sys.modules.get("hydra.core.hydra_config")
    if hydra_config is not None:
        hydra_config.HydraConfig.instance().cfg = None


SENTENCES = [
    ("alexa play jazz music", "play_music", [("music_genre", "jazz")], True),
    ("alexa set an alarm for seven am", "alarm_set", [("time", "seven am")], True),
    ("alexa what is the weather in paris", "weather_query", [("place_name", "paris")], True),
    ("alexa turn off the lights", "iot_hue_lightoff", [], True),
    ("alexa play rock music", "play_music", [("music_genre", "rock")], True),
    ("alexa set an alarm for six pm", "alarm_set", [("time", "six pm")], True),
    ("alexander went to the market", None, [], False),
    ("the election is next week", None, [], False),
]


def espeak_wave(text: str, voice: str = "en-us", speed: int = 170, pitch: int = 50) -> np.ndarray:
    """Synthesise `text` with espeak-ng and return float32 mono at 16 kHz."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `make setup` (it installs the system packages)")
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    import io

    wave, sr = sf.read(io.BytesIO(out), dtype="float32")
    tensor = AF.resample(torch.from_numpy(wave), sr, 16000)
    return tensor.numpy()


def _records(n_repeat: int, split: str) -> list[dict]:
    from pipeline.data.annotations import bio_tags, resolve_spans
    from pipeline.text import normalize_text

    voices = [("en-us", 160, 40), ("en-us+m3", 180, 60), ("en-gb", 170, 50)]
    rows = []
    for r in range(n_repeat):
        for i, (text, intent, ents, wake) in enumerate(SENTENCES):
            voice, speed, pitch = voices[(i + r) % len(voices)]
            wave = espeak_wave(text, voice, speed, pitch)
            spans = resolve_spans(text, [{"type": t, "value": v} for t, v in ents])
            words, tags = bio_tags(text, spans)
            rows.append(
                {
                    "utterance_id": f"{split}-{r}-{i}",
                    "audio": {"array": wave, "sampling_rate": 16000},
                    "transcript": text,
                    "text": normalize_text(text),
                    "intent": intent,
                    "scenario": intent.split("_")[0] if intent else None,
                    "entities": [e.as_dict() for e in spans],
                    "words": words,
                    "bio_tags": tags,
                    "wake_word_present": wake,
                    "duration": float(len(wave) / 16000),
                    "speaker": f"spk_{split}_{(r + i) % 2}",  # two per split: a speaker bootstrap needs two
                    "device": f"dev_{r}",
                    "annotator": "ann_0",
                    "locale": "en-US",
                    "recorded_at": "2026-01-01T00:00:00Z",
                }
            )
    return rows


@pytest.fixture(scope="package")
def tiny_dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved DatasetDict (train 24 / validation 8 / test 8 clips) with every contract column."""
    from datasets import Dataset, DatasetDict

    from pipeline.data.features import dataset_features

    features = dataset_features(with_audio=True)
    dd = DatasetDict(
        {
            "train": Dataset.from_list(_records(3, "train"), features=features),
            "validation": Dataset.from_list(_records(1, "validation"), features=features),
            "test": Dataset.from_list(_records(1, "test"), features=features),
        }
    )
    path = tmp_path_factory.mktemp("tiny_dataset") / "dataset"
    dd.save_to_disk(str(path))
    return path


@pytest.fixture(scope="package")
def tiny_models(tiny_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny ASR model (`asr/`) and NLU model (`nlu/`) trained a few steps on the tiny dataset."""
    from tests.eval.test_eval_run import save_tiny_asr, save_tiny_nlu

    folder = tmp_path_factory.mktemp("models")
    save_tiny_asr(tiny_dataset_path, folder / "asr")
    save_tiny_nlu(tiny_dataset_path, folder / "nlu")
    return folder

