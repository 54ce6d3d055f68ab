"""The scheduled retraining job (`make retrain`, `python retrain.py`): inbox -> model -> decision.

One run: take the lock; tidy what a killed run left; take new batches and deletion requests from
the inbox into the corpus; train and evaluate as `train.py` does; evaluate the promoted model on
the same test split; promote if the gate passes (or if the promoted model was trained on deleted
data: deletion beats the gate); write `decision.json`. The exit code tells the scheduler what
happened, so it can alert on a rejection without treating it as a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.ops.corpus import Corpus, pseudonym_key, update_corpus, utterance_pseudonym
from pipeline.ops.gate import check_gate
from pipeline.ops.registry import Registry, now
from pipeline.ops.tracking import NullTracker
from pipeline.runtime import PipelineError, configure_environment

EXIT_OK = 0          # promoted, or nothing to do
EXIT_FAILED = 1      # a crash: look at the log
EXIT_CONFIG = 2      # a problem the user can fix (one line on stderr)
EXIT_REJECTED = 3    # trained fine, but the gate kept the promoted model
EXIT_BUSY = 4        # another retraining job holds the lock; try again later
REQUIRED_STAGES = ("data", "asr", "nlu", "eval")
# The parts of the config that change what a model is; a change retrains even with no new data.
TRAINING_KEYS = ("data", "asr", "nlu", "trainer", "eval", "seed")


class RetrainBusy(RuntimeError):
    pass


@contextmanager
def retrain_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock`: the kernel drops it when the holder dies, so a killed job never
    leaves a stale lock behind. (Keep the registry on a local or flock-capable file system.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RetrainBusy(f"another retraining job (pid {holder}) holds {path}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _last_decision_for(registry: Registry, state: str) -> dict[str, Any] | None:
    path = registry.root / "decisions.jsonl"
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        decision = json.loads(line)
        if decision.get("state") == state and decision.get("decision") in ("promoted", "rejected"):
            return decision
    return None


def trained_on(dataset_path: Path, key: bytes) -> list[str]:
    """Pseudonyms of what shaped the model: train (weights) and validation (thresholds, selection)."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(dataset_path))
    ids = [u for split in ("train", "validation") if split in dataset
           for u in dataset[split].select_columns(["utterance_id"])["utterance_id"]]
    return sorted({utterance_pseudonym(key, str(u)) for u in ids})


