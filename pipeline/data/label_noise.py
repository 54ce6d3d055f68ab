"""Known annotation errors planted in the demo corpus, so the review stage can be scored.

`data.demo.label_noise` is the share of eligible clips corrupted in each of four kinds, the slips
annotators make: a misheard word in the transcript, a swapped intent, a wake flag set wrong, an
entity span one word off. Each corrupted clip gets one error of one kind. The audio is still spoken
from the true text (it is synthesised from the shipped records), so only the annotation is wrong.

The corrupted export is written beside the clean one in the demo cache (the audio is shared), with
a manifest of what was changed; the data stage copies the manifest into `<run>/label_noise.jsonl`.
Nothing else reads the manifest: the review stage must find the errors on its own.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.data.annotations import parse_inline, word_spans
from pipeline.runtime import PipelineError, write_text_atomic

KINDS = ("transcript", "intent", "wake", "entities")
RUN_FILE = "label_noise.jsonl"
MAX_SHARE = 0.2  # four kinds at this share already corrupt most clips
# In the corrupted export's name: a change to what is planted makes a new file instead of reusing one
# an earlier version wrote to the demo cache. 2: a span may slip onto the transcript's first word.
VERSION = 2


def check_share(share: Any) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= MAX_SHARE:
        raise PipelineError(f"data.demo.label_noise={share!r}: use a share of clips between 0 and {MAX_SHARE} (e.g. 0.05)")
    return float(share)


def with_label_noise(annotations: Path, share: float, seed: int) -> Path:
    """The export to build from: `annotations` itself at share 0, else its corrupted copy (made once)."""
    share = check_share(share)
    if share == 0:
        return annotations
    noisy, manifest = _noisy_paths(annotations, share, seed)
    if noisy.exists() and manifest.exists():
        return noisy
    records = [json.loads(line) for line in annotations.read_text(encoding="utf-8").splitlines() if line.strip()]
    corrupted, injected = corrupt_records(records, share, seed)
    for path, rows in ((manifest, injected), (noisy, corrupted)):  # the export last: it marks completion
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return noisy


def copy_manifest(cfg: DictConfig, run_dir: Path, kept: set[str] | None = None) -> Path | None:
    """Write `<run>/label_noise.jsonl` for a build whose demo (`data=demo`, or a `demo` entry of
    `data.sources`, as in data=demo_speech) has label noise; None when none has.

    Only the lines of clips the dataset kept (`kept`: its utterance ids, read from the run's build when
    not given, and only when there is a manifest): the demo's manifest covers
    its whole export, deleted and flagged clips included, whose ids and transcripts must not reach
    the run folder. A manifest an earlier build left in the folder goes, so the review never scores
    this dataset against another build's planted errors."""
    from pipeline.data.demo import ensure_demo_export

    data_cfg = cfg.get("data") or {}
    demos = [data_cfg] if data_cfg.get("source") == "demo" else [
        e for e in (data_cfg.get("sources") or []) if e.get("source") == "demo"]
    lines = []
    for entry in demos:
        if not check_share(OmegaConf.select(entry, "demo.label_noise", default=0) or 0):
            continue
        noisy, _ = ensure_demo_export(entry, Path(cfg.cache_dir))
        manifest = manifest_of(noisy)
        if not manifest.exists():
            raise PipelineError(f"{manifest} is missing beside {noisy}; delete {noisy} so the demo rebuilds both")
        lines.append(manifest.read_text(encoding="utf-8"))
    target = Path(run_dir) / RUN_FILE
    if not lines:
        target.unlink(missing_ok=True)
        return None
    if kept is None:
        from pipeline import run_folder

        kept = run_folder.dataset_ids(run_dir)
    rows = [line for text in lines for line in text.splitlines(keepends=True)
            if line.strip() and json.loads(line)["utterance_id"] in kept]
    target.write_text("".join(rows), encoding="utf-8")
    return target


# What `with_label_noise` writes beside an export: the corrupted copy and its manifest of planted
# errors (erasure removes both when it purges the export; they are made again from the purged file).
DERIVED_FILES = ("annotations.noise-*.jsonl", "label_noise.noise-*.jsonl")


def _noisy_paths(annotations: Path, share: float, seed: int) -> tuple[Path, Path]:
    noisy = annotations.with_name(f"annotations.noise-v{VERSION}-{share:g}-{seed}.jsonl")
    return noisy, manifest_of(noisy)


def manifest_of(noisy: Path) -> Path:
    """The manifest of planted errors beside a corrupted export."""
    return noisy.with_name(noisy.name.replace("annotations.", "label_noise.", 1))


