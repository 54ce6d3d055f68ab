"""End to end with the real stages: train, retrain, a deletion request for one account, retrain
again; then a byte scan of the whole project tree (cache, run folders, W&B files, registry) and the
audit must find nothing of that account's clips, where before the second retraining both found
them. Every file the jobs wrote must be claimed by the inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.ops.in_process import run_main
from tests.tiny_config import TINY_JOB

REPO = Path(__file__).resolve().parents[2]
# Small enough that each job takes seconds; the models learn nothing, which is fine here.
TINY = TINY_JOB
SENTENCES = [
    ("alexa play jazz music", "play_music", [("music_genre", "jazz")], True),
    ("alexa set an alarm for seven am", "alarm_set", [("time", "seven am")], True),
    ("alexa what is the weather in paris", "weather_query", [("place_name", "paris")], True),
    ("alexa turn off the lights", "iot_hue_lightoff", [], True),
    ("alexander went to the market", None, [], False),
]
# Spoken only by the account that asks for deletion, so any copy of these words is theirs.
VICTIM_SENTENCES = [
    ("alexa order quokka biscuits from zanzibar", "takeaway_order", [], True),
    ("alexa remind me to water the kumquat tree", "reminder_set", [], True),
    ("alexa ring my aunt philippa in reykjavik", "calling", [], True),
]
VOICES = ["en-us", "en-gb", "en-us+m3", "en-us+f2"]


def account(a: int) -> str:
    return f"amzn1.account.AF{a:04d}QXZ"


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PIPELINE_PSEUDONYM_KEY": "e2e-test-key-9", "PIPELINE_CACHE_DIR": str(tmp / "cache"),
            "PIPELINE_INBOX": str(tmp / "inbox"), "PIPELINE_REGISTRY_DIR": str(tmp / "registry"),
            "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def export_batch(folder: Path, batch: str, accounts: range, per_account: int, victim: int) -> list[str]:
    """A canonical export spoken by espeak-ng; returns the victim's transcripts."""
    (folder / "audio").mkdir(parents=True)
    records = []
    for a in accounts:
        for k in range(per_account):
            text, intent, ents, wake = VICTIM_SENTENCES[k] if a == victim else SENTENCES[(a + k) % len(SENTENCES)]
            utt = f"{batch}-a{a}-{k}"
            subprocess.run(["espeak-ng", "-v", VOICES[a % len(VOICES)], "-s", str(150 + 10 * k),
                            "-w", str(folder / "audio" / f"{utt}.wav"), text], check=True)
            records.append({
                "utterance_id": utt, "audio": f"audio/{utt}.wav", "transcript": text, "intent": intent,
                "entities": [{"type": t, "value": v} for t, v in ents], "wake_word_present": wake,
                "device_serial": f"G090XX{a:07d}", "account_id": account(a), "annotator_id": f"ann-{a % 3:03d}",
                "recorded_at": "2026-01-01T00:00:00Z", "flags": [], "locale": "en-US",
            })
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [s[0] for s in VICTIM_SENTENCES[:per_account]]


def _run(tmp: Path, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env(tmp), capture_output=True, text=True,
                          timeout=timeout)


def _roots(tmp: Path) -> list[str]:
    return [f"erase.outputs={tmp / 'runs'}", f"erase.multirun={tmp / 'multirun'}"]


def _retrain(tmp: Path, name: str, *extra: str) -> dict:
    done = _run(tmp, ["retrain.py", f"hydra.run.dir={tmp / 'runs' / name}", *TINY, "logger=none", *_roots(tmp), *extra])
    decision = tmp / "runs" / name / "decision.json"
    assert decision.is_file(), done.stderr[-3000:]
    return json.loads(decision.read_text())


