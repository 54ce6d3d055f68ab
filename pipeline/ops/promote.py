"""Changing the promoted model without training: `make promote MODEL=<id>` and `make rollback`.

Both run inside `retrain.py` (`retrain.promote=<id>`, `retrain.rollback=true`), so they take the
same lock, write the same `decision.json`, append to the same `decisions.jsonl` and use the same
exit codes as a scheduled run; a refusal is a config error (exit 2) with the reason.

Why promote a candidate rather than retrain past the gate: a person reviewed one candidate (its
`decision.json`, its metrics); promoting exactly those weights is the decision they made. A new
training run would give another model (training is deterministic on the CPU only).

    make promote MODEL=<id>   <id> is a candidate the gate rejected (`decision.json` -> candidate),
                              taken from its run folder; or a model in the registry whose weights
                              are kept (an earlier promoted one).
    make rollback             back to the latest earlier promoted model that still has its weights,
                              was not rolled back from before, and holds no deleted utterance.

Neither ever brings back a model trained on deleted data: the corpus tombstones and the requests
waiting in the inbox are checked first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.ops.corpus import check_inbox, pseudonym_key
from pipeline.ops.registry import MODEL_PARTS, RECORD, Registry, check_record_key
from pipeline.runtime import PipelineError, write_text_atomic

CANDIDATE = "candidate.json"


def write_candidate(run_dir: Path, record: dict[str, Any]) -> None:
    """What `promote` needs of a rejected candidate once the run is over (utterance pseudonyms only);
    written whole or not at all, since `promote` refuses a damaged one."""
    write_text_atomic(run_dir / CANDIDATE, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _deleted(cfg: DictConfig, key: bytes) -> set[str]:
    """Applied deletions, those still waiting (a wrong inbox path would hide them), and the clips
    under other ids that hold their audio (the recording exported again), found as erasure finds
    them: a candidate trained on such a copy was trained on the deleted recording."""
    from pipeline.ops.erase import Ledger, find_traces, requested_deletions
    from pipeline.ops.inventory import Roots

    check_inbox(Path(cfg.retrain.inbox))
    roots = Roots.from_cfg(cfg)
    requests = requested_deletions(roots, key)
    if not requests:
        return requests
    # The clips found, by a request or as copies of a requested one.
    return requests | set(find_traces(roots, key, requests, Ledger.load(roots.erasure).audio).clips)


def _retire_reason(registry: Registry, deleted: set[str], key: bytes, otherwise: str) -> str:
    current = registry.current()
    if current and any(a["model_id"] == current["model_id"] for a in registry.affected_by(deleted, key)):
        return "deletion"
    return otherwise


def _refuse_if_deleted(model_id: str, trained_on: list[str], deleted: set[str]) -> None:
    hits = deleted.intersection(trained_on)
    if hits:
        raise PipelineError(f"model {model_id} was trained on {len(hits)} utterance(s) with a deletion request; "
                            "it can never be promoted")


def _rejected_candidate(registry: Registry, model_id: str) -> dict[str, Any] | None:
    for decision in reversed(registry.decisions()):
        if decision.get("decision") == "rejected" and (decision.get("candidate") or {}).get("model_id") == model_id:
            return decision
    return None


def _known_candidates(registry: Registry) -> list[str]:
    ids = [d["candidate"]["model_id"] for d in registry.decisions()
           if d.get("decision") == "rejected" and d.get("candidate")]
    ids += [r["model_id"] for r in registry.records() if registry.has_weights(r["model_id"])]
    return sorted(set(ids))[-10:]


def promote_model(cfg: DictConfig, registry: Registry, model_id: str) -> dict[str, Any]:
    """Promote the candidate or registry model a person chose; no training, no gate."""
    given = model_id
    model_id = model_id.strip().rstrip("/")  # a shell completes the registry's folder name with a slash
    if not model_id or "/" in model_id or model_id in (".", ".."):
        # Else `<id>/` found the folder, and promoted.json named a model no record has.
        raise PipelineError(f"MODEL={given!r} is no model id; give the id alone, as decisions.jsonl and the folders "
                            f"of {registry.models} name it")
    current = registry.current()
    if current and current["model_id"] == model_id:
        raise PipelineError(f"model {model_id} is already the promoted model")
    key = pseudonym_key(cfg.privacy)
    deleted = _deleted(cfg, key)
    previous = current["model_id"] if current else None
    if (registry.model_dir(model_id) / "record.json").is_file():
        record = registry.record(model_id)
        if not registry.has_weights(model_id):
            raise PipelineError(f"model {model_id} was retired ({record.get('retired_reason')}) and its weights "
                                "are gone; it cannot be promoted")
        check_record_key(record, key, registry.model_dir(model_id) / RECORD)
        _refuse_if_deleted(model_id, record.get("trained_on", []), deleted)
        registry.repromote(model_id, _retire_reason(registry, deleted, key, "replaced"))
        return {"decision": "promoted", "by_hand": True, "state": record.get("state"),
                "reason": f"promoted by hand: registry model {model_id}, no training",
                "candidate": {"model_id": model_id}, "retired": [previous] if previous else []}

    rejected = _rejected_candidate(registry, model_id)
    if rejected is None:
        raise PipelineError(f"MODEL={model_id}: no rejected candidate in {registry.root / 'decisions.jsonl'} and no "
                            f"model in {registry.models} has that id; known: {', '.join(_known_candidates(registry)) or 'none'}")
    run_dir = Path(rejected["run_dir"])
    if not (run_dir / CANDIDATE).is_file() or not all((run_dir / p).is_dir() for p in MODEL_PARTS):
        raise PipelineError(f"candidate {model_id}: its run folder {run_dir} no longer holds the model "
                            f"({CANDIDATE}, {', '.join(MODEL_PARTS)}); it was erased or removed, so retrain instead")
    try:
        record = json.loads((run_dir / CANDIDATE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"candidate {model_id}: {run_dir / CANDIDATE} cannot be read ({err}); the file is damaged, "
                            "so retrain instead (or restore the file from a backup)") from None
    if not isinstance(record, dict):
        raise PipelineError(f"candidate {model_id}: {run_dir / CANDIDATE} holds no JSON object; the file is damaged, "
                            "so retrain instead (or restore the file from a backup)")
    check_record_key({"model_id": model_id, **record}, key, run_dir / CANDIDATE)
    _refuse_if_deleted(model_id, record.get("trained_on", []), deleted)
    registry.promote(run_dir, {**record, "promoted_by_hand": True},
                     retire_reason=_retire_reason(registry, deleted, key, "replaced"))
    return {"decision": "promoted", "by_hand": True, "state": record.get("state"),
            "reason": f"promoted by hand: candidate {model_id} from {run_dir}, which the gate had rejected "
                      f"({rejected.get('reason')}); no training",
            "candidate": {k: record.get(k) for k in ("model_id", "dataset_fingerprint", "metrics")},
            "retired": [previous] if previous else []}


def rollback(cfg: DictConfig, registry: Registry) -> dict[str, Any]:
    """Back to the latest earlier promoted model that may and can come back."""
    current = registry.current()
    if current is None:
        raise PipelineError(f"no model is promoted in {registry.root}; nothing to roll back")
    key = pseudonym_key(cfg.privacy)
    deleted = _deleted(cfg, key)
    skipped: list[str] = []
    for model_id in dict.fromkeys(reversed(registry.history())):
        if model_id == current["model_id"]:
            continue
        if not (registry.model_dir(model_id) / "record.json").is_file():
            skipped.append(f"{model_id} (gone from the registry)")
            continue
        record = registry.record(model_id)
        if not registry.has_weights(model_id):
            skipped.append(f"{model_id} (retired for {record.get('retired_reason')}, weights deleted)")
            continue
        if record.get("retired_reason") == "rolled_back":
            skipped.append(f"{model_id} (rolled back from before)")
            continue
        # Refused, not skipped: an older model is likely made under the same other key, and the
        # person rolling back needs to know the key changed.
        check_record_key(record, key, registry.model_dir(model_id) / RECORD)
        if deleted.intersection(record.get("trained_on", [])):
            skipped.append(f"{model_id} (trained on data with a deletion request)")
        else:
            registry.repromote(model_id, _retire_reason(registry, deleted, key, "rolled_back"))
            return {"decision": "rolled_back", "state": record.get("state"),
                    "reason": f"rolled back from {current['model_id']} to {model_id}"
                              + (f", skipping {'; '.join(skipped)}" if skipped else ""),
                    "candidate": {"model_id": model_id}, "retired": [current["model_id"]]}
    raise PipelineError(f"no earlier promoted model to roll back to from {current['model_id']}"
                        + (f": {'; '.join(skipped)}" if skipped else ""))
