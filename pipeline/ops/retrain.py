"""The scheduled retraining job (`make retrain`, `python retrain.py`): inbox -> model -> decision.

One run: take the lock; tidy what a killed run left; take new batches and deletion requests from
the inbox into the corpus; train and evaluate as `train.py` does; evaluate the promoted model on
the same test split; promote if the gate passes (or if the promoted model was trained on deleted
data: deletion beats the gate); write `decision.json` and append the decision to the registry's
`decisions.jsonl`. The exit code tells the scheduler what happened, so it can alert on a rejection
without treating it as a crash. `retrain.promote=<id>` and `retrain.rollback=true` change the
promoted model instead of training (pipeline/ops/promote.py).

What a scheduler can rely on: every job has its own run folder (`<time>-<pid>`) and writes only
there and to the registry; every outcome (busy and config errors included) is one line in
`decisions.jsonl`, and a `decision.json` wherever a run folder is known; a config error of any kind,
a mistyped override included, exits 2.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from pipeline import run_folder
from pipeline.data.privacy import key_id
from pipeline.ops.config import RetrainConfig, command_line_problem, erase_config, job_config, load_config, retrain_config
from pipeline.ops.corpus import Corpus, pseudonym_key, remerge, stray_inbox_entries, update_corpus, utterance_pseudonym
from pipeline.ops.erase import (check_dataset_keys, check_run_keys, erase_copies, record_source_audio,
                                 tombstone_copies)
from pipeline.ops.gate import gate_on_runs
from pipeline.ops.inventory import Roots, check_root
from pipeline.ops.promote import promote_model, rollback, write_candidate
from pipeline.ops.registry import LOCK_FILE, MODEL_PARTS, Registry, RetrainBusy, now, retire_command, retrain_lock
from pipeline.runtime import PipelineError, configure_environment, file_in_the_way, write_text_atomic
from pipeline.tracking import NullTracker

EXIT_OK = 0          # promoted, rolled back, or nothing to do
EXIT_FAILED = 1      # a crash: look at the log
EXIT_CONFIG = 2      # a problem the user can fix (one line on stderr)
EXIT_REJECTED = 3    # trained fine, but the gate kept the promoted model
EXIT_BUSY = 4        # another retraining job holds the lock; try again later
REQUIRED_STAGES = ("data", "asr", "nlu", "eval")
# The parts of the config that change what a model is; a change retrains even with no new data.
TRAINING_KEYS = ("data", "asr", "nlu", "trainer", "eval", "seed")


def unreported_batches(registry: Registry, corpus_dir: Path) -> list[str]:
    """The corpus's batches no earlier decision names: those this job took, and those a killed job
    took before it could record a decision (its successor names them, so every batch is in the log)."""
    reported = {b for d in registry.decisions() for b in d.get("new_batches") or []}
    batches = corpus_dir / "batches"
    return sorted(p.name for p in batches.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in reported) if batches.is_dir() else []


def training_state(corpus: Corpus, training: dict[str, Any], key: bytes) -> str:
    """What a model trained now is a function of: the corpus, the training config and the pseudonym
    key (a new key draws other pseudonyms, so other splits and another model)."""
    return corpus.state(json.dumps({**{k: training.get(k) for k in TRAINING_KEYS}, "key": key_id(key)},
                                   sort_keys=True, default=str))


def _last_decision_for(registry: Registry, state: str) -> dict[str, Any] | None:
    for decision in reversed(registry.decisions()):
        if decision.get("state") == state and decision.get("decision") in ("promoted", "rejected"):
            return decision
    return None


def trained_on(dataset_path: Path, key: bytes) -> list[str]:
    """Pseudonyms of what shaped the model: train (weights) and validation (thresholds, selection),
    with the originals its derived clips copy (`copy_of`), so a deletion of an original finds it."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(dataset_path))
    ids: list[str] = []
    for split in ("train", "validation"):
        if split in dataset:
            columns = [c for c in ("utterance_id", "copy_of") if c in dataset[split].column_names]
            table = dataset[split].select_columns(columns).to_dict()
            ids += [u for c in columns for u in table[c] if u is not None]
    return sorted({utterance_pseudonym(key, str(u)) for u in ids})


