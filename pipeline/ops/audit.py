"""`make audit-deletions`: is any trace of a deleted clip left anywhere the pipeline writes?

Reads the same config as `retrain.py` (the same inbox, corpus, registry, pseudonym key and
`erase.*` roots; pass overrides as arguments: `python -m pipeline.ops.audit erase.outputs=/srv/runs`)
and scans every root of the inventory (pipeline/ops/inventory.py) for a deleted clip (requests
applied or still waiting in the inbox):

- its pseudonymous ids (utterance, account, device) in datasets, exports, predictions, reports,
  W&B files: anywhere but the deletion bookkeeping that must name them (tombstones, receipts);
- a fingerprint of its audio: SHA-256 of the decoded clip (as the data stage encodes it) and of
  the file's bytes, against cached datasets and every audio file;
- its transcript, by keyed hash, in datasets, predictions, reports and W&B files, and in any
  character LM that holds all of its n-grams that no kept transcript also has (a transcript that a
  kept clip of the cached datasets also says is that clip's, and is not looked for);
- models, checkpoints, LMs, W&B runs and staged artifacts derived from a dataset that held it.

Ids and transcripts are looked for in every file that is text: named so (`.jsonl`, `.md`, ...), a
W&B file, or any other whose first bytes hold no NUL (a copy saved as `notes` or `eval.tsv` holds a
clip as well as a report does); weights, Arrow shards, arrays and images are not read. Such a file
that erasure does not act on is named for removal by hand.

A cached dataset built under another pseudonym key (its build report's `pseudonym_key_id`) holds
that key's ids, which match nothing: it is named as not judged, and looked through only for copies
of deleted audio and transcripts.

Findings are listed with their paths, by ids and hashes only. Exit codes: 0 clean, 3 something
found (run `make erase`), 2 a bad config or a root that cannot be scanned.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.data.features import AUDIO_EXTENSIONS
from pipeline.data.privacy import record_pseudonyms
from pipeline.data.schema import json_lines
from pipeline.ops.config import is_config_error, load_config
from pipeline.ops.corpus import pseudonym_key
from pipeline.ops.erase import (Ledger, audio_copy, dataset_folders, dataset_rows, datasets_under_other_keys,
                                derived_parts, export_folders, find_traces, gram_hash, kept_digests, listed_on_deleted,
                                md5_b64, prediction_hit, quarantine_hit, requested_deletions, run_fingerprints,
                                staging_files, text_hash, unexplained_grams, unlisted_runs)
from pipeline.ops.inventory import (KILLED_WRITE, OUT_OF_REACH, PLACES, RUN_PARTS, WRITTEN_WHOLE, Roots, check_root,
                                    place_of, place_under, run_folders, run_folders_elsewhere, run_of,
                                    unreachable_run_folders, walk_files)
from pipeline.ops.registry import PROMOTING, RECORD, Registry, check_record_key, weights_saw_deleted
from pipeline.ops.textscan import TEXT_SUFFIXES, searched, starts_as_text, text_chunks, text_lines
from pipeline.run_folder import DATASET_CLIPS, QUARANTINE_LINES, dataset_path
from pipeline.runtime import RUN_FOLDERS_LIST, PipelineError

EXIT_CLEAN, EXIT_CONFIG, EXIT_FOUND = 0, 2, 3
PSEUDONYM = re.compile(rb"\b(?:utt|acct|dev)_[0-9a-f]{16}\b")
JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
FRAGMENT = re.compile(r"[|<>\n\t\"]+")


@dataclass(frozen=True)
class Finding:
    kind: str     # the kind of copy (inventory kinds)
    trace: str    # pseudonym | audio | transcript | derived
    path: str
    detail: str
    by_hand: bool = False  # erasure does not act on this file: a person removes it (besides UNMANAGED kinds)


def _bookkeeping(path: Path, roots: Roots) -> bool:
    """Files that name deleted clips on purpose: tombstones, requests, receipts, erased records."""
    for name, root in roots.named().items():
        if path.is_relative_to(root.resolve()):
            place = place_of(path.relative_to(root.resolve()).as_posix(), tuple(p for p in PLACES if p.root == name))
            if place is not None and place.erase == "keep" and place.kind != "registry log":
                return True
    return path.name in (RECORD, PROMOTING, "candidate.json", "decision.json", "decisions.jsonl", DATASET_CLIPS)


def _json_object(line: str) -> Any:
    """A JSON line, or None (a line cut short by a killed write is no one's trace)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _texts_in(data: str) -> set[str]:
    """Candidate transcripts in a text file: JSON strings and markup-separated fragments."""
    found = {_unescape(m) for m in JSON_STRING.findall(data)}
    # An HTML report writes "what's" as "what&#x27;s": its fragments are read unescaped too.
    for text in {data, html.unescape(data)} if "&" in data else {data}:
        found |= {f.strip() for f in FRAGMENT.split(text) if f.strip()}
    return {t for t in found if 0 < len(t) < 500}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    try:
        return json.loads(f'"{value}"')
    except json.JSONDecodeError:
        return value


def _lm_holds(arpa: Path, key: bytes, grams: dict[str, dict[str, list[str]]]) -> int:
    """How many deleted transcripts have every highest-order n-gram in this ARPA file."""
    order, section, present = 0, 0, set()
    for line in arpa.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("ngram "):
            order = max(order, int(line.split()[1].split("=")[0]))
        elif line.startswith("\\"):
            section = int(line[1:].split("-")[0]) if line.endswith("-grams:") else 0
        elif section and section == order and "\t" in line:
            present.add(gram_hash(key, line.split("\t")[1].split()))
    wanted = [set(g.get(str(order), [])) for g in grams.values()]
    return sum(1 for w in wanted if w and w <= present)


def scan(cfg: DictConfig) -> tuple[list[Finding], list[dict[str, object]], int]:
    """(findings, registry models trained on deleted data that still have weights, how many deleted
    ids the requests name: with none, "no trace" says nothing)."""
    roots = Roots.from_cfg(cfg)
    for name, root in roots.named().items():
        check_root(name, root)
    key = pseudonym_key(cfg.privacy)
    deleted = requested_deletions(roots, key)
    registry = Registry(roots.registry)
    affected_models = registry.affected_by(deleted, key)
    if not deleted:
        return [], affected_models, 0

    ledger = Ledger.load(roots.erasure)
    # A dataset built under another key holds that key's pseudonyms: matched against these, it would pass
    # as clean. It is left out of the match (`main` names it, as not judged); its rows are still looked
    # through below for copies of deleted audio and transcripts, which no key hides.
    traces = find_traces(roots, key, deleted, ledger.audio, passed_over=datasets_under_other_keys(roots, key))
    live = traces.as_ledger(key)
    # The summary's models, by what the findings below judge them on: requested ids, and the clips
    # erasure found (copies under other ids included).
    listed = listed_on_deleted(roots, deleted, key)  # runs whose cached dataset may be gone
    affected_models = registry.affected_by(deleted | ledger.utterances | live.utterances | listed.utterances, key)
    audio = ledger.audio | live.audio
    # A deleted transcript that a kept clip of the cached datasets also says (a later batch's "alexa
    # stop") is that clip's, not a trace; a re-ingested copy of the deleted clip is still found by
    # its audio.
    texts = (ledger.texts | live.texts) - traces.kept_texts
    # An LM trained on the kept clips of the cached datasets may hold every n-gram of a short deleted
    # sentence; only the n-grams no kept transcript has are evidence.
    grams = unexplained_grams({**ledger.grams, **live.grams}, key, traces.kept_text_values)
    erased = ledger.datasets | {Path(p).name for p in traces.affected} | listed.datasets
    findings: list[Finding] = []

    for folder in dataset_folders(roots):
        if str(folder) in traces.affected:
            named, copied = traces.affected[str(folder)] - traces.copies_in[str(folder)], traces.copies_in[str(folder)]
            if named:
                findings.append(Finding("cached dataset", "pseudonym", str(folder), f"{named} deleted clip(s)"))
            if copied:
                findings.append(Finding("cached dataset", "audio", str(folder), f"{copied} copy(ies) of deleted clips"))
            continue
        copies = sum(1 for row in dataset_rows(folder, ("audio", "text"))
                     if (row.get("audio") and hashlib.sha256(row["audio"]).hexdigest() in audio)
                     or (row.get("text") and text_hash(key, row["text"]) in texts))
        if copies:
            findings.append(Finding("cached dataset", "audio", str(folder), f"{copies} copy(ies) of deleted clips"))

    for folder in export_folders(roots):
        annotations = folder / "annotations.jsonl"
        hits = 0
        for line in json_lines(annotations) if annotations.is_file() else []:
            if line.record is not None and record_pseudonyms(key, line.record) & deleted:
                hits += 1
        if hits:
            findings.append(Finding("source audio", "pseudonym", str(annotations), f"{hits} deleted record(s)"))

    runs = run_folders(roots)
    for run in runs:
        if run_fingerprints(run) & erased or run in listed.runs:
            for kind, files in derived_parts(run).items():
                findings.append(Finding(kind, "derived", str(run), f"{len(files)} file(s) derived from an "
                                        f"erased dataset ({', '.join(sorted(run_fingerprints(run) & erased))})"))
    for record in registry.records():
        model_dir = registry.model_dir(record["model_id"])
        found = deleted | ledger.utterances | live.utterances | listed.utterances
        if not registry.holds_weights(model_dir.name):
            continue
        check_record_key(record, key, model_dir / RECORD)
        trained = set(record.get("trained_on", [])) & found
        if weights_saw_deleted(record, found, erased):
            findings.append(Finding("registry model", "derived", str(model_dir),
                                    f"trained on {len(trained)} deleted clip(s), dataset {record.get('dataset_fingerprint')}"))

    staged = set(staging_files(roots))
    kept = kept_digests(roots, erased) if ledger.digests else set()
    for f in staged:
        if ledger.digests and (digest := md5_b64(f)) in ledger.digests and digest not in kept:
            findings.append(Finding("W&B staging", "derived", str(f), "a staged copy of an erased run's file"))

    # Every file, byte by byte where it can hold ids or text; decoded where it is audio.
    # The roots, and run folders outside them that the cache's list names: each file once (roots may nest).
    files = {f.resolve(): f for root in [*roots.named().values(), *run_folders_elsewhere(roots)] if root.is_dir()
             for f in walk_files(root) if not f.is_symlink()}
    wanted = Wanted(key, deleted, audio, texts, grams)
    for f in sorted(files.values()):
        findings += _scan_file(f, _kind_of(f, roots, runs), wanted, f in staged, roots)
    return _dedupe(findings), affected_models, len(deleted)


@dataclass(frozen=True)
class Wanted:
    """What a trace of a deleted clip looks like: pseudonyms, audio hashes, transcript hashes."""

    key: bytes
    deleted: set[str]
    audio: set[str]
    texts: set[str]
    grams: dict[str, dict[str, list[str]]]


def _scan_file(f: Path, kind: str, wanted: Wanted, staged: bool, roots: Roots) -> list[Finding]:
    if f.suffix.lower() in AUDIO_EXTENSIONS:
        return _audio_findings(f, kind, wanted.audio)
    if f.name == "char_lm.arpa":
        held = _lm_holds(f, wanted.key, wanted.grams)
        return [Finding("language model", "transcript", str(f), f"holds every n-gram of {held} deleted transcript(s)")] if held else []
    if f.name == QUARANTINE_LINES:
        # Bookkeeping that names deleted clips on purpose, by pseudonym with reason `deleted`; a line
        # written before the request (a flagged clip, by its id) is a trace.
        hits = sum(1 for line in text_lines(f)
                   if isinstance(row := _json_object(line), dict) and quarantine_hit(wanted.key, wanted.deleted, row))
        return [Finding(kind, "id", str(f), f"{hits} line(s) naming a deleted clip by its id")] if hits else []
    if _bookkeeping(f.resolve(), roots):
        return []
    # A name is no proof of what a file holds: a copy someone made (`notes`, `eval.tsv`,
    # `predictions.jsonl.bak`, a job's `slurm-<id>.out`) or a write a killed job left (`.tmp-<name>.<pid>`)
    # is text under a name of no text suffix. Such a file is read when its first bytes hold no NUL
    # (textscan.starts_as_text); weights, Arrow shards and arrays hold one there and stay unread (a
    # cached dataset's rows are matched above, column by column).
    named_as_text = f.suffix.lower() in TEXT_SUFFIXES or staged or f.suffix == ".wandb"
    if not (named_as_text or starts_as_text(f)) or not searched(f):
        return []
    # In chunks (pipeline.ops.textscan): a W&B log of a long evaluation is hundreds of MiB.
    predictions = f.name.endswith(".jsonl") and "predictions" in f.name
    ids: set[str] = set()
    said: set[str] = set()
    hits = 0
    for data in text_chunks(f):
        ids |= {m.decode() for m in PSEUDONYM.findall(data)} & wanted.deleted
        text = data.decode("utf-8", errors="replace")
        if predictions:
            rows = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
            hits += sum(1 for r in rows if isinstance(r, dict) and prediction_hit(wanted.key, wanted.deleted, wanted.texts, r))
        else:
            said |= {text_hash(wanted.key, t) for t in _texts_in(text)} & wanted.texts
    found = []
    # Erasure rewrites the files the pipeline writes, found by name; another text file it never opens.
    by_hand = not named_as_text and not _erased_by_content(f, kind)
    where = (", in a file named as no text but holding text, which erasure never rewrites: remove it by hand"
             if by_hand else "")
    if ids:
        found.append(Finding(kind, "pseudonym", str(f), f"{len(ids)} deleted pseudonymous id(s){where}", by_hand))
    if predictions:
        if hits:
            found.append(Finding("predictions", "transcript", str(f), f"{hits} line(s) of deleted clips"))
        return found
    if said:
        found.append(Finding(kind, "transcript", str(f), f"{len(said)} deleted transcript(s){where}", by_hand))
    return found


def _erased_by_content(f: Path, kind: str) -> bool:
    """Whether erasure removes this file, named as no text, by what it holds: a run's offline W&B folder
    goes whole when any file in it names a deleted clip, and a write a killed job left where the pipeline
    writes files whole (`.tmp-<name>.<pid>`, pipeline.runtime.write_text_atomic; inventory.WRITTEN_WHOLE)
    goes when it does (erase.remove_killed_write)."""
    return kind == "W&B offline run" or (kind in WRITTEN_WHOLE and f.name.startswith(KILLED_WRITE))


UNMANAGED = ("run folder", "unregistered")  # _kind_of's names for files outside every known place


def datasets_elsewhere(roots: Roots) -> list[Path]:
    """Datasets that runs here were built on and that lie outside erase.cache_root (a job run with
    another PIPELINE_CACHE_DIR): neither erasure nor the audit looks in them, so a deleted clip there
    would go unseen; said, so that "clean" is not read as covering them."""
    cache, found = roots.cache.resolve(), set()
    for run in run_folders(roots):
        try:
            path = dataset_path(run)
        except PipelineError:  # a build report that names no dataset: nothing to look in
            continue
        if path is not None and path.is_dir() and not path.resolve().is_relative_to(cache):
            found.add(path)
    return sorted(found)


def _kind_of(f: Path, roots: Roots, runs: list[Path]) -> str:
    run = run_of(f, runs)
    if run is not None:
        place = place_of(f.resolve().relative_to(run.resolve()).as_posix(), RUN_PARTS)
        return place.kind if place else "run folder"
    place = place_under(f, roots)
    return place.kind if place else "unregistered"


def _audio_findings(f: Path, kind: str, audio: set[str]) -> list[Finding]:
    how = audio_copy(f, audio)
    return [Finding(kind, "audio", str(f), f"the {how} of a deleted clip's audio")] if how else []


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        if (f.kind, f.trace, f.path) not in seen:
            seen.add((f.kind, f.trace, f.path))
            out.append(f)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(list(sys.argv[1:] if argv is None else argv))
        findings, affected, known = scan(cfg)
    except Exception as err:  # noqa: BLE001 - only config errors are caught; the rest re-raise
        if not is_config_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    registry = cfg.retrain.registry_dir
    if not affected:
        print(f"no model in {registry} was trained on data with a deletion request")
    else:
        print(f"{len(affected)} model(s) in {registry} were trained on data with a deletion request:")
        for model in affected:
            print(f"  {model['model_id']}  {model['status']}  {model['deleted_utterances']} deleted utterance(s)")

    models = Registry(Path(registry))
    serving = models.current()
    if serving and not models.has_weights(serving["model_id"]):
        # Clean of traces, and yet nothing to serve: a scheduler reading only the exit code should be told.
        print(f"audit: the promoted model {serving['model_id']} has no weights (erased); run `make retrain` to "
              "promote a replacement, or `make rollback`")
    where = Roots.from_cfg(cfg)
    roots = where.named()
    absent = [f"{name}={root}" for name, root in roots.items() if not root.exists()]
    # A mistyped root is absent, and nothing absent was scanned: say which, so "clean" is not read as
    # covering a folder the scan never saw.
    elsewhere = run_folders_elsewhere(where)
    print("audit: scanned " + ", ".join(f"{name}={root}" for name, root in roots.items() if root.exists())
          + (f", and {len(elsewhere)} run folder(s) outside them that the cache lists" if elsewhere else "")
          + (f"; absent, so not scanned: {', '.join(absent)}" if absent else ""))
    unlisted = unlisted_runs(where, Ledger.load(where.erasure).datasets) if known else []
    if unlisted:
        print(f"audit: {len(unlisted)} run folder(s) list no clips (dataset_clips.txt: built before runs listed them) "
              "and their dataset is gone, not by an erasure, so whether they hold a deleted clip cannot be told; "
              "remove them, or keep them knowing that: " + ", ".join(map(str, unlisted)))
    unmatched = datasets_under_other_keys(where, pseudonym_key(cfg.privacy)) if known else []
    if unmatched:
        print(f"audit: {len(unmatched)} cached dataset(s) were built under another pseudonym key than the current "
              "one (their build_report.json's pseudonym_key_id), so whether they, and the runs trained on them, hold "
              "a deleted clip by its ids cannot be told (only copies of deleted audio and transcripts were looked "
              "for there); restore that key and audit again, or remove them (a cache: the next build makes their "
              "data again under the current key): " + ", ".join(map(str, unmatched)))
    elsewhere_data = datasets_elsewhere(where) if known else []
    if elsewhere_data:
        print(f"audit: {len(elsewhere_data)} dataset(s) that runs here were built on lie outside erase.cache_root="
              f"{where.cache}, so neither erasure nor this audit looked in them; remove them (a cache: the next "
              "build makes their data again), and run jobs with the cache erasure reads (PIPELINE_CACHE_DIR): "
              + ", ".join(map(str, elsewhere_data)))
    unreachable = unreachable_run_folders(where)
    if unreachable:
        print(f"audit: {len(unreachable)} run folder(s) that {where.cache / RUN_FOLDERS_LIST} lists are out of reach "
              f"({OUT_OF_REACH}), so they were not scanned; mount them and audit again, or, if they were removed, "
              "delete their lines from that list: "
              + ", ".join(map(str, unreachable)))
    if not known:
        # Nothing to look for is not "clean": a deletions file only a build read (data.deletions)
        # kept its clips out of that dataset, and is unknown here.
        print(f"audit: no deletion request known (none applied in {where.corpus}, none waiting in {where.inbox}), "
              f"so nothing was looked for; put requests in {where.inbox / 'deletions'}/*.jsonl for erasure and "
              "retraining to apply them everywhere")
        return EXIT_CLEAN
    if not findings:
        print(f"audit: clean: no trace of the {known} deleted id(s) requested under the roots scanned"
              + (f" ({len(absent)} absent, not scanned: check they are meant to be)" if absent else "")
              + (f"; {len(unlisted)} run folder(s) not judged (above)" if unlisted else "")
              + (f"; {len(unmatched)} cached dataset(s) not judged (above)" if unmatched else "")
              + (f"; {len(elsewhere_data)} dataset(s) outside the cache root not scanned (above)" if elsewhere_data else "")
              + (f"; {len(unreachable)} listed run folder(s) out of reach, not scanned (above)" if unreachable else ""))
        return EXIT_CLEAN
    # Files in no place the inventory knows (put there by hand, or by another tool), and text files the
    # pipeline writes no data under (a `notes` copy in a run folder): erasure removes only what it knows
    # the shape of, so these stay until a person removes them.
    by_hand = [f for f in findings if f.kind in UNMANAGED or f.by_hand]
    managed = len(findings) - len(by_hand)
    advice = "run `make erase`" if not by_hand else (
        f"{'run `make erase` for ' + str(managed) + '; ' if managed else ''}{len(by_hand)} in no place erasure "
        "manages (marked *): remove those by hand")
    print(f"audit: {len(findings)} finding(s) of deleted data ({advice}):")
    for f in findings:
        mark = "*" if f.kind in UNMANAGED or f.by_hand else " "
        print(f" {mark}{f.kind:16s} {f.trace:10s} {f.path}  ({f.detail})")
    counts = Counter(f.kind for f in findings)
    print("audit: by kind of copy: " + ", ".join(f"{k}={n}" for k, n in sorted(counts.items())))
    return EXIT_FOUND


if __name__ == "__main__":
    sys.exit(main())
