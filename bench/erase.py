"""Erasure time: one account's deletion in a store of 10 cached datasets and 20 runs.

    python -m bench.erase [--datasets 10] [--runs 20] [--clips 60] [--repeats 5]

The store is what the pipeline leaves behind, made without training: cached datasets saved the way
the data stage saves them (FLAC audio in arrow files), run folders with weights, a checkpoint, the
character LM of their training transcripts, predictions and a report, and a registry with two
promoted models. The deleted account has clips in two of the datasets, so 4 of the 20 runs are
affected. Each repeat copies the store afresh and times `python -m pipeline.ops.erase` end to end
(interpreter start and imports included), then checks that the audit is clean and that every file
of the 16 unaffected runs is byte-identical (nothing that held no deleted data was touched).
Prints one JSON object (also `bench/results/erase.json`): median, min and max seconds over the repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import check_common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEY = "bench-erase-key"
VICTIM = "amzn1.account.VICTIM0001"
WORDS = ["alexa", "play", "jazz", "set", "alarm", "for", "seven", "weather", "in", "paris", "turn", "off",
         "the", "lights", "add", "milk", "to", "list", "call", "mom", "what", "time", "is", "it"]
# The character vocabulary of the store's LMs (as an ASR model's: "|" is the word boundary).
VOCAB = {c: i for i, c in enumerate("|abcdefghijklmnopqrstuvwxyz'")}
VICTIM_SENTENCES = ["please order quokka biscuits from zanzibar", "remind me to water the kumquat tree",
                    "ring my aunt philippa in reykjavik"]


def _flac(rng: np.random.Generator, seconds: float) -> bytes:
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.2 * np.sin(2 * np.pi * rng.uniform(120, 400) * t) + 0.02 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), 16000, format="FLAC")
    return buffer.getvalue()


def _rows(key: bytes, dataset: int, clips: int, with_victim: bool, rng: np.random.Generator) -> list[dict[str, Any]]:
    from pipeline.data.privacy import pseudonym

    rows = []
    for k in range(clips):
        victim = with_victim and k < len(VICTIM_SENTENCES)
        account = VICTIM if victim else f"amzn1.account.B{dataset:02d}{k % 8:03d}"
        text = VICTIM_SENTENCES[k] if victim else " ".join(rng.choice(WORDS, size=5))
        rows.append({
            "utterance_id": f"d{dataset}-u{k}", "audio": {"bytes": _flac(rng, 1.0), "path": None},
            "transcript": text, "text": text, "intent": "play_music", "scenario": "play", "entities": [],
            "words": text.split(), "bio_tags": ["O"] * len(text.split()), "wake_word_present": True,
            "duration": 1.0, "speaker": pseudonym(key, "acct", account),
            "device": pseudonym(key, "dev", f"SERIAL{dataset:02d}{k % 8:03d}"), "annotator": pseudonym(key, "ann", "a"),
            "locale": "en-US", "recorded_at": "2026-01-01T00:00:00Z",
        })
    return rows


def build_store(root: Path, datasets: int = 10, runs: int = 20, clips: int = 60, victim_in: int = 2) -> dict[str, Any]:
    """Write the store under `root` (cache, outputs, multirun, registry, inbox); returns its layout."""
    from datasets import Dataset, DatasetDict

    from pipeline import run_folder
    from pipeline.asr.lm import write_char_lm
    from pipeline.data.build import write_clip_list
    from pipeline.data.features import dataset_features
    from pipeline.data.privacy import key_id
    from pipeline.ops.corpus import utterance_pseudonym
    from pipeline.ops.registry import Registry

    key = KEY.encode()
    rng = np.random.default_rng(0)
    fingerprints = []
    split_rows: list[dict[str, list[dict[str, Any]]]] = []
    for d in range(datasets):
        rows = _rows(key, d, clips, d < victim_in, rng)
        # The victim's clips train (k < 3): they reach the weights and the LM.
        splits = {"train": [r for i, r in enumerate(rows) if i % 5 not in (3, 4) or i < 3],
                  "validation": [r for i, r in enumerate(rows) if i % 5 == 3 and i >= 3],
                  "test": [r for i, r in enumerate(rows) if i % 5 == 4 and i >= 3]}
        fingerprint = hashlib.sha256(f"dataset-{d}".encode()).hexdigest()[:20]
        folder = root / "cache" / "datasets" / fingerprint
        DatasetDict({s: Dataset.from_list(r, features=dataset_features()) for s, r in splits.items()}).save_to_disk(str(folder))
        (folder / "build_report.json").write_text(json.dumps({"fingerprint": fingerprint,
                                                              run_folder.REPORT_KEY_ID: key_id(key)}) + "\n")
        (folder / "quarantine.jsonl").write_text("")
        fingerprints.append(fingerprint)
        split_rows.append(splits)

    run_dirs = []
    for i in range(runs):
        d = i % datasets
        run = root / ("multirun/2026-01-01/00-00-00" if i >= runs - 4 else "outputs/2026-01-01") / f"run-{i:02d}"
        (run / "asr" / "checkpoints" / "step-000010").mkdir(parents=True)
        (run / "nlu").mkdir()
        weights = rng.integers(0, 255, size=2 * 2**20, dtype=np.uint8).tobytes()
        (run / "asr" / "model.safetensors").write_bytes(weights)
        (run / "asr" / "checkpoints" / "step-000010" / "model.safetensors").write_bytes(weights)
        (run / "nlu" / "model.safetensors").write_bytes(weights[: 2**20])
        write_char_lm(run / "asr" / "lm", [r["text"] for r in split_rows[d]["train"]], VOCAB, "|", 6)
        (run / "build_report.json").write_text(json.dumps({"fingerprint": fingerprints[d], run_folder.REPORT_KEY_ID: key_id(key),
                                                           "dataset_path": str(root / "cache" / "datasets" / fingerprints[d])}))
        write_clip_list(root / "cache" / "datasets" / fingerprints[d], run, key)  # as the data stage does
        (run / "predictions.jsonl").write_text("".join(json.dumps({
            "utterance_id": r["utterance_id"], "speaker": r["speaker"], "reference": r["text"],
            "hypothesis": r["text"]}) + "\n" for r in split_rows[d]["test"]))
        (run / "report.md").write_text("# Evaluation\n\n| clip | reference |\n|---|---|\n" + "".join(
            f"| {r['utterance_id']} | {r['text']} |\n" for r in split_rows[d]["test"]))
        (run / "metrics.json").write_text(json.dumps({"asr/wer": 0.5}))
        run_dirs.append(run)

    registry = Registry(root / "registry")
    for i in (0, 2):  # the first was trained on the victim's clips; the second (current) was not
        d = i % datasets
        trained = sorted({utterance_pseudonym(key, r["utterance_id"]) for s in ("train", "validation")
                          for r in split_rows[d][s]})
        registry.promote(run_dirs[i], {"model_id": f"model-{i}", "dataset_fingerprint": fingerprints[d],
                                       "metrics": {}, "trained_on": trained})
    (root / "inbox" / "deletions").mkdir(parents=True)
    (root / "inbox" / "deletions" / "request.jsonl").write_text(json.dumps({"account_id": VICTIM}) + "\n")
    affected = [r for i, r in enumerate(run_dirs) if i % datasets < victim_in]
    return {"fingerprints": fingerprints, "runs": run_dirs, "affected_runs": affected}


def environment(root: Path) -> dict[str, str]:
    env = {**os.environ, "PIPELINE_PSEUDONYM_KEY": KEY, "PIPELINE_CACHE_DIR": str(root / "cache"),
           "PIPELINE_INBOX": str(root / "inbox"), "PIPELINE_REGISTRY_DIR": str(root / "registry"),
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return env


def overrides(root: Path) -> list[str]:
    return [f"erase.outputs={root / 'outputs'}", f"erase.multirun={root / 'multirun'}"]


def tree_digest(folders: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.erase", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    check_common(parser, args)
    from datasets import disable_progress_bars

    disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template"
        started = time.perf_counter()
        layout = build_store(template, args.datasets, args.runs, args.clips)
        build_s = time.perf_counter() - started
        # The store does hold the account's data: the audit finds it (exit 3) before erasure.
        audit_before = subprocess.run([sys.executable, "-m", "pipeline.ops.audit", *overrides(template)], cwd=ROOT,
                                      env=environment(template), capture_output=True, text=True).returncode
        untouched = [r for r in layout["runs"] if r not in layout["affected_runs"]]
        seconds, audits = [], []
        for repeat in range(args.repeats):
            root = Path(tmp) / f"r{repeat}"
            shutil.copytree(template, root)
            before = tree_digest([root / r.relative_to(template) for r in untouched])
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pipeline.ops.erase", *overrides(root)], cwd=ROOT,
                                  env=environment(root), capture_output=True, text=True)
            seconds.append(time.perf_counter() - started)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            after = tree_digest([root / r.relative_to(template) for r in untouched])
            if before != after:
                print("an unaffected run was changed", file=sys.stderr)
                return 1
            audit = subprocess.run([sys.executable, "-m", "pipeline.ops.audit", *overrides(root)], cwd=ROOT,
                                   env=environment(root), capture_output=True, text=True)
            audits.append(audit.returncode)
            shutil.rmtree(root)
    result = {
        "datasets": args.datasets, "runs": args.runs, "clips_per_dataset": args.clips,
        "affected_runs": len(layout["affected_runs"]), "store_build_s": round(build_s, 2),
        "erase_s_median": round(statistics.median(seconds), 2), "erase_s_min": round(min(seconds), 2),
        "erase_s_max": round(max(seconds), 2), "repeats": args.repeats,
        "audit_exit_code_before": audit_before, "audit_exit_codes_after": audits, "cores": len(os.sched_getaffinity(0)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "erase.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
