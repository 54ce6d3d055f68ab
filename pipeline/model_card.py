"""The model card (`README.md` beside a trained model, as on the Hugging Face hub): what the model is,
the data it was trained on and how, its figures at training time, and what it is not for.

Written from the dataset's build report and the stage's own metrics only, which hold a fingerprint,
counts and pseudonyms, never a raw identifier or a transcript. The test figures with their intervals
are the eval stage's (`metrics.json`, `report.md` of the run); the card points there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.run_folder import read_build_report
from pipeline.runtime import table_cell

KINDS = {
    "asr": ("ASR model: wav2vec2 CTC, characters", "automatic-speech-recognition",
            "`transformers.Wav2Vec2ForCTC.from_pretrained(<this folder>)` with "
            "`Wav2Vec2Processor.from_pretrained(<this folder>)`; `lm/` holds the character LM of the "
            "beam search (`python evaluate.py asr_model=<this folder> ...`)"),
    "nlu": ("NLU model: intent classifier and BIO entity tagger on one encoder", "token-classification",
            "`pipeline.nlu.model.NLUModel.from_pretrained(<this folder>).predict([...])`"),
}


def write_model_card(folder: Path, kind: str, dataset_path: Path, facts: dict[str, Any],
                     figures: dict[str, dict[str, Any]], notes: list[str] | None = None) -> Path:
    """`facts`: how it was trained (name -> value); `figures`: split -> metric -> value, as measured by
    the stage itself (None: not computed); `notes`: lines under the figures, e.g. why one is missing."""
    title, tag, load = KINDS[kind]
    report = read_build_report(dataset_path) or {}
    sources = report.get("source")
    names = sources if isinstance(sources, list) else [sources] if sources else []
    splits = report.get("splits") or {}
    lines = [
        "---", "library_name: transformers", f"pipeline_tag: {tag}", f"tags: [voice-pipeline, {kind}]", "---", "",
        f"# {title}", "",
        f"Trained by this project's `{kind}` stage. Load: {load}.", "",
        "## Training data", "",
        (f"Dataset `{report.get('fingerprint')}` ({Path(dataset_path)}; its own card, `README.md`, says how its "
         f"splits were made): sources {', '.join(f'`{n}`' for n in names)}; "
         + ", ".join(f"{name} {count}" for name, count in splits.items()) + " clips"
         + (f", {report['hours']} hours of audio" if report.get("hours") else "") + ". Speaker, device and "
         "annotator identities were pseudonymised before training." if report else
         f"Dataset {Path(dataset_path)}, not built by this project's data stage (it has no build report)."),
        "Trained on its `train` split, selected on `validation`.", "",
        "## Training", "", "| | |", "| --- | --- |",
        *(f"| {name} | {table_cell(value, 'n/a', '.4g')} |" for name, value in facts.items() if value is not None), "",
        "## Figures at training time", "",
        "| split | " + " | ".join(sorted({m for f in figures.values() for m in f})) + " |",
        "| --- |" + " --- |" * len({m for f in figures.values() for m in f}),
        *(f"| {split} | " + " | ".join(table_cell(f.get(m), "n/a", ".4g") for m in sorted({m for v in figures.values() for m in v})) + " |"
          for split, f in figures.items()),
        "",
        *(f"- {note}" for note in notes or ()),
        *([""] if notes else []),
        "The test figures with 95% intervals, per source and on ASR output (SLU), are the evaluation's: "
        "`metrics.json` and `report.md` of the run this folder belongs to.", "",
        "## Limits", "",
    ]
    if kind == "asr" and "demo" in names:
        lines.append("- The demo corpus is spoken by synthetic espeak-ng voices: a model trained on it alone is near "
                     "chance on recordings of real people.")
    lines += [
        "- It has heard only the speakers, devices and words of its training split; judge it on your own "
        "held-out speakers before use.",
        "- Trained on data that a deletion request later names, this folder is erased with it (`make erase`).", "",
    ]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
