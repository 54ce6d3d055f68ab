"""`make erase`: remove every copy of the clips that deletion requests name, and say so in a receipt.

Retiring a model and purging the corpus is not erasure: the clip also lives on in cached datasets,
in the weights, checkpoints and character LM of every model trained on them (registered or not,
rejected runs too), in predictions and reports, and in W&B's offline runs and staged artifacts.
This job walks the inventory (pipeline/ops/inventory.py) and, for every pending request:

1. takes requests and batches from the inbox into the corpus, which purges the clips there
   (standalone only: inside `make retrain` the job has just done it);
2. deletes every cached dataset holding a deleted clip (the next build rebuilds from the purged
   source under a new fingerprint) and purges the clip from demo exports;
3. in every run folder trained on such a dataset, removes the models, checkpoints, LM,
   predictions, reports and the W&B offline run with its staged artifacts, and marks the folder
   `DO_NOT_SYNC` so `make sync` refuses it; registered models lose their files and their record is
   marked erased; predictions of other runs lose the deleted clips' lines;
4. deletes the runs' online W&B copies through W&B's public API, when W&B is online;
5. writes a receipt, `<erasure>/receipts/<time>.json`: what was removed, where, when, by
   pseudonymous ids only.

Nothing is retrained here: a model that held no deleted data is not touched.

What the audit needs later is kept in `<erasure>/erased.jsonl`: the fingerprints of erased
datasets, and per deleted clip a SHA-256 of its audio and a keyed hash of its transcript and of
its character n-grams (for the LM check). None of these can be turned back into the clip.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import run_folder
from pipeline.asr.config import MAX_LM_ORDER
from pipeline.data import label_noise
from pipeline.data.privacy import (REQUESTS_FILE, TOMBSTONES_FILE, KeyMismatch, check_folder_key, check_key_id,
                                   folder_key_id, key_id, pseudonym, read_pseudonyms, record_pseudonyms,
                                   stamp_folder_key)
from pipeline.data.schema import json_lines
from pipeline.ops.config import JobConfig, is_config_error, job_config, load_config
from pipeline.ops.corpus import (ANNOTATIONS, QUARANTINE, REDO_REQUESTS, check_corpus_key, inbox_requests,
                                 pending_deletions, pseudonym_key, remerge, utterance_pseudonym)
from pipeline.ops.inventory import (DO_NOT_SYNC, KILLED_WRITE, OUT_OF_REACH, RUN_MARKER, RUN_PARTS, Roots, check_root,
                                    killed_writes, place_of, run_folders, unreachable_run_folders, walk_files)
from pipeline.ops.registry import LOCK_FILE, Registry, RetrainBusy, now, retire_command, retrain_lock, weights_saw_deleted
from pipeline.ops.textscan import searched, text_lines
from pipeline.runtime import PipelineError, first_line, resolved, write_text_atomic
from pipeline.text import BOS, EOS, lm_tokens
from pipeline.tracking.wandb_run import RUN_ID_FILE

LEDGER = "erased.jsonl"
STATE = "state.json"
# The n-gram orders whose grams the ledger keeps of a deleted transcript, up to the most the
# bundled KenLM reads; lower orders are shared by nearly every kept transcript and tell nothing.
LM_ORDERS = tuple(range(3, MAX_LM_ORDER + 1))
REPORTS = ("report.md", "report.html", "eval_details.json")


# ---------------------------------------------------------------------------- what is deleted

def row_matches(key: bytes, deleted: set[str], row: dict[str, Any]) -> set[str]:
    """Which of the deleted pseudonyms a dataset or predictions row carries (its utterance, the
    utterance it is a copy of, its account or device)."""
    names = {utterance_pseudonym(key, str(row[c])) for c in ("utterance_id", "copy_of") if row.get(c) is not None}
    names |= {p for p in (row.get("speaker"), row.get("device")) if isinstance(p, str)}
    return names & deleted


def text_hash(key: bytes, text: str) -> str:
    """Keyed, so a short common transcript cannot be looked up by hashing guesses."""
    return pseudonym(key, "txt", " ".join(text.lower().split()))


def lm_grams(text: str, order: int) -> list[tuple[str, ...]]:
    """The highest-order n-grams the character LM (pipeline.asr.lm) stores for this transcript."""
    seq = [BOS, *lm_tokens(text), EOS]
    return [tuple(seq[i:i + order]) for i in range(len(seq) - order + 1)]


def gram_hash(key: bytes, gram: Iterable[str]) -> str:
    return pseudonym(key, "lm", " ".join(gram))


def unexplained_grams(grams: dict[str, dict[str, list[str]]], key: bytes,
                      kept: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """Each deleted transcript's n-gram hashes less those a kept transcript also has.

    A character LM trained only on kept clips holds every n-gram of a short, common deleted
    sentence ("alexa play the current playlist") when kept sentences share its pieces; such an LM
    holds nothing of the deleted clip, and no erasure could make it not hold them. Only the n-grams
    no kept transcript has can tell that an LM saw the deleted one; a transcript left with none
    cannot be told apart from kept data, as a deleted transcript that a kept clip also says is not
    ledgered at all (`Traces.ledger_entries`)."""
    orders = sorted({order for by_order in grams.values() for order in by_order})
    explained = {gram_hash(key, g) for text in set(kept) for order in orders for g in lm_grams(text, int(order))}
    return {text: {order: [h for h in hashes if h not in explained] for order, hashes in by_order.items()}
            for text, by_order in grams.items()}


# ------------------------------------------------------------------------------ the ledger

@dataclass
class Ledger:
    """What erasure removed, as the audit needs it: fingerprints only, never a copy."""

    datasets: set[str] = field(default_factory=set)
    audio: set[str] = field(default_factory=set)          # sha256 of a clip's FLAC bytes or source file (identifying ones)
    texts: set[str] = field(default_factory=set)          # keyed hashes of unique deleted transcripts
    grams: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # text -> order -> gram hashes
    digests: set[str] = field(default_factory=set)        # W&B manifest digests of erased files
    utterances: set[str] = field(default_factory=set)
    copies: set[str] = field(default_factory=set)         # utterances taken as copies of a deleted clip's audio

    @classmethod
    def load(cls, folder: Path) -> Ledger:
        ledger = cls()
        path = folder / LEDGER
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    ledger.add(json.loads(line))
        return ledger

    def add(self, entry: dict[str, Any]) -> None:
        kind = entry.get("type")
        if kind == "dataset":
            self.datasets.add(entry["fingerprint"])
        elif kind == "clip":
            if entry.get("utterance"):
                self.utterances.add(entry["utterance"])
            if entry.get("identifying", True):  # silence and empty files stand for no recording
                self.audio.update(a for a in (entry.get("audio"), entry.get("file")) if a)
        elif kind == "text":
            self.texts.add(entry["text"])
            self.grams[entry["text"]] = entry.get("grams", {})
        elif kind == "digest":
            self.digests.add(entry["md5"])
        elif kind == "copy":
            self.copies.add(entry["utterance"])


def erasure_folder(folder: Path, key: bytes) -> Path:
    """The erasure folder, stamped with the key before anything of it is written (its ledger, state and
    receipts name pseudonyms): a job killed after its first write still leaves the stamp, never an
    unstamped folder that the next job would take as written before key ids were kept. Callers
    checked the folder's key first (check_stores), so a stamp is only ever added."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp_folder_key(folder, key)
    return folder


def append_ledger(folder: Path, entries: list[dict[str, Any]], key: bytes) -> None:
    if not entries:
        return
    with open(erasure_folder(folder, key) / LEDGER, "a") as f:
        f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


# ------------------------------------------------------------------------- cached datasets

def dataset_folders(roots: Roots) -> list[Path]:
    folder = roots.cache / "datasets"
    if not check_root("cache", roots.cache) or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _being_built(p))


