"""The registry of promoted models: a plain folder anyone can read, back up and audit.

    <registry>/promoted.json            {"model_id": current, "history": [every id ever promoted]}
    <registry>/models/<id>/record.json  dataset fingerprint, metrics, training utterance pseudonyms
                                        and the id of the key they were made with (`key_id`)
    <registry>/models/<id>/record.promoting.json
                                        a model promoted again, its new record until promoted.json names it
    <registry>/models/<id>/asr, nlu     the model folders (removed when retired for a deletion)
    <registry>/decisions.jsonl          one line per job decision: promoted, rejected, nothing_to_do,
                                        busy, config_error, failed (append-only)
    <registry>/decision-unlogged.json   a decision made but not yet logged (while the job erases)
    <registry>/retrain.lock             held while a retraining job runs

Why this shape: `promoted.json` is the single commit point, replaced atomically, so a job killed at
any moment leaves either the old or the new model promoted, never half of one; `recover()` tidies
what a killed job left behind. Training utterances are stored as their keyed pseudonyms
(`utt_<hmac>`, as the data stage names them), so the registry can answer "was this model trained
on that clip?" without holding a list of identifiers anyone could read or guess. Those pseudonyms
match only the same key's: a record names its key (`key_id`), and every check of a record against
deletions refuses one made under another key (`check_record_key`).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.data.privacy import check_key_id
from pipeline.runtime import PipelineError, kept_from_children, write_text_atomic

PROMOTED = "promoted.json"
RECORD = "record.json"
# The record of a model promoted again (`repromote`), written beside its record.json and moved over it
# only once promoted.json names the model: a job killed in between leaves the old record whole, never
# one that `replaces` a model in a promotion that did not happen.
PROMOTING = "record.promoting.json"
DECISIONS = "decisions.jsonl"
# A job's decision, held here from the moment it is made until its line is in decisions.jsonl (the
# erasure runs in between and can be long): a job killed meanwhile leaves it for the next to log.
HELD_DECISION = "decision-unlogged.json"
MODEL_PARTS = ("asr", "nlu")
LOCK_FILE = "retrain.lock"  # held while a retraining job (or `make erase`) runs: `retrain_lock`
TMP_PREFIX = ".tmp-"


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def retire_command(key_id: Any) -> str:
    """The command that removes everything made under a lost pseudonym key (pipeline.ops.erase.retire_lost_key),
    as a refusal names it."""
    return f'`make erase ARGS="erase.retire_key={key_id}"`'


def check_record_key(record: dict[str, Any], key: bytes, path: Path | str | None = None) -> None:
    """Refuse to match a model record's `trained_on` against `key`'s pseudonyms when it was made under
    another key (a KeyMismatch naming the model and what to do). A record without `key_id` was
    registered before records kept it: taken as the current key's, with a warning (privacy.check_key_id
    says why)."""
    where = f" ({path})" if path else ""
    folder = Path(path).parent if path else Path(str(record.get("model_id")))
    check_key_id(record.get("key_id"), key, f"model {record.get('model_id')}{where}",
                 "if that key is lost, the model can never be checked against deletions: remove its weights "
                 f"({', '.join(str(folder / p) for p in MODEL_PARTS)}) so it never serves again "
                 f"({retire_command(record.get('key_id'))} removes everything made under that key), and "
                 "retrain to register a model under the current key")


def weights_saw_deleted(record: dict[str, Any], deleted: set[str], erased: set[str]) -> bool:
    """Whether a registered model's weights were trained on deleted data: its training and validation
    clips (`trained_on`) include one. A deletion that reached only its dataset's test split leaves
    the weights as they were (they never saw the clip): the registered model stays, as the retraining
    decided (`Registry.affected_by`), while its run folder, built on the erased dataset, loses its
    derived parts (pipeline.ops.erase.erase_copies).
    A record without `trained_on` goes by its whole dataset (`erased`: fingerprints)."""
    if record.get("trained_on") is None:
        return record.get("dataset_fingerprint") in erased
    return bool(set(record["trained_on"]) & deleted)


def _read_json(path: Path) -> dict[str, Any]:
    """A registry file; the registry's own writes are atomic, so a bad one was edited or damaged by hand."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"registry file {path} cannot be read ({err}); restore it from a backup, or from "
                            f"{DECISIONS} and the model records beside it") from None
    if not isinstance(value, dict):
        raise PipelineError(f"registry file {path} holds no JSON object; restore it from a backup")
    return value


