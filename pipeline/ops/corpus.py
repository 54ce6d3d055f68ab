"""The retraining corpus: new batches taken from the inbox, deletion requests applied for good.

    <inbox>/<batch>/annotations.jsonl   a canonical jsonl export (audio paths relative to it);
                                        picked up once annotations.jsonl exists, so upload it last
    <inbox>/<batch>/deletions.jsonl     optional: deletion requests that come with the batch
    <inbox>/deletions/*.jsonl           deletion requests: {"utterance_id"}, {"account_id"} or
                                        {"device_serial"} per line

A batch's own `deletions.jsonl` is taken together with the batch and applies like any request:
to the whole corpus, this batch included, for good. Anything else in the inbox that looks like a
deletion file but is not in one of these two places (`<inbox>/deletions.jsonl`, a batch's
`deletion_requests.jsonl`, `<inbox>/deletions/req.json`) refuses the job with an error naming it:
a deletion request is never silently skipped.

Batches are moved (not copied) into `<corpus>/batches/`; `<corpus>/annotations.jsonl` is then
rewritten as one export over all batches, which the ordinary data stage builds (stable splits).

Why deletion goes further than the data stage's filter: a deleted clip is removed from the corpus
itself (its line and its audio); the requests are kept only as keyed pseudonyms
(`<corpus>/deletion_requests.txt`, so later batches of a deleted account are purged on arrival,
without keeping the account id), and each deleted clip only as its utterance pseudonym in
`<corpus>/deleted_utterances.txt` (a tombstone). The registry records models by the same
utterance pseudonyms, so tombstones tell which models were trained on deleted data, even after
the clip is gone, and even when a job died between purging and retraining.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from omegaconf import DictConfig

from pipeline.data.privacy import (DELETION_KEYS, REQUESTS_FILE, TOMBSTONES_FILE, Deletions, check_folder_key,
                                   parse_deletion_requests, read_pseudonyms, stamp_folder_key,
                                   utterance_pseudonym)
from pipeline.data.schema import json_lines, utf8_json
from pipeline.ops.registry import TMP_PREFIX, now
from pipeline.runtime import PipelineError, resolved, write_text_atomic

ANNOTATIONS = "annotations.jsonl"
BATCH_DELETIONS = "deletions.jsonl"
REQUEST_FOLDER = "deletions"
QUARANTINE = "deletion_quarantine.jsonl"
# Batch lines that are no record (cut short, not JSON): taken out of the corpus at intake, named here.
ANNOTATION_QUARANTINE = "annotation_quarantine.jsonl"


@dataclass
class Corpus:
    annotations: Path
    requests: Path
    new_batches: list[str] = field(default_factory=list)
    new_requests: int = 0
    purged: int = 0
    batches: int = 0
    tombstones: set[str] = field(default_factory=set)
    quarantined: int = 0
    unreadable: int = 0  # batch lines that were no record, set aside this intake (ANNOTATION_QUARANTINE)
    unnamed_audio: int = 0  # batch audio files no record names, removed this intake

    def state(self, extra: str = "") -> str:
        """What a model trained now would be trained on: same state, same model (training is
        deterministic), so a scheduler re-running with nothing new has nothing to do."""
        digest = hashlib.sha256()
        for path in (self.annotations, self.requests):
            digest.update(path.read_bytes() if path.is_file() else b"")
        digest.update(extra.encode())
        return digest.hexdigest()


def pseudonym_key(privacy: DictConfig) -> bytes:
    """The same key the data stage pseudonymises with (`privacy.key_env`, else `privacy.key_file`)."""
    from pipeline.data.config import configured_key

    return configured_key(privacy)


def check_inbox(inbox: Path) -> None:
    """A wrong inbox path must not look like an empty inbox: the job would report nothing to do
    while batches and deletion requests wait somewhere else."""
    if not inbox.is_dir():
        raise PipelineError(f"retrain.inbox={inbox}: no such folder; fix PIPELINE_INBOX (or retrain.inbox), "
                            "or create the folder if this is the first run")


def _looks_like_deletions(path: Path) -> bool:
    return "delet" in path.name.lower() and not path.name.startswith(".")


def _holds_requests(path: Path) -> bool:
    """A file whose first records name only what a deletion request names, whatever its file name
    (`user-1234.jsonl` dropped beside the batches): never read there, so it must not pass unseen."""
    if not path.is_file() or path.name.startswith(".") or path.stat().st_size > 50_000_000:
        return False
    records = []
    for line in json_lines(path):
        if line.record is not None:
            records.append(line.record)
        if len(records) == 5:
            break
    return bool(records) and all(r and set(r) <= set(DELETION_KEYS) for r in records)


def stray_deletion_files(inbox: Path) -> list[str]:
    """Deletion-looking files the intake would not read, each with where it belongs."""
    if not inbox.is_dir():
        return []
    stray = []
    for path in sorted(inbox.iterdir()):
        if path.name == REQUEST_FOLDER and path.is_dir():
            stray += [f"{_misplaced(p)}: only *.jsonl files are read there" for p in sorted(path.iterdir())
                      if not p.name.startswith(".") and not (p.is_file() and p.suffix == ".jsonl")]
        elif path.is_dir() and _looks_like_deletions(path):
            stray.append(f"{_misplaced(path)}: requests belong in {inbox / REQUEST_FOLDER}/*.jsonl")
        elif path.is_dir():
            stray += [f"{_misplaced(p)}: a batch's requests belong in {path / BATCH_DELETIONS}"
                      for p in sorted(path.iterdir()) if _looks_like_deletions(p) and p.name != BATCH_DELETIONS]
        elif _looks_like_deletions(path) or _holds_requests(path):
            stray.append(f"{_misplaced(path)}: requests belong in {inbox / REQUEST_FOLDER}/*.jsonl")
    return stray


def inbox_requests(inbox: Path, key: bytes) -> tuple[list[Path], set[str]]:
    """The request files waiting in the inbox (its deletions folder and the batches ready to be
    taken), and their requests as pseudonyms. A request file in the wrong place is an error."""
    stray = stray_deletion_files(inbox)
    if stray:
        count = f"{len(stray)} entries" if len(stray) > 1 else "1 entry"
        raise PipelineError(f"deletion requests the intake would not read, {count} ({'; '.join(stray)}). Move each "
                            "where it says (find it with `sha256sum`); nothing was taken from the inbox")
    folder = inbox / REQUEST_FOLDER
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    files += [b / BATCH_DELETIONS for b in inbox_batches(inbox) if (b / BATCH_DELETIONS).is_file()]
    return files, {p for f in files for p in parse_deletion_requests(f, key)[0].pseudonyms}


def quarantine_requests(files: list[Path], corpus_dir: Path, key: bytes) -> int:
    """Record each malformed request line (file, line number, why; never its content) in
    `<corpus>/deletion_quarantine.jsonl`, so the sender can fix and resend it; the rest apply.
    The file is named by its folder and SHA-256 (as `sha256sum` prints it, first 16 digits), not its
    name: a request file is often named after the account it asks about."""
    bad = [{**b, "file": request_file_name(f), "at": now()} for f in files for b in parse_deletion_requests(f, key)[1]]
    if bad:
        with open(corpus_dir / QUARANTINE, "a") as out:
            out.write("".join(json.dumps(b, sort_keys=True) + "\n" for b in bad))
    return len(bad)


def _sha256(path: Path) -> str:
    """A request file's name where a name would do: its name may be the account it asks about."""
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def request_file_name(path: Path) -> str:
    """How receipts, the request quarantine and the console name a request file (quarantine_requests)."""
    return f"{path.parent.name}/{_sha256(path)}"


