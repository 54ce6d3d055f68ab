"""The dataset card (`README.md` beside the saved data): what is in the build, at a glance.

Written from the built splits and the build report only, which hold pseudonyms, never raw ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from datasets import DatasetDict


def summarise(dd: DatasetDict) -> dict[str, Any]:
    """Counts per split, intent and entity type; hours of audio; false-wake share."""
    intents: Counter[str] = Counter()
    entity_types: Counter[str] = Counter()
    seconds = 0.0
    false_wakes = 0
    total = 0
    for split in dd.values():
        light = split.select_columns(["intent", "entities", "duration", "wake_word_present"])
        for batch in light.iter(batch_size=1000):
            for intent, ents, dur, wake in zip(
                batch["intent"], batch["entities"], batch["duration"], batch["wake_word_present"]
            ):
                intents[intent or "(false wake / none)"] += 1
                entity_types.update(e["type"] for e in ents)
                seconds += float(dur or 0.0)
                false_wakes += 0 if wake else 1
                total += 1
    return {
        "splits": {name: len(split) for name, split in dd.items()},
        "intents": dict(sorted(intents.items())),
        "entity_types": dict(sorted(entity_types.items())),
        "hours": round(seconds / 3600, 4),
        "false_wake_share": round(false_wakes / total, 4) if total else 0.0,
    }


def _table(title: str, counts: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", "", "| | count |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in counts.items()] or ["| (none) | 0 |"]
    return lines + [""]


def _sources(source: str | list[str]) -> str:
    if isinstance(source, list):
        return "sources " + ", ".join(f"`{name}`" for name in source)
    return f"source `{source}`"


def split_rule(kind: str, options: dict[str, Any]) -> str:
    """How one source's records get their split: the card must not claim speaker-disjoint splits of a
    corpus that names no speakers."""
    if kind == "massive_text":
        return "MASSIVE's own split (train file -> train; dev file -> validation and test, half each by its id)"
    if kind == "slurp":
        return (f"a keyed hash of the {options.get('slurp_account', 'sentence')} (`data.slurp_account`): SLURP's "
                "files name no speakers, so one person's clips may sit in two splits")
    if kind in ("speech", "lone_words"):
        speech = options.get("speech") or {}
        validation, test = speech.get("heldout") or (0.1, 0.1)
        if speech.get("role") != "wake_test" and not validation and not test:
            return "none: every clip is training audio"
        rule = (f"its own held-out speakers (a seeded hash ranks the corpus's speakers: the first {test:g} of them, at "
                f"least one, to test, the next {validation:g} to validation; a corpus naming no speakers clip by clip)")
        if speech.get("role") == "wake_test":
            rule += (", and its keyword clips half to validation, half to test by clip, whoever speaks them, so one "
                     "speaker may be in both")
        return rule
    return ("a keyed hash of the account (the speaker where the source names one, else each clip is its own), "
            "so no account is in two splits")


def write_card(path: Path, summary: dict[str, Any], report: dict[str, Any], rules: dict[str, str],
               text_only: bool = False) -> None:
    """`rules`: source name -> how its splits are made (`split_rule`)."""
    if len(set(rules.values())) == 1:
        splits = f"splits are assigned by {next(iter(rules.values()))}."
    else:
        splits = "splits are assigned per source: " + "; ".join(f"`{n}` by {r}" for n, r in rules.items()) + "."
    lines = [
        f"# Dataset {report['fingerprint']}",
        "",
        f"Built by the data stage from {_sources(report['source'])}: {report['records_in']} input records, "
        f"{report['records_kept']} kept, {report['records_quarantined']} quarantined. Load it with "
        "`datasets.load_from_disk(<this folder>)`. Speaker, device and annotator columns are keyed "
        f"pseudonyms (HMAC-SHA256); {splits}",
        "",
        "- audio: none (text only)" if text_only else f"- audio: {summary['hours']} hours",
        f"- false-wake share: {summary['false_wake_share']:.1%}",
        "",
    ]
    by_source = report.get("by_source") or {}
    if len(by_source) > 1:
        lines += _table("Sources (records in / kept / quarantined)", {
            name: f"{c['records_in']} / {c['records_kept']} / {c['records_quarantined']}" for name, c in by_source.items()})
    lines += _table("Splits", summary["splits"])
    lines += _table("Intents", summary["intents"])
    lines += _table("Entity types", summary["entity_types"])
    lines += _table("Quarantine (reason: count; see quarantine.jsonl)", report["quarantine_reasons"])
    path.write_text("\n".join(lines), encoding="utf-8")
