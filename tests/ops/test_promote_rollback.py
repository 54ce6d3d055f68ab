"""`make promote MODEL=<id>` and `make rollback` (retrain.promote / retrain.rollback): the promoted
model changes without training, never to a model trained on deleted data, and every outcome is a
decision like a scheduled run's."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.ops.corpus import pseudonym_key, utterance_pseudonym
from pipeline.ops.promote import write_candidate
from pipeline.ops.registry import Registry, write_json_atomic
from pipeline.ops.retrain import EXIT_CONFIG, EXIT_OK, run_retrain
from pipeline.runtime import PipelineError

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp: Path, **retrain: object) -> OmegaConf:
    (tmp / "inbox").mkdir(exist_ok=True)
    return OmegaConf.create({
        "stages": ["data", "asr", "nlu", "eval"], "seed": 1, "run_dir": str(tmp / "job"),
        "cache_dir": str(tmp / "cache"),
        "privacy": {"key_env": "NO_SUCH_ENV_FOR_TEST", "key_file": str(tmp / "cache" / "pseudonym.key")},
        "logger": {**OmegaConf.load(REPO / "conf" / "logger" / "wandb.yaml"), "name": "none"},
        "retrain": {"inbox": str(tmp / "inbox"), "corpus_dir": str(tmp / "corpus"),
                    "registry_dir": str(tmp / "registry"), "force": False, "promote": None, "rollback": False,
                    "gate": {"wer": {"metric": "asr/wer", "max_increase": 0.005}}, "gate_policy": "not_worse",
                    **retrain},
        "erase": {"cache_root": str(tmp / "cache"), "outputs": str(tmp / "outputs"), "multirun": str(tmp / "multirun"),
                  "receipts_dir": str(tmp / "registry" / "erasure"), "wandb_online": False},
    })


def _run(tmp: Path, name: str) -> Path:
    """A finished training run's model folders, as the stages leave them."""
    run = tmp / "runs" / name
    for part in ("asr", "nlu"):
        (run / part / "checkpoints").mkdir(parents=True)
        (run / part / "model.safetensors").write_bytes(f"{name}-{part}".encode())
    return run


def _record(key: bytes, model_id: str, run: Path, utterances: list[str]) -> dict:
    return {"model_id": model_id, "dataset_fingerprint": "fp-" + model_id, "metrics": {"asr/wer": 0.2},
            "run_dir": str(run), "state": "state-" + model_id,
            "trained_on": sorted(utterance_pseudonym(key, u) for u in utterances)}


def _rejected(registry: Registry, key: bytes, tmp: Path, model_id: str, utterances: list[str]) -> Path:
    """What a run the gate rejected leaves: its models, candidate.json and its decision line."""
    run = _run(tmp, model_id)
    record = _record(key, model_id, run, utterances)
    write_candidate(run, record)
    registry.log_decision({"decision": "rejected", "reason": "asr/wer 0.2000 -> 0.2100: rose by 0.0100",
                           "run_dir": str(run), "state": record["state"],
                           "candidate": {k: record[k] for k in ("model_id", "dataset_fingerprint", "metrics")}})
    return run


def _do(tmp: Path, **retrain: object) -> tuple[int, dict]:
    code = run_retrain(_cfg(tmp, **retrain))
    return code, json.loads((tmp / "job" / "decision.json").read_text())


