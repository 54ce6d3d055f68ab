"""The evaluation report a person reads in a minute: report.md, and the same content as report.html.

Both are rendered from one list of blocks (heading, paragraph, table, image), so they cannot drift
apart; the HTML embeds the plots as data URIs so it can be mailed or attached as one file.
Only what is in the eval rows appears, and those carry pseudonymous speaker ids only.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from pipeline.eval.coverage import not_computed_notes, source_table

Block = tuple[str, Any]  # ("h1"|"h2"|"p", text) | ("table", (header, rows)) | ("img", (alt, path))

# `{split}`: the evaluated split's name (eval.split).
_HEADLINE_ROWS = [
    ("ASR", "word error rate", "asr/wer"),
    ("ASR", "character error rate", "asr/cer"),
    ("ASR", "word error rate, greedy decoding (no LM)", "asr/wer_greedy"),
    ("ASR", "character error rate, greedy decoding (no LM)", "asr/cer_greedy"),
    ("Wake word", "false reject rate (tuned threshold)", "wake/frr"),
    ("Wake word", "false accepts per hour", "wake/fa_per_hour"),
    ("Wake word", "ROC AUC", "wake/auc"),
    ("Wake word", "equal error rate", "wake/eer"),
    ("Wake word", "tuned threshold (keyword log posterior)", "wake/threshold"),
    ("Wake word", "FRR at 0.5 false accepts per hour ({split} DET)", "wake/frr_at_0.5_fa_per_hour"),
    ("Wake word", "FRR at 1 false accept per hour ({split} DET)", "wake/frr_at_1_fa_per_hour"),
    ("Wake word", "FRR at 2 false accepts per hour ({split} DET)", "wake/frr_at_2_fa_per_hour"),
    ("Wake word", "FRR at 5 false accepts per hour ({split} DET)", "wake/frr_at_5_fa_per_hour"),
    ("Wake word", "hours of {split} background audio", "wake/background_hours"),
    ("NLU (gold transcripts)", "intent accuracy", "nlu/intent_accuracy"),
    ("NLU (gold transcripts)", "intent macro F1", "nlu/intent_macro_f1"),
    ("NLU (gold transcripts)", "entity F1", "nlu/entity_f1"),
    ("SLU (ASR transcripts)", "intent accuracy", "slu/intent_accuracy"),
    ("SLU (ASR transcripts)", "intent macro F1", "slu/intent_macro_f1"),
    ("SLU (ASR transcripts)", "entity F1", "slu/entity_f1"),
    ("SLU (ASR transcripts)", "SLU-F1 (SLURP)", "slu/slu_f1"),
    ("Data", "clips", "eval/num_clips"),
    ("Data", "audio hours", "eval/audio_hours"),
    ("Speed", "audio seconds per compute second", "eval/rtf"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _with_interval(metrics: dict[str, Any], key: str) -> str:
    """`0.132 [0.101, 0.168]`: the value and its 95% interval, when the metric has one."""
    value, low, high = metrics.get(key), metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if not isinstance(value, float) or low is None or high is None:
        return _fmt(value)
    digits = 3 if max(abs(value), abs(high)) < 100 else 1
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _scoring_note(details: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    """Which intervals and which intent / entity scoring the headline figures use."""
    parts = []
    samples = metrics.get("eval/bootstrap_samples")
    if samples:
        parts.append(f"Intervals: 95%, from {samples} bootstrap samples that resample speakers (their clips are not "
                     "independent); false accepts per hour: exact Poisson interval on the count over the hours.")
        bare = [k for k in metrics if not k.startswith("by_source/") and f"{k}_ci_low" in metrics
                and metrics[f"{k}_ci_low"] is None and metrics[k] is not None]
        test_data = details.get("test_data") or {}
        if test_data.get("clips", 0) > 1 and test_data.get("speakers") == test_data.get("clips"):
            parts.append("Every test clip has a speaker of its own (a source without speaker ids makes each clip its "
                         "own account): the intervals resample clips, and are too narrow if one person recorded "
                         "several of them.")
        if bare:  # a split of one speaker: a zero-width interval would read as certainty
            parts.append(f"No interval for {', '.join(f'`{k}`' for k in bare)}: an interval needs two or more speakers "
                         "(or background recordings) that score differently; on this split no resample could "
                         "compute it, or every resample gave the same value.")
    scoring = details.get("slu_scoring") or {}
    if scoring.get("mode") == "slurp":
        parts.append(f"Intent and entity scoring: slurp, as SLURP's official scorer (gold fillers from its tokens, "
                     f"strings compared as given, clips without a prediction skipped): {scoring['scored']} of "
                     f"{scoring['clips']} clips with an intent are SLURP records and scored.")
    elif scoring.get("mode") == "project":
        parts.append("Intent and entity scoring: project (gold entities as annotated, both sides normalised for case, "
                     "punctuation and digits, a clip without a prediction counts as an error); "
                     "eval.slu_scoring=slurp scores as SLURP's official scorer.")
    return " ".join(parts) or None


def _background_blocks(background: dict[str, Any]) -> list[Block]:
    """How the wake-word operating point was measured on background recordings, or why it was not."""
    blocks: list[Block] = []
    if background.get("warning"):
        blocks.append(("p", f"Caution: {background['warning']}."))
    if "threshold" not in background:
        return blocks
    (tune, tune_h), (test, test_h) = list(background["hours"].items())
    recs = background["recordings"]
    blocks.append(("p", (
        f"False accepts are counted on background recordings scanned as a stream ({background['window_s']:g} s "
        f"windows every {background['hop_s']:g} s, {background['refractory_s']:g} s ignored after each detection; "
        f"{background['x_real_time']:.0f}x real time). The threshold {background['threshold']:.4f} was tuned on "
        f"{tune} ({tune_h:.2f} h in {recs[tune]} recordings: {background['tune_false_accepts']} detections, "
        f"FRR {_fmt(background['tune_frr'])}) to {background['target_fa_per_hour']:g} per hour; on {test} "
        f"({test_h:.2f} h in {recs[test]} recordings) it gave {background['false_accepts']} false accepts "
        f"({background['fa_per_hour']:.2f} per hour). Source: {background['source']}.")))
    if background.get("errors"):
        # Named by pseudonym and position (pipeline.data.background): `python -m pipeline.data.background
        # <source>` maps a pseudonym back to its file for whoever holds the key.
        blocks.append(("table", ([f"{test} background recording", "where", "time", "score"],
                                 [[e["recording"], e.get("position") or "", _clock(e["time_s"]), _fmt(e["score"])]
                                  for e in background["errors"]])))
        blocks.append(("p", "Recordings are named by keyed pseudonyms and their place in the source; "
                            "`python -m pipeline.data.background <source>` lists the file each stands for."))
    return blocks


def _clock(seconds: float) -> str:
    m, s = divmod(float(seconds), 60.0)
    return f"{int(m) // 60:d}:{int(m) % 60:02d}:{s:04.1f}"


def build_blocks(metrics: dict[str, Any], details: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    split = (details.get("test_data") or {}).get("split") or "test"
    blocks: list[Block] = [("h1", "Evaluation report")]
    blocks.append(("table", (["area", "metric", "key", "value"],
                             [[a, name.format(split=split), f"`{key}`", _with_interval(metrics, key)]
                              for a, name, key in _HEADLINE_ROWS])))
    note = _scoring_note(details, metrics)
    if note:
        blocks.append(("p", note))
    blocks += [("p", line) for line in not_computed_notes(details.get("not_computed") or {})]
    sources = source_table(details.get("by_source") or {})
    if sources:
        blocks += [("h2", "Per source"), ("table", sources)]
    decoder = details.get("decoder") or {}
    if decoder.get("mode") == "lm":
        tried = ", ".join(f"{t['lm_weight']:g}: {t['wer']:.3f}" for t in decoder["tuning"] if t["wer"] is not None)
        chosen = (f"the lowest {decoder['tune_split']} WER of those tried ({tried})" if tried else
                  f"eval.lm_weights' middle value: split {decoder['tune_split']} has no transcript to choose on")
        blocks.append(("p", f"Transcripts: beam search (beam {decoder['beam_size']}) with the ASR run's character "
                            f"{decoder['lm_order']}-gram LM at weight {decoder['lm_weight']:g}, {chosen}."))
    elif decoder:
        blocks.append(("p", "Transcripts: greedy CTC decoding (no language model)."))
    for short_split, count in (details.get("asr_too_short") or {}).items():
        blocks.append(("p", f"Split {short_split}: {count} clip(s) too short for the ASR model to give an output frame, "
                            "scored as empty transcripts and never accepted as the wake word (data.min_duration_s "
                            "leaves such clips out of the dataset)."))
    wake = details.get("wake")
    if wake:
        background = details.get("wake_background") or {}
        tune_split = decoder.get("tune_split") or "validation"
        tuned_on = (f"{tune_split} positives and background" if "threshold" in background
                    else f"{tune_split} clips")
        word = f" for {details['wake_word']!r}" if details.get("wake_word") else ""
        blocks.append(("p", f"Wake-word threshold{word} {wake['threshold']:.4f} (tuned on {tuned_on}); {split}: "
                            f"{wake['positives']} clips with and {wake['negatives']} without the wake word "
                            f"({wake['negative_hours'] * 3600:.0f} s of negative clips: AUC and EER)."))
        blocks += _background_blocks(background)
        tuning = details.get("wake_tuning") or {}
        clip = tuning.get("bounding_clip")
        if tuning and not tuning.get("resolvable") and clip and "threshold" not in background:
            blocks.append(("p", (
                f"Caution: {tuning['split']} has only {tuning['negative_hours'] * 3600:.0f} s of audio without the wake word, "
                f"too little to measure {tuning['target_fa_per_hour']:g} false accept{'' if tuning['target_fa_per_hour'] == 1 else 's'} per hour, so the threshold rejects all "
                f"{tuning['negatives']} of its negatives and was set by the hardest one: {clip['utterance_id']} "
                f"(score {_fmt(clip['score'])}), \"{clip['reference']}\" heard as \"{clip['hypothesis']}\". "
                "The FRR depends on that one clip; tune on more negative audio for a stable operating point.")))
    elif decoder:  # no decoder: no ASR model, and the not-computed note says so
        reason = details.get("wake_skipped") or "a split lacks clips with or without the wake word"
        blocks.append(("p", f"Wake-word metrics not computed: {reason}."))
    titles = {"wake_det": "Wake word: DET curve", "intent_confusion": "Intent confusion (gold transcripts)",
              "wer_slices": "WER per slice"}
    for key, path in plots.items():
        blocks += [("h2", titles.get(key, key)), ("img", (titles.get(key, key), path))]
    if details.get("wake_errors"):
        blocks.append(("h2", "Wake-word errors at the tuned threshold"))
        blocks.append(("table", (["utterance", "speaker", "wake word said", "score", "reference", "hypothesis"],
                                 [[e["utterance_id"], e["speaker"], "yes" if e["wake_word_present"] else "no",
                                   _fmt(e["wake_score"]), e["reference"], e["hypothesis"]]
                                  for e in details["wake_errors"]])))
    if details["worst"]:
        blocks.append(("h2", "Worst utterances"))
        blocks.append(("table", (["utterance", "speaker", "WER", "reference", "hypothesis"],
                                 [[w["utterance_id"], w["speaker"], _fmt(w["wer"]), w["reference"], w["hypothesis"]]
                                  for w in details["worst"]])))
    for name, per_type in (("Entity F1 per type (gold transcripts)", details["nlu_entities_per_type"]),
                           ("SLU-F1 per type (ASR transcripts)", details["slu_f1_per_type"])):
        if per_type:
            blocks.append(("h2", name))
            blocks.append(("table", (["type", "F1", "TP", "FP", "FN"],
                                     [[t, _fmt(c["f1"]), f"{c['tp']:.3g}", f"{c['fp']:.3g}", f"{c['fn']:.3g}"]
                                      for t, c in per_type.items()])))
    return blocks


def to_markdown(blocks: list[Block], base: Path) -> str:
    out: list[str] = []
    for kind, content in blocks:
        if kind == "h1":
            out.append(f"# {content}")
        elif kind == "h2":
            out.append(f"## {content}")
        elif kind == "p":
            out.append(str(content))
        elif kind == "img":
            alt, path = content
            out.append(f"![{alt}]({Path(path).relative_to(base).as_posix()})")
        elif kind == "table":
            header, rows = content
            cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>"]
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(str(content))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(str(content))}</p>")
        elif kind == "img":
            alt, path = content
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>")
        elif kind == "table":
            header, rows = content
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            for row in rows:
                cells = "".join(f"<td>{html.escape(str(v).strip('`'))}</td>" for v in row)
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: Path, metrics: dict[str, Any], details: dict[str, Any], plots: dict[str, Path]) -> tuple[Path, Path]:
    blocks = build_blocks(metrics, details, plots)
    md, page = run_dir / "report.md", run_dir / "report.html"
    md.write_text(to_markdown(blocks, run_dir))
    page.write_text(to_html(blocks))
    return md, page


def plot_confusion(gold: list[str], predicted: list[str], path: Path) -> Path:
    """Intent confusion matrix; cell counts are printed only while they stay readable."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = sorted(set(gold) | set(predicted))
    size = min(4 + 0.35 * len(labels), 24)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        gold, predicted, labels=labels, ax=ax, xticks_rotation="vertical", colorbar=False,
        include_values=len(labels) <= 20,
    )
    ax.set_title("Intent confusion (rows: gold)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_slices(wer_by: dict[str, dict[str, dict[str, float]]], path: Path, top: int = 20) -> Path:
    """One bar chart per slicing (speaker, intent, duration...); the `top` worst values of each."""
    import matplotlib.pyplot as plt

    kinds = [k for k, v in wer_by.items() if v]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(7, 1.2 + sum(min(len(wer_by[k]), top) * 0.25 + 0.8 for k in kinds)),
                             squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        items = sorted(wer_by[kind].items(), key=lambda kv: -kv[1]["wer"])[:top][::-1]
        ax.barh([f"{k} ({int(v['clips'])})" for k, v in items], [v["wer"] for _, v in items], color="tab:blue")
        ax.set_title(f"WER by {kind}", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    axes[-1, 0].set_xlabel("WER")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