def _misplaced(path: Path) -> str:
    """A misplaced request file or folder in the intake's refusal, which reaches decision.json and the
    registry's log: by hash and the folder it lies in, as `stray_inbox_entries` names inbox entries.
    Not by name, suffix included (`jane.doe` has the suffix `.doe`): its name may be the account it asks about."""
    return f"{_stray_reference(path)} in {path.parent}"


def deleted_utterances(records: list[dict[str, Any]], requests: set[str], key: bytes) -> set[str]:
    """Pseudonyms of the utterances the requests name: directly, or through their account or device."""
    wanted = Deletions(requests)
    named = {p for p in requests if p.startswith("utt_")}
    return named | {utterance_pseudonym(key, str(r["utterance_id"])) for r in records
                    if r.get("utterance_id") is not None and wanted.matches(key, r)}


def batch_records(batch: Path) -> list[dict[str, Any]]:
    """The parseable records of one batch (bad lines are the data stage's to quarantine)."""
    return [line.record for line in json_lines(batch / ANNOTATIONS) if line.record is not None]


def inbox_batches(inbox: Path) -> list[Path]:
    """The inbox's batches. A hidden folder is none (an upload tool's folder in progress): it was taken
    and trained on, but never named in a decision's `new_batches`, which skip such names."""
    if not inbox.is_dir():
        return []
    return sorted(p for p in inbox.iterdir()
                  if p.is_dir() and p.name != REQUEST_FOLDER and not p.name.startswith(".") and (p / ANNOTATIONS).is_file())