def test_promote_a_rejected_candidate_then_roll_back(tmp_path: Path) -> None:
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    registry.promote(_run(tmp_path, "m1"), _record(key, "m1", tmp_path / "runs" / "m1", ["u1", "u2"]))
    registry.log_decision({"decision": "promoted", "state": "state-m1", "candidate": {"model_id": "m1"}})
    c2 = _rejected(registry, key, tmp_path, "c2", ["u2", "u3"])

    code, decision = _do(tmp_path, promote="c2")
    assert (code, decision["decision"], decision["by_hand"]) == (EXIT_OK, "promoted", True), decision
    assert registry.current()["model_id"] == "c2" and decision["state"] == "state-c2"
    # Exactly the reviewed weights, not a new training run (nor its checkpoints).
    assert (registry.model_dir("c2") / "asr" / "model.safetensors").read_bytes() == b"c2-asr"
    assert not (registry.model_dir("c2") / "asr" / "checkpoints").exists()
    assert registry.record("m1")["retired_reason"] == "replaced" and registry.has_weights("m1")
    assert not (c2 / "decision.json").exists(), "the promote job writes into its own folder only"

    code, decision = _do(tmp_path, rollback=True)
    assert (code, decision["decision"]) == (EXIT_OK, "rolled_back"), decision
    assert registry.current()["model_id"] == "m1" and registry.history() == ["m1", "c2", "m1"]
    assert registry.record("c2")["retired_reason"] == "rolled_back" and registry.has_weights("c2")
    assert registry.record("m1")["status"] == "promoted" and "retired_reason" not in registry.record("m1")

    # A model rolled back from is not rolled back to; promoting it by hand still works.
    code, decision = _do(tmp_path, rollback=True)
    assert code == EXIT_CONFIG and "c2 (rolled back from before)" in decision["reason"]
    code, decision = _do(tmp_path, promote="c2")
    assert (code, registry.current()["model_id"]) == (EXIT_OK, "c2"), decision
    assert registry.recover() == [], "every step left the registry consistent"

    log = [d["decision"] for d in registry.decisions()]
    assert log == ["promoted", "rejected", "promoted", "rolled_back", "config_error", "promoted"]


def _promoted_twice(tmp: Path) -> Registry:
    """m1 promoted, then replaced by m2, each decision logged."""
    key = pseudonym_key(_cfg(tmp).privacy)
    registry = Registry(tmp / "registry")
    for model_id in ("m1", "m2"):
        registry.promote(_run(tmp, model_id), _record(key, model_id, tmp / "runs" / model_id, ["u1"]))
        registry.log_decision({"decision": "promoted", "state": f"state-{model_id}", "candidate": {"model_id": model_id}})
    return registry


def _blocked(path: Path) -> Path:
    """A folder where `write_text_atomic` puts its temp file for `path`: the write fails there, as
    a job killed at that step would stop."""
    block = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    block.mkdir()
    return block


def test_a_rollback_killed_before_promoted_json_leaves_the_old_record(tmp_path: Path) -> None:
    """Before the fix: the rolled-back-to model's record was rewritten first, so a job killed before
    promoted.json changed left m1 `replaces: m2`, a promotion that never happened, and recovery kept it."""
    registry = _promoted_twice(tmp_path)
    before = registry.record("m1")
    block = _blocked(registry.root / "promoted.json")
    with pytest.raises(OSError):
        registry.repromote("m1", "rolled_back")
    block.rmdir()
    assert registry.current()["model_id"] == "m2" and registry.history() == ["m1", "m2"]
    assert registry.record("m1") == before, "the record of a model not promoted again is as it was"
    assert registry.recover() == ["dropped the new record of m1, whose promotion never happened"]
    assert registry.record("m1") == before and registry.record("m2")["status"] == "promoted"
    assert registry.recover() == []


def test_a_rollback_killed_after_promoted_json_is_finished_by_recovery(tmp_path: Path) -> None:
    registry = _promoted_twice(tmp_path)
    # Killed after the switch, before the record moved: the steps of `repromote` up to the switch.
    block = _blocked(registry.root / "promoted.json")
    with pytest.raises(OSError):
        registry.repromote("m1", "rolled_back")
    block.rmdir()
    write_json_atomic(registry.root / "promoted.json", {"model_id": "m1", "history": ["m1", "m2", "m1"]})
    assert registry.recover() == ["wrote the record of m1, promoted again by a job killed before writing it",
                                  "retired m2 (rolled_back)"]
    m1, m2 = registry.record("m1"), registry.record("m2")
    assert (m1["status"], m1["replaces"], "retired_reason" in m1) == (
        "promoted", {"model_id": "m2", "reason": "rolled_back"}, False)
    assert (m2["status"], m2["retired_reason"], m2["replaced_by"]) == ("retired", "rolled_back", "m1")
    assert registry.recover() == []
    # Killed while retiring the model it replaced: recovery retires it.
    block = _blocked(registry.models / "m1" / "record.json")
    with pytest.raises(OSError):
        registry.repromote("m2", "replaced")
    block.rmdir()
    assert registry.current()["model_id"] == "m2" and registry.record("m2")["replaces"]["model_id"] == "m1"
    assert registry.recover() == ["retired m1 (replaced)"]
    assert registry.record("m1")["replaced_by"] == "m2" and registry.recover() == []