def _being_built(folder: Path) -> bool:
    """A `.tmp-<fingerprint>-<pid>` build whose process still runs (it renames itself when done;
    the next erase or audit sees it then). A dead writer's leftover is scanned like any dataset."""
    if not folder.name.startswith(".tmp-"):
        return False
    try:
        os.kill(int(folder.name.rsplit("-", 1)[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def dataset_rows(folder: Path, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Rows of every split's arrow files, only the columns asked for (no audio decoding)."""
    import pyarrow as pa

    for arrow in sorted(folder.rglob("*.arrow")):
        try:
            table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
        except (pa.ArrowInvalid, OSError) as err:
            raise PipelineError(f"cannot read the cached dataset file {arrow}: {err}; delete {folder} "
                                "(the next build rebuilds it)") from None
        present = [c for c in columns if c in table.schema.names]
        data = {c: (table.column(c).combine_chunks().field("bytes") if c == "audio" else table.column(c)).to_pylist()
                for c in present}
        for i in range(table.num_rows):
            yield {c: data[c][i] for c in present}


@dataclass
class Traces:
    """Deleted clips found in the cached datasets right now, with what identifies them."""

    affected: dict[str, int] = field(default_factory=dict)   # dataset folder -> deleted clips in it
    clips: dict[str, dict[str, Any]] = field(default_factory=dict)
    copies: set[str] = field(default_factory=set)  # utterances no request names that hold a deleted clip's audio
    copies_in: Counter = field(default_factory=Counter)  # dataset folder -> how many of those it holds
    kept_texts: set[str] = field(default_factory=set)
    kept_text_values: set[str] = field(default_factory=set)  # memory only: for `unexplained_grams`
    per_request: Counter = field(default_factory=Counter)
    unique_texts: dict[str, str] = field(default_factory=dict)  # hash -> text (memory only)

    def add_clip(self, key: bytes, utt: str, digest: str | None, text: str, identifies: bool = False) -> None:
        clip = self.clips.setdefault(utt, {})
        if digest:
            clip["audio"] = digest
            clip["identifying"] = identifies
        if text:
            clip["text"] = text_hash(key, text)
            self.unique_texts[clip["text"]] = text

    def ledger_entries(self, key: bytes, datasets: Iterable[Path]) -> list[dict[str, Any]]:
        at = now()
        entries: list[dict[str, Any]] = [{"type": "dataset", "fingerprint": d.name, "at": at} for d in datasets]
        for utt, clip in sorted(self.clips.items()):
            text = clip.get("text") if clip.get("text") not in self.kept_texts else None
            entries.append({"type": "clip", "utterance": utt, "audio": clip.get("audio"),
                            "identifying": bool(clip.get("identifying")), "file": clip.get("file"), "text": text})
        for digest, text in sorted(self.unique_texts.items()):
            if digest not in self.kept_texts:
                entries.append({"type": "text", "text": digest, "grams": {
                    str(n): sorted({gram_hash(key, g) for g in lm_grams(text, n)}) for n in LM_ORDERS}})
        return entries

    def as_ledger(self, key: bytes) -> Ledger:
        ledger = Ledger()
        for entry in self.ledger_entries(key, [Path(p) for p in self.affected]):
            ledger.add(entry)
        return ledger


def find_traces(roots: Roots, key: bytes, deleted: set[str], known_audio: set[str] = frozenset(),
                passed_over: Collection[Path] = ()) -> Traces:
    """Deleted clips in the cached datasets: those a request names, and their copies. A row no request
    names that holds a deleted clip's audio (this pass's, or `known_audio` from earlier erasures) is
    the same recording exported again under another id: the person asked for it to go as well.

    A dataset is matched only under the key it was built with (`check_dataset_key`: another key's is
    refused); `passed_over` are datasets the caller knows to be another key's and names itself (the
    audit), left out whole: their kept transcripts are not taken as kept either."""
    from pipeline.data.audio import identifies_a_recording

    traces = Traces()
    audio = set(known_audio)
    others: list[tuple[str, str, str | None, str]] = []  # (folder, utterance, audio sha256, text) of the rest
    for folder in dataset_folders(roots):
        if folder in passed_over:
            continue
        check_dataset_key(folder, key)
        hits = 0
        for row in dataset_rows(folder, ("utterance_id", "copy_of", "speaker", "device", "text", "audio")):
            text = row.get("text") or ""
            digest = hashlib.sha256(row["audio"]).hexdigest() if row.get("audio") else None
            utt = utterance_pseudonym(key, str(row.get("utterance_id")))
            matched = row_matches(key, deleted, row)
            if not matched:
                others.append((str(folder), utt, digest, text))
                continue
            hits += 1
            traces.per_request.update(matched)
            identifies = digest is not None and identifies_a_recording(row["audio"])
            traces.add_clip(key, utt, digest, text, identifies)
            if identifies:
                audio.add(digest)
        if hits:
            traces.affected[str(folder)] = hits
    for folder, utt, digest, text in others:
        if digest in audio:
            traces.copies.add(utt)
            traces.copies_in[folder] += 1
            traces.affected[folder] = traces.affected.get(folder, 0) + 1
            traces.add_clip(key, utt, digest, text, True)
        elif text:
            traces.kept_texts.add(text_hash(key, text))
            traces.kept_text_values.add(text)
    return traces


def audio_copy(path: Path, audio: set[str]) -> str | None:
    """How a file holds one of the deleted clips' audio (sha256 of source bytes or of the dataset's
    FLAC): "bytes", "decoded samples" (the same samples in another file), or None."""
    if not audio:
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() in audio:
        return "bytes"
    from pipeline.data.audio import load_clip

    try:
        clip = load_clip(path, path.name, 0.0, 3600.0, need_signal=False)
    except Exception:  # noqa: BLE001 - an undecodable file holds no decoded copy
        return None
    return "decoded samples" if hashlib.sha256(clip.flac).hexdigest() in audio else None


# ----------------------------------------------------------------------------------- sources

def purge_export(folder: Path, key: bytes, deleted: set[str], dry_run: bool = False,
                 matched: Counter | None = None, audio: set[str] = frozenset(),
                 copies: set[str] | None = None, taken: set[str] | None = None) -> tuple[int, list[str]]:
    """Drop deleted records (and their audio) from an export folder; returns (records, audio sha256s).
    `matched` counts the records each pseudonym of `deleted` took (a receipt's per-request status).
    A record whose audio file holds one of `audio` (deleted clips' sha256s) goes too, as a copy; its
    utterance's pseudonym is added to `copies`. `taken` gets the utterance pseudonym of every record
    dropped (one a request named by its account or device included)."""
    from pipeline.data.audio import identifies_a_recording

    annotations = folder / ANNOTATIONS
    if not annotations.is_file():
        return 0, []
    kept, purged, hashes = [], 0, []
    for line in json_lines(annotations):
        record = line.record
        hits = record_pseudonyms(key, record) & deleted if record is not None else set()
        clip = record.get("audio") if record is not None else None
        path = resolved(folder / clip) if isinstance(clip, str) and clip else None
        if path is not None and not (path.is_relative_to(folder.resolve()) and path.is_file()):
            path = None
        if not hits and audio and path is not None and audio_copy(path, audio):
            if copies is not None and isinstance(record.get("utterance_id"), str):
                copies.add(utterance_pseudonym(key, record["utterance_id"]))
        elif not hits:
            kept.append(line.text)
            continue
        purged += 1
        if matched is not None:
            matched.update(hits)
        if taken is not None and isinstance(record.get("utterance_id"), str):
            taken.add(utterance_pseudonym(key, record["utterance_id"]))
        if path is not None:
            if identifies_a_recording(path):  # what the audit looks for copies of
                hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
            if not dry_run:
                path.unlink()
    if purged and not dry_run:
        write_text_atomic(annotations, "".join(line + "\n" for line in kept))
        for derived in (p for pattern in label_noise.DERIVED_FILES for p in folder.glob(pattern)):
            derived.unlink()
    return purged, hashes


def export_folders(roots: Roots) -> list[Path]:
    """Every export folder a deleted clip's source can sit in: demo exports, inbox and corpus batches."""
    folders: list[Path] = []
    demo = roots.cache / "demo"
    if demo.is_dir():
        folders += sorted(p for p in demo.iterdir() if p.is_dir())
    if roots.inbox.is_dir():
        folders += sorted(p for p in roots.inbox.iterdir() if p.is_dir() and (p / ANNOTATIONS).is_file())
    batches = roots.corpus / "batches"
    if batches.is_dir():
        folders += sorted(p for p in batches.iterdir() if p.is_dir())
    return folders


# --------------------------------------------------------------------------------- run folders

def run_fingerprints(run: Path) -> set[str]:
    """The datasets a run folder holds anything of: the one its data stage built (build report), the
    one its evaluation scored (eval_details.json; `evaluate.py run=<run> dataset=<other>` scores
    another), and the one an `evaluate.py` still running was given (its `.hydra-evaluate/config.yaml`,
    before eval_details.json is written). Erasing any of them erases what the folder derived."""
    found: set[str] = set()
    for name, field_of in ((RUN_MARKER, lambda d: d.get("fingerprint")),
                           ("eval_details.json", lambda d: (d.get("test_data") or {}).get("dataset_fingerprint"))):
        try:
            value = field_of(json.loads((run / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            found.add(str(value))
    try:
        given = OmegaConf.load(run / run_folder.EVAL_CONFIG_DIR / "config.yaml").get("dataset")
    except Exception:  # noqa: BLE001 - absent or unreadable: no evaluation was given a dataset here
        given = None
    if given:
        found.add(Path(str(given)).name)  # <cache_dir>/datasets/<fingerprint>
    return found


@dataclass
class Listed:
    """What the clip lists of run folders (`run_folder.DATASET_CLIPS`) tie to deleted data: the runs
    built on a deleted clip, their datasets and those clips. What finds a run, and a registered
    model, of a deleted clip when the cached dataset is gone. (The dataset an evaluation scored is
    not listed there; its lines are.)"""

    runs: set[Path] = field(default_factory=set)
    datasets: set[str] = field(default_factory=set)
    utterances: set[str] = field(default_factory=set)
    # Clips each deleted pseudonym matched in lists of datasets not counted elsewhere (`counted`: a
    # cached one's clips are counted where it is found, Traces.per_request; an erased one's were
    # counted by its erasure); each dataset's once.
    per_request: Counter = field(default_factory=Counter)


def _run_report(run: Path) -> dict[str, Any]:
    """The run's own build report; empty where there is none or it cannot be read (the run is still
    found by its clip list)."""
    try:
        return run_folder.read_build_report(run) or {}
    except PipelineError:
        return {}


def _built(run: Path) -> tuple[str | None, Path | None]:
    """The fingerprint and the dataset folder the run's own build report names; None where it names none."""
    report = _run_report(run)
    path = report.get("dataset_path")
    return (str(report["fingerprint"]) if report.get("fingerprint") else None), (Path(path) if isinstance(path, str) and path else None)


def matchable_clip_list(run: Path, key: bytes) -> bool:
    """Whether the run folder's clip list can be matched against `key`'s pseudonyms: made under that
    key (the run's stamp, privacy.KEY_ID_FILE, written with the list). A list from before runs kept a
    stamp is taken as the current key's, with a warning (privacy.check_key_id). A run built under
    another key is refused (KeyMismatch naming it) while it still holds something erasure removes
    (models, predictions, reports, its W&B run): whether that saw a deleted clip cannot be told. One
    that holds none (erased already) has nothing left to erase: False, its list is not read."""
    stored = folder_key_id(run)
    if stored is not None and stored != key_id(key) and not derived_parts(run):
        return False
    check_key_id(stored, key, f"run folder {run} (its {run_folder.DATASET_CLIPS})",
                 f"if that key is lost, remove the run folder {run} (or {retire_command(stored)}, "
                 "which removes its models, predictions and reports and everything else made under that key): whether "
                 "they hold a deleted clip cannot be told under the current key")
    return True


def check_run_keys(roots: Roots, key: bytes) -> list[Path]:
    """Refuse, before a job takes anything from the inbox (as Registry.check_keys), when a run folder's
    clip list was made under another key (`matchable_clip_list`). Returns the run folders whose list
    has no stamp: taken as the current key's, and stamped so (`stamp_assumed_runs`) once the job is done."""
    listing = [run for run in run_folders(roots) if (run / run_folder.DATASET_CLIPS).is_file()]
    for run in listing:
        matchable_clip_list(run, key)
    return [run for run in listing if folder_key_id(run) is None]


def stamp_assumed_runs(runs: list[Path], key: bytes) -> None:
    """Stamp run folders whose clip list was taken as `key`'s for want of a stamp, the stamp saying the
    key was assumed (privacy.stamp_folder_key): later jobs check them instead of warning each time."""
    for run in runs:
        if (run / run_folder.DATASET_CLIPS).is_file():
            stamp_folder_key(run, key)


def listed_on_deleted(roots: Roots, deleted: set[str], key: bytes, counted: set[str] = frozenset()) -> Listed:
    """Runs of one dataset list the same clips: each dataset's list is read once. Each list is matched
    only under the key it was made with (`matchable_clip_list`)."""
    listed = Listed()
    by_list: dict[str, set[str]] = {}  # fingerprint (or the run, without one) -> the deleted clips listed
    for run in run_folders(roots):
        path = run / run_folder.DATASET_CLIPS
        if not path.is_file() or not matchable_clip_list(run, key):
            continue
        fingerprint, _ = _built(run)
        name = fingerprint or str(run)
        if name not in by_list:
            hits: set[str] = set()
            matched: Counter = Counter()
            for names in (line.split() for line in path.read_text().splitlines()):
                if names and (which := set(names) & deleted):
                    hits.add(names[0])
                    matched.update(which)
            by_list[name] = hits
            if hits and fingerprint not in counted:
                listed.per_request.update(matched)
        if by_list[name]:
            listed.runs.add(run)
            listed.utterances |= by_list[name]
            if fingerprint:
                listed.datasets.add(fingerprint)
    return listed


def unlisted_runs(roots: Roots, erased: set[str]) -> list[Path]:
    """Run folders without a clip list whose dataset is gone, and not by an erasure (whose runs it
    erased): whether they hold a deleted clip cannot be told (built before runs listed their clips,
    or their list was removed)."""
    out = []
    for run in run_folders(roots):
        fingerprint, _ = _built(run)
        if (run / run_folder.DATASET_CLIPS).exists() or not fingerprint or fingerprint in erased:
            continue
        if not (roots.cache / "datasets" / fingerprint / "dataset_dict.json").is_file():  # what the scan reads
            out.append(run)
    return out


def dataset_key_id(dataset: Path) -> str | None:
    """The key the dataset's build report says its pseudonyms were made with (run_folder.REPORT_KEY_ID);
    None for a build from before reports said so."""
    value = (run_folder.read_build_report(dataset) or {}).get(run_folder.REPORT_KEY_ID)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise PipelineError(f"{dataset / run_folder.BUILD_REPORT}: `{run_folder.REPORT_KEY_ID}` is {json.dumps(value)}, "
                            "not a key id: the data stage writes a string, so the file was edited")
    return value


def check_dataset_key(dataset: Path, key: bytes) -> None:
    """Refuse to match a cached dataset's rows against `key`'s pseudonyms when its build report names
    another key (a KeyMismatch naming the dataset and what to do): its accounts and devices are that
    key's pseudonyms, so a deleted account's clips in it would match no request and stay, for a build
    under that key to reuse (its fingerprint) or an evaluation to read. A dataset whose report names no
    key (built before reports did) is taken as the current key's, with a warning (privacy.check_key_id):
    its report is the build's, left as it is, so the warning comes at each job."""
    stored = dataset_key_id(dataset)
    check_key_id(stored, key, f"cached dataset {dataset} (its {run_folder.BUILD_REPORT})",
                 f"if that key is lost, remove the cached dataset {dataset} (or {retire_command(stored)}, which "
                 "removes everything made under that key): it is a cache, and the next build "
                 "makes its data again from the sources under the current key")


def check_dataset_keys(roots: Roots, key: bytes) -> None:
    """Refuse, before a job takes anything from the inbox (as `check_run_keys`), when a cached dataset
    was built under another key (`check_dataset_key`). Refused rather than removed, though a cache: a
    key that is only misconfigured (its variable unset where a scheduler runs the job) would otherwise
    wipe every cached dataset, and restoring the key lets erasure match them as they are."""
    for folder in dataset_folders(roots):
        check_dataset_key(folder, key)


def datasets_under_other_keys(roots: Roots, key: bytes) -> list[Path]:
    """The cached datasets whose build report names another key than `key`: whether they hold a
    deleted clip by its ids cannot be told (the audit names them, and looks there only for copies of
    deleted audio and transcripts, which no key hides)."""
    current = key_id(key)
    return [folder for folder in dataset_folders(roots) if dataset_key_id(folder) not in (None, current)]


def write_missing_clip_lists(roots: Roots, key: bytes) -> int:
    """Give each run folder whose build predates `run_folder.DATASET_CLIPS` its list while its cached
    dataset is still there, so a cache cleaned later does not hide it. Returns how many were written.

    The list copies the dataset's pseudonyms, made under the key its build was (`dataset_key_id`), and
    the run is stamped with that key. A dataset built under another key than the current one gets no
    list, with a warning saying what to do: stamped with the current key, its accounts and devices
    would match no request, and the run would pass as clean once the dataset goes (without a list the
    audit names it instead). A dataset whose report names no key (built before reports did) is taken
    as the current key's, with a warning (privacy.check_key_id), and the stamp says the key was assumed."""
    written = 0
    for run in run_folders(roots):
        fingerprint, given = _built(run)
        dataset = next((d for d in (given, roots.cache / "datasets" / (fingerprint or ".none"))
                        if d is not None and (d / "dataset_dict.json").is_file()), None)
        if (run / run_folder.DATASET_CLIPS).exists() or dataset is None:
            continue
        # Here, not above: the build imports torch and datasets (~3 s), which a job with no list to
        # write (every scheduled retraining that finds nothing new) does not need.
        from pipeline.data.build import write_clip_list

        try:
            built_under = dataset_key_id(dataset)
            check_key_id(built_under, key, f"dataset {dataset} (whose clips run folder {run} would list in its "
                         f"{run_folder.DATASET_CLIPS})", f"if that key is lost, remove the run folder {run}: once the "
                         "dataset goes, whether its models, predictions and reports hold a deleted clip cannot be told")
            write_clip_list(dataset, run, key, None if built_under else
                            f"listed from dataset {dataset.name}, whose build report names no key")
        except KeyMismatch as err:
            print(f"erase: warning: no clip list written into {run}: {err}", file=sys.stderr)
            continue
        except Exception as err:  # noqa: BLE001 - an unreadable dataset or run folder: erasure goes on
            print(f"erase: warning: no clip list written into {run} ({type(err).__name__}: {first_line(err)}); the "
                  "audit names the run if its dataset goes", file=sys.stderr)
            continue
        written += 1
    return written


def derived_parts(run: Path) -> dict[str, list[Path]]:
    """What erasure removes from an affected run folder, by kind of copy (the top-level entries)."""
    parts: dict[str, list[Path]] = {}
    for entry in sorted(run.iterdir()):
        candidates = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        for f in candidates:
            place = place_of(f.relative_to(run).as_posix(), RUN_PARTS)
            if place is not None and place.erase == "run":
                parts.setdefault(place.kind, []).append(f)
    return parts


def wandb_manifest(run: Path) -> tuple[set[Path], set[str]]:
    """Staged local copies and content digests of every artifact the run's offline W&B logs list."""
    from pipeline.tracking.wandb_offline import raw_records, transaction_logs

    paths: set[Path] = set()
    digests: set[str] = set()
    logs = transaction_logs(run / "wandb") if (run / "wandb").is_dir() else []
    if not logs:
        return paths, digests
    from wandb.proto import wandb_internal_pb2 as pb

    for log in logs:
        try:
            for raw in raw_records(log):
                record = pb.Record()
                record.ParseFromString(raw)
                if record.WhichOneof("record_type") != "artifact":
                    continue
                for entry in record.artifact.manifest.contents:
                    if entry.local_path:
                        paths.add(Path(entry.local_path))
                    if entry.digest and not entry.ref:
                        digests.add(entry.digest)
        except (ValueError, OSError):
            continue  # a truncated log (killed run): its files are removed with the folder anyway
    return paths, digests


def kept_digests(roots: Roots, erased: set[str]) -> set[str]:
    """Content digests of the W&B artifacts of runs built on no erased dataset. A file with the same
    bytes as one of them (a tokenizer, a config, the vocabulary: every run stages its own copy, or
    shares W&B's content-addressed one) holds nothing of the deleted data, so it stays."""
    return {d for run in run_folders(roots) if not run_fingerprints(run) & erased for d in wandb_manifest(run)[1]}


def md5_b64(path: Path) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(hashlib.file_digest(f, "md5").digest()).decode()


def staging_files(roots: Roots) -> list[Path]:
    out: list[Path] = []
    for sub in ("wandb/data/artifacts", "wandb/cache/artifacts"):
        folder = roots.cache / sub
        if folder.is_dir():
            out += list(walk_files(folder))
    return out


def filter_predictions(path: Path, key: bytes, deleted: set[str], texts: set[str]) -> int:
    """Drop the lines of deleted clips from a predictions file; returns how many went."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            kept.append(line)
            continue
        if isinstance(row, dict) and prediction_hit(key, deleted, texts, row):
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def quarantine_hit(key: bytes, deleted: set[str], row: dict[str, Any]) -> bool:
    """A build's quarantine line that names a deleted clip otherwise than as a build now would (by its
    pseudonym, reason `deleted`): a flagged or invalid clip deleted after the build. It never reached
    the dataset, so the dataset and its runs stay, but the line names it by id, with the reason's detail."""
    return isinstance(row.get("utterance_id"), str) and row.get("reason") != "deleted" and bool(row_matches(key, deleted, row))


def filter_quarantine(path: Path, key: bytes, deleted: set[str]) -> int:
    """Rewrite a quarantine file's lines of deleted clips as a build now writes them; returns how many."""
    lines, rewritten = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and quarantine_hit(key, deleted, row):
            where = {k: v for k, v in row.items() if k not in ("utterance_id", "speaker", "device", "reason", "detail")}
            line = json.dumps({**where, "utterance_id": utterance_pseudonym(key, row["utterance_id"]), "reason": "deleted",
                               "detail": f"erased after a deletion request (quarantined as {row.get('reason')})"})
            rewritten += 1
        lines.append(line)
    if rewritten:
        write_text_atomic(path, "".join(line + "\n" for line in lines))
    return rewritten


def count_erased_clips(metrics_path: Path, dropped: int) -> None:
    """`eval/clips_erased` in the metrics beside a trimmed predictions file: its figures were computed
    on these clips too, so compare and the gate know the file is short by erasure, not cut short."""
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        metrics["eval/clips_erased"] = int(metrics.get("eval/clips_erased", 0)) + dropped
        write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")


PSEUDONYM_TEXT = re.compile(r"\b(?:utt|acct|dev)_[0-9a-f]{16}\b")
FRAGMENTS = re.compile(r"[|<>\n\t\"]+")


def mentions(key: bytes, deleted: set[str], texts: set[str], line: str) -> bool:
    """Does this line of a report name a deleted clip's pseudonym or quote its transcript? An HTML
    report writes "what's" as "what&#x27;s": the line is read as written and unescaped."""
    if set(PSEUDONYM_TEXT.findall(line)) & deleted:
        return True
    parts = {line, html.unescape(line)} if "&" in line else {line}
    return any(text_hash(key, f.strip()) in texts for part in parts for f in FRAGMENTS.split(part) if f.strip())


def _prune(value: Any, key: bytes, deleted: set[str], texts: set[str]) -> tuple[Any, int]:
    """A JSON value without the entries that name a deleted clip (keys or strings), and how many went."""
    if isinstance(value, dict):
        out, dropped = {}, 0
        for k, v in value.items():
            if mentions(key, deleted, texts, str(k)):
                dropped += 1
                continue
            out[k], n = _prune(v, key, deleted, texts)
            dropped += n
        return out, dropped
    if isinstance(value, list):
        items, dropped = [], 0
        for v in value:
            pruned, n = _prune(v, key, deleted, texts)
            if isinstance(v, str) and mentions(key, deleted, texts, v) or (isinstance(v, dict) and n):
                dropped += 1
                continue
            items.append(pruned)
        return items, dropped
    return value, 0


def filter_report(path: Path, key: bytes, deleted: set[str], texts: set[str]) -> int:
    """Drop the report lines (JSON entries for .json) of deleted clips; returns how many went."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            pruned, dropped = _prune(json.loads(text), key, deleted, texts)
        except json.JSONDecodeError:
            return 0
        new = json.dumps(pruned, indent=2) + "\n"
    else:
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not mentions(key, deleted, texts, line)]
        dropped, new = len(lines) - len(kept), "".join(kept)
    if dropped:
        write_text_atomic(path, new)
    return dropped


def _holds_trace(path: Path, key: bytes, deleted: set[str], texts: set[str]) -> bool:
    """Whether a staged or W&B file names a deleted clip's pseudonym or quotes its transcript (any
    line). Read in chunks (pipeline.ops.textscan): a run's `.wandb` log can be hundreds of MiB."""
    if not path.is_file() or not searched(path):
        return False
    return any(mentions(key, deleted, texts, line) for line in text_lines(path))


def prediction_hit(key: bytes, deleted: set[str], texts: set[str], row: dict[str, Any]) -> bool:
    if row_matches(key, deleted, row):
        return True
    return any(isinstance(row.get(k), str) and text_hash(key, row[k]) in texts
               for k in ("reference", "transcript", "text"))


# ------------------------------------------------------------------------------ W&B online

def maybe_online(run: Path) -> bool:
    """Whether the W&B run of this run folder may have a copy online, whose deletion then waits in
    the state (by id) until W&B is reachable: `make sync` uploaded an offline run (a `.wandb.synced`
    marker), the run logged to W&B online (wandb's `run-*` folder, not `offline-run-*`: nothing to
    sync, so no marker ever says so), or no W&B log is left to tell. Only a run whose every log is
    offline and never synced is known to hold nothing online."""
    folder = run / "wandb"
    if not folder.is_dir():
        return True
    # `latest-run` is wandb's link to the newest run folder: the folder itself is judged.
    logs = [log for log in folder.glob("*/run-*.wandb") if not log.parent.is_symlink()]
    synced = [m for m in folder.glob("*/run-*.wandb.synced") if not m.parent.is_symlink()]
    return bool(synced) or not logs or any(not log.parent.name.startswith("offline-run-") for log in logs)


def online_places(run: Path) -> dict[str, list[str]]:
    """Where W&B holds this run folder's runs, by id: `entity/project/<id>` for each project its logs
    name (`project/<id>` where a log names no entity). Read before the run's W&B folder goes. The
    project is the one the run was logged to, not today's `logger.project`: looked for in another
    project, a run is "not found" there, and its online copy would be forgotten. A run resumed under
    another project (`evaluate.py run=... logger.project=...`) is in both."""
    from pipeline.tracking.wandb_offline import logged_to, transaction_logs

    places: dict[str, set[str]] = {}
    for log in transaction_logs(run / "wandb") if (run / "wandb").is_dir() else []:
        if (found := logged_to(log)) and found[2]:
            run_id, entity, project = found
            places.setdefault(run_id, set()).add("/".join([*([entity] if entity else []), project, run_id]))
    return {run_id: sorted(paths) for run_id, paths in places.items()}


def _api_path(run: str, project: str, entity: str | None, api: Any) -> str:
    """wandb.Api's `entity/project/id` for a pending run: an id alone is in `logger.project`, and a
    project without an entity in the uploader's default entity (where W&B filed it)."""
    parts = run.split("/")
    if len(parts) == 1:
        return f"{entity or api.default_entity}/{project}/{run}"  # the default entity asks W&B
    return run if len(parts) == 3 else f"{api.default_entity}/{run}"


def _no_such_run(err: Exception) -> bool:
    """W&B's answer that it holds no such run (wandb's RunNotFoundError, a ValueError "Could not find
    run ..."). Only that one lets a pending run go: any other error, a ValueError included (a path W&B
    could not parse, say), says nothing about whether the run is online."""
    return isinstance(err, ValueError) and str(err).startswith("Could not find run")


def delete_online(run_ids: list[str], project: str, entity: str | None, api: Any = None) -> list[dict[str, Any]]:
    """Delete each run's logged artifacts, then the run, through W&B's public API. `run_ids` are W&B ids,
    or `[entity/]project/id` where the run's logs said where it went (online_places); an id alone is
    looked for in `logger.project`.

    A run that was never uploaded is not an error (W&B answers "no such run", a ValueError): there
    is nothing online to delete. Any other failure (W&B unreachable, a server error, no credentials)
    says nothing about the run: it is "failed", and stays pending, retried by the next erasure.
    """
    if not run_ids:
        return []
    if api is None:
        import wandb

        try:
            api = wandb.Api()
        except Exception as err:  # noqa: BLE001 - no credentials or no server: every run stays pending
            detail = f"W&B's API could not be opened ({type(err).__name__}: {first_line(err)})"
            return [{"run": run_id, "online": "failed", "artifacts": 0, "detail": detail} for run_id in run_ids]
    done = []
    for run_id in run_ids:
        try:
            run = api.run(_api_path(run_id, project, entity, api))
        except Exception as err:  # noqa: BLE001 - unreachable, or a server error: retried next time
            if _no_such_run(err):  # never uploaded, or already deleted
                done.append({"run": run_id, "online": "not found", "detail": type(err).__name__})
                continue
            done.append({"run": run_id, "online": "failed", "artifacts": 0,
                         "detail": f"{type(err).__name__}: {first_line(err)}"})
            continue
        artifacts = 0
        try:
            for artifact in run.logged_artifacts():
                artifact.delete(delete_aliases=True)
                artifacts += 1
            run.delete(delete_artifacts=True)
        except Exception as err:  # noqa: BLE001 - a server error: the run stays pending, retried next time
            done.append({"run": run_id, "online": "failed", "artifacts": artifacts,
                         "detail": f"{type(err).__name__}: {first_line(err)}"})
            continue
        done.append({"run": run_id, "online": "deleted", "artifacts": artifacts})
    return done


def wandb_online(settings: JobConfig) -> bool:
    """`erase.wandb_online`; auto: when W&B is online (logger.mode, WANDB_MODE, an API key)."""
    setting = settings.erase.online_setting()
    if setting in ("false", "off", "no"):
        return False
    if setting in ("true", "on", "yes"):
        return True
    from pipeline.tracking.wandb_run import resolve_mode

    return resolve_mode(settings.logger.mode, os.environ) == "online"


# ---------------------------------------------------------------------------------- erasure

@dataclass
class Erasure:
    removed: list[dict[str, Any]] = field(default_factory=list)
    do_not_sync: list[str] = field(default_factory=list)
    online: list[dict[str, Any]] = field(default_factory=list)
    # W&B runs uploaded (or unknown) whose online copy is not deleted yet, by id or `[entity/]project/id`
    # (online_places): kept in state.json and retried by every erasure until W&B confirms (or has no such run).
    online_pending: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    audio_copies: list[str] = field(default_factory=list)  # utterances taken as copies of a deleted clip's audio
    receipt: Path | None = None
    # W&B runs of run folders retired with a lost key (retire_lost_key): (where W&B holds it, as
    # online_places gives it; maybe online; its id file), deleted online and forgotten locally as the
    # erased runs' are.
    retired_wandb: list[tuple[list[str], bool, Path]] = field(default_factory=list)

    def remove(self, kind: str, path: Path, **detail: Any) -> None:
        self.removed.append({"kind": kind, "path": str(path), **detail})

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r["kind"] for r in self.removed).items()))

    def summary(self) -> dict[str, Any]:
        return {"receipt": str(self.receipt) if self.receipt else None, "removed": self.counts(),
                "do_not_sync": len(self.do_not_sync), "requests": len(self.requests),
                "matched_nothing": sum(r["status"] == "matched_nothing" for r in self.requests),
                "quarantined_request_lines": len(self.quarantined), "audio_copies": len(self.audio_copies),
                "wandb_online_pending": len(self.online_pending)}


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_stores(roots: Roots, key: bytes) -> None:
    """Refuse to match the corpus's requests and tombstones, or erasure's ledger, against `key` when
    they were made under another key (pipeline.data.privacy.check_key_id): a deleted clip would not
    be found in any copy, and a model trained on it would pass."""
    check_corpus_key(roots.corpus, key)
    check_folder_key(roots.erasure, key, f"the erasure ledger {roots.erasure / LEDGER}",
                     REDO_REQUESTS)


def stamp_stores(roots: Roots, key: bytes) -> None:
    """After writing pseudonyms to the corpus or the ledger: stamp each with the key they were made
    with (check_stores ran first, so a stamp is only ever added, never changed)."""
    stamp_folder_key(roots.corpus, key)
    stamp_folder_key(roots.erasure, key)


def deleted_set(roots: Roots, key: bytes) -> set[str]:
    """The corpus's requests and tombstones, refused when made under another key than `key`."""
    check_stores(roots, key)
    return read_pseudonyms(roots.corpus / REQUESTS_FILE) | read_pseudonyms(roots.corpus / TOMBSTONES_FILE)


def requested_deletions(roots: Roots, key: bytes) -> set[str]:
    """Every pseudonym a deletion request names, applied or still waiting in the inbox: the corpus's
    requests and tombstones, the utterances waiting requests delete, and those requests' own ids
    (an account, a device). What the audit looks for, and what promote and rollback refuse."""
    deleted = deleted_set(roots, key)
    if roots.inbox.is_dir():
        incoming = inbox_requests(roots.inbox, key)[1]
        deleted |= pending_deletions(roots.inbox, roots.corpus, key, incoming) | incoming
    return deleted


def refuse_if_busy(roots: Roots, erasing: set[str]) -> None:
    """A run built on a dataset about to be erased, still being written, would go on writing a model of
    the deleted data after the receipt: wait for it (RetrainBusy, exit 4) before anything is removed."""
    for run in run_folders(roots):
        if run_fingerprints(run) & erasing and run_folder.being_written(run):
            raise RetrainBusy(f"run {run} is being written (a training or evaluation) and was built on data a "
                              "deletion request names", str(run))


def erase_copies(cfg: DictConfig, roots: Roots | None = None, key: bytes | None = None, api: Any = None,
                 job: Erasure | None = None) -> Erasure:
    """Steps 2-5 of the module docstring; the caller holds the retraining lock. `job`: one a caller
    began (what `retire_lost_key` removed), for this job's receipt to list too."""
    settings = job_config(cfg)
    roots = roots or Roots.from_cfg(cfg)
    key = key if key is not None else pseudonym_key(cfg.privacy)
    for name, root in roots.named().items():
        check_root(name, root)
    deleted = deleted_set(roots, key)
    job = job or Erasure()
    state_path = roots.erasure / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"requests_seen": [], "quarantine_seen": 0}
    quarantine = roots.corpus / QUARANTINE
    q_lines = quarantine.read_text().splitlines() if quarantine.is_file() else []
    job.quarantined = [json.loads(line) for line in q_lines[state["quarantine_seen"]:] if line.strip()]
    assumed = check_run_keys(roots, key)
    check_dataset_keys(roots, key)
    write_missing_clip_lists(roots, key)  # before any dataset goes, so none is left without its runs' lists
    if not deleted and not job.quarantined and not job.removed:
        stamp_assumed_runs(assumed, key)
        return job

    ledger = Ledger.load(roots.erasure)
    traces = find_traces(roots, key, deleted, ledger.audio)
    refuse_if_busy(roots, ledger.datasets | {Path(p).name for p in traces.affected}
                   | listed_on_deleted(roots, deleted, key).datasets)
    # Into the ledger before the datasets go: they are the only place the clips' transcript and audio
    # hashes can be read from, so a job killed after removing them would leave the next erasure and
    # the audit unable to recognise the clips' other copies.
    found = traces.ledger_entries(key, [Path(p) for p in traces.affected])
    append_ledger(roots.erasure, found, key)
    for entry in found:
        ledger.add(entry)
    for folder, clips in traces.affected.items():
        shutil.rmtree(folder)
        job.remove("cached dataset", Path(folder), clips=clips)
    entries: list[dict[str, Any]] = []  # what the rest of the job finds, appended at its end
    erased = ledger.datasets
    # A deleted sentence that a kept clip of the cached datasets also says is that clip's: its lines
    # stay in other runs' predictions and reports (the audit's rule too).
    texts = ledger.texts - traces.kept_texts

    from_exports: Counter = Counter()  # records each request took from the exports
    copies, taken = set(traces.copies), set()
    for folder in export_folders(roots):
        purged, _ = purge_export(folder, key, deleted | traces.copies, matched=from_exports, audio=ledger.audio,
                                 copies=copies, taken=taken)
        if purged:
            job.remove("source audio", folder, clips=purged)
    # A copy's own id is deleted from now on: other runs' lines of it go below, and every build and
    # intake keeps it out (the tombstones are what they read); the merged corpus loses it now. So is
    # the id of a clip a request named by its account: a quarantine line names the clip by id alone.
    deleted = deleted | copies | taken
    add_tombstones(roots, copies | taken, key)
    listed = listed_on_deleted(roots, deleted, key, counted={Path(p).name for p in traces.affected})
    for entry in ([{"type": "dataset", "fingerprint": f} for f in sorted(listed.datasets - ledger.datasets)]
                  + [{"type": "clip", "utterance": u, "identifying": False} for u in sorted(listed.utterances - ledger.utterances)]):
        entries.append(entry)
        ledger.add(entry)
    deleted = deleted | listed.utterances
    if copies and (roots.corpus / "batches").is_dir():
        remerge(roots.corpus, key)
    entries += [{"type": "copy", "utterance": u} for u in sorted(copies - ledger.copies)]
    job.audio_copies = sorted((copies | ledger.copies) - set(state.get("copies_seen", [])))

    staged: set[Path] = set()
    online_ids: list[str] = []  # erased runs' W&B ids: their online copies go too
    uploaded: list[str] = []    # ... of which these may be online (`maybe_online`)
    retired: list[Path] = []    # ... and the files that name them, removed once the state holds the ids
    kept = kept_digests(roots, erased)  # before the erased runs' W&B folders go
    stale: set[str] = set()  # digests of plots a trimmed run drew again: their staged copies name the deleted
    for run in run_folders(roots):
        may_be_online, places = maybe_online(run), online_places(run)  # read before the run's W&B folder goes
        if run_fingerprints(run) & erased or run in listed.runs:
            paths, digests, online_id = _erase_run(run, erased, job)
            staged |= paths
            entries += [{"type": "digest", "md5": d} for d in sorted(digests - ledger.digests)]
            ledger.digests |= digests
        else:
            online_id, redrawn = _trim_run(run, key, deleted, texts, job)
            stale |= redrawn
        online = places.get(online_id, [online_id]) if online_id else []
        online_ids += online
        uploaded += online if may_be_online else []
        retired += [run / RUN_ID_FILE] if online_id else []

    for online, may_be_online, id_file in job.retired_wandb:
        online_ids += online
        uploaded += online if may_be_online else []
        retired.append(id_file)

    for f in [d / run_folder.QUARANTINE_LINES for d in [*run_folders(roots), *dataset_folders(roots)]]:
        if f.is_file() and not f.is_symlink() and (rewritten := filter_quarantine(f, key, deleted)):
            job.remove("quarantine line", f, lines=rewritten)

    for f in staging_files(roots):
        if f in staged or ledger.digests or stale:
            digest = md5_b64(f)
            # A plot as it was before its run was trimmed: its own run's manifest keeps it among the
            # kept digests, but its bars name the deleted.
            if digest in stale or ((f in staged or digest in ledger.digests) and digest not in kept):
                f.unlink()
                job.remove("W&B staging", f)
                continue
        # A staged copy of a run folder removed by hand (`make clean`) is known by what it holds: the
        # run's manifest that named it is gone with the run.
        if _holds_trace(f, key, deleted | ledger.utterances, texts):
            f.unlink()
            job.remove("W&B staging", f)

    # Killed writes outside run folders (a model's record, the corpus's annotations, a dataset's
    # quarantine lines): each run's were removed with the rest of the run above.
    for kind, f in killed_writes(roots):
        remove_killed_write(f, kind, key, deleted | ledger.utterances, texts, job)

    # Every deleted utterance found in a cached dataset or a run's clip list, now or by an earlier
    # erasure, not only those the corpus's tombstones name (a request for an account names no utterance).
    _erase_registry_models(Registry(roots.registry), deleted | ledger.utterances, erased, job)

    # The ledger first: whatever happens online, the audit knows what was erased here.
    append_ledger(roots.erasure, entries, key)
    stamp_stores(roots, key)
    pending = sorted(set(state.get("online_pending", [])) | set(uploaded))
    if wandb_online(settings) and (online_ids or pending):
        job.online = delete_online(sorted(set(online_ids) | set(pending)), settings.logger.project,
                                   settings.logger.entity, api)
        pending = sorted(d["run"] for d in job.online if d["online"] == "failed")
    job.online_pending = pending

    seen = set(state["requests_seen"])
    for request in sorted(read_pseudonyms(roots.corpus / REQUESTS_FILE) - seen):
        # Copies found: in cached datasets, in exports and in the clip lists of runs whose dataset is
        # gone. (A request's own pseudonym among the
        # tombstones says only that it was made: every utterance request is one.)
        found = traces.per_request.get(request, 0) + from_exports.get(request, 0) + listed.per_request.get(request, 0)
        job.requests.append({"request": request, "status": "erased" if found else "matched_nothing",
                             "copies_found": found})
    if job.removed or job.requests or job.quarantined or job.audio_copies or job.online or job.online_pending:
        job.receipt = write_receipt(roots, job, key)
    state = {"requests_seen": sorted(seen | read_pseudonyms(roots.corpus / REQUESTS_FILE)), "quarantine_seen": len(q_lines),
             "copies_seen": sorted(set(state.get("copies_seen", [])) | set(job.audio_copies)),
             "online_pending": job.online_pending}
    (erasure_folder(roots.erasure, key) / STATE).write_text(json.dumps(state) + "\n")
    # The `wandb_run_id` files of the W&B runs this job removed, now that the state holds their ids (an
    # online deletion still pending is retried by id): left in the folder, the id would be resumed by the
    # next tracker there (`evaluate.py run=<run>`), and W&B refuses to upload a deleted run's id.
    for id_file in retired:
        id_file.unlink(missing_ok=True)
    stamp_assumed_runs(assumed, key)
    return job


def _erase_run(run: Path, erased: set[str], job: Erasure,
               reason: str = "trained on data erased after a deletion request") -> tuple[set[Path], set[str], str | None]:
    """Remove what a run built on erased data derived (models, predictions, reports, its W&B run, the
    review) and mark it DO_NOT_SYNC; returns its W&B files' staging paths and digests (read before
    they go), and its W&B run id on its first erasure (its online copy goes too)."""
    paths, digests = wandb_manifest(run)
    parts = derived_parts(run)
    run_id = run / RUN_ID_FILE
    online_id = run_id.read_text().strip() if parts and run_id.is_file() else None
    if parts or not (run / DO_NOT_SYNC).exists():
        (run / DO_NOT_SYNC).write_text(json.dumps({
            "reason": f"{reason}; never upload this run",
            "dataset_fingerprints": sorted(run_fingerprints(run) & erased), "at": now()}) + "\n")
        job.do_not_sync.append(str(run))
    for kind, files in parts.items():
        for f in files:
            _rm(f)
        job.remove(kind, run, files=len(files))
    for sub in ("asr", "nlu", "plots", "incumbent", "wandb", "review"):
        if (run / sub).is_dir() and not any(p.is_file() for p in (run / sub).rglob("*")):
            shutil.rmtree(run / sub)
    return paths, digests, online_id


def retire_lost_key(roots: Roots, registry: Registry, lost: str, key: bytes, job: Erasure) -> None:
    """`erase.retire_key=<id>`: remove what was made under a pseudonym key that is lost.

    Pseudonyms made under another key match no request made under the current one, so whether such
    a model, run or dataset holds a deleted clip can never be told, and every job refuses it until
    the key is restored or it is gone. This removes it as erasure removes what saw deleted data: a
    registry model loses its weights (the record stays, marked erased, `lost_key_id` naming the key;
    a promoted one is replaced by the next retraining), a run folder stamped with that key or built
    under it loses its models, predictions, reports and W&B run (DO_NOT_SYNC; the W&B run goes online
    too), a cached dataset built under it goes whole. The corpus and the ledger are left: they hold
    deletion requests, which nothing may drop; one made under the lost key is still refused, and its
    requests must be sent again under the current key."""
    if lost == key_id(key):
        raise PipelineError(f"erase.retire_key={lost} is the id of the current key: what was made under it matches "
                            "today's requests and is erased as usual; give the id a refusal named as the lost key's")
    for record in registry.records():
        model_id = record["model_id"]
        if record.get("key_id") == lost and registry.holds_weights(model_id):
            registry.mark_erased(model_id, lost_key=lost)
            job.remove("registry model", registry.model_dir(model_id), lost_key_id=lost)
    runs = [run for run in run_folders(roots)
            if lost in (folder_key_id(run), _run_report(run).get(run_folder.REPORT_KEY_ID)) and derived_parts(run)]
    kept = {d for run in run_folders(roots) if run not in runs for d in wandb_manifest(run)[1]}
    for run in runs:
        may_be_online, places = maybe_online(run), online_places(run)  # read before the run's W&B folder goes
        start = len(job.removed)
        paths, _, online_id = _erase_run(run, set(), job, reason=f"made under the lost pseudonym key {lost}")
        for entry in job.removed[start:]:
            entry["lost_key_id"] = lost
        for f in sorted(paths):
            if f.is_file() and not f.is_symlink() and md5_b64(f) not in kept:
                f.unlink()
                job.remove("W&B staging", f, lost_key_id=lost)
        if online_id:
            job.retired_wandb.append((places.get(online_id, [online_id]), may_be_online, run / RUN_ID_FILE))
    for folder in dataset_folders(roots):
        if dataset_key_id(folder) == lost:
            shutil.rmtree(folder)
            job.remove("cached dataset", folder, lost_key_id=lost)


def _trim_run(run: Path, key: bytes, deleted: set[str], texts: set[str], job: Erasure) -> tuple[str | None, set[str]]:
    """A run not built on erased data (say, evaluated on a split that held a deleted clip) keeps its
    models: only the lines of deleted clips leave its predictions and reports. Its offline W&B run
    cannot be trimmed (a binary log, and tables W&B uploads as they are), so one that logged a deleted
    clip goes whole, as does one that logged a plot drawn again here (an image no search reads).
    Returns that W&B run's id, whose online copy goes too, or None; and the digests of the plots
    as they were, whose staged copies go too."""
    redrawn: set[str] = set()
    for f in (run / "predictions.jsonl", run / "incumbent" / "predictions.jsonl"):
        if f.is_file() and not f.is_symlink():
            dropped = filter_predictions(f, key, deleted, texts)
            if dropped:
                job.remove("predictions", f, lines=dropped)
                count_erased_clips(f.parent / "metrics.json", dropped)
    for f in [run / n for n in REPORTS] + [run / "incumbent" / n for n in REPORTS]:
        if f.is_file() and not f.is_symlink():
            dropped = filter_report(f, key, deleted, texts)
            if dropped:
                job.remove("report", f, lines=dropped)
                if f.name == "eval_details.json" and (old := _redraw_wer_plot(f)):
                    redrawn.add(old)
    for f in [*run.glob(f"{KILLED_WRITE}*"),
              *(g for sub in ("incumbent", "plots") for g in (run / sub).rglob(f"{KILLED_WRITE}*"))]:
        remove_killed_write(f, "report", key, deleted, texts, job)
    logged = run / "wandb"
    if not logged.is_dir() or not any(_holds_trace(f, key, deleted, texts) or (redrawn and md5_b64(f) in redrawn)
                                      for f in walk_files(logged) if not f.is_symlink()):
        return None, redrawn
    files = sum(1 for _ in walk_files(logged))
    shutil.rmtree(logged)
    job.remove("W&B offline run", run, files=files)
    run_id = run / RUN_ID_FILE
    if not run_id.is_file():
        return None, redrawn
    return run_id.read_text().strip() or None, redrawn


def remove_killed_write(f: Path, kind: str, key: bytes, deleted: set[str], texts: set[str], job: Erasure) -> None:
    """A file written whole (`.tmp-<name>.<pid>`, pipeline.runtime.write_text_atomic) whose job was
    killed before the rename is never read again and holds what the file held: removed when it names a
    deleted clip and its writer is gone, in whichever place the pipeline writes so (inventory.WRITTEN_WHOLE;
    the audit reads it as text and counts it as erasure's: audit._erased_by_content)."""
    if f.is_file() and not f.is_symlink() and _abandoned(f) and _holds_trace(f, key, deleted, texts):
        f.unlink()
        job.remove("unfinished write", f, place=kind)  # its own kind: not the model or dataset it sits beside


def _abandoned(tmp: Path) -> bool:
    """Whether the process that wrote this `.tmp-<name>.<pid>` file is gone: a live writer renames it
    over its file in a moment, and removing it under the writer would fail that job."""
    try:
        os.kill(int(tmp.name.rsplit(".", 1)[1]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, PermissionError, OverflowError):  # no pid in the name, or another user's process
        pass
    return False


def _redraw_wer_plot(details_path: Path) -> str | None:
    """The WER plot beside a trimmed eval_details.json labels a bar with each speaker's pseudonym:
    drawn again from what is left, or removed when nothing is (no image is searched for traces).
    Returns the digest of the plot as it was (None: no plot), by which its copies are found."""
    plot = details_path.parent / "plots" / "wer_slices.png"
    if not plot.is_file():
        return None
    old = md5_b64(plot)
    details = json.loads(details_path.read_text())
    wer_by = details.get("wer_by") if isinstance(details, dict) else None
    if not isinstance(wer_by, dict) or not any(wer_by.values()):
        plot.unlink()
        return old
    from pipeline.eval.report import plot_slices

    plot_slices(wer_by, plot)
    return old


def _erase_registry_models(registry: Registry, deleted: set[str], erased: set[str], job: Erasure) -> None:
    """Registered models whose weights saw a deleted clip lose them and are marked erased. (A model
    with weights made under another key was refused before the intake: `Registry.check_keys`.)"""
    for record in registry.records():
        model_id = record["model_id"]
        if not weights_saw_deleted(record, deleted, erased):
            continue
        if registry.holds_weights(model_id) or not record.get("erased_at"):
            registry.mark_erased(model_id)
            job.remove("registry model", registry.model_dir(model_id),
                       clips=len(set(record.get("trained_on", [])) & deleted))


def add_tombstones(roots: Roots, copies: set[str], key: bytes) -> set[str]:
    """Add `copies` to the tombstones every build and intake reads; returns those not there before.
    The corpus is stamped with the key first, so tombstones are never left without it."""
    tombstones = roots.corpus / TOMBSTONES_FILE
    new = copies - read_pseudonyms(tombstones)
    if new:
        roots.corpus.mkdir(parents=True, exist_ok=True)
        stamp_folder_key(roots.corpus, key)
        write_text_atomic(tombstones, "".join(p + "\n" for p in sorted(read_pseudonyms(tombstones) | copies)))
    return new


def record_source_audio(roots: Roots, key: bytes) -> set[str]:
    """Before the intake or erasure purges anything: the sha256 of each source audio file a request
    takes (that identifies a recording) goes into the ledger, which erasure and the audit look for
    copies of. Kept only in memory until after the purge, a job killed in between lost them, and a
    copy of the recording under another id was then trained on. Without a new request only the
    inbox's new batches can hold something to purge: every other source was purged before.
    Returns the requests it looked for: those erasure knows and those waiting in the inbox."""
    incoming = inbox_requests(roots.inbox, key)[1] if roots.inbox.is_dir() else set()
    folders = export_folders(roots) if incoming else [f for f in export_folders(roots) if f.parent == roots.inbox]
    ledger = Ledger.load(roots.erasure)
    requests = deleted_set(roots, key) | incoming
    hashes = {h for folder in folders for h in purge_export(folder, key, requests, dry_run=True)[1]}
    append_ledger(roots.erasure, [{"type": "clip", "utterance": None, "file": h, "audio": None, "text": None}
                                  for h in sorted(hashes - ledger.audio)], key)
    stamp_stores(roots, key)
    return requests


def tombstone_copies(roots: Roots, key: bytes) -> set[str]:
    """Before a retraining trains: the clips under other ids that hold a deleted clip's audio are found
    and tombstoned, so its build keeps them out (erase_copies removes them after the decision).
    Returns the copies not tombstoned before."""
    ledger = Ledger.load(roots.erasure)
    entries: list[dict[str, Any]] = []
    deleted = deleted_set(roots, key)
    if not deleted and not ledger.audio:
        return set()
    traces = find_traces(roots, key, deleted, ledger.audio)
    audio = ledger.audio | {c["audio"] for c in traces.clips.values() if c.get("identifying")}
    copies = set(traces.copies)
    for folder in export_folders(roots):
        purge_export(folder, key, deleted | copies, dry_run=True, audio=audio, copies=copies)
    entries += [{"type": "copy", "utterance": u} for u in sorted(copies - ledger.copies)]
    append_ledger(roots.erasure, entries, key)
    new = add_tombstones(roots, copies, key)
    stamp_stores(roots, key)
    return new


def write_receipt(roots: Roots, job: Erasure, key: bytes) -> Path:
    """The receipt names requests by pseudonym: it records the id of the key they were made with, and
    lies in the erasure folder, whose stamp every job checks first."""
    folder = erasure_folder(roots.erasure, key) / "receipts"
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    receipt = {
        "erased_at": now(),
        "requests": job.requests,
        "quarantined_request_lines": job.quarantined,
        "audio_copies": job.audio_copies,
        "removed": job.removed,
        "removed_counts": job.counts(),
        "marked_do_not_sync": job.do_not_sync,
        "wandb_online": job.online,
        "wandb_online_pending": job.online_pending,
        "ids": "pseudonyms only: pipeline.data.privacy.pseudonym(key, kind, raw id)",
        "key_id": key_id(key),
    }
    for n in itertools.count():  # a receipt is never overwritten: two erasures of one process in one second
        path = folder / f"{stamp}-{os.getpid()}-{n}.json"  # sorts in the order written
        try:
            with open(path, "x") as f:
                f.write(json.dumps(receipt, indent=2, sort_keys=True) + "\n")
            break
        except FileExistsError:
            continue
    return path


def erase(cfg: DictConfig, api: Any = None) -> Erasure:
    """Standalone `make erase`: take the lock, apply the inbox's requests to the corpus, erase."""
    from pipeline.ops.corpus import update_corpus
    settings = job_config(cfg)  # every group the job reads, before anything is taken from the inbox
    roots = Roots.from_cfg(cfg)
    for name, root in roots.named().items():
        check_root(name, root)  # before anything is taken from the inbox
    key = pseudonym_key(cfg.privacy)
    registry = Registry(roots.registry)
    job = Erasure()
    with retrain_lock(registry.root / LOCK_FILE):
        registry.recover()
        lost = settings.erase.retire_key
        if lost:  # before the key checks, which would refuse what it removes
            retire_lost_key(roots, registry, str(lost), key, job)
        registry.check_keys(key)  # before the intake stores anything under the current key
        check_run_keys(roots, key)
        check_dataset_keys(roots, key)
        requests = record_source_audio(roots, key)
        # Exit 4 before the intake takes anything (only a run being written makes the scan worth it).
        if any(run_folder.being_written(run) for run in run_folders(roots)):
            ledger = Ledger.load(roots.erasure)
            traces = find_traces(roots, key, requests, ledger.audio)
            refuse_if_busy(roots, ledger.datasets | {Path(p).name for p in traces.affected}
                           | listed_on_deleted(roots, requests, key).datasets)
        update_corpus(roots.inbox, roots.corpus, key)
        return erase_copies(cfg, roots, key, api=api, job=job)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(list(sys.argv[1:] if argv is None else argv))
        job = erase(cfg)
    except RetrainBusy as err:
        print(f"error: {err}; run `make erase` again when it is done", file=sys.stderr)
        return 4
    except Exception as err:  # noqa: BLE001 - only config errors are caught; the rest re-raise
        if not is_config_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = job.counts()
    if not job.removed:
        print("erase: nothing to remove: no copy of deleted data was found")
    else:
        clips = Counter()
        for r in job.removed:
            clips[r["kind"]] += int(r.get("clips") or 0)
        print("erase: removed " + ", ".join(f"{n} {kind}" + (f" ({clips[kind]} clip{'' if clips[kind] == 1 else 's'})" if clips[kind] else "")
                                            for kind, n in counts.items()))
    roots = Roots.from_cfg(cfg)
    unreachable = unreachable_run_folders(roots)
    if unreachable:  # a copy there stays until it is back: said every time, as the audit does
        print(f"erase: {len(unreachable)} listed run folder(s) are out of reach ({OUT_OF_REACH}), so nothing in "
              "them was erased; mount them and run `make erase` again: " + ", ".join(map(str, unreachable)),
              file=sys.stderr)
    current = Registry(roots.registry).current()
    if current and current.get("erased_at"):  # what serves is gone: say what restores one
        why = (f"was made under the lost pseudonym key {current['lost_key_id']}" if current.get("lost_key_id")
               else "was trained on deleted data")
        print(f"erase: the promoted model {current['model_id']} {why} and its weights are "
              "erased; run `make retrain` to train and promote a replacement, or `make rollback` to the previous "
              "clean model", file=sys.stderr)
    for q in job.quarantined:
        print(f"erase: quarantined {q.get('file')} line {q.get('line')}: {q.get('reason')}")
    if job.audio_copies:
        print(f"erase: {len(job.audio_copies)} clip(s) under other ids held a deleted clip's audio: erased with it "
              "and kept out of later builds (the receipt's audio_copies)")
    if job.online_pending:  # uploaded runs of erased data still online: said every time until they are gone
        print(f"erase: {len(job.online_pending)} uploaded W&B run(s) of erased data are not deleted online yet "
              f"({', '.join(job.online_pending)}): run `make erase` again with W&B reachable and credentials set "
              "(WANDB_API_KEY, erase.wandb_online=true)", file=sys.stderr)
    nothing = [r["request"] for r in job.requests if r["status"] == "matched_nothing"]
    if nothing:
        print(f"erase: {len(nothing)} request(s) matched nothing (recorded in the receipt)")
    if job.receipt:
        print(f"erase: receipt {job.receipt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
