"""Training rows from ASR hypotheses (`nlu.asr_hypotheses: true`): the NLU also learns from what it
will really read at run time, misrecognitions included.

Each training clip is transcribed by the run's ASR model; the gold BIO tags are carried over to the
hypothesis words through a word alignment (difflib), so a misheard entity word keeps its tag.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from datasets import Audio

from pipeline.data.annotations import tags_to_entities
from pipeline.data.saved import open_saved
from pipeline.runtime import PipelineError
from pipeline.text import normalize_text


def hypothesis_rows(dataset_path: Path, asr_dir: Path, batch_size: int = 8) -> list[dict[str, Any]]:
    """One extra training row per train clip: hypothesis text, aligned tags, same intent (a false
    wake's too: the caller applies `nlu.false_wake` to these rows as to the gold ones)."""
    from pipeline.asr.collate import decode_audio
    from pipeline.asr.model import greedy_decode, load_asr, log_probs_of

    split = open_saved(dataset_path)["train"]  # with its audio, which the NLU's own splits leave out
    if "audio" not in split.column_names:
        raise PipelineError(f"nlu.asr_hypotheses=true but {dataset_path} has no audio (text-only source); set it to false")
    if not (asr_dir / "config.json").is_file():
        raise PipelineError(f"nlu.asr_hypotheses=true reads the run's ASR model, and {asr_dir} has none: train it in the "
                            "same run (stages=[data,asr,nlu]) or set nlu.asr_hypotheses=false")
    model, processor = load_asr(asr_dir)
    split = split.cast_column("audio", Audio(decode=False))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(split), batch_size):
        batch = split[start : start + batch_size]
        waves = [decode_audio(a, u) for a, u in zip(batch["audio"], batch["utterance_id"])]
        with torch.inference_mode():
            texts = greedy_decode(processor.tokenizer, *log_probs_of(model, processor, waves))
        for hyp, words, tags, intent in zip(texts, batch["words"], batch["bio_tags"], batch["intent"]):
            hyp = normalize_text(hyp)
            hyp_tags = align_tags(words, tags, hyp.split())
            rows.append({
                "transcript": hyp, "words": hyp.split(), "bio_tags": hyp_tags, "intent": intent,
                "entities": [e.as_dict() for e in tags_to_entities(hyp, hyp_tags)],
            })
    return rows


def align_tags(ref_words: list[str], ref_tags: list[str], hyp_words: list[str]) -> list[str]:
    """BIO tags for `hyp_words`, copied from the aligned reference words.

    Reference words are normalised first (a "7" is heard as "seven"); substituted words take the tag
    of the word they replace, inserted words inside an entity continue it, others are `O`.
    """
    ref: list[str] = []
    tags: list[str] = []
    for word, tag in zip(ref_words, ref_tags):
        for k, piece in enumerate(normalize_text(word).split()):
            ref.append(piece)
            tags.append(tag if k == 0 or tag == "O" else "I-" + tag[2:])
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=ref, b=hyp_words, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.extend(tags[i1:i2])
        elif op == "replace":
            for k in range(j2 - j1):
                i = min(i1 + k, i2 - 1)
                # Extra hypothesis words for one reference word continue its entity.
                repeat = k > 0 and i == min(i1 + k - 1, i2 - 1)
                out.append("I-" + tags[i][2:] if repeat and tags[i] != "O" else tags[i])
        elif op == "insert":
            inside = 0 < i1 < len(tags) and tags[i1].startswith("I-")
            out.extend(["I-" + tags[i1][2:] if inside else "O"] * (j2 - j1))
    return repair_bio(out)


def repair_bio(tags: list[str]) -> list[str]:
    """Make an `I-x` that does not follow `B-x`/`I-x` a `B-x` (a deleted entity start leaves one)."""
    fixed: list[str] = []
    for tag in tags:
        prev = fixed[-1] if fixed else "O"
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        fixed.append(tag)
    return fixed
