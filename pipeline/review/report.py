"""The review's section of report.md / report.html, and, for the demo, its score against the
annotation errors the data stage planted (`<run>/label_noise.jsonl`).

The scoring here is the only reader of label_noise.jsonl: the queue is ranked before it is read.
The section is written between markers, so a second review replaces its own section and leaves the
evaluation's content alone; re-running the evaluation rewrites the report without it (run the
review again after).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.data.label_noise import RUN_FILE as NOISE_FILE
from pipeline.eval.report import Block, to_html, to_markdown
from pipeline.review.suspects import KINDS, Suspect, budget, ranked

START, END = "<!-- review:start -->", "<!-- review:end -->"


def score_against_noise(run_dir: Path, queue: list[Suspect], summary: dict[str, Any],
                        scored_ids: dict[str, set[str]]) -> dict[str, Any]:
    """Per kind, with k the planted errors among the clips the kind scored: precision at k (the
    share of the kind's first k lines that are planted errors), recall within the kind's first
    `max_share` x clips lines, with the most that recall can be (those lines over k: with more
    errors planted than the second pass has lines for, no ranking finds them all), and recall within
    the queue's first that many lines, which hold every kind: what the second pass really finds. For intents
    also cleanlab's `find_label_issues` on the same probabilities, the anchor. Empty when the run
    has no label_noise.jsonl.

    All of these read the ranked (judged) lines only, as k counts the errors among the judged clips:
    the unscored lines queued after them (clips whose label one fold alone carries) have no rank to
    score. How many of those are planted errors is `queued_unjudged`, per kind: the lines, the
    planted errors among them (the errors a person finds only past every ranked line), and those
    among the lines the second pass reads when the ranked lines are fewer than its budget (`planted_read`)."""
    path = Path(run_dir) / NOISE_FILE
    if not path.exists():
        return {}
    planted: dict[str, set[str]] = {k: set() for k in KINDS}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            planted.setdefault(item["kind"], set()).add(item["utterance_id"])
    reviewed = budget(summary["clips"], summary["max_share"])
    judged = ranked(queue)  # the judged lines come first (suspects.rank)
    queue, held = judged, queue[len(judged):]
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        truth = planted[kind] & scored_ids.get(kind, set())
        if not truth:
            continue
        mine = [s.utterance_id for s in queue if s.kind == kind]
        k = len(truth)
        kinds[kind] = {
            "planted": k,
            "precision_at_k": sum(u in truth for u in mine[:k]) / k,
            "recall_at_max_share": sum(u in truth for u in mine[:reviewed]) / k,
            "recall_ceiling": min(1.0, reviewed / k),
            # What a second pass over max_share of the clips finds: the queue's first lines hold every kind.
            "recall_in_queue": sum(s.kind == kind and s.utterance_id in truth for s in queue[:reviewed]) / k,
        }
    issues = (summary.get("cleanlab") or {}).get("find_label_issues")
    if "intent" in kinds and issues is not None:
        truth = planted["intent"] & scored_ids["intent"]
        k = len(truth)
        kinds["intent"]["cleanlab_find_label_issues"] = {
            "flagged": len(issues),
            "precision": sum(u in truth for u in issues) / len(issues) if issues else None,
            "precision_at_k": sum(u in truth for u in issues[:k]) / k,
        }
    # The second pass reads the queue's first `reviewed` lines: with fewer ranked lines than that, the
    # first unscored ones too, and the planted errors it finds there are counted apart.
    read = held[:max(0, reviewed - len(judged))]
    unjudged: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        if lines := {s.utterance_id for s in held if s.kind == kind}:
            within = {s.utterance_id for s in read if s.kind == kind}
            unjudged[kind] = {"lines": len(lines), "planted": len(lines & planted[kind]),
                              "planted_read": len(within & planted[kind])}
    return {"file": NOISE_FILE, "kinds": kinds, "lines_reviewed": reviewed, "queued_unjudged": unjudged}


def section_blocks(queue: list[Suspect], summary: dict[str, Any], scoring: dict[str, Any], top_n: int) -> list[Block]:
    reviewed = summary["budget"]
    judged = ranked(queue)
    held = queue[len(judged):]
    blocks: list[Block] = [("h2", "Annotation review")]
    blocks.append(("p", (
        f"Every kept clip of every split ({summary['clips']} clips, {summary['accounts']} accounts) scored by the run's "
        f"models for four kinds of likely annotation error; review/queue.jsonl holds {len(queue)} lines, the "
        f"{len(judged)} ranked ones most suspicious first (score: for intent, wake and entities the model's "
        f"probability that the annotation is wrong; for "
        f"transcripts the clip's rank within its split, so the order across kinds is rough). A second pass over "
        f"{summary['max_share']:.0%} of the clips reads its first {reviewed} lines. Intent and entities are judged by "
        f"NLU heads refitted on the other {summary['folds'] - 1} of {summary['folds']} folds of whole texts (the wake "
        f"kind's folds are whole accounts).")))
    if held:
        counts = ", ".join(f"{k} {n}" for k in KINDS if (n := sum(s.kind == k for s in held)))
        blocks.append(("p", (
            f"After the ranked lines the queue holds {len(held)} unscored ones ({counts}; `not_judged` set, score "
            "null): clips whose intent or entity tag only texts of their own fold carry, which the model judging "
            "them never saw. To that model a rare label with one phrasing and an annotation error that makes a new "
            "label look the same, so these clips are queued to be checked by hand; the line counts and the scoring "
            "below cover the ranked lines only.")))
    for note in summary["notes"]:
        blocks.append(("p", f"Note: {note}."))
    seconds = summary["seconds"]
    blocks.append(("table", (["kind", "clips scored", "lines (model disagrees)", f"in the first {reviewed} lines"],
                             [[k, summary["scored"][k], summary["lines"][k], summary["flagged"][k]] for k in KINDS])))
    if seconds:
        blocks.append(("p", "Time (s): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in seconds.items())
                       + " (the ASR forward pass serves both the transcript and the wake kinds)."))
    if scoring.get("kinds"):
        blocks.append(("p", f"Scored against the annotation errors the demo planted ({scoring['file']}); k is the number "
                            "planted of each kind among the clips it scored."))
        rows = [[k, s["planted"], f"{s['precision_at_k']:.3f}", f"{s['recall_at_max_share']:.3f}",
                 f"{s['recall_ceiling']:.3f}", f"{s['recall_in_queue']:.3f}"] for k, s in scoring["kinds"].items()]
        blocks.append(("table", (["kind", "k", "precision at k", f"recall in the kind's first {reviewed} lines",
                                  f"most it can be ({reviewed} lines / k)", f"recall in the queue's first {reviewed} lines"],
                                 rows)))
        anchor = scoring["kinds"].get("intent", {}).get("cleanlab_find_label_issues")
        if anchor:
            precision = "n/a" if anchor["precision"] is None else f"{anchor['precision']:.3f}"
            blocks.append(("p", (
                f"Intent anchor: cleanlab.filter.find_label_issues on the same out-of-fold probabilities flags "
                f"{anchor['flagged']} clips (precision {precision}; precision at k of its ranking "
                f"{anchor['precision_at_k']:.3f}).")))
    unjudged = scoring.get("queued_unjudged") or {}
    if unjudged:
        blocks.append(("p", f"Planted errors ({scoring['file']}) among the unscored lines after the ranked ones, not "
                            "counted in k: " + ", ".join(f"{k} {u['planted']} of {u['lines']}"
                                                          for k, u in unjudged.items())
                            + f" ({sum(u['planted_read'] for u in unjudged.values())} of them within the "
                              f"{scoring['lines_reviewed']} lines a second pass reads)."))
    for kind in KINDS:
        lines = [s for s in judged if s.kind == kind][:top_n]
        if lines:
            blocks.append(("h2", f"Top suspects: {kind}"))
            blocks.append(("table", (["utterance", "split", "annotated", "model", "score", "reason"],
                                     [[s.utterance_id, s.split, _show(s.annotated), _show(s.model), f"{s.score:.3f}",
                                       s.reason] for s in lines])))
    if held:
        blocks.append(("h2", "Queued unscored: labels one fold carries"))
        blocks.append(("table", (["utterance", "split", "kind", "annotated", "reason"],
                                 [[s.utterance_id, s.split, s.kind, _show(s.annotated), s.reason]
                                  for s in held[:top_n]])))
    return blocks


def write_section(run_dir: Path, blocks: list[Block]) -> None:
    """Put the section into report.md and report.html (created when the run has no evaluation)."""
    run_dir = Path(run_dir)
    md = f"{START}\n{to_markdown(blocks, run_dir)}{END}\n"
    page = to_html(blocks)
    body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
    html = f"{START}\n{body}\n{END}\n"
    _splice(run_dir / "report.md", md, None)
    _splice(run_dir / "report.html", html, "</body>")


def _splice(path: Path, section: str, before: str | None) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", "", text, flags=re.S)
    if before and not text:
        text = f"<!doctype html><html><head><meta charset='utf-8'><title>Annotation review</title></head><body>\n{before}</html>\n"
    if before and before in text:
        at = text.rindex(before)
        text = text[:at] + section + text[at:]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text, encoding="utf-8")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(f"{e['type']}: {e['value']}" for e in value) or "(none)"
    if isinstance(value, bool):
        return "wake word" if value else "false wake"
    return str(value)