def _same_job(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """One job's decision: its run folder and start time (a folder given again is another job)."""
    return (a.get("run_dir"), a.get("started_at")) == (b.get("run_dir"), b.get("started_at"))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    """A registry folder; every method reads the folder afresh, so two readers never disagree."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"

    def _pointer(self) -> dict[str, Any]:
        path = self.root / PROMOTED
        return _read_json(path) if path.is_file() else {"model_id": None, "history": []}

    def record(self, model_id: str) -> dict[str, Any]:
        return _read_json(self.models / model_id / RECORD)

    def records(self) -> list[dict[str, Any]]:
        if not self.models.is_dir():
            return []
        return [_read_json(p) for p in sorted(self.models.glob(f"*/{RECORD}"))
                if not p.parent.name.startswith(TMP_PREFIX)]

    def current(self) -> dict[str, Any] | None:
        model_id = self._pointer()["model_id"]
        return self.record(model_id) if model_id else None

    def model_dir(self, model_id: str) -> Path:
        return self.models / model_id

    def has_weights(self, model_id: str) -> bool:
        return all((self.models / model_id / part).is_dir() for part in MODEL_PARTS)

    def holds_weights(self, model_id: str) -> bool:
        """Whether any of the model's weights are left (an erasure killed part-way leaves some)."""
        return any((self.models / model_id / part).exists() for part in MODEL_PARTS)

    def history(self) -> list[str]:
        """Every promotion in order (a model promoted again, by rollback or by hand, appears again)."""
        return list(self._pointer()["history"])

    def repromote(self, model_id: str, retire_reason: str) -> str | None:
        """Promote a model already in the registry (its weights kept), retiring the current one.

        `promoted.json` commits, as in `promote`: the new record is written beside the old one
        (PROMOTING) and moved over it only after the switch, then the previous model is retired. A job
        killed before the switch leaves the model's record as it was (its retirement, its reason, what
        it replaced), and `recover()` drops the new one; killed after it, `recover()` finishes both.
        """
        if not self.has_weights(model_id):
            raise FileNotFoundError(f"{self.models / model_id}: the model's weights are gone")
        pointer = self._pointer()
        previous = pointer["model_id"]
        record = self.record(model_id)
        for stale in ("retired_reason", "replaced_by", "retired_at"):
            record.pop(stale, None)
        record.update(status="promoted", promoted_at=now(),
                      replaces={"model_id": previous, "reason": retire_reason} if previous else None)
        write_json_atomic(self.models / model_id / PROMOTING, record)
        write_json_atomic(self.root / PROMOTED, {"model_id": model_id, "history": [*pointer["history"], model_id]})
        self._finish_record(model_id)
        if previous:
            self.retire(previous, retire_reason, replaced_by=model_id)
        return previous

    def _finish_record(self, model_id: str) -> None:
        """Move a re-promoted model's new record over its old one (after promoted.json names it)."""
        os.replace(self.models / model_id / PROMOTING, self.models / model_id / RECORD)

    def promote(self, run_dir: Path, record: dict[str, Any], retire_reason: str = "replaced") -> str:
        """Copy the run's models in, then switch `promoted.json`: the one step that commits."""
        self.models.mkdir(parents=True, exist_ok=True)
        model_id = record["model_id"]
        pointer = self._pointer()
        previous = pointer["model_id"]
        tmp = self.models / f"{TMP_PREFIX}{model_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for part in MODEL_PARTS:
            # The model itself, not the training checkpoints kept beside it.
            shutil.copytree(run_dir / part, tmp / part, ignore=shutil.ignore_patterns("checkpoints"))
        full = {**record, "status": "promoted", "promoted_at": now(),
                "replaces": {"model_id": previous, "reason": retire_reason} if previous else None}
        write_json_atomic(tmp / RECORD, full)
        os.rename(tmp, self.models / model_id)
        write_json_atomic(self.root / PROMOTED, {"model_id": model_id,
                                                 "history": [*pointer["history"], model_id]})
        if previous:
            self.retire(previous, retire_reason, replaced_by=model_id)
        return model_id

    def retire(self, model_id: str, reason: str, replaced_by: str | None) -> None:
        """Mark a model retired; one retired for a deletion loses its weights (the record stays).

        Reasons: `replaced` (a better model), `rolled_back` (a person took it back; a later
        rollback skips it), `deletion` (trained on deleted data; never comes back).
        """
        record = self.record(model_id)
        record.update(status="retired", retired_reason=reason, replaced_by=replaced_by,
                      retired_at=record.get("retired_at") or now())
        if reason == "deletion":
            for part in MODEL_PARTS:
                shutil.rmtree(self.models / model_id / part, ignore_errors=True)
            record["weights_deleted"] = True
        write_json_atomic(self.models / model_id / RECORD, record)

    def recover(self) -> list[str]:
        """Finish or undo what a killed job left; returns what was done, for the job's log."""
        done: list[str] = self._log_held_decision()
        if not self.models.is_dir():
            return done
        for tmp in self.models.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)
            done.append(f"removed unfinished copy {tmp.name}")
        for tmp in self.root.glob(f"{TMP_PREFIX}*"):
            tmp.unlink()
        pointer = self._pointer()
        current = pointer["model_id"]
        for pending in sorted(self.models.glob(f"*/{PROMOTING}")):
            # First: the retirements below read the current model's `replaces`.
            model_id = pending.parent.name
            if model_id == current:
                self._finish_record(model_id)
                done.append(f"wrote the record of {model_id}, promoted again by a job killed before writing it")
            else:
                pending.unlink()
                done.append(f"dropped the new record of {model_id}, whose promotion never happened")
        for folder in sorted(p for p in self.models.iterdir() if p.is_dir()):
            model_id = folder.name
            if model_id == current:
                continue
            if model_id not in pointer["history"]:
                shutil.rmtree(folder)  # copied in, but the job died before promoting it
                done.append(f"removed never-promoted {model_id}")
                continue
            record = self.record(model_id)
            successor = self._successor(pointer["history"], model_id)
            reason = ((successor or {}).get("replaces") or {}).get("reason", "replaced")
            if record.get("status") != "retired" or (reason == "deletion" and self.has_weights(model_id)):
                self.retire(model_id, reason, replaced_by=(successor or {}).get("model_id"))
                done.append(f"retired {model_id} ({reason})")
        if current is not None and current not in {(d.get("candidate") or {}).get("model_id") for d in self.decisions()
                                                   if d.get("decision") in ("promoted", "rolled_back")}:
            # Promoted, and the job killed before its decision was logged: without the line the audit
            # trail lacks the model, and the next job, finding no decision for its data, trains again.
            record = self.record(current)
            self.log_decision({
                "decision": "promoted", "state": record.get("state"), "run_dir": record.get("run_dir"),
                "candidate": {k: record.get(k) for k in ("model_id", "dataset_fingerprint", "metrics")},
                "reason": "its job was killed after promoting it, before logging; logged by the next job",
                "finished_at": now()})
            done.append(f"logged the promotion of {current}, whose job was killed before logging it")
        return done

    def hold_decision(self, decision: dict[str, Any]) -> None:
        """Keep a decision until its line is logged (`release_decision`); call it while holding the
        lock. A rejected candidate that no line names cannot be promoted by hand, and its data would
        be trained on again."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / HELD_DECISION, decision)

    def release_decision(self, decision: dict[str, Any]) -> None:
        """Drop the held decision once this job's line is logged; another job's stays for `recover`."""
        path = self.root / HELD_DECISION
        if path.is_file() and _same_job(_read_json(path), decision):
            path.unlink()

    def _log_held_decision(self) -> list[str]:
        """Log the decision of a job killed between deciding and logging (during its erasure)."""
        path = self.root / HELD_DECISION
        if not path.is_file():
            return []
        held = _read_json(path)
        done = []
        if not any(_same_job(held, logged) for logged in self.decisions()):  # else killed just after logging
            self.log_decision(held)
            done.append(f"logged the {held.get('decision')} decision of the job in {held.get('run_dir')} "
                        f"(candidate {(held.get('candidate') or {}).get('model_id')}), killed before logging it")
        path.unlink()
        return done

    def _successor(self, history: list[str], model_id: str) -> dict[str, Any] | None:
        """The record of the model promoted right after the last promotion of `model_id`, when it
        says it replaced it (a model promoted again, by rollback or by hand, has had several)."""
        after = len(history) - history[::-1].index(model_id)  # the position after its last promotion
        if after >= len(history) or not (self.models / history[after] / RECORD).is_file():
            return None
        record = self.record(history[after])
        return record if (record.get("replaces") or {}).get("model_id") == model_id else None

    def affected_by(self, deleted_hashes: Iterable[str], key: bytes) -> list[dict[str, Any]]:
        """Models whose weights still exist and were trained on any of these utterance pseudonyms
        (made with `key`). A model with weights registered under another key is refused
        (`check_record_key`): its pseudonyms could never match, and it would pass as unaffected."""
        wanted = set(deleted_hashes)
        if not wanted:  # nothing to match: no model can be missed, whatever its key
            return []
        affected = []
        current = self._pointer()["model_id"]
        for record in self.records():
            # An erased model has no weights, but while it is the promoted one it still needs replacing.
            if not self.has_weights(record["model_id"]) and not (record.get("erased_at") and record["model_id"] == current):
                continue
            if self.holds_weights(record["model_id"]):  # an erased one's pseudonyms guard no weights
                check_record_key(record, key, self.models / record["model_id"] / RECORD)
            hits = wanted.intersection(record.get("trained_on", []))
            if hits:
                affected.append({"model_id": record["model_id"], "status": record.get("status"),
                                 "deleted_utterances": len(hits)})
        return affected

    def check_keys(self, key: bytes) -> None:
        """Refuse, before a job takes anything from the inbox, when a model that still has weights was
        registered under another key (`check_record_key`): found only at the matching, the intake would
        already have stored the new requests under the current key, so restoring the old key would
        then meet a corpus made under the new one."""
        for record in self.records():
            if self.holds_weights(record["model_id"]):
                check_record_key(record, key, self.models / record["model_id"] / RECORD)

    def mark_erased(self, model_id: str, lost_key: str | None = None) -> None:
        """Remove a model trained on erased data and mark its record so (the record stays, for the
        audit and the history); a rollback never returns to it.

        The record first: a job killed while removing the weights leaves a model marked erased (that
        a promoted one is replaced, and erasure removes what is left), never a promoted model
        without weights or mark, which the gate would keep comparing candidates against.
        `lost_key`: erased because it was made under that pseudonym key, which is lost (its record
        names it as `lost_key_id`), not for a deletion."""
        record = self.record(model_id)
        record.update(weights_deleted=True, erased_at=record.get("erased_at") or now(),
                      **({"lost_key_id": lost_key} if lost_key else {}))
        write_json_atomic(self.models / model_id / RECORD, record)
        for part in MODEL_PARTS:
            shutil.rmtree(self.models / model_id / part, ignore_errors=True)

    def decisions(self) -> list[dict[str, Any]]:
        path = self.root / DECISIONS
        if not path.is_file():
            return []
        decisions = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                decision = json.loads(line)
            except json.JSONDecodeError as err:
                decision = err
            if not isinstance(decision, dict):
                # Each job appends one whole line: a damaged one was cut short (a full disk) or edited.
                raise PipelineError(f"registry file {path} line {n} is not a JSON object ({decision}); restore the "
                                    "file from a backup, or remove the line (each job's decision.json holds its own)")
            decisions.append(decision)
        return decisions

    def log_decision(self, decision: dict[str, Any]) -> None:
        """One `write` on an O_APPEND file: a busy job appending while the lock holder does
        cannot interleave the two lines."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(decision, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.root / DECISIONS, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut short: this one starts on its own
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ the retraining lock

