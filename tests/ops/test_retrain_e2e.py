"""End to end, with the real stages on a tiny espeak-ng export: the promotion gate, a killed job,
the deletion audit, and a deletion that replaces the promoted model despite the gate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ops.in_process import run_main
from tests.tiny_config import TINY_JOB

REPO = Path(__file__).resolve().parents[2]
SENTENCES = [
    ("alexa play jazz music", "play_music", [("music_genre", "jazz")], True),
    ("alexa set an alarm for seven am", "alarm_set", [("time", "seven am")], True),
    ("alexa what is the weather in paris", "weather_query", [("place_name", "paris")], True),
    ("alexa turn off the lights", "iot_hue_lightoff", [], True),
    ("alexander went to the market", None, [], False),
    ("alexa play rock music", "play_music", [("music_genre", "rock")], True),
]
VOICES = ["en-us", "en-gb", "en-us+m3", "en-us+f2"]
# Small enough that one retraining run takes seconds; it learns nothing, which is fine here.
TINY = TINY_JOB


def _account(a: int) -> str:
    return f"amzn1.account.AF{a:04d}QXZ"


def _serial(a: int) -> str:
    return f"G090XX{a:07d}"


def _export(folder: Path, batch: str, accounts: range, per_account: int) -> list[dict]:
    """A canonical jsonl export spoken by espeak-ng, with raw-looking identifiers."""
    (folder / "audio").mkdir(parents=True)
    records = []
    for a in accounts:
        for k in range(per_account):
            text, intent, ents, wake = SENTENCES[(a + k) % len(SENTENCES)]
            utt = f"{batch}-a{a}-{k}"
            # A pitch of its own per account: people never record the same bytes, and erasure takes a
            # clip with a deleted clip's exact audio as a copy of it, whoever's id it carries.
            subprocess.run(["espeak-ng", "-v", VOICES[a % len(VOICES)], "-s", str(150 + 10 * k), "-p", str(30 + a),
                            "-w", str(folder / "audio" / f"{utt}.wav"), text], check=True)
            records.append({
                "utterance_id": utt, "audio": f"audio/{utt}.wav", "transcript": text, "intent": intent,
                "entities": [{"type": t, "value": v} for t, v in ents], "wake_word_present": wake,
                "device_serial": _serial(a), "account_id": _account(a), "annotator_id": f"ann-{a % 3:03d}",
                "recorded_at": "2026-01-01T00:00:00Z", "flags": [], "locale": "en-US",
            })
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _env(tmp: Path) -> dict[str, str]:
    # This key puts 6/3/3 of the 12 first accounts in train/validation/test (splits are keyed).
    return {**os.environ, "PIPELINE_PSEUDONYM_KEY": "e2e-test-key-9", "PIPELINE_CACHE_DIR": str(tmp / "cache"),
            "PIPELINE_INBOX": str(tmp / "inbox"), "PIPELINE_REGISTRY_DIR": str(tmp / "registry"),
            "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _command(tmp: Path, name: str, *overrides: str) -> list[str]:
    # W&B only where the test reads it back (overrides come last and win).
    return [sys.executable, "retrain.py", f"hydra.run.dir={tmp / 'runs' / name}", *TINY, "logger=none",
            *_roots(tmp), *overrides]


def _roots(tmp: Path) -> list[str]:
    """Erasure and the audit look at this test's run folders, not the checkout's outputs/."""
    return [f"erase.outputs={tmp / 'runs'}", f"erase.multirun={tmp / 'multirun'}"]


def _retrain(tmp: Path, name: str, *overrides: str) -> tuple[int, dict]:
    result = subprocess.run(_command(tmp, name, *overrides), cwd=REPO, env=_env(tmp),
                            capture_output=True, text=True, timeout=300)
    decision_file = tmp / "runs" / name / "decision.json"
    assert decision_file.is_file(), result.stderr[-3000:]
    return result.returncode, json.loads(decision_file.read_text())


def _registry_snapshot(registry: Path) -> dict[str, bytes]:
    return {str(p.relative_to(registry)): p.read_bytes() for p in sorted(registry.rglob("*"))
            if p.is_file() and p.name != "retrain.lock"}


def _audit(tmp: Path) -> str:
    """`python -m pipeline.ops.audit`, its main run in this process (tests/ops/test_erase_e2e.py runs the command)."""
    from pipeline.ops import audit

    result = run_main(audit.main, _roots(tmp), REPO, _env(tmp))
    # 3: traces of deleted data found (before the next retraining erases them), 0: clean.
    assert result.returncode in (0, 3), result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_gate_kill_recovery_and_deletion_beating_the_gate(tmp_path: Path) -> None:
    from pipeline.ops.corpus import utterance_pseudonym
    from pipeline.ops.registry import Registry
    from pipeline.tracking.wandb_offline import read_offline_run, transaction_logs

    key = _env(tmp_path)["PIPELINE_PSEUDONYM_KEY"].encode()
    registry = Registry(tmp_path / "registry")
    _export(tmp_path / "inbox" / "b1", "b1", range(12), 3)

    # 1. First run: nothing promoted yet, so the candidate is promoted. Logged to offline W&B.
    code, first = _retrain(tmp_path, "r1", "logger=wandb")
    assert (code, first["decision"]) == (0, "promoted"), first
    m1 = first["candidate"]["model_id"]
    assert registry.current()["model_id"] == m1 and registry.has_weights(m1)
    record = registry.record(m1)
    assert record["dataset_fingerprint"] == first["candidate"]["dataset_fingerprint"]
    assert "asr/wer" in record["metrics"] and len(record["trained_on"]) > 0
    # The key its pseudonyms were made with, by id (without it a key change let them match nothing).
    from pipeline.data.privacy import key_id
    assert record["key_id"] == key_id(key)
    # No raw identifier anywhere the job wrote: run folder (W&B files included), registry, dataset.
    raw = [_account(a).encode() for a in range(12)] + [_serial(a).encode() for a in range(12)] + [b"ann-00"]
    written = [p for root in (tmp_path / "runs", tmp_path / "registry", tmp_path / "cache" / "datasets")
               for p in root.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in written)
    leaks = [(str(p), r) for p in written for r in raw if r in p.read_bytes()]
    assert leaks == []
    # What the real stages logged to W&B, read back from the offline transaction log.
    [log] = transaction_logs(tmp_path / "runs" / "r1" / "wandb")
    run = read_offline_run(log)
    assert run.config["dataset_fingerprint"] == first["candidate"]["dataset_fingerprint"]
    assert {"data", "asr", "nlu", "eval", "retrain"} <= set(run.tags) and run.group == "retrain"
    assert any("asr/train_loss" in row and "asr/step" in row for row in run.history)
    assert any("nlu/train_loss" in row and "nlu/step" in row for row in run.history)
    assert {"asr/wer", "wake/frr", "slu/slu_f1", "nlu/intent_accuracy"} <= set(run.summary)
    assert {"dataset", "asr-model", "nlu-model", "evaluation"} <= set(run.artifacts)

    # 2. Nothing new: nothing to do, exit 0, no training.
    code, again = _retrain(tmp_path, "r2")
    assert (code, again["decision"]) == (0, "nothing_to_do")

    # 3. A new batch arrives; the job is killed mid-training: registry untouched, lock released.
    _export(tmp_path / "inbox" / "b2", "b2", range(12, 16), 2)
    before = _registry_snapshot(tmp_path / "registry")
    job = subprocess.Popen(_command(tmp_path, "r3-killed"), cwd=REPO, env=_env(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # config.yaml appears once the batch is taken into the corpus and the stages start.
    while not (tmp_path / "runs" / "r3-killed" / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert _registry_snapshot(tmp_path / "registry") == before

    # ... and the next run, with a gate no model can pass, rejects the candidate (exit 3).
    code, rejected = _retrain(tmp_path, "r3", "retrain.gate.wer.max_increase=-1")
    assert (code, rejected["decision"]) == (3, "rejected"), rejected
    wer_check = next(g for g in rejected["gate"] if g["metric"] == "asr/wer")
    assert wer_check["passed"] is False and wer_check["incumbent"] == rejected["incumbent"]["metrics"]["asr/wer"]
    # False accepts per hour are gated beside the false rejects, on their paired interval.
    fa_check = next(g for g in rejected["gate"] if g["metric"] == "wake/fa_per_hour")
    assert fa_check["ci_low"] is not None and fa_check["candidate"] == rejected["candidate"]["metrics"]["wake/fa_per_hour"]
    assert registry.current()["model_id"] == m1

    # A person reviews the rejected candidate and promotes exactly it (no training), then rolls back.
    c3 = rejected["candidate"]["model_id"]
    code, by_hand = _retrain(tmp_path, "r3-promote", f"retrain.promote='{c3}'")
    assert (code, by_hand["decision"]) == (0, "promoted") and registry.current()["model_id"] == c3, by_hand
    weights = sorted((tmp_path / "runs" / "r3" / "asr").glob("*.safetensors"))
    assert weights and all((registry.model_dir(c3) / "asr" / w.name).read_bytes() == w.read_bytes() for w in weights)
    code, back = _retrain(tmp_path, "r3-rollback", "retrain.rollback=true")
    assert (code, back["decision"]) == (0, "rolled_back") and registry.current()["model_id"] == m1, back

    # 4. An account the promoted model was trained on asks for deletion: the audit names the model.
    trained = set(record["trained_on"])
    victim = next(a for a in range(12) if {utterance_pseudonym(key, f"b1-a{a}-{k}") for k in range(3)} <= trained)
    (tmp_path / "inbox" / "deletions").mkdir()
    (tmp_path / "inbox" / "deletions" / "req.jsonl").write_text(json.dumps({"account_id": _account(victim)}) + "\n")
    report = _audit(tmp_path)
    assert m1 in report and "3 deleted utterance(s)" in report and _account(victim) not in report

    # The next run replaces it, past the same impossible gate, and retires it without its weights.
    code, replaced = _retrain(tmp_path, "r4", "retrain.gate.wer.max_increase=-1")
    assert (code, replaced["decision"]) == (0, "promoted"), replaced
    assert "deletion beats the gate" in replaced["reason"]
    m2 = replaced["candidate"]["model_id"]
    assert registry.current()["model_id"] == m2
    old = registry.record(m1)
    assert old["status"] == "retired" and old["retired_reason"] == "deletion" and not registry.has_weights(m1)
    deleted = {utterance_pseudonym(key, f"b1-a{victim}-{k}") for k in range(3)}
    assert not deleted & set(registry.record(m2)["trained_on"])
    assert "no model" in _audit(tmp_path)
    # The candidate promoted by hand held the same account: neither model comes back.
    assert not registry.has_weights(c3)
    code, refused = _retrain(tmp_path, "r5-rollback", "retrain.rollback=true")
    assert code == 2 and "no earlier promoted model" in refused["reason"], refused
    decisions = [d["decision"] for d in registry.decisions()]
    assert decisions == ["promoted", "nothing_to_do", "rejected", "promoted", "rolled_back", "promoted",
                         "config_error"]
