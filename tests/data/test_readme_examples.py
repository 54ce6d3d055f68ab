"""The README's examples for Hugging Face sources, several sources and evaluating any model, run as
written (through the real entry points), on small local folders shaped like ../shared/data/speech.

The commands below are the README's text; the test only points their paths at its own folders,
adds `logger=none` and a run folder, and runs them in order (the evaluations read the dataset the
multi-source build wrote).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.test_hf_sources import audiofolder
from tests.eval.test_eval_run import save_tiny_asr, save_tiny_nlu

REPO = Path(__file__).resolve().parents[2]

HF_AUDIOFOLDER = ("python train.py stages=[data] data=hf data.path=../shared/data/speech/speech_commands "
                  "data.columns.transcript=transcription data.columns.account_id=speaker_id")
SEVERAL_SOURCES = ("python train.py stages=[data] data=sources 'data.sources=[{source: hf, name: fsdd, path: "
                   "../shared/data/speech/fsdd}, {source: hf, name: mycroft, path: ../shared/data/speech/mycroft_wake_words, "
                   "constants: {wake_word_present: false}}]'")
EVALUATE_ASR = "python evaluate.py asr_model=outputs/<date>/<time>/asr dataset=<dataset_path>"
EVALUATE_NLU = "python evaluate.py nlu_model=outputs/<date>/<time>/nlu dataset=<dataset_path>"
HUB = ("python train.py stages=[data] data=hf data.path=google/speech_commands data.name=v0.02 data.split=test "
       "data.columns.transcript=label")


def _corpora(root: Path) -> None:
    """Tiny stand-ins for the shared corpora, with their column names (words the tiny ASR can spell)."""
    words = ["yes", "no", "stop", "go", "left", "right"]
    audiofolder(root / "speech_commands", [
        {"file_name": f"audio/{w}_{s:02d}.flac", "transcription": w, "speaker_id": f"{s:08x}", "label": w}
        for s in range(12) for w in words[s % 3:s % 3 + 2]])
    digits = ["zero", "one", "two", "three"]
    audiofolder(root / "fsdd", [
        {"file_name": f"audio/{d}_{s}_{t}.flac", "transcription": digits[d], "speaker_id": s, "digit": d}
        for s in ("george", "jackson", "nicolas", "theo", "yweweler", "lucas") for d in range(4) for t in range(1)])
    phrases = ["amelia", "athena", "computer", "hey computer"]
    audiofolder(root / "mycroft_wake_words", [
        {"file_name": f"audio/{p.replace(' ', '_')}-{i}.flac", "transcription": p, "wake_word": p}
        for i in range(4) for p in phrases] + [  # and four of its "not wake words"
        {"file_name": f"audio/notwakeword-{i}.flac", "transcription": w, "wake_word": None}
        for i, w in enumerate(["yes", "stop", "go", "no"])])


def _run(command: str, cwd: Path, env: dict[str, str], run_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    argv = [sys.executable, str(REPO / argv[1]), *argv[2:], "logger=none", f"hydra.run.dir={run_dir}"]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_readme_shows_these_commands_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    for command in (HF_AUDIOFOLDER, SEVERAL_SOURCES, EVALUATE_ASR, EVALUATE_NLU, HUB):
        assert command in readme, f"README.md no longer shows: {command}"


def test_readme_examples_run_as_written(tiny_dataset_path: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"  # the README's commands run from the repository, beside ../shared
    (work / "outputs" / "run").mkdir(parents=True)
    _corpora(tmp_path / "shared" / "data" / "speech")
    save_tiny_asr(tiny_dataset_path, work / "outputs" / "run" / "asr")
    save_tiny_nlu(tiny_dataset_path, work / "outputs" / "run" / "nlu")
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "PIPELINE_PSEUDONYM_KEY": "readme-example-key",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

    def here(command: str) -> str:
        return command.replace("../shared/", f"{tmp_path}/shared/").replace("outputs/<date>/<time>", "outputs/run")

    done = _run(here(HF_AUDIOFOLDER), work, env, tmp_path / "built_one")
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "built_one" / "build_report.json").read_text())
    assert one["records_kept"] == one["records_in"] == 24 and one["source"] == "hf"

    done = _run(here(SEVERAL_SOURCES), work, env, tmp_path / "built")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "built" / "build_report.json").read_text())
    assert report["by_source"] == {"fsdd": {"records_in": 24, "records_kept": 24, "records_quarantined": 0},
                                   "mycroft": {"records_in": 20, "records_kept": 20, "records_quarantined": 0}}
    assert min(report["splits"].values()) > 0

    for name, command in (("asr", EVALUATE_ASR), ("nlu", EVALUATE_NLU)):
        done = _run(here(command).replace("<dataset_path>", report["dataset_path"]), work, env, tmp_path / f"eval_{name}")
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
        details = json.loads((tmp_path / f"eval_{name}" / "eval_details.json").read_text())
        assert metrics["eval/num_clips"] == sum(v for k, v in metrics.items() if k.endswith("/eval/num_clips")
                                                and k.startswith("by_source/"))
        # No intents in these corpora: the NLU has nothing to score, and says so instead of stopping.
        assert not any(k.startswith(("nlu/", "slu/")) for k in metrics)
        assert "no clip with an intent" in json.dumps(details["not_computed"]) or name == "asr"
        if name != "nlu":
            assert "by_source/fsdd/asr/wer" in metrics and "by_source/mycroft/asr/wer" in metrics
            # Nobody says the wake word in these corpora: no wake-word metric, and the reason why.
            assert "wake/frr" not in metrics and "no clip with the wake word" in details["not_computed"]["wake/frr"]

    done = _run(here(HUB), work, env, tmp_path / "hub")
    assert done.returncode == 2
    assert "hub is unreachable" in done.stderr + done.stdout and "data.path=<folder>" in done.stderr + done.stdout