def _unclaimed(tmp: Path) -> list[Path]:
    """Files the jobs wrote that no row of the inventory claims."""
    from pipeline.ops.config import load_config
    from pipeline.ops.inventory import Roots, unclaimed

    return unclaimed(Roots.from_cfg(load_config(_roots(tmp) + [f"retrain.registry_dir={tmp / 'registry'}",
                                                              f"retrain.inbox={tmp / 'inbox'}",
                                                              f"cache_dir={tmp / 'cache'}"])))


def _audit(tmp: Path, child: bool = False) -> tuple[int, str]:
    """`python -m pipeline.ops.audit`: in a child process where `child`, else its main in this one."""
    from pipeline.ops import audit

    if child:
        done = _run(tmp, ["-m", "pipeline.ops.audit", *_roots(tmp)], timeout=180)
    else:
        done = run_main(audit.main, _roots(tmp), REPO, env(tmp))
    assert done.returncode in (0, 3), done.stderr[-2000:]
    return done.returncode, done.stdout


def _needles(tmp: Path, victim_speaker: str, sentences: list[str], wavs: list[Path]) -> dict[str, list[bytes]]:
    """Byte strings only the victim's clips contain: file bytes, FLAC as stored, decoded samples, text."""
    import io

    import pyarrow as pa
    import soundfile as sf

    needles: dict[str, list[bytes]] = {"file bytes": [], "stored audio": [], "decoded samples": [],
                                       "transcript": [s.encode() for s in sentences]}
    for wav in wavs:
        data = wav.read_bytes()
        needles["file bytes"].append(data[len(data) // 2: len(data) // 2 + 256])
    for arrow in (tmp / "cache" / "datasets").rglob("*.arrow"):
        table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
        for speaker, audio in zip(table.column("speaker").to_pylist(), table.column("audio").to_pylist()):
            if speaker != victim_speaker:
                continue
            flac = audio["bytes"]
            needles["stored audio"].append(flac[len(flac) // 2: len(flac) // 2 + 256])
            samples, _ = sf.read(io.BytesIO(flac), dtype="int16")
            middle = samples[len(samples) // 2: len(samples) // 2 + 128]
            needles["decoded samples"] += [middle.tobytes(), (middle / 32768.0).astype(np.float32).tobytes()]
    assert all(needles.values()), {k: len(v) for k, v in needles.items()}
    return needles


def _where(path: Path, tmp: Path) -> str:
    parts = path.relative_to(tmp).parts
    if parts[0] == "runs":
        return f"run {parts[2] if len(parts) > 3 else 'file'}"
    if parts[:2] == ("cache", "wandb"):
        return "W&B staging/cache"
    return "/".join(parts[:2])


def _byte_scan(tmp: Path, needles: dict[str, list[bytes]]) -> Counter:
    """(what, where) -> files: every file under the project tree, read whole."""
    found: Counter = Counter()
    for path in tmp.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.parent.name == "deletions":
            continue
        data = path.read_bytes()
        for what, values in needles.items():
            if any(v in data for v in values):
                found[(what, _where(path, tmp))] += 1
    return found


def _lm_holds(tmp: Path, sentences: list[str]) -> list[Path]:
    """Character LMs holding every 6-gram of one of the sentences (how pipeline.asr.lm stores them)."""
    held = []
    for arpa in tmp.rglob("char_lm.arpa"):
        text = arpa.read_text()
        grams = {line.split("\t")[1] for line in text.split("\\6-grams:")[-1].splitlines() if "\t" in line}
        for s in sentences:
            seq = ["<s>", *s.replace(" ", "|"), "</s>"]
            if all(" ".join(seq[i:i + 6]) in grams for i in range(len(seq) - 5)):
                held.append(arpa)
    return held


@pytest.mark.slow
def test_deleted_account_leaves_no_copy_after_retraining(tmp_path: Path) -> None:
    from pipeline.data.privacy import pseudonym
    from pipeline.data.splits import assign_split

    key = env(tmp_path)["PIPELINE_PSEUDONYM_KEY"].encode()
    # The victim trains (so the weights and the LM hold their sentences).
    victim = next(a for a in range(12) if assign_split(key, pseudonym(key, "acct", account(a)), 0.25, 0.25) == "train")
    sentences = export_batch(tmp_path / "inbox" / "b1", "b1", range(12), 3, victim=victim)

    # 1. train.py on the batch's export, logged to offline W&B; 2. the first retraining (W&B too).
    trained = _run(tmp_path, ["train.py", f"hydra.run.dir={tmp_path / 'runs' / 'train'}", "data=jsonl",
                              f"data.path={tmp_path / 'inbox' / 'b1' / 'annotations.jsonl'}", *TINY, "logger=wandb"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    first = _retrain(tmp_path, "r1", "logger=wandb")
    assert first["decision"] == "promoted", first
    assert list((tmp_path / "cache" / "wandb" / "data" / "artifacts" / "staging").iterdir())
    wavs = sorted((tmp_path / "cache" / "retrain" / "corpus" / "batches" / "b1" / "audio").glob(f"b1-a{victim}-*.wav"))
    needles = _needles(tmp_path, pseudonym(key, "acct", account(victim)), sentences, wavs)

    # 3. The account asks for deletion: before the next retraining, both the scan and the audit find it.
    (tmp_path / "inbox" / "deletions").mkdir()
    (tmp_path / "inbox" / "deletions" / "req.jsonl").write_text(json.dumps({"account_id": account(victim)}) + "\n")
    before = _byte_scan(tmp_path, needles)
    code, report = _audit(tmp_path)
    print("\nbyte scan before erasure:", dict(sorted(before.items())))
    print(report)
    assert code == 3 and account(victim) not in report
    assert {"file bytes", "stored audio", "transcript"} <= {what for what, _ in before}
    assert len(_lm_holds(tmp_path, sentences)) >= 3  # train's, r1's and the registered model's LM

    # 4. Retraining again replaces the model and erases every copy.
    second = _retrain(tmp_path, "r2")
    assert second["decision"] == "promoted" and "deletion beats the gate" in second["reason"], second
    erasure = second["erasure"]
    print("erasure:", json.dumps(erasure, sort_keys=True))
    assert erasure["removed"]["cached dataset"] == 2 and erasure["removed"]["registry model"] == 1
    after = _byte_scan(tmp_path, needles)
    code, report = _audit(tmp_path)
    print("byte scan after erasure:", dict(after))
    print(report)
    assert after == Counter() and _lm_holds(tmp_path, sentences) == []
    assert code == 0, report
    # Erased runs are marked so `make sync` refuses them; nothing the jobs wrote is outside the inventory.
    assert (tmp_path / "runs" / "train" / "DO_NOT_SYNC").is_file() and (tmp_path / "runs" / "r1" / "DO_NOT_SYNC").is_file()
    from pipeline.ops import sync as sync_command

    sync = run_main(sync_command.main, [str(tmp_path / "runs"), "--dry-run"], REPO, env(tmp_path))
    assert f"refusing {tmp_path / 'runs' / 'train'}" in sync.stdout
    assert _unclaimed(tmp_path) == []


@pytest.mark.slow
def test_the_review_and_the_demos_planted_errors_are_erased_with_the_clip(tmp_path: Path) -> None:
    """The review's queue quotes transcripts, the planted-error manifest is copied into the run, and
    the demo's label-noise export copies its annotations: no row of the inventory named them, so a
    deleted clip stayed in all three and the audit failed after erase."""

    run = tmp_path / "runs" / "smoke"
    done = _run(tmp_path, ["train.py", "debug=smoke", "data.demo.label_noise=0.05", "stages=[data,asr,nlu,eval,review]",
                           f"hydra.run.dir={run}", "logger=none"], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    queued = [json.loads(line)["utterance_id"] for line in (run / "review" / "queue.jsonl").read_text().splitlines()]
    assert (run / "label_noise.jsonl").is_file() and queued
    demo = next((tmp_path / "cache" / "demo").iterdir())
    assert list(demo.glob("annotations.noise-*.jsonl"))
    (tmp_path / "inbox" / "deletions").mkdir(parents=True)
    (tmp_path / "inbox" / "deletions" / "req.jsonl").write_text(json.dumps({"utterance_id": queued[0]}) + "\n")
    assert _audit(tmp_path, child=True)[0] == 3  # the command as `make audit-deletions` runs it

    erased = _run(tmp_path, ["-m", "pipeline.ops.erase", *_roots(tmp_path)])
    assert erased.returncode == 0, erased.stderr[-3000:]
    assert not (run / "review").exists() and not (run / "label_noise.jsonl").exists()
    assert not list(demo.glob("annotations.noise-*.jsonl")) and not list(demo.glob("label_noise.*.jsonl"))
    code, report = _audit(tmp_path)
    assert code == 0, report
    assert _unclaimed(tmp_path) == []


@pytest.mark.slow
def test_a_copy_of_a_deleted_recording_in_a_new_batch_never_trains(tmp_path: Path) -> None:
    """A batch brings a deleted person's recording again, under another id and account. Retraining used
    to find the copy only in its erasure after the decision: it trained on it, promoted that model and
    then erased it, leaving nothing to serve. Now the copy is tombstoned before the build."""
    from pipeline.data.privacy import pseudonym, utterance_pseudonym
    from pipeline.data.splits import assign_split
    from pipeline.ops.registry import Registry

    key = env(tmp_path)["PIPELINE_PSEUDONYM_KEY"].encode()
    victim = next(a for a in range(12) if assign_split(key, pseudonym(key, "acct", account(a)), 0.25, 0.25) == "train")
    export_batch(tmp_path / "inbox" / "b1", "b1", range(12), 3, victim=victim)
    assert _retrain(tmp_path, "r1")["decision"] == "promoted"

    batch = tmp_path / "inbox" / "b2"
    (batch / "audio").mkdir(parents=True)
    original = tmp_path / "cache" / "retrain" / "corpus" / "batches" / "b1" / "audio" / f"b1-a{victim}-0.wav"
    (batch / "audio" / "b2-copy.wav").write_bytes(original.read_bytes())
    subprocess.run(["espeak-ng", "-v", "en-gb", "-s", "170", "-p", "70", "-w", str(batch / "audio" / "b2-new.wav"),
                    SENTENCES[0][0]], check=True)
    other = {"device_serial": "G090XX9999999", "account_id": account(99), "annotator_id": "ann-001",
             "recorded_at": "2026-01-02T00:00:00Z", "flags": [], "locale": "en-US", "wake_word_present": True}
    records = [{"utterance_id": "b2-copy", "audio": "audio/b2-copy.wav", "transcript": VICTIM_SENTENCES[0][0],
                "intent": VICTIM_SENTENCES[0][1], "entities": [], **other},
               {"utterance_id": "b2-new", "audio": "audio/b2-new.wav", "transcript": SENTENCES[0][0],
                "intent": SENTENCES[0][1], "entities": [{"type": "music_genre", "value": "jazz"}], **other}]
    (batch / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "inbox" / "deletions").mkdir()
    (tmp_path / "inbox" / "deletions" / "req.jsonl").write_text(json.dumps({"account_id": account(victim)}) + "\n")

    second = _retrain(tmp_path, "r2")
    assert second["decision"] == "promoted", second
    registry = Registry(tmp_path / "registry")
    current = registry.current()
    copy = utterance_pseudonym(key, "b2-copy")
    assert copy not in current["trained_on"] and utterance_pseudonym(key, "b2-new") in current["trained_on"]
    assert registry.has_weights(current["model_id"]) and current["model_id"] == second["candidate"]["model_id"]
    receipts = sorted((tmp_path / "registry" / "erasure" / "receipts").glob("*.json"))
    assert copy in json.loads(receipts[-1].read_text())["audio_copies"]
    code, report = _audit(tmp_path)
    assert code == 0, report