def test_a_model_id_with_a_slash_is_read_as_the_id_or_refused(tmp_path: Path) -> None:
    """`make promote MODEL=<id>/`, as a shell completes the registry's folder: promoted.json named
    `<id>/`, and the next job's recovery retired the model it was serving."""
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    for model_id in ("m1", "m2"):
        registry.promote(_run(tmp_path, model_id), _record(key, model_id, tmp_path / "runs" / model_id, ["u1"]))
    code, decision = _do(tmp_path, promote="m1/")
    assert (code, registry.current()["model_id"], registry.history()) == (EXIT_OK, "m1", ["m1", "m2", "m1"]), decision
    assert registry.recover() == [] and registry.record("m1")["status"] == "promoted"
    for bad in ("models/m2", "../m2", "/"):
        code, decision = _do(tmp_path, promote=bad)
        assert code == EXIT_CONFIG and decision["reason"].startswith(f"MODEL={bad!r} is no model id"), decision
    assert registry.current()["model_id"] == "m1"


def test_never_back_to_deleted_data_or_missing_weights(tmp_path: Path) -> None:
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    registry.promote(_run(tmp_path, "m1"), _record(key, "m1", tmp_path / "runs" / "m1", ["u1"]))
    registry.promote(_run(tmp_path, "m2"), _record(key, "m2", tmp_path / "runs" / "m2", ["u2"]))
    registry.promote(_run(tmp_path, "m3"), _record(key, "m3", tmp_path / "runs" / "m3", ["u3"]),
                     retire_reason="deletion")  # m2 was trained on deleted data: weights gone
    c4 = _rejected(registry, key, tmp_path, "c4", ["u1", "u4"])
    c5 = _rejected(registry, key, tmp_path, "c5", ["u5"])
    (tmp_path / "inbox" / "deletions").mkdir(parents=True)
    (tmp_path / "inbox" / "deletions" / "r.jsonl").write_text(json.dumps({"utterance_id": "u1"}) + "\n")

    # Rolling back skips m2 (weights deleted) and m1 (a deletion request waits for u1).
    code, decision = _do(tmp_path, rollback=True)
    assert code == EXIT_CONFIG and registry.current()["model_id"] == "m3"
    assert "m2 (retired for deletion, weights deleted)" in decision["reason"]
    assert "m1 (trained on data with a deletion request)" in decision["reason"]
    for model_id, why in [("c4", "trained on 1 utterance(s) with a deletion request"),
                          ("m1", "trained on 1 utterance(s) with a deletion request"),
                          ("m2", "weights are gone"), ("m3", "already the promoted model"),
                          ("c9", "no rejected candidate")]:
        code, decision = _do(tmp_path, promote=model_id)
        assert code == EXIT_CONFIG and why in decision["reason"], (model_id, decision)
    for part in ("asr", "nlu"):  # erased, or the run folder was cleaned up
        for path in sorted((c5 / part).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (c5 / part).rmdir()
    code, decision = _do(tmp_path, promote="c5")
    assert code == EXIT_CONFIG and "no longer holds the model" in decision["reason"]
    code, decision = _do(tmp_path, promote="c4", rollback=True)
    assert code == EXIT_CONFIG and "exclusive" in decision["reason"]
    assert registry.current()["model_id"] == "m3" and c4.is_dir()
    assert [d["decision"] for d in registry.decisions()][-8:] == ["config_error"] * 8


def test_a_damaged_registry_file_is_named(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    registry.root.mkdir()
    (registry.root / "promoted.json").write_text("{bad")
    with pytest.raises(PipelineError, match=r"^registry file .*promoted\.json cannot be read \(.*\); restore it"):
        registry.current()
    (registry.root / "promoted.json").write_text("[]")
    with pytest.raises(PipelineError, match=r"promoted\.json holds no JSON object"):
        registry.current()


def test_a_damaged_decision_line_is_named_and_the_next_decision_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """A line cut short stopped every job with a bare JSONDecodeError naming no file, and each job's
    decision was appended onto it, so the damage never went away."""
    registry = Registry(tmp_path / "registry")
    registry.log_decision({"decision": "promoted", "candidate": {"model_id": "m1"}})
    with open(registry.root / "decisions.jsonl", "a") as f:
        f.write('{"decision": "prom')
    code, decision = _do(tmp_path, promote="c9")
    assert code == EXIT_CONFIG, decision
    assert re.fullmatch(r"registry file .*decisions\.jsonl line 2 is not a JSON object \(Unterminated string .*\); "
                        r"restore the file from a backup, or remove the line .*", decision["reason"]), decision["reason"]
    lines = (registry.root / "decisions.jsonl").read_text().splitlines()
    assert lines[1] == '{"decision": "prom' and json.loads(lines[2])["decision"] == "config_error"
    lines.pop(1)  # what the operator does
    (registry.root / "decisions.jsonl").write_text("\n".join(lines) + "\n")
    assert [d["decision"] for d in registry.decisions()] == ["promoted", "config_error"]


def test_a_promotion_whose_job_was_killed_before_logging_it_is_logged_by_the_next_job(tmp_path: Path) -> None:
    """promoted.json switched to the new model and the job died before its decision line: the model
    was in no decision, and the next job, finding no decision for that data, trained it again."""
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    run = _run(tmp_path, "m1")
    registry.promote(run, _record(key, "m1", run, ["u1"]))  # ... and killed here
    assert registry.decisions() == []
    assert registry.recover() == ["logged the promotion of m1, whose job was killed before logging it"]
    [line] = registry.decisions()
    assert line["decision"] == "promoted" and line["candidate"]["model_id"] == "m1" and line["state"] == "state-m1"
    assert registry.recover() == [] and len(registry.decisions()) == 1


def test_a_candidate_trained_on_a_copy_of_a_requested_clip_is_never_promoted(tmp_path: Path) -> None:
    """The same recording under another id and account (exported again): a request for the original
    waits in the inbox, and the candidate trained on the copy. Judged by ids alone it was promoted,
    and the next erasure deleted the promoted model's weights."""
    import io

    import numpy as np
    import soundfile as sf
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    def flac(freq: float) -> bytes:
        buffer = io.BytesIO()
        t = np.arange(16000) / 16000
        sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, format="FLAC")
        return buffer.getvalue()

    features = Features({"utterance_id": Value("string"), "speaker": Value("string"), "text": Value("string"),
                         "audio": Audio()})
    rows = {"utterance_id": ["u1", "u1-again", "u2"], "speaker": ["acct_a", "acct_b", "acct_c"],
            "text": ["play jazz", "play jazz", "stop"],
            "audio": [{"bytes": flac(300), "path": None}, {"bytes": flac(300), "path": None},
                      {"bytes": flac(500), "path": None}]}
    DatasetDict({"train": Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(tmp_path / "cache" / "datasets" / "fp-c7"))
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    registry.promote(_run(tmp_path, "m1"), _record(key, "m1", tmp_path / "runs" / "m1", ["u0"]))
    _rejected(registry, key, tmp_path, "c7", ["u1-again", "u2"])
    (tmp_path / "inbox" / "deletions").mkdir(parents=True)
    (tmp_path / "inbox" / "deletions" / "r.jsonl").write_text(json.dumps({"utterance_id": "u1"}) + "\n")

    code, decision = _do(tmp_path, promote="c7")
    assert code == EXIT_CONFIG and "trained on 1 utterance(s) with a deletion request" in decision["reason"], decision
    assert registry.current()["model_id"] == "m1"

    # The audit's summary names the same models its findings do: c7 registered (promoted by an older
    # version, say) is trained on the copy.
    from pipeline.ops.audit import scan

    registry.promote(_run(tmp_path, "c7b"), _record(key, "c7b", tmp_path / "runs" / "c7b", ["u1-again"]))
    findings, affected, _ = scan(_cfg(tmp_path))
    assert [a["model_id"] for a in affected] == ["c7b"]
    assert any(f.path.endswith("c7b") for f in findings if f.kind == "registry model")


def test_a_damaged_candidate_file_is_named(tmp_path: Path) -> None:
    """Before the fix: promoting a rejected candidate whose candidate.json was cut short failed as a crash
    (exit 1) with only "JSONDecodeError: Expecting value: line 1 column 1 (char 0)", naming no file."""
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    registry.promote(_run(tmp_path, "m1"), _record(key, "m1", tmp_path / "runs" / "m1", ["u1"]))
    registry.log_decision({"decision": "promoted", "state": "state-m1", "candidate": {"model_id": "m1"}})
    c2 = _rejected(registry, key, tmp_path, "c2", ["u2"])
    (c2 / "candidate.json").write_text("")
    code, decision = _do(tmp_path, promote="c2")
    assert (code, decision["decision"]) == (EXIT_CONFIG, "config_error"), decision
    assert str(c2 / "candidate.json") in decision["reason"] and "retrain" in decision["reason"]
    assert registry.current()["model_id"] == "m1"


class _Killed(BaseException):
    """The job's process dying (SIGKILL, a power cut): nothing after it runs."""


def test_a_rejection_survives_a_job_killed_during_its_erasure(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: the decision was recorded only after the erasure, which can run long; a job
    killed during it left no decision anywhere, `make promote MODEL=<id>` found no such candidate
    though its candidate.json was in the run folder, and the next job retrained the same data."""
    import pipeline.ops.retrain as retrain

    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    registry.promote(_run(tmp_path, "m1"), _record(key, "m1", tmp_path / "runs" / "m1", ["u1"]))
    registry.log_decision({"decision": "promoted", "state": "state-m1", "candidate": {"model_id": "m1"}})
    run = _run(tmp_path, "c2")
    record = _record(key, "c2", run, ["u2"])
    write_candidate(run, record)

    def rejected(cfg, run_dir):
        return {"decision": "rejected", "reason": "asr/wer rose (after review: make promote MODEL=c2)",
                "state": record["state"], "candidate": {k: record[k] for k in ("model_id", "dataset_fingerprint")}}

    def killed(cfg):
        raise _Killed()

    monkeypatch.setattr(retrain, "decide", rejected)
    monkeypatch.setattr(retrain, "erase_copies", killed)
    with pytest.raises(_Killed):
        run_retrain(OmegaConf.merge(_cfg(tmp_path), {"run_dir": str(run)}))
    monkeypatch.undo()
    assert json.loads((run / "decision.json").read_text())["decision"] == "rejected", "recorded before the erasure"

    code, decision = _do(tmp_path, promote="c2")
    assert (code, decision["decision"]) == (EXIT_OK, "promoted"), decision
    assert any("c2" in line for line in decision["recovered"])
    log = [json.loads(line) for line in (tmp_path / "registry" / "decisions.jsonl").read_text().splitlines()]
    assert [d["decision"] for d in log] == ["promoted", "rejected", "promoted"]
    assert (log[1]["run_dir"], log[1]["state"]) == (str(run), "state-c2") and "traceback" not in log[1]
    assert "stopped" in log[1]["erasure"]["error"]
    assert registry.recover() == [], "logged once"


def test_decision_and_candidate_files_are_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: decision.json and candidate.json were written in place (Path.write_text); a
    job stopped half-way (a full disk, a kill) left half a file, and `make promote` then refused the
    candidate as damaged. Here a plain in-place write of either file is cut short."""
    plain = Path.write_text

    def cut_short(self: Path, text: str, *args, **kwargs):
        if self.name in ("decision.json", "candidate.json"):
            plain(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return plain(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", cut_short)
    run = _run(tmp_path, "c1")
    write_candidate(run, {"model_id": "c1", "trained_on": []})
    assert json.loads((run / "candidate.json").read_text())["model_id"] == "c1"
    code = run_retrain(OmegaConf.merge(_cfg(tmp_path), {"data": {"source": "jsonl", "path": None, "deletions": None}}))
    assert code == EXIT_OK and json.loads((tmp_path / "job" / "decision.json").read_text())["decision"] == "nothing_to_do"
