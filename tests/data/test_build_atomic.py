"""Builds in real subprocesses: a build killed midway leaves nothing half-written; config errors exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import load_from_disk
from omegaconf import OmegaConf

from pipeline.data.build import run_data_stage
from pipeline.runtime import staged_folder
from pipeline.tracking import NullTracker

REPO = Path(__file__).resolve().parents[2]


def _export(root: Path, n: int) -> Path:
    (root / "audio").mkdir(parents=True)
    t = np.arange(3 * 44100) / 44100
    lines = []
    for i in range(n):
        sf.write(root / "audio" / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + i) * t)).astype(np.float32), 44100)
        lines.append(json.dumps({"utterance_id": f"c{i}", "audio": f"audio/c{i}.wav", "transcript": "alexa stop",
                                 "intent": "music_stop", "entities": [], "account_id": f"a{i % 9}"}))
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return root / "annotations.jsonl"


def test_killed_build_leaves_no_dataset_and_the_next_build_succeeds(tmp_path: Path) -> None:
    path = _export(tmp_path / "export", 80)
    cfg = OmegaConf.create({
        "cache_dir": str(tmp_path / "cache"),
        "privacy": {"key_env": "PIPELINE_TEST_DATA_KEY_UNSET", "key_file": str(tmp_path / "key")},
        "data": {"source": "jsonl", "path": str(path), "deletions": None, "min_duration_s": 0.0, "max_duration_s": 30,
                 "quarantine_flags": ["sensitive"], "num_proc": 1, "split": {"validation": 0.2, "test": 0.2}},
    })
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from omegaconf import OmegaConf
        from pipeline.data.build import run_data_stage
        from pipeline.tracking import NullTracker
        run_data_stage(OmegaConf.load({str(tmp_path / 'cfg.yaml')!r}), Path({str(tmp_path / 'killed')!r}), NullTracker())
    """)
    datasets_dir = tmp_path / "cache" / "datasets"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, preexec_fn=os.setpgrp,  # its own process group, killed whole
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # Kill as soon as the audio pass has started writing arrow data.
        while not any(datasets_dir.glob(".tmp-*/work/*")):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [p.name for p in datasets_dir.iterdir() if not p.name.startswith(".tmp-")] == []
    assert not (tmp_path / "killed" / "build_report.json").exists()

    report = run_data_stage(cfg, tmp_path / "run", NullTracker())
    assert report["reused"] is False and report["records_kept"] == 80
    assert sum(len(d) for d in load_from_disk(report["dataset_path"]).values()) == 80
    assert [p.name for p in datasets_dir.iterdir()] == [report["fingerprint"]]  # the killed build's leftovers are gone


def test_wrong_config_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "train.py", "stages=[data]", "data=jsonl", "data.path=/nope", "logger=none",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: data.path=/nope: file not found; check the path"]


def test_a_synthesis_cache_folder_appears_only_complete(tmp_path: Path) -> None:
    """pipeline.runtime.staged_folder, which the demo, its background and the lone words write through."""
    final = tmp_path / "demo" / "key"
    final.parent.mkdir()
    abandoned = final.parent / ".tmp-key-999999999"  # a killed writer's folder (no such process)
    abandoned.mkdir()
    with pytest.raises(RuntimeError), staged_folder(final, marker="annotations.jsonl") as tmp:
        (tmp / "half.wav").write_bytes(b"x")
        raise RuntimeError("synthesis failed")
    assert not final.exists() and sorted(final.parent.iterdir()) == []  # nothing half-written, leftovers gone
    with staged_folder(final, marker="annotations.jsonl") as tmp:
        (tmp / "annotations.jsonl").write_text("{}\n")
    assert (final / "annotations.jsonl").read_text() == "{}\n" and sorted(final.parent.iterdir()) == [final]


def test_a_cache_folder_partly_removed_by_hand_is_replaced_not_kept(tmp_path: Path) -> None:
    """Before the fix: a published folder whose marker was deleted by hand (the rest left) made the
    rename of every later write fail with OSError (directory not empty), so that dataset or synthesis
    could never be made again until someone found and removed the folder."""
    final = tmp_path / "datasets" / "abc"
    final.mkdir(parents=True)
    (final / "train").mkdir()
    (final / "train" / "data-00000-of-00001.arrow").write_bytes(b"left behind")
    with staged_folder(final, marker="build_report.json") as tmp:
        (tmp / "build_report.json").write_text("{}\n")
    assert sorted(p.name for p in final.iterdir()) == ["build_report.json"]
    # A complete folder another writer published first is kept as it is.
    with staged_folder(final, marker="build_report.json") as tmp:
        (tmp / "build_report.json").write_text('{"second": true}\n')
    assert (final / "build_report.json").read_text() == "{}\n"