class RetrainBusy(RuntimeError):
    def __init__(self, message: str, holder_run_dir: str | None) -> None:
        super().__init__(message)
        self.holder_run_dir = holder_run_dir


# A forked child (a datasets map worker, a DataLoader worker) closes its copy of the lock's descriptor
# (runtime.kept_from_children), so an orphan of a killed job cannot keep the registry busy. Orphaned,
# such workers would still linger asleep for good (nothing reads their queues any more), so on Linux a
# child forked by a job's main thread is killed when the job dies (a child forked by another thread
# would die with that thread, so it is left be).
_holding = False  # while this process holds the lock
_forked_by_job: int | None = None  # the job's pid, set just before its main thread forks
PR_SET_PDEATHSIG = 1


def _before_fork() -> None:
    global _forked_by_job
    in_job = _holding and threading.current_thread() is threading.main_thread()
    _forked_by_job = os.getpid() if in_job else None


def _in_forked_child() -> None:
    global _holding, _forked_by_job
    _holding = False
    parent, _forked_by_job = _forked_by_job, None
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the job died before the request took hold
        os._exit(1)


def _after_fork_in_parent() -> None:
    global _forked_by_job
    _forked_by_job = None


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_in_forked_child)


@contextmanager
def retrain_lock(path: Path, run_dir: Path | None = None) -> Iterator[None]:
    """An exclusive `flock`: the kernel drops it when the holder dies, so a killed job never
    leaves a stale lock behind (forked children do not keep it). (Keep the registry on a
    local or flock-capable file system.) The lock file names the holder's pid and run folder, so a
    busy job can keep out of it."""
    global _holding
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PipelineError(f"retrain.registry_dir={path.parent}: cannot open the lock file {path} ({err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {"pid": text.strip() or "?"}
        raise RetrainBusy(f"another retraining job (pid {holder.get('pid')}, run folder {holder.get('run_dir')}) "
                          f"holds {path}", holder.get("run_dir")) from None
    _holding = True
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "run_dir": str(run_dir) if run_dir else None}) + "\n").encode(), 0)
        with kept_from_children(fd):
            yield
    finally:
        _holding = False
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