def _evaluate_incumbent(cfg: DictConfig, registry: Registry, model_id: str, run_dir: Path,
                        dataset_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The promoted model's metrics on the candidate's test split (its own folder, no W&B run)."""
    from pipeline.eval.run import run_eval_stage

    folder = run_dir / "incumbent"
    folder.mkdir(exist_ok=True)
    for part in ("asr", "nlu"):
        link = folder / part
        if not link.exists():
            link.symlink_to(registry.model_dir(model_id) / part, target_is_directory=True)
    try:
        run_eval_stage(cfg, folder, dataset_path, NullTracker())
    except PipelineError as err:
        return None, str(err)
    return json.loads((folder / "metrics.json").read_text()), None


def _stage_config(cfg: DictConfig, corpus: Corpus) -> DictConfig:
    stage_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(stage_cfg):
        stage_cfg.data.source = "jsonl"
        stage_cfg.data.path = str(corpus.annotations)
        stage_cfg.data.deletions = None  # already applied: deleted clips are gone from the corpus
    return stage_cfg


def decide(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Everything between taking the lock and writing the decision."""
    from pipeline.stages import run_stages

    retrain = cfg.retrain
    missing = [s for s in REQUIRED_STAGES if s not in cfg.stages]
    if missing:
        raise PipelineError(f"retraining needs stages {list(REQUIRED_STAGES)}; stages={list(cfg.stages)} "
                            f"lacks {missing}")
    registry = Registry(Path(retrain.registry_dir))
    key = pseudonym_key(cfg.privacy)
    decision: dict[str, Any] = {"recovered": registry.recover()}
    corpus = update_corpus(Path(retrain.inbox), Path(retrain.corpus_dir), key)
    stage_cfg = _stage_config(cfg, corpus)
    training = OmegaConf.to_container(stage_cfg, resolve=True)
    state = corpus.state(json.dumps({k: training.get(k) for k in TRAINING_KEYS}, sort_keys=True, default=str))
    current = registry.current()
    affected = registry.affected_by(corpus.tombstones)
    decision.update(state=state, new_batches=corpus.new_batches, new_deletion_requests=corpus.new_requests,
                    purged_records=corpus.purged, affected_models=affected,
                    incumbent={"model_id": current["model_id"]} if current else None)
    if corpus.batches == 0:
        return {**decision, "decision": "nothing_to_do", "reason": f"no batches in {retrain.inbox} yet"}
    current_affected = current is not None and any(a["model_id"] == current["model_id"] for a in affected)
    previous = _last_decision_for(registry, state)
    if previous and not current_affected and not retrain.force:
        return {**decision, "decision": "nothing_to_do",
                "reason": f"no new data, deletions or training config since the {previous['decision']} "
                          f"run {previous.get('run_dir')}"}

    run_stages(stage_cfg)
    candidate = _candidate(run_dir, key, corpus.tombstones)
    decision["candidate"] = {k: candidate[k] for k in ("model_id", "dataset_fingerprint", "metrics")}
    promote, reason, retire_reason = _verdict(stage_cfg, registry, current, affected, candidate, run_dir, decision)
    for stale in affected:
        if current is None or stale["model_id"] != current["model_id"]:
            # Already retired, but its weights were kept for rollback: they go now.
            registry.retire(stale["model_id"], "deletion", registry.record(stale["model_id"]).get("replaced_by"))
    if not promote:
        return {**decision, "decision": "rejected", "reason": reason}
    registry.promote(run_dir, {
        **decision["candidate"], "created_at": now(), "run_dir": str(run_dir), "state": state,
        "trained_on": candidate["trained_on"],
        "trained_on_ids": "utterance pseudonyms: pipeline.data.privacy.pseudonym(key, 'utt', utterance_id)",
    }, retire_reason=retire_reason)
    return {**decision, "decision": "promoted", "reason": reason,
            "retired": [current["model_id"]] if current else []}


def _candidate(run_dir: Path, key: bytes, tombstones: set[str]) -> dict[str, Any]:
    """What the stages just produced, checked once more against every deletion ever applied."""
    report = json.loads((run_dir / "build_report.json").read_text())
    dataset_path = Path(report["dataset_path"])
    hashes = trained_on(dataset_path, key)
    leaked = tombstones.intersection(hashes)
    if leaked:
        raise RuntimeError(f"the new dataset still holds {len(leaked)} deleted utterance(s); not promoting")
    return {
        "model_id": time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + str(report["fingerprint"])[:8],
        "dataset_fingerprint": report["fingerprint"], "dataset_path": dataset_path,
        "metrics": json.loads((run_dir / "metrics.json").read_text()), "trained_on": hashes,
    }


def _verdict(cfg: DictConfig, registry: Registry, current: dict[str, Any] | None,
             affected: list[dict[str, Any]], candidate: dict[str, Any], run_dir: Path,
             decision: dict[str, Any]) -> tuple[bool, str, str]:
    """(promote?, why, how the old model is retired); adds the gate numbers to `decision`."""
    if current is None:
        return True, "no model is promoted yet", "replaced"
    hits = next((a["deleted_utterances"] for a in affected if a["model_id"] == current["model_id"]), 0)
    if hits:
        return True, (f"the promoted model {current['model_id']} was trained on {hits} deleted "
                      "utterance(s): deletion beats the gate"), "deletion"
    incumbent, error = None, "its weights are gone"
    if registry.has_weights(current["model_id"]):
        incumbent, error = _evaluate_incumbent(cfg, registry, current["model_id"], run_dir,
                                               candidate["dataset_path"])
    if incumbent is None:
        failed = [f"the promoted model could not be evaluated on the new test split ({error})"]
    else:
        decision["incumbent"]["metrics"] = incumbent
        checks = check_gate(candidate["metrics"], incumbent, OmegaConf.to_container(cfg.retrain.gate, resolve=True))
        decision["gate"] = [c.as_dict() for c in checks]
        failed = [c.detail for c in checks if not c.passed]
        if not failed:
            return True, "every gated metric passes: " + "; ".join(c.detail for c in checks), "replaced"
    if cfg.retrain.force:
        return True, "forced (retrain.force=true) past: " + "; ".join(failed), "replaced"
    return False, "; ".join(failed), "replaced"


EXIT_CODES = {"promoted": EXIT_OK, "nothing_to_do": EXIT_OK, "rejected": EXIT_REJECTED,
              "failed": EXIT_FAILED, "config_error": EXIT_CONFIG, "busy": EXIT_BUSY}


def run_retrain(cfg: DictConfig) -> int:
    """Run one retraining job and return the exit code; `decision.json` is written either way."""
    run_dir = Path(cfg.run_dir).resolve()
    configure_environment(run_dir, Path(cfg.cache_dir).resolve())
    started = now()
    registry = Registry(Path(cfg.retrain.registry_dir))
    try:
        with retrain_lock(registry.root / "retrain.lock"):
            try:
                decision = decide(cfg, run_dir)
            except PipelineError as err:
                decision = {"decision": "config_error", "reason": str(err)}
            except Exception as err:  # noqa: BLE001 - the scheduler needs a decision.json for any crash
                decision = {"decision": "failed", "reason": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc()}
            decision.update(run_dir=str(run_dir), started_at=started, finished_at=now(),
                            exit_code=EXIT_CODES[decision["decision"]])
            if decision["decision"] in ("promoted", "rejected"):
                registry.log_decision({k: v for k, v in decision.items() if k != "traceback"})
    except RetrainBusy as err:
        decision = {"decision": "busy", "reason": str(err), "run_dir": str(run_dir), "started_at": started,
                    "finished_at": now(), "exit_code": EXIT_BUSY}
    (run_dir / "decision.json").write_text(json.dumps(decision, indent=2, default=str) + "\n")
    line = f"retrain: {decision['decision']}: {decision['reason']} ({run_dir / 'decision.json'})"
    if decision["exit_code"] in (EXIT_CONFIG, EXIT_FAILED):
        print(f"error: {line}", file=sys.stderr)
    else:
        print(line)
    return int(decision["exit_code"])