def stray_inbox_entries(inbox: Path) -> str:
    """What lies in the inbox but is no batch (an export dropped there as a file, a folder without
    annotations.jsonl), said so, since the job would otherwise wait for batches that never come."""
    stray = sorted((p for p in inbox.iterdir() if p.name != REQUEST_FOLDER and not p.name.startswith(".")
                    and p not in inbox_batches(inbox)), key=lambda p: p.name) if inbox.is_dir() else []
    if not stray:
        return ""
    # Not by name, suffix included: an export is often named after its account, and this reason
    # reaches decision.json, decisions.jsonl and the console. The hash finds it in the inbox.
    shown = ", ".join(_stray_reference(p) for p in stray[:5]) + (" ..." if len(stray) > 5 else "")
    count = f"{len(stray)} entries in it are" if len(stray) > 1 else "1 entry in it is"
    return f"; {count} not batches ({shown}): each batch is a folder holding {ANNOTATIONS} (and its audio)"


def _stray_reference(path: Path) -> str:
    """An inbox entry that is no batch, by hash: a file's content as `sha256sum` prints it, a folder's name
    (`printf %s NAME | sha256sum`), first 16 digits."""
    if path.is_file():
        return f"a file with {_sha256(path)}"
    return f"a folder whose name has sha256:{hashlib.sha256(path.name.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


# An inbox batch being copied into the corpus from another file system (see _move).
TAKING = ".taking-"