def _evaluate_incumbent(cfg: DictConfig, registry: Registry, model_id: str, run_dir: Path,
                        dataset_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The promoted model's metrics on the candidate's test split (its own folder, no W&B run)."""
    from pipeline.eval.run import run_eval_stage

    folder = run_dir / "incumbent"
    folder.mkdir(exist_ok=True)
    for part in MODEL_PARTS:
        link = folder / part
        if not link.exists():
            # Absolute: a link reads a relative target from its own folder, not the job's cwd.
            link.symlink_to((registry.model_dir(model_id) / part).absolute(), target_is_directory=True)
    try:
        run_eval_stage(cfg, folder, dataset_path, NullTracker())
    except PipelineError as err:
        return None, str(err)
    return json.loads((folder / "metrics.json").read_text()), None


def _data_choice(data: Any) -> str:
    """The setting the user gave: `data=<group>` (Hydra's record of the choice; a recipe of several
    sources, `data=demo_speech`, sets no data.source) or `data.source=<value>` on retraining's own group."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    source = data.get("source")
    if source is None:
        return f"data={choice or '<a recipe of data.sources>'}"
    return f"data={source}" if choice in (None, source) else f"data.source={source}"


def _refuse_data_settings(cfg: DictConfig, inbox: str) -> None:
    """The settings `_stage_config` replaces, refused when given: a `data.deletions` file a job read
    nowhere left the clips it names in training and in the promoted model."""
    # The paths are not echoed: a request file is often named after the account it asks about.
    data = cfg.get("data") or {}
    if data.get("deletions") is not None:
        raise PipelineError(f"data.deletions is not read by retraining: put the request file in {inbox}/deletions/ "
                            "(any *.jsonl), and the next job applies it to the whole corpus")
    if data.get("source") != "jsonl" or data.get("path") is not None:
        given = "data.path" if data.get("source") == "jsonl" else _data_choice(data)
        raise PipelineError(f"{given} is not read by retraining: it trains on the batches of retrain.inbox merged "
                            f"into its corpus; put an export in {inbox}/<batch>/annotations.jsonl instead")


# The splits that shaped a candidate: its weights (train) and its checkpoint, thresholds and LM weight
# (validation), as `trained_on` records them. A gate scored there favours the candidate for having seen
# the clips, whatever it learnt.
SHAPING_SPLITS = ("train", "validation")


def _refuse_shaping_split(cfg: DictConfig) -> None:
    """The gate compares the candidate with the promoted model on `eval.split`: it must be clips the
    candidate never learnt from, or a worse model passes (refused before the intake takes anything)."""
    split = OmegaConf.select(cfg, "eval.split", default=None)
    if split in SHAPING_SPLITS:
        raise PipelineError(f"eval.split={split} is a split the candidate learnt from (train and validation shape "
                            "its weights and selection), so the retraining gate would favour it; retraining "
                            "evaluates on held-out clips: drop the override, or give eval.split=test")


def _stage_config(cfg: DictConfig, corpus: Corpus) -> DictConfig:
    stage_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(stage_cfg):
        stage_cfg.data.source = "jsonl"
        stage_cfg.data.path = str(corpus.annotations)
        stage_cfg.data.deletions = None  # already applied: deleted clips are gone from the corpus
    return stage_cfg


def decide(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Everything between taking the lock and writing the decision."""
    from pipeline.config import check_top_level
    from pipeline.stages import TOP_LEVEL, run_stages

    check_top_level(cfg, TOP_LEVEL, "conf/retrain.yaml")  # before the intake takes anything from the inbox
    retrain = retrain_config(cfg)
    lost = erase_config(cfg).retire_key
    if lost:  # its removals need a job of their own, before any key check: `make erase`
        raise PipelineError(f"erase.retire_key={lost} is read by `make erase` alone: run {retire_command(lost)} "
                            "first, then retrain without it")
    _refuse_data_settings(cfg, retrain.inbox)
    _refuse_shaping_split(cfg)
    missing = [s for s in REQUIRED_STAGES if s not in cfg.stages]
    if missing:
        raise PipelineError(f"retraining needs stages {list(REQUIRED_STAGES)}; stages={list(cfg.stages)} "
                            f"lacks {missing}")
    registry = Registry(Path(retrain.registry_dir))
    key = pseudonym_key(cfg.privacy)
    decision: dict[str, Any] = {"recovered": registry.recover()}
    roots = Roots.from_cfg(cfg)
    for name, root in roots.named().items():  # the erasure after the decision walks them: found now, not after a night's training
        check_root(name, root)
    registry.check_keys(key)  # a model under another key: refused before the intake stores anything
    check_run_keys(roots, key)  # ... and a run folder's clip list
    check_dataset_keys(roots, key)  # ... and a cached dataset
    record_source_audio(roots, key)  # before the intake deletes any of it
    corpus = update_corpus(Path(retrain.inbox), Path(retrain.corpus_dir), key)
    # A clip under another id holding a deleted clip's audio (the recording exported again) is
    # tombstoned now, so this build keeps it out; erase_copies removes its copies after the decision.
    if tombstone_copies(roots, key):
        again = remerge(Path(retrain.corpus_dir), key)
        corpus.purged, corpus.tombstones = corpus.purged + again.purged, again.tombstones
    stage_cfg = _stage_config(cfg, corpus)
    training = OmegaConf.to_container(stage_cfg, resolve=True)
    state = training_state(corpus, training, key)
    current = registry.current()
    affected = registry.affected_by(corpus.tombstones, key)
    decision.update(state=state, new_batches=unreported_batches(registry, Path(retrain.corpus_dir)),
                    new_deletion_requests=corpus.new_requests,
                    purged_records=corpus.purged, affected_models=affected,
                    quarantined_request_lines=corpus.quarantined, quarantined_annotation_lines=corpus.unreadable,
                    removed_unnamed_audio_files=corpus.unnamed_audio,
                    incumbent={"model_id": current["model_id"]} if current else None)
    if corpus.batches == 0:
        return {**decision, "decision": "nothing_to_do",
                "reason": f"no batches in {retrain.inbox} yet{stray_inbox_entries(Path(str(retrain.inbox)))}"}
    current_affected = current is not None and any(a["model_id"] == current["model_id"] for a in affected)
    previous = _last_decision_for(registry, state)
    # force: train anyway (say, after changing the gate); the gate still decides. Promoting a
    # candidate the gate rejected is `make promote MODEL=<id>`, which trains nothing.
    if previous and not current_affected and not retrain.force:
        return {**decision, "decision": "nothing_to_do",
                "reason": f"no new data, deletions or training config since the {previous['decision']} "
                          f"run {previous.get('run_dir')}"}

    run_stages(stage_cfg, "conf/retrain.yaml")
    candidate = _candidate(run_dir, key, corpus.tombstones)
    decision["candidate"] = {k: candidate[k] for k in ("model_id", "dataset_fingerprint", "metrics")}
    promote, reason, retire_reason = _verdict(stage_cfg, retrain, registry, current, affected, candidate, run_dir,
                                              decision)
    for stale in affected:
        if current is None or stale["model_id"] != current["model_id"]:
            # Already retired, but its weights were kept for rollback: they go now.
            registry.retire(stale["model_id"], "deletion", registry.record(stale["model_id"]).get("replaced_by"))
    record = {
        **decision["candidate"], "created_at": now(), "run_dir": str(run_dir), "state": state,
        "trained_on": candidate["trained_on"],
        "trained_on_ids": "utterance pseudonyms: pipeline.data.privacy.pseudonym(key, 'utt', utterance_id)",
        # Which key: after a key change the pseudonyms above match nothing, and promote, rollback and
        # erasure refuse the record rather than pass it as trained on no deleted clip.
        "key_id": key_id(key),
    }
    if not promote:
        write_candidate(run_dir, record)
        return {**decision, "decision": "rejected",
                "reason": f"{reason} (after review: make promote MODEL={candidate['model_id']})"}
    registry.promote(run_dir, record, retire_reason=retire_reason)
    return {**decision, "decision": "promoted", "reason": reason,
            "retired": [current["model_id"]] if current else []}


def _candidate(run_dir: Path, key: bytes, tombstones: set[str]) -> dict[str, Any]:
    """What the stages just produced, checked once more against every deletion ever applied."""
    dataset_path = run_folder.dataset_path(run_dir)
    report = run_folder.read_build_report(run_dir)
    if dataset_path is None or report is None:
        raise PipelineError(f"{run_dir}: the stages left no {run_folder.BUILD_REPORT}; the data stage did not run")
    hashes = trained_on(dataset_path, key)
    leaked = tombstones.intersection(hashes)
    if leaked:
        raise RuntimeError(f"the new dataset still holds {len(leaked)} deleted utterance(s); not promoting")
    return {
        "model_id": time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + str(report["fingerprint"])[:8],
        "dataset_fingerprint": report["fingerprint"], "dataset_path": dataset_path,
        "metrics": json.loads((run_dir / "metrics.json").read_text()), "trained_on": hashes,
    }


def _verdict(cfg: DictConfig, retrain: RetrainConfig, registry: Registry, current: dict[str, Any] | None,
             affected: list[dict[str, Any]], candidate: dict[str, Any], run_dir: Path,
             decision: dict[str, Any]) -> tuple[bool, str, str]:
    """(promote?, why, how the old model is retired); adds the gate numbers to `decision`."""
    if current is None:
        return True, "no model is promoted yet", "replaced"
    hits = next((a["deleted_utterances"] for a in affected if a["model_id"] == current["model_id"]), 0)
    # Erased without a `trained_on` list to match (a record from before it was kept): nothing serves,
    # and the gate could only reject every candidate for want of weights to compare with.
    erased = bool(current.get("erased_at")) and not registry.has_weights(current["model_id"])
    if hits or erased:
        why = (f"was trained on {hits} deleted utterance(s)" if hits else
               f"had its weights removed (made under the lost pseudonym key {current['lost_key_id']})"
               if current.get("lost_key_id") else "had its weights erased (trained on deleted data)")
        return True, f"the promoted model {current['model_id']} {why}: deletion beats the gate", "deletion"
    incumbent, error = None, "its weights are gone"
    if registry.has_weights(current["model_id"]):
        incumbent, error = _evaluate_incumbent(cfg, registry, current["model_id"], run_dir,
                                               candidate["dataset_path"])
    if incumbent is None:
        failed = [f"the promoted model could not be evaluated on the new test split ({error})"]
    else:
        decision["incumbent"]["metrics"] = incumbent
        # Judged on the paired difference over the same test clips (pipeline/ops/gate.py).
        try:
            checks = gate_on_runs(run_dir, run_dir / "incumbent", candidate["metrics"], incumbent,
                                  retrain.gate_rules(), retrain.gate_policy,
                                  int(cfg.eval.bootstrap_samples), int(cfg.eval.bootstrap_seed))
        except PipelineError as err:
            # Other test clips, damaged predictions: no verdict, so a rejection (exit 3) that says why.
            # As a config error the candidate went unrecorded: not promotable by hand, and every
            # later job trained on the same data again.
            decision["gate_error"] = str(err)
            return False, f"the gate could not compare the candidate with the promoted model: {err}", "replaced"
        decision["gate"] = [c.as_dict() for c in checks]
        failed = [c.detail for c in checks if not c.passed]
        if not failed:
            return True, "every gated metric passes: " + "; ".join(c.detail for c in checks), "replaced"
    return False, "; ".join(failed), "replaced"


EXIT_CODES = {"promoted": EXIT_OK, "rolled_back": EXIT_OK, "nothing_to_do": EXIT_OK, "rejected": EXIT_REJECTED,
              "failed": EXIT_FAILED, "config_error": EXIT_CONFIG, "busy": EXIT_BUSY}
CONFIG_ERRORS = (PipelineError, OmegaConfBaseException)


def _job(cfg: DictConfig, run_dir: Path, registry: Registry, started: str) -> dict[str, Any]:
    """The decision of a job that holds the lock: train, or promote / roll back by hand. Every
    group the job reads is checked first (a config error, recorded like any other decision)."""
    settings = job_config(cfg)
    model_id, back = settings.retrain.promote, settings.retrain.rollback
    if model_id is not None and back:
        raise PipelineError("retrain.promote and retrain.rollback are exclusive; give one of them")
    if model_id is not None:
        if not str(model_id).strip():
            raise PipelineError("retrain.promote is empty; give the model id of a candidate (make promote MODEL=<id>)")
        return {"recovered": registry.recover(), **promote_model(cfg, registry, str(model_id))}
    if back:
        return {"recovered": registry.recover(), **rollback(cfg, registry)}
    # A job that fails after its intake has still taken deletion requests: the erasure below runs for
    # those as well, not only after the next job that trains to the end.
    decision = _decided(lambda: decide(cfg, run_dir))
    _record_before_erasure(decision, run_dir, registry, started)
    # Every other copy of deleted data (cached datasets, old runs, W&B staging): pipeline/ops/erase.py.
    # The decision has happened (a promotion stays promoted), so an erasure that fails is recorded
    # beside it, and the job exits as failed: deleted data may still be somewhere.
    try:
        decision["erasure"] = erase_copies(cfg).summary()
    except Exception as err:  # noqa: BLE001 - recorded, never lost behind the decision
        decision["erasure"] = {"error": f"{type(err).__name__}: {err}",
                               "fix": "correct the cause, then run `make erase` (the retraining lock must be free)"}
    return decision


def _write_decision(run_dir: Path, decision: dict[str, Any]) -> None:
    """decision.json, whole or not at all: a scheduler, and `make promote`, read it after any stop."""
    write_text_atomic(run_dir / "decision.json", json.dumps(decision, indent=2, default=str) + "\n")


def _record_before_erasure(decision: dict[str, Any], run_dir: Path, registry: Registry, started: str) -> None:
    """Record the decision before the erasure, which can run long: a job killed during it still
    leaves its decision.json, and the registry holds the line the next job's `recover()` logs (else
    a rejected candidate could not be promoted by hand, and the next job trained on the same data).
    What it says of the erasure stands only if the job never gets to replace it."""
    unfinished = {"error": "not finished: the job stopped before its erasure ended",
                  "fix": "run `make erase` (the retraining lock must be free); every `make retrain` runs it too"}
    early = _finish({**decision, "erasure": unfinished}, run_dir, started)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_decision(run_dir, early)
    registry.hold_decision({k: v for k, v in early.items() if k != "traceback"})


def run_retrain(cfg: DictConfig) -> int:
    """Run one retraining job and return the exit code; the decision is recorded either way."""
    from pipeline.stages import redact_hydra_records

    started = now()
    run_dir: Path | None = None
    registry: Registry | None = None
    holder_dir: str | None = None
    try:
        run_dir = Path(cfg.run_dir).resolve()
        redact_hydra_records(run_dir)  # before any check: a config error must not leave a raw id there
        configure_environment(run_dir, Path(cfg.cache_dir).resolve())
        root = Path(cfg.retrain.registry_dir)
        blocker = file_in_the_way(root)  # else a FileExistsError traceback, and no decision anywhere
        if blocker is not None:
            raise PipelineError(f"retrain.registry_dir={root}: {blocker} is a file, not a folder; point it at the "
                                "registry folder (created if absent)")
        registry = Registry(root)
        with retrain_lock(registry.root / LOCK_FILE, run_dir):
            decision = _decided(lambda: _job(cfg, run_dir, registry, started))
            _finish(decision, run_dir, started)
            registry.log_decision({k: v for k, v in decision.items() if k != "traceback"})
            registry.release_decision(decision)
    except RetrainBusy as err:
        decision = _finish({"decision": "busy", "reason": str(err)}, run_dir, started)
        holder_dir = err.holder_run_dir
        assert registry is not None
        registry.log_decision(decision)
    except CONFIG_ERRORS as err:  # before the lock: the run folder or registry path itself
        decision = _finish({"decision": "config_error", "reason": str(err)}, run_dir, started)
        if registry is not None:
            registry.log_decision(decision)
    return _report(decision, run_dir, registry, holder_dir)


def _decided(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The step's decision, or the one its error stands for: the scheduler needs a decision.json
    for any crash."""
    try:
        return step()
    except CONFIG_ERRORS as err:
        return {"decision": "config_error", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - recorded with its traceback
        return {"decision": "failed", "reason": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def _finish(decision: dict[str, Any], run_dir: Path | None, started: str) -> dict[str, Any]:
    # A failed erasure fails the job, but a config error stays one: the user's fix comes first (the
    # erasure may have failed for the same setting).
    erasure_failed = "error" in (decision.get("erasure") or {}) and decision["decision"] != "config_error"
    decision.update(run_dir=str(run_dir) if run_dir else None, started_at=started, finished_at=now(),
                    exit_code=EXIT_FAILED if erasure_failed else EXIT_CODES[decision["decision"]])
    return decision


def _report(decision: dict[str, Any], run_dir: Path | None, registry: Registry | None,
            holder_dir: str | None) -> int:
    """Write `decision.json` into this job's own run folder (never into the lock holder's) and
    print one line; say where the decision could not be recorded."""
    notes = []
    if run_dir is None:
        notes.append("no run folder, so no decision.json")
    elif holder_dir is not None and Path(holder_dir) == run_dir:
        notes.append(f"{run_dir} is the running job's folder, so no decision.json was written there")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_decision(run_dir, decision)
        notes.append(str(run_dir / "decision.json"))
    notes.append(f"logged in {registry.root / 'decisions.jsonl'}" if registry is not None
                 else "not logged in decisions.jsonl: retrain.registry_dir is unknown or not a folder")
    line = f"retrain: {decision['decision']}: {decision['reason']} ({'; '.join(notes)})"
    if "error" in (decision.get("erasure") or {}):
        line += f"; but the erasure failed: {decision['erasure']['error']}; {decision['erasure']['fix']}"
    if decision["exit_code"] in (EXIT_CONFIG, EXIT_FAILED):
        print(f"error: {line}", file=sys.stderr)
    else:
        print(line)
    return int(decision["exit_code"])


def refuse_config(overrides: list[str], config_dir: Path, config_name: str = "retrain") -> int | None:
    """For `retrain.py` when Hydra refused the command line before the job started (a mistyped
    override, a missing config group option): EXIT_CONFIG, with the reason recorded like any
    other decision; None when the config composes, so the failure was something else.

    The run folder and registry are those of the command line without the overrides that fail.
    """
    from hydra.core.global_hydra import GlobalHydra

    if any(arg.startswith("-") for arg in overrides):
        return None  # Hydra's own flags (--multirun, --cfg, ...): Hydra's answer stands
    reason, accepted = command_line_problem(overrides, config_name, config_dir)
    if reason is None:
        return None
    started = now()
    run_dir: Path | None = None
    registry: Registry | None = None
    try:
        GlobalHydra.instance().clear()
        cfg = load_config(accepted, config_name, config_dir)
        run_dir = Path(str(cfg.hydra.run.dir)).resolve()
        registry = Registry(Path(cfg.retrain.registry_dir))
    except Exception:  # noqa: BLE001 - record what can be recorded
        pass
    decision = _finish({"decision": "config_error", "reason": reason}, run_dir, started)
    if registry is not None:
        try:
            registry.log_decision(decision)
        except OSError:
            registry = None
    return _report(decision, run_dir, registry, None)
