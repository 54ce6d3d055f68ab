"""Promotion gate, registry records and recovery after a killed job, and the retraining lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.ops.gate import check_gate
from pipeline.data.privacy import pseudonym
from pipeline.ops.registry import Registry
from pipeline.ops.registry import RetrainBusy, retrain_lock
from pipeline.runtime import PipelineError

RULES = {
    "wer": {"metric": "asr/wer", "max_increase": 0.005},
    "frr": {"metric": "wake/frr", "max_increase": 0.0},
    "slu_f1": {"metric": "slu/slu_f1", "max_decrease": 0.0},
}
KEY = b"test-key"


def utt(utterance_id: str) -> str:
    return pseudonym(KEY, "utt", utterance_id)


def test_gate_passes_within_limits_and_names_each_failure() -> None:
    old = {"asr/wer": 0.200, "wake/frr": 0.04, "slu/slu_f1": 0.70}
    # WER up 0.4 points (allowed: 0.5), FRR equal, SLU-F1 up.
    ok = check_gate({"asr/wer": 0.204, "wake/frr": 0.04, "slu/slu_f1": 0.71}, old, RULES)
    assert [c.passed for c in ok] == [True, True, True]
    # WER up 0.6 points, FRR up, SLU-F1 down by 0.01.
    bad = check_gate({"asr/wer": 0.206, "wake/frr": 0.05, "slu/slu_f1": 0.69}, old, RULES)
    assert [c.passed for c in bad] == [False, False, False]
    assert "rose by 0.0060, limit 0.0050" in bad[0].detail
    assert "fell by 0.0100" in bad[2].detail
    missing = check_gate({"asr/wer": 0.1}, old, {"wer": RULES["wer"], "frr": RULES["frr"]})
    assert [c.passed for c in missing] == [True, False] and "missing" in missing[1].detail
    with pytest.raises(PipelineError, match="retrain.gate.x"):
        check_gate(old, old, {"x": {"metric": "asr/wer"}})


def test_a_rule_that_demands_improvement_says_so() -> None:
    """A negative limit demands that much improvement: a candidate 0.005 better under a rule demanding
    0.01 was rejected with the detail "no worse"."""
    rule = {"wer": {"metric": "asr/wer", "max_increase": -0.01}, "f1": {"metric": "slu/slu_f1", "max_decrease": -0.01}}
    short, enough = (check_gate({"asr/wer": w, "slu/slu_f1": f}, {"asr/wer": 0.2, "slu/slu_f1": 0.7}, rule)
                     for w, f in ((0.195, 0.705), (0.185, 0.72)))
    assert [c.passed for c in short] == [False, False] and [c.passed for c in enough] == [True, True]
    assert short[0].detail == "asr/wer 0.2000 -> 0.1950: improved by 0.0050; the rule demands it fall by 0.0100"
    assert short[1].detail == "slu/slu_f1 0.7000 -> 0.7050: improved by 0.0050; the rule demands it rise by 0.0100"


def _run(tmp: Path, name: str) -> Path:
    run = tmp / "runs" / name
    for part in ("asr", "nlu"):
        (run / part).mkdir(parents=True)
        (run / part / "model.safetensors").write_bytes(name.encode())
    return run


def _record(model_id: str, utterances: list[str]) -> dict:
    return {"model_id": model_id, "dataset_fingerprint": "fp-" + model_id,
            "metrics": {"asr/wer": 0.2}, "trained_on": sorted(utt(u) for u in utterances)}


def test_registry_promotes_retires_and_audits(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    assert reg.current() is None
    reg.promote(_run(tmp_path, "a"), _record("m1", ["u1", "u2"]))
    reg.promote(_run(tmp_path, "b"), _record("m2", ["u2", "u3"]))
    assert reg.current()["model_id"] == "m2"
    assert (reg.model_dir("m2") / "asr" / "model.safetensors").read_bytes() == b"b"
    old = reg.record("m1")
    assert old["status"] == "retired" and old["replaced_by"] == "m2" and reg.has_weights("m1")
    raw = (tmp_path / "registry").rglob("record.json")
    assert not any(b'"u2"' in p.read_bytes() for p in raw), "utterance ids are stored as pseudonyms only"

    affected = reg.affected_by({utt("u2")}, KEY)
    assert sorted(a["model_id"] for a in affected) == ["m1", "m2"]
    assert reg.affected_by({utt("u3")}, KEY) == [{"model_id": "m2", "status": "promoted", "deleted_utterances": 1}]

    reg.promote(_run(tmp_path, "c"), _record("m3", ["u1"]), retire_reason="deletion")
    assert reg.record("m2")["retired_reason"] == "deletion" and not reg.has_weights("m2")
    assert reg.affected_by({utt("u3")}, KEY) == []  # weights gone: nothing left to audit


def test_recover_finishes_or_undoes_a_killed_promotion(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.promote(_run(tmp_path, "a"), _record("m1", ["u1"]))
    reg.log_decision({"decision": "promoted", "candidate": {"model_id": "m1"}})
    # Killed while copying: a temp folder. Killed after the copy, before the switch: an orphan.
    (reg.models / ".tmp-m2").mkdir()
    orphan = _run(tmp_path, "b")
    orphan.rename(reg.models / "m9")
    (reg.models / "m9" / "record.json").write_text(json.dumps(_record("m9", ["u1"])))
    done = reg.recover()
    assert sorted(p.name for p in reg.models.iterdir()) == ["m1"] and len(done) == 2
    assert reg.current()["model_id"] == "m1"

    # Killed after the switch to m3 (which replaces m1 for a deletion), before m1 was retired.
    pointer = json.loads((reg.root / "promoted.json").read_text())
    (reg.models / "m3").mkdir()
    _run(tmp_path, "c").rename(reg.models / "m3" / "x")
    for part in ("asr", "nlu"):
        (reg.models / "m3" / "x" / part).rename(reg.models / "m3" / part)
    (reg.models / "m3" / "record.json").write_text(json.dumps(
        {**_record("m3", []), "status": "promoted", "replaces": {"model_id": "m1", "reason": "deletion"}}))
    (reg.root / "promoted.json").write_text(json.dumps({"model_id": "m3", "history": [*pointer["history"], "m3"]}))
    reg.recover()
    assert reg.record("m1")["status"] == "retired" and reg.record("m1")["replaced_by"] == "m3"
    assert not reg.has_weights("m1"), "a model replaced for a deletion loses its weights"
    assert reg.recover() == []  # nothing left to do


def test_lock_excludes_a_second_job_and_dies_with_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "registry" / "retrain.lock"
    with retrain_lock(lock):
        with pytest.raises(RetrainBusy, match=f"pid {os.getpid()}"):
            with retrain_lock(lock):
                pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from pipeline.ops.registry import retrain_lock\n"
        f"with retrain_lock(Path({str(lock)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RetrainBusy):
        with retrain_lock(lock):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with retrain_lock(lock):  # the kernel released it with the killed process
        pass


def test_a_forked_worker_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A worker forked inside a job (datasets' map, a DataLoader) must not share the job's lock: an
    orphaned one would otherwise keep the registry busy for every later job."""
    lock = tmp_path / "registry" / "retrain.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import multiprocessing as mp, time; from pathlib import Path; from pipeline.ops.registry import retrain_lock\n"
        f"with retrain_lock(Path({str(lock)!r})):\n"
        "    worker = mp.get_context('fork').Process(target=time.sleep, args=(60,)); worker.start()\n"
        "print(worker.pid, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        os.kill(worker, 0)  # the job left the lock; its worker still runs
        with retrain_lock(lock):
            pass
    finally:
        holder.kill()
        holder.wait()
        _kill_if_running(worker)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait on a parent that does not reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _kill_if_running(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_jobs_forked_workers_die_with_it(tmp_path: Path) -> None:
    """Killed mid-run, a job's forked workers are orphaned, asleep on queues nobody reads; they must
    go with the job instead of lingering (and, before their copy of the lock was closed, keeping it)."""
    lock = tmp_path / "registry" / "retrain.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import multiprocessing as mp, time; from pathlib import Path; from pipeline.ops.registry import retrain_lock\n"
        "worker = mp.get_context('fork').Process(target=time.sleep, args=(60,)); worker.start()\n"
        f"with retrain_lock(Path({str(lock)!r})):\n"
        "    job_worker = mp.get_context('fork').Process(target=time.sleep, args=(60,)); job_worker.start()\n"
        "    print(worker.pid, job_worker.pid, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    outside, inside = map(int, holder.stdout.readline().split())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 10
        while _running(inside) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(inside), "a worker forked by the job outlived it"
        assert _running(outside), "a process forked outside the job is not the job's to end"
        with retrain_lock(lock):
            pass
    finally:
        _kill_if_running(inside)
        _kill_if_running(outside)


def test_recover_after_a_rollback_retires_the_model_for_its_latest_replacement(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: recover took the reason of whichever record first named the model in `replaces`,
    so a model promoted twice (m1, then m2, then back to m1) and replaced for a deletion by a job killed
    before m1 was retired got the old reason ("replaced", replaced_by m2) and kept its weights."""
    reg = Registry(tmp_path / "registry")
    reg.promote(_run(tmp_path, "a"), _record("m1", ["u1"]))
    reg.promote(_run(tmp_path, "b"), _record("m2", ["u2"]))
    reg.repromote("m1", "rolled_back")
    assert reg.current()["model_id"] == "m1" and reg.record("m2")["retired_reason"] == "rolled_back"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the job dies after switching promoted.json, before retiring m1

    monkeypatch.setattr(Registry, "retire", killed)
    with pytest.raises(KeyboardInterrupt):
        reg.promote(_run(tmp_path, "c"), _record("m3", []), retire_reason="deletion")
    monkeypatch.undo()
    assert reg.current()["model_id"] == "m3" and reg.record("m1")["status"] == "promoted"

    reg.recover()
    m1 = reg.record("m1")
    assert (m1["status"], m1["retired_reason"], m1["replaced_by"]) == ("retired", "deletion", "m3")
    assert not reg.has_weights("m1"), "a model replaced for a deletion loses its weights"
    assert reg.record("m2")["retired_reason"] == "rolled_back"


def test_a_promoted_model_erased_without_a_trained_on_list_is_replaced_not_kept_forever(tmp_path: Path) -> None:
    """Before the fix: a promoted model whose weights `make erase` removed (matched by its dataset,
    its record older than the `trained_on` list) counted as unaffected by deletions, so every later
    candidate was judged against it, could not be compared ("its weights are gone") and was rejected:
    nothing was served and nothing could be promoted but by hand."""
    from pipeline.ops.retrain import _verdict

    reg = Registry(tmp_path / "registry")
    record = _record("m1", ["u1"])
    del record["trained_on"]
    reg.promote(_run(tmp_path, "a"), record)
    reg.mark_erased("m1")
    current = reg.current()
    assert reg.affected_by({utt("u1")}, KEY) == []  # nothing to match the deletion against
    promote, why, retired = _verdict(None, None, reg, current, [], {}, tmp_path / "run", {"incumbent": {}})
    assert (promote, retired) == (True, "deletion") and "m1 had its weights erased" in why


def test_a_metric_the_test_clips_give_neither_model_does_not_reject_every_candidate() -> None:
    """A test split without a clip lacking the wake word has no wake/frr or false accepts for any model
    (eval_details.json's not_computed says why); both runs leave them out of metrics.json.
    Before the fix: the default wake rules failed as "missing ... for the candidate", so every
    retraining on such a corpus was rejected, whatever the candidate did."""
    old, new = {"asr/wer": 0.20, "slu/slu_f1": 0.70}, {"asr/wer": 0.19, "slu/slu_f1": 0.71}
    why = {"wake/frr": "split 'test' has no clip without the wake word (40 clips), so no false accept can be measured"}
    checks = check_gate(new, old, RULES, why)
    assert [c.passed for c in checks] == [True, True, True], [c.detail for c in checks]
    assert "computed for neither model" in checks[1].detail and why["wake/frr"] in checks[1].detail
    # Missing for one side only, or for both without a reason (a mistyped rule), still fails.
    one = check_gate(new, {**old, "wake/frr": 0.04}, RULES, why)
    assert not one[1].passed and "for the candidate" in one[1].detail
    assert not check_gate(new, old, RULES)[1].passed
    from pipeline.eval.bootstrap import Paired
    from pipeline.ops.gate import check_gate_paired

    paired = check_gate_paired(Paired({}, 10, 5, 1000), new, old, {"frr": RULES["frr"]}, "non_inferior", why)
    assert paired[0].passed and paired[0].policy == "non_inferior" and "not judged" in paired[0].detail


def test_an_erasure_of_the_promoted_model_killed_half_way_still_has_it_replaced(tmp_path: Path, monkeypatch) -> None:
    """`mark_erased` killed after removing part of the weights, before its record said so.
    Before the fix: the weights went first, so the record kept no `erased_at`; the model, still
    promoted and serving nothing, counted as unaffected (no weights to match), and the next retraining
    judged the candidate against it ("its weights are gone") and rejected it."""
    from pipeline.ops import registry as registry_module
    from pipeline.ops.retrain import _verdict

    reg = Registry(tmp_path / "registry")
    reg.promote(_run(tmp_path, "a"), _record("m1", ["u1"]))
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        raise KeyboardInterrupt  # the job dies after the first part is gone

    monkeypatch.setattr(registry_module.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        reg.mark_erased("m1")
    monkeypatch.setattr(registry_module.shutil, "rmtree", real_rmtree)
    assert not reg.has_weights("m1")
    affected = reg.affected_by({utt("u1")}, KEY)
    assert [a["model_id"] for a in affected] == ["m1"], "the promoted model is still to be replaced"
    promote, why, retired = _verdict(None, None, reg, reg.current(), affected, {}, tmp_path / "run", {"incumbent": {}})
    assert (promote, retired) == (True, "deletion"), why


def test_a_gate_that_cannot_compare_the_two_models_rejects_the_candidate_with_the_reason(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    """Before the fix: a PipelineError from gate_on_runs (damaged predictions.jsonl, other test clips)
    left `_verdict` and became the job's config_error (exit 2): no candidate.json, no rejected line,
    so the candidate could not be promoted by hand and every later job retrained the same data."""
    from omegaconf import OmegaConf

    import pipeline.ops.retrain as retrain
    from pipeline.ops.config import retrain_config

    reg = Registry(tmp_path / "registry")
    reg.promote(_run(tmp_path, "m1"), _record("m1", ["a"]))
    run_dir = tmp_path / "job"
    (run_dir / "incumbent").mkdir(parents=True)
    (run_dir / "incumbent" / "predictions.jsonl").write_text('{"utterance_id": "utt_1", "ref')  # cut short
    monkeypatch.setattr(retrain, "_evaluate_incumbent", lambda *a: ({"asr/wer": 0.2}, None))
    cfg = OmegaConf.create({"eval": {"bootstrap_samples": 10, "bootstrap_seed": 0},
                            "retrain": {"inbox": "i", "corpus_dir": "c", "registry_dir": str(reg.root), "force": False,
                                        "promote": None, "rollback": False, "gate_policy": "not_worse",
                                        "gate": {"wer": {"metric": "asr/wer", "max_increase": 0.005}}}})
    decision = {"incumbent": {"model_id": "m1"}}
    candidate = {"metrics": {"asr/wer": 0.1}, "dataset_path": tmp_path / "dataset"}
    promote, reason, _ = retrain._verdict(cfg, retrain_config(cfg), reg, reg.current(), [], candidate, run_dir,
                                          decision)
    assert not promote
    assert reason.startswith("the gate could not compare the candidate with the promoted model: ")
    assert "predictions.jsonl line 1 is not valid JSON" in reason and decision["gate_error"] in reason