def _move(src: Path, dst: Path) -> None:
    """Atomic on one file system. Across file systems: the inbox batch is renamed aside first, then
    copied to a temp name and renamed into place; a job killed on the way leaves the batch aside,
    which the next intake finishes (finish_interrupted_moves), never both a batch and its copy."""
    try:
        os.rename(src, dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        aside = src.with_name(TAKING + src.name)
        os.rename(src, aside)
        tmp = dst.with_name(TMP_PREFIX + dst.name)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(aside, tmp)
        os.rename(tmp, dst)
        shutil.rmtree(aside)


def finish_interrupted_moves(inbox: Path, batches_dir: Path) -> None:
    """A batch a killed job left aside (_move): gone from the inbox if its copy is in the corpus,
    else put back, to be taken again."""
    for aside in sorted(inbox.glob(f"{TAKING}*")) if inbox.is_dir() else []:
        name = aside.name.removeprefix(TAKING)
        if (batches_dir / name).is_dir():
            shutil.rmtree(aside)
        else:
            os.rename(aside, inbox / name)


def _inside(root: Path, relative: str) -> Path | None:
    """The audio file a record names, only if it stays inside its batch folder."""
    if not relative or PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
        return None
    path = resolved(root / relative)
    return path if path is not None and path.is_relative_to(root.resolve()) else None


# What to do about a corpus or ledger made under another key, short of restoring that key.
REDO_REQUESTS = ("if that key is lost, apply its deletion requests again from their original files, under the "
                 "current key (put them back in the inbox)")


def check_corpus_key(corpus_dir: Path, key: bytes) -> None:
    """Refuse the corpus's requests and tombstones when they were made under another key than `key`
    (its stamp, privacy.KEY_ID_FILE): matched against this key's pseudonyms they find nothing, and
    deleted clips would come back in the next build."""
    check_folder_key(corpus_dir, key, f"the retraining corpus {corpus_dir} (its {REQUESTS_FILE} and {TOMBSTONES_FILE})",
                     REDO_REQUESTS)


def update_corpus(inbox: Path, corpus_dir: Path, key: bytes) -> Corpus:
    """Take new batches and requests from the inbox; purge deleted clips; write the merged export.

    Each step is idempotent and ends in an atomic rename, so a job killed anywhere in here is
    finished by the next one. Everything is checked before anything is taken, so a refused inbox
    is left exactly as it was.
    """
    check_inbox(inbox)
    check_corpus_key(corpus_dir, key)
    batches_dir = corpus_dir / "batches"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    stamp_folder_key(corpus_dir, key)  # before any pseudonym is written to it (and before `batches`: a new one)
    batches_dir.mkdir(exist_ok=True)
    # What a killed job was writing (a batch's annotations too: they may hold a deleted record).
    for tmp in [*batches_dir.glob(f"{TMP_PREFIX}*"), *batches_dir.glob(f"*/{TMP_PREFIX}*"), *corpus_dir.glob(f"{TMP_PREFIX}*")]:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    finish_interrupted_moves(inbox, batches_dir)
    corpus = Corpus(corpus_dir / ANNOTATIONS, corpus_dir / REQUESTS_FILE)

    taken = {p.name for p in batches_dir.iterdir()} if batches_dir.is_dir() else set()
    for batch in inbox_batches(inbox):
        if batch.name in taken:
            raise PipelineError(f"inbox batch {batch} has the name of an already ingested batch; "
                                "rename the folder (batch names must be unique)")

    # 1. Requests first (a batch's own included): a batch arriving together with a request for it
    # is purged right away. The request files go once their pseudonyms are stored, so no raw
    # account id or serial is carried into the corpus.
    request_files, incoming = inbox_requests(inbox, key)
    known = read_pseudonyms(corpus.requests)
    requests = known | incoming
    corpus.new_requests = len(requests - known)
    write_text_atomic(corpus.requests, "".join(p + "\n" for p in sorted(requests)))
    corpus.quarantined = quarantine_requests(request_files, corpus_dir, key)
    for path in request_files:
        path.unlink()

    # 2. New batches.
    for batch in inbox_batches(inbox):
        _move(batch, batches_dir / batch.name)
        corpus.new_batches.append(batch.name)

    # 3. Tombstones, then purge, then the merged export.
    _purge_and_merge(corpus, corpus_dir, key, requests)
    return corpus


def remove_unnamed_audio(batch: Path, named: set[Path]) -> int:
    """Remove the batch's audio files no record names (a line cut short named one): no deletion
    request can reach such a recording, and no build reads it. Returns how many went."""
    from pipeline.data.features import AUDIO_EXTENSIONS

    unnamed = [p for p in batch.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
               and not p.is_symlink() and p.resolve() not in named]
    for path in unnamed:
        path.unlink()
    return len(unnamed)


def remerge(corpus_dir: Path, key: bytes) -> Corpus:
    """Step 3 alone, after erasure added tombstones (clips under other ids that hold a deleted clip's
    audio): they leave the batches and the merged export now, not at the next intake."""
    corpus = Corpus(corpus_dir / ANNOTATIONS, corpus_dir / REQUESTS_FILE)
    if (corpus_dir / "batches").is_dir():
        _purge_and_merge(corpus, corpus_dir, key, read_pseudonyms(corpus.requests))
    return corpus


def _purge_and_merge(corpus: Corpus, corpus_dir: Path, key: bytes, requests: set[str]) -> None:
    check_corpus_key(corpus_dir, key)
    tomb_file = corpus_dir / TOMBSTONES_FILE
    corpus.tombstones = read_pseudonyms(tomb_file)
    batches_dir = corpus_dir / "batches"
    batches = sorted(p for p in batches_dir.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))
    all_records = [r for b in batches for r in batch_records(b)]
    new_tombs = deleted_utterances(all_records, requests, key) - corpus.tombstones
    if new_tombs:
        corpus.tombstones |= new_tombs
        stamp_folder_key(corpus_dir, key)
        write_text_atomic(tomb_file, "".join(h + "\n" for h in sorted(corpus.tombstones)))
    wanted = Deletions(requests | corpus.tombstones)  # tombstones: erasure's copies too
    merged: list[str] = []
    for batch in batches:
        unreadable: list[dict[str, Any]] = []
        kept: list[str] = []
        named: set[Path] = set()  # every audio file a readable record names, kept or purged
        for line in json_lines(batch / ANNOTATIONS):
            record = line.record
            if record is None:
                if line.text.strip():
                    # No request can be matched against it, and it may hold a raw account id or serial
                    # (a line cut short by an export): it leaves the corpus, named by its hash only.
                    unreadable.append({"batch": batch.name, "line": line.number, "reason": line.error, "at": now(),
                                       "sha256": hashlib.sha256(line.text.encode("utf-8", "surrogateescape")).hexdigest()[:16]})
                continue
            audio_path = resolved(batch / record["audio"]) if isinstance(record.get("audio"), str) and record["audio"] else None
            if audio_path is not None:
                named.add(audio_path)
            if wanted.matches(key, record):
                audio = _inside(batch, str(record.get("audio") or ""))
                if audio is not None and audio.is_file():
                    audio.unlink()  # its sha256 is in erasure's ledger already (erase.record_source_audio)
                corpus.purged += 1
                continue
            kept.append(line.text)
            audio = record.get("audio")
            if isinstance(audio, str) and _inside(batch, audio) is not None:
                record["audio"] = f"batches/{batch.name}/{audio}"
            # Half an emoji (a lone surrogate) cannot be written as UTF-8: that line keeps JSON's escapes.
            merged.append(utf8_json(record) or json.dumps(record))
        if unreadable:  # named before the batch is rewritten without them, so a job killed between loses none
            with open(corpus_dir / ANNOTATION_QUARANTINE, "a") as out:
                out.write("".join(json.dumps(u, sort_keys=True) + "\n" for u in unreadable))
                out.flush()
                os.fsync(out.fileno())
        corpus.unreadable += len(unreadable)
        write_text_atomic(batch / ANNOTATIONS, "".join(line + "\n" for line in kept))
        corpus.unnamed_audio += remove_unnamed_audio(batch, named)
    corpus.batches = len(batches)
    write_text_atomic(corpus.annotations, "".join(line + "\n" for line in merged))


def pending_deletions(inbox: Path, corpus_dir: Path, key: bytes, incoming: set[str] | None = None) -> set[str]:
    """For the audit: tombstones plus the utterances requests still waiting in the inbox delete
    (`incoming`: those requests' pseudonyms, when the caller has parsed them already)."""
    check_corpus_key(corpus_dir, key)
    if incoming is None:
        incoming = inbox_requests(inbox, key)[1]
    ingested = corpus_dir / "batches"
    batches = [*inbox_batches(inbox), *(sorted(p for p in ingested.iterdir() if p.is_dir()) if ingested.is_dir() else [])]
    records = [r for b in batches if (b / ANNOTATIONS).is_file() for r in batch_records(b)]
    return read_pseudonyms(corpus_dir / TOMBSTONES_FILE) | deleted_utterances(records, incoming, key)
