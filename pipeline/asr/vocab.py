"""The character vocabulary and the processor (tokenizer + feature extractor) saved with the model.

CTC predicts one character per frame, so the vocabulary is the normaliser's alphabet
(`pipeline.text.ALPHABET`) and any other character of the training transcripts, plus the blank/pad
and an unknown token. The whole alphabet, not only the letters the train split happens to hold: a
small corpus without a "z" would otherwise give a model that cannot write one, and evaluation would
stop on a test split that has it (`eval.max_oov_char_rate`). Anything else (a stray symbol in text
that skipped normalisation) maps to `<unk>` instead of crashing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from pipeline.data.features import SAMPLING_RATE
from pipeline.runtime import PipelineError
from pipeline.text import ALPHABET, UNK, WORD_DELIMITER

PAD = "<pad>"  # also the CTC blank: id 0, as Wav2Vec2ForCTC expects blank == pad_token_id


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """The alphabet and the sorted characters of `texts` (space becomes the word delimiter), after pad and unk."""
    seen = {ch for text in texts for ch in text.replace(" ", WORD_DELIMITER)}
    if not seen - {WORD_DELIMITER}:
        raise PipelineError("the train split has no transcript characters in column `text`; check the data stage output")
    chars = [c for c in sorted(seen | set(ALPHABET)) if c not in (PAD, UNK)]
    if WORD_DELIMITER not in chars:
        chars.append(WORD_DELIMITER)
    return {PAD: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(chars)}}


def make_processor(vocab: dict[str, int], work_dir: Path, return_attention_mask: bool) -> Wav2Vec2Processor:
    """A Wav2Vec2Processor around `vocab`, the thing `pipeline("automatic-speech-recognition")` loads.

    `return_attention_mask` must be False for group-norm encoders (wav2vec2-base), which were
    trained on zero-padded input without a mask, and True for layer-norm ones.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = work_dir / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, indent=1))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER,
        bos_token=None, eos_token=None,
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=True,
        return_attention_mask=return_attention_mask,
    )
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)