def corrupt_records(records: list[dict[str, Any]], share: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records with `share` of the eligible clips of each kind corrupted (disjoint clips), and
    one manifest line per corrupted clip: utterance_id, kind, the true and the corrupted value.

    Which clips is decided by a seeded hash of their ids, so the same corpus and seed corrupt the
    same clips whatever subset of it is built.
    """
    rng = random.Random(seed)
    out = [dict(r) for r in records]
    taken: set[int] = set()
    injected: list[dict[str, Any]] = []
    vocabulary = sorted({w for r in records for w in r["transcript"].lower().split() if w.isalpha() and len(w) > 2})
    intents = sorted({r["intent"] for r in records if r.get("intent")})
    eligible = {
        "transcript": lambda r: len(_free_words(r)) > 0,
        "intent": lambda r: r.get("intent") is not None and len(intents) > 1,
        "wake": lambda r: True,
        "entities": lambda r: bool(_span_moves(*_parse(r))),
    }
    for kind in KINDS:
        candidates = [i for i, r in enumerate(out) if i not in taken and eligible[kind](r)]
        candidates.sort(key=lambda i: hashlib.sha256(f"{seed}:{kind}:{out[i]['utterance_id']}".encode()).hexdigest())
        count = round(share * len(candidates))
        for i in candidates[:count]:
            before = _value(out[i], kind)
            out[i] = _CORRUPT[kind](out[i], rng, vocabulary, intents)
            taken.add(i)
            injected.append({"utterance_id": out[i]["utterance_id"], "kind": kind,
                             "true": before, "annotated": _value(out[i], kind)})
    return out, injected


def _value(record: dict[str, Any], kind: str) -> Any:
    return {"transcript": record["transcript"], "intent": record.get("intent"),
            "wake": record.get("wake_word_present", True), "entities": record.get("annotation")}[kind]


def _parse(record: dict[str, Any]) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Words of the annotation's plain text and its entities as (type, first word, last word + 1)."""
    plain, entities = parse_inline(record.get("annotation") or record["transcript"])
    spans = word_spans(plain)
    words = [plain[s:e] for s, e in spans]
    ents = []
    for ent in entities:
        inside = [k for k, (s, e) in enumerate(spans) if s < ent.end and e > ent.start]
        ents.append((ent.type, inside[0], inside[-1] + 1))
    return words, ents


def _render(words: list[str], ents: list[tuple[str, int, int]]) -> str:
    parts: list[str] = []
    k = 0
    for etype, start, end in sorted(ents, key=lambda e: e[1]):
        parts += words[k:start] + [f"[{etype} : {' '.join(words[start:end])}]"]
        k = end
    return " ".join(parts + words[k:])


def _free_words(record: dict[str, Any]) -> list[int]:
    """Words a misheard-word error may hit: outside every entity, not the first (the wake word)."""
    words, ents = _parse(record)
    inside = {k for _, s, e in ents for k in range(s, e)}
    return [k for k, w in enumerate(words) if k > 0 and k not in inside and w.isalpha()]


def _misheard_word(record: dict[str, Any], rng: random.Random, vocabulary: list[str], _: list[str]) -> dict[str, Any]:
    words, ents = _parse(record)
    k = rng.choice(_free_words(record))
    words[k] = rng.choice([w for w in vocabulary if w != words[k].lower()])
    return {**record, "transcript": " ".join(words), "annotation": _render(words, ents)}


def _swapped_intent(record: dict[str, Any], rng: random.Random, _: list[str], intents: list[str]) -> dict[str, Any]:
    intent = rng.choice([i for i in intents if i != record["intent"]])
    return {**record, "intent": intent, "scenario": None}


def _wrong_wake_flag(record: dict[str, Any], rng: random.Random, _: list[str], __: list[str]) -> dict[str, Any]:
    # A clip marked as a false wake can carry no intent (the schema's rule), so that goes too.
    present = not record.get("wake_word_present", True)
    return {**record, "wake_word_present": present, **({} if present else {"intent": None, "scenario": None})}


def _span_moves(words: list[str], ents: list[tuple[str, int, int]]) -> list[tuple[int, int, int]]:
    """(entity, new first word, new end) for every one-word boundary slip that keeps spans apart."""
    moves = []
    for j, (_, start, end) in enumerate(ents):
        used = {k for n, (_, s, e) in enumerate(ents) if n != j for k in range(s, e)}
        if end < len(words) and end not in used:
            moves.append((j, start, end + 1))
        if start > 0 and start - 1 not in used:
            moves.append((j, start - 1, end))
        if end - start > 1:
            moves.append((j, start, end - 1))
    return moves


def _span_one_word_off(record: dict[str, Any], rng: random.Random, _: list[str], __: list[str]) -> dict[str, Any]:
    """One entity loses its last word, or takes in the next (or previous) free word."""
    words, ents = _parse(record)
    j, start, end = rng.choice(_span_moves(words, ents))
    ents[j] = (ents[j][0], start, end)
    return {**record, "annotation": _render(words, ents)}


_CORRUPT = {"transcript": _misheard_word, "intent": _swapped_intent, "wake": _wrong_wake_flag,
            "entities": _span_one_word_off}
