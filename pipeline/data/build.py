"""The data stage: annotated clips in, a validated, pseudonymised DatasetDict out.

Two passes, so memory stays flat whatever the corpus size:
1. metadata (cheap, streamed): schema, deletions, duplicates, flags, annotations and audio paths are
   checked without decoding any audio; deleted and flagged clips are never opened;
2. audio (`datasets.map`, `data.num_proc` workers): decode, mono, resample to 16 kHz, check length
   and silence, store FLAC bytes in arrow files on disk.
Every input record ends in exactly one place: a split, or one line of `quarantine.jsonl`.

The dataset is saved under `<cache_dir>/datasets/<fingerprint>/`, where the fingerprint hashes the
input files, every audio file's content, the settings and CODE_VERSION; it is written to a temporary
folder and renamed, so it exists only when complete and a second run with the same inputs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Audio, Dataset, DatasetDict, Features, Value
from omegaconf import DictConfig

from pipeline.data.audio import ClipRejected, load_clip, resolve_audio
from pipeline.data.card import summarise, write_card
from pipeline.data.features import SAMPLING_RATE, SPLITS, dataset_features
from pipeline.data.privacy import Deletions, load_deletions, load_key, pseudonym
from pipeline.data.schema import AnnotationError, ExportRecord, ValidationError, annotate, schema_problem
from pipeline.data.sources import Source, open_source
from pipeline.data.splits import assign_split, check_ratios
from pipeline.ops.tracking import Tracker
from pipeline.runtime import PipelineError, publish, remove_abandoned_temp_dirs, usable_cores

log = logging.getLogger(__name__)

# Bump whenever the same inputs would now give a different dataset, so stale caches are not reused.
CODE_VERSION = 1
REASONS = (
    "invalid_record", "missing_audio", "unreadable_audio", "path_outside_root", "duplicate_id",
    "bad_annotation", "too_short", "too_long", "silent_audio", "flagged", "deleted",
)
_PRIVATE = {"_path": Value("string"), "_split": Value("string")}


@dataclass(frozen=True)
class Settings:
    """The `data.*` knobs that change the output (num_proc only changes speed)."""

    min_duration_s: float
    max_duration_s: float
    quarantine_flags: tuple[str, ...]
    validation: float
    test: float


@dataclass
class Plan:
    """Result of the metadata pass: rows still in the running, and what is already quarantined."""

    rows: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    records_in: int


def run_data_stage(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cache_dir = Path(cfg.cache_dir)
    data_cfg = cfg.data
    settings = _settings(data_cfg)
    key = load_key(cfg.privacy.get("key_env"), cfg.privacy.get("key_file"))
    source, deletions_path = open_source(data_cfg, cache_dir)
    deletions = load_deletions(deletions_path, key)

    plan = _metadata_pass(source, deletions, key, settings)
    fingerprint = _fingerprint(source, deletions_path, plan, key, settings)
    final = cache_dir / "datasets" / fingerprint
    if (final / "build_report.json").exists():
        report = json.loads((final / "build_report.json").read_text())
        report["reused"] = True
        log.info("data: reusing the finished build %s", final)
    else:
        num_proc = int(data_cfg.get("num_proc") or usable_cores())
        report = _build(source, plan, settings, fingerprint, final, num_proc)
        report["reused"] = False
    report["dataset_path"] = str(final.resolve())

    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(final / "quarantine.jsonl", run_dir / "quarantine.jsonl")
    (run_dir / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("data: %d records in, %d kept %s, %d quarantined %s", report["records_in"],
             report["records_kept"], report["splits"], report["records_quarantined"], report["quarantine_reasons"])
    tracker.log_summary({
        "data/records_in": report["records_in"], "data/records_kept": report["records_kept"],
        "data/records_quarantined": report["records_quarantined"], "data/hours": report["hours"],
        **{f"data/{split}": n for split, n in report["splits"].items()},
        **{f"data/quarantine/{reason}": n for reason, n in report["quarantine_reasons"].items()},
    })
    return report


def _settings(data_cfg: DictConfig) -> Settings:
    split = data_cfg.get("split") or {}
    settings = Settings(
        min_duration_s=float(data_cfg.get("min_duration_s", 0.0) or 0.0),
        max_duration_s=float(data_cfg.get("max_duration_s", 30.0) or 30.0),
        quarantine_flags=tuple(sorted(data_cfg.get("quarantine_flags", ["sensitive"]) or [])),
        validation=float(split.get("validation", 0.1)),
        test=float(split.get("test", 0.1)),
    )
    check_ratios(settings.validation, settings.test)
    if settings.min_duration_s >= settings.max_duration_s:
        raise PipelineError(
            f"data.min_duration_s={settings.min_duration_s} must be below data.max_duration_s={settings.max_duration_s}"
        )
    return settings


def _metadata_pass(source: Source, deletions: Deletions, key: bytes, settings: Settings) -> Plan:
    """Check everything that needs no audio; deletion matching comes first, before any id is echoed."""
    rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    records_in = 0
    for raw in source.records:
        records_in += 1
        data = raw.data
        if data is None:
            quarantine.append({"line": raw.line, "reason": "invalid_record", "detail": raw.error})
            continue
        uid = data.get("utterance_id")
        where: dict[str, Any] = {"utterance_id": uid} if isinstance(uid, str) and uid else {"line": raw.line}
        if deletions.matches(key, data):
            anon = {"utterance_id": pseudonym(key, "utt", uid)} if "utterance_id" in where else where
            quarantine.append({**anon, "reason": "deleted", "detail": "matched a deletion request"})
            continue
        try:
            record = ExportRecord.model_validate(data)
        except ValidationError as err:
            quarantine.append({**where, "reason": "invalid_record", "detail": schema_problem(err)})
            continue
        if source.root is not None and record.audio is None:
            quarantine.append({**where, "reason": "invalid_record", "detail": "audio: field required"})
            continue
        if record.utterance_id in seen:
            quarantine.append({**where, "reason": "duplicate_id", "detail": f"line {raw.line} repeats an earlier utterance_id"})
            continue
        seen.add(record.utterance_id)
        flagged = sorted(set(record.flags) & set(settings.quarantine_flags))
        if flagged:
            quarantine.append({**where, "reason": "flagged", "detail": f"annotator flag(s) {flagged}; audio not copied"})
            continue
        try:
            row = annotate(record)
        except AnnotationError as err:
            quarantine.append({**where, "reason": "bad_annotation", "detail": str(err)})
            continue
        path = ""
        if source.root is not None:
            try:
                path = str(resolve_audio(source.root, record.audio))
            except ClipRejected as err:
                quarantine.append({**where, "reason": err.reason, "detail": err.detail})
                continue
        speaker = pseudonym(key, "acct", record.account_id)
        row.update(
            duration=0.0,
            speaker=speaker,
            device=pseudonym(key, "dev", record.device_serial) if record.device_serial else None,
            annotator=pseudonym(key, "ann", record.annotator_id) if record.annotator_id else None,
            _path=path,
            _split=raw.split or assign_split(key, speaker, settings.validation, settings.test),
        )
        rows.append(row)
    return Plan(rows, quarantine, records_in)


def _fingerprint(source: Source, deletions: Path | None, plan: Plan, key: bytes, settings: Settings) -> str:
    """Content hash of everything the dataset is a function of, the key included (via an HMAC)."""
    h = hashlib.sha256()
    key_id = pseudonym(key, "key", "fingerprint")  # changes with the key, reveals nothing about it
    h.update(json.dumps([CODE_VERSION, source.name, source.options, asdict(settings), key_id]).encode())
    for path in [*source.files, *([deletions] if deletions else [])]:
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    for row in plan.rows:
        if row["_path"]:
            with open(row["_path"], "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:20]


def _decode_batch(batch: dict[str, list[Any]], min_s: float, max_s: float, parent_pid: int) -> dict[str, list[Any]]:
    """`datasets.map` worker: one batch of paths to FLAC bytes, or to a quarantine reason."""
    if os.getpid() != parent_pid:
        torch.set_num_threads(1)  # the workers already fill the cores
    out: dict[str, list[Any]] = {"audio": [], "duration": [], "_reject": [], "_detail": []}
    for path, transcript in zip(batch["_path"], batch["transcript"]):
        try:
            clip = load_clip(Path(path), Path(path).name, min_s, max_s, need_signal=bool(transcript.strip()))
        except ClipRejected as err:
            out["audio"].append(None)
            out["duration"].append(0.0)
            out["_reject"].append(err.reason)
            out["_detail"].append(err.detail)
            continue
        out["audio"].append({"bytes": clip.flac, "path": None})
        out["duration"].append(clip.duration)
        out["_reject"].append(None)
        out["_detail"].append(None)
    return out


def _build(source: Source, plan: Plan, settings: Settings, fingerprint: str, final: Path, num_proc: int) -> dict[str, Any]:
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temp_dirs(final)
    tmp = final.parent / f".tmp-{fingerprint}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "work").mkdir(parents=True)
    try:
        with_audio = source.root is not None
        features = dataset_features(with_audio=with_audio)
        meta = Dataset.from_list(plan.rows, features=Features({**dataset_features(with_audio=False), **_PRIVATE}))
        quarantine = list(plan.quarantine)
        if with_audio and len(meta):
            decoded_features = Features({**meta.features, "audio": Audio(sampling_rate=SAMPLING_RATE),
                                         "_reject": Value("string"), "_detail": Value("string")})
            meta = meta.map(
                _decode_batch, batched=True, batch_size=32, writer_batch_size=64,
                num_proc=max(1, min(num_proc, len(meta))), features=decoded_features,
                fn_kwargs={"min_s": settings.min_duration_s, "max_s": settings.max_duration_s,
                           "parent_pid": os.getpid()},
                cache_file_name=str(tmp / "work" / "decoded.arrow"), desc="decoding audio",
            )
            status = meta.select_columns(["utterance_id", "_reject", "_detail"])
            rejected = set()
            for i, (uid, reason, detail) in enumerate(zip(status["utterance_id"], status["_reject"], status["_detail"])):
                if reason is not None:
                    rejected.add(i)
                    quarantine.append({"utterance_id": uid, "reason": reason, "detail": detail})
        else:
            rejected = set()
        splits = list(meta.select_columns(["_split"])["_split"]) if len(meta) else []
        dd = DatasetDict()
        for name in SPLITS:
            keep = [i for i, s in enumerate(splits) if s == name and i not in rejected]
            if len(meta):
                dd[name] = meta.select(keep).select_columns(list(features))
            else:
                dd[name] = Dataset.from_dict({column: [] for column in features}, features=features)

        out = tmp / "out"
        # An empty split must still get one (empty) shard, or load_from_disk cannot read it back.
        dd.save_to_disk(str(out), num_shards={name: 1 for name, split in dd.items() if len(split) == 0})
        kept = sum(len(d) for d in dd.values())
        summary = summarise(DatasetDict({k: v.select_columns([c for c in v.column_names if c != "audio"]) for k, v in dd.items()}))
        report = {
            "source": source.name,
            "fingerprint": fingerprint,
            "records_in": plan.records_in,
            "records_kept": kept,
            "records_quarantined": len(quarantine),
            "quarantine_reasons": dict(sorted(Counter(q["reason"] for q in quarantine).items())),
            "splits": summary["splits"],
            "hours": summary["hours"],
        }
        if report["records_in"] != kept + len(quarantine):
            raise AssertionError(f"data build lost records: {report}")
        with open(out / "quarantine.jsonl", "w", encoding="utf-8") as f:
            for line in quarantine:
                f.write(json.dumps(line) + "\n")
        write_card(out / "README.md", summary, report)
        (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
        del dd, meta
        publish(out, final, marker="build_report.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


