"""The eval stage: ASR + wake-word scores + NLU on one split, then metrics, predictions and a report.

Everything is computed from one batched pass of the ASR model over each split (sorted by length,
so padding stays small): the greedy transcript and the wake-word score come from the same CTC
log-probs. The wake-word threshold is tuned on `eval.tune_split` and only applied to `eval.split`,
so the reported FRR / false accepts are what a deployed threshold would give on unseen clips.
NLU metrics count only clips that have an intent (false wakes have none); the wake-word metrics
count every clip.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.asr.devices import flushed_denormals
from pipeline.asr.fft_conv import configure_positional_conv
from pipeline.asr.lm import BeamDecoder, has_lm, read_lm_meta
from pipeline.asr.model import greedy_decode, load_asr, log_probs_of, output_lengths, samples_per_frame
from pipeline.config import with_checked
from pipeline.data.background import Recording, load_background, mentions
from pipeline.data.config import configured_key
from pipeline.data.features import SAMPLING_RATE
from pipeline.data.saved import open_saved, require
from pipeline.data.sources import slurp_id_of
from pipeline.distributed import pick_device
from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M
from pipeline.eval.config import EvalConfig
from pipeline.eval.coverage import (
    BACKGROUND_KEYS, add_sources, by_source, by_source_keys, clip_counts, label_reasons, leave_out, model_reasons,
    models_to_evaluate,
)
from pipeline.eval.report import plot_confusion, plot_slices, write_report
from pipeline.eval.stream import (background_metrics, background_wake, resolve_background,
                                  with_background)
from pipeline.eval.wake import (describe_tuning, evaluate_wake, keyword_scores, plot_det, scanned_seconds,
                                 tune_threshold)
from pipeline.run_folder import read_build_report
from pipeline.runtime import PipelineError, write_text_atomic
from pipeline.text import normalize_text
from pipeline.tracking import Tracker, transcripts_allowed

log = logging.getLogger(__name__)
T = TypeVar("T")

# What `_gold_rows` reads of the evaluated split (its audio too, with an ASR model), and what the
# tuning split needs besides its audio: references and wake-word labels for the LM weight and threshold.
GOLD_COLUMNS = ("utterance_id", "transcript", "text", "intent", "scenario", "entities", "wake_word_present",
                "duration", "speaker")
TUNE_COLUMNS = ("utterance_id", "text", "wake_word_present", "duration")


@dataclass
class Inference:
    """Per clip, in the split's order: greedy transcript, wake-word score, and one transcript per beam
    decoder asked for (`decoded[d][i]`); plus timing (decoding included)."""

    hypotheses: list[str]
    wake_scores: np.ndarray
    audio_seconds: float
    compute_seconds: float
    decoded: list[list[str]] = field(default_factory=list)
    too_short: int = 0  # clips with no output frame (Reader.read): empty transcripts, wake score -inf


@dataclass
class Decoding:
    """How transcripts are read off the CTC output: greedy, or beam search with the run's character
    LM at the weight that gave the lowest WER on the tuning split."""

    mode: str  # greedy | lm
    lm_weight: float | None = None
    beam_size: int | None = None
    lm_order: int | None = None
    tuning: list[dict[str, float]] = field(default_factory=list)


def run_eval_stage(cfg: DictConfig, run_dir: Path, dataset_path: Path, tracker: Tracker) -> dict[str, Any]:
    """Evaluate `run_dir/asr` and `run_dir/nlu` (or `cfg.asr_model` / `cfg.nlu_model`) on the dataset;
    writes metrics.json, eval_details.json, predictions.jsonl, report.md, report.html and plots/."""
    ecfg = OmegaConf.select(cfg, "eval", default=None)
    if ecfg is None:
        raise PipelineError("the config has no `eval` group; add `- eval: default` to the defaults (conf/eval/default.yaml)")
    # Types and allowed values, so the reads below need no fallbacks; they read the checked values.
    cfg = with_checked(cfg, "eval", EvalConfig)
    ecfg = cfg.eval
    if str(ecfg.split) == "train":
        log.warning("eval: eval.split=train: the models learned from these clips, so the figures say how well they "
                    "fit them, not how they do on people and words they have not heard")
    run_dir = Path(run_dir)
    # Either model may be missing, and the labels may lack intents, entities or one side of the wake
    # word: what cannot be computed is left out of metrics.json, and details["not_computed"] says why.
    asr_dir, nlu_dir = models_to_evaluate(cfg, run_dir)
    # A wake word it cannot score is refused before any data or model is read.
    wake_word = _wake_word(ecfg) if asr_dir is not None else None
    test, val = _load_splits(Path(dataset_path), str(ecfg.split), str(ecfg.tune_split), need_audio=asr_dir is not None)
    rows = _gold_rows(test)
    has_sources = add_sources(test, rows)
    labels = np.array([r["wake_word_present"] for r in rows], dtype=bool)
    with_intent = [r for r in rows if r["intent"] is not None] if nlu_dir is not None else []
    nlu = None
    if with_intent:  # before the ASR pass: an NLU model that cannot read these intents stops it in seconds
        nlu = _load_nlu(nlu_dir)
        check_intents(nlu.intents, [r["intent"] for r in with_intent], float(ecfg.max_unknown_intent_rate),
                      Path(dataset_path), str(ecfg.split), nlu_dir)
    wake, tuning, decoding, test_out, skipped, too_short = None, None, None, None, None, {}
    if asr_dir is not None:
        val_labels = np.array(val["wake_word_present"], dtype=bool)
        skipped = _wake_skip_reason({str(ecfg.tune_split): val_labels, str(ecfg.split): labels})
        background_source = resolve_background(cfg, Path(dataset_path))
        # Read before the ASR pass, so a wrong eval.background is refused in seconds, not after it.
        recordings = (load_background(background_source, (str(ecfg.tune_split), str(ecfg.split)), wake_word,
                                      background_key(cfg, background_source))
                      if background_source is not None and not skipped else [])
        wake, tuning, decoding, test_out, too_short = _asr_pass(ecfg, asr_dir, Path(dataset_path), test, val, rows, skipped,
                                                     background_source, recordings, transcripts_allowed(cfg))

    if nlu is not None:
        gold_pred = nlu.predict([r["transcript"] for r in with_intent])
        for row, g in zip(with_intent, gold_pred):
            row["nlu_intent"], row["nlu_entities"] = g["intent"], g["entities"]
        if test_out is not None:
            slu_pred = nlu.predict([r["hypothesis"] for r in with_intent])
            for row, s in zip(with_intent, slu_pred):
                row["slu_intent"], row["slu_entities"] = s["intent"], s["entities"]
    scoring = _scoring_gold(cfg, ecfg, with_intent) if with_intent else None
    not_computed = {**model_reasons(asr_dir, nlu_dir),
                    **label_reasons(str(ecfg.split), with_intent, skipped, asr_dir is not None, nlu_dir is not None,
                                    M.has_words(r["reference"] for r in rows))}
    background = (tuning or {}).pop("background", None)
    if asr_dir is not None and not skipped and "threshold" not in (background or {}):
        not_computed.update(dict.fromkeys(BACKGROUND_KEYS, "no background recordings were streamed; false accepts "
                                                           "per hour come from the negative clips"))
    if wake is not None and wake.fa_per_hour is None:
        not_computed["wake/fa_per_hour"] = (
            f"the clips of split {str(ecfg.split)!r} without the wake word hold 0 s of audio (their `duration` "
            "column, within eval.wake_window_s), nothing to count false accepts per hour on; rebuild the dataset "
            "so the column holds each clip's seconds, or stream background recordings (eval.background)")
    for why in sorted(set(not_computed.values())):
        log.warning("eval: not computed (%s): %s", why, ", ".join(k for k, v in not_computed.items() if v == why))

    metrics, details = _score(rows, with_intent, wake, test_out, ecfg)
    if asr_dir is not None:
        metrics.update(background_metrics(background, str(ecfg.split)))
    details["wake_background"] = background
    metrics = leave_out(metrics, not_computed)
    if has_sources:
        details["by_source"] = by_source(rows, metrics, wake.threshold if wake else None)
        metrics.update(by_source_keys(details["by_source"]))
    details["not_computed"] = not_computed
    details["slu_scoring"] = scoring
    details["test_data"] = _test_data(Path(dataset_path), str(ecfg.split), rows)
    details["decoder"] = {**decoding.__dict__, "tune_split": str(ecfg.tune_split)} if decoding else None
    details["wake_tuning"] = tuning
    details["wake_word"] = wake_word
    details["wake_skipped"] = skipped
    details["asr_too_short"] = too_short
    scores = test_out.wake_scores if test_out is not None else None
    _write_outputs(cfg, run_dir, rows, with_intent, labels, scores, wake, metrics, details, tracker)
    return metrics


def background_key(cfg: DictConfig, source: Path) -> bytes:
    """The pseudonym key the data stage uses (`privacy`), which names the background recordings in
    every output: their file names and export ids may hold a device serial or an account number."""
    privacy = OmegaConf.select(cfg, "privacy", default=None)
    if privacy is None:
        raise PipelineError(f"eval.background={source}: its recordings are named by pseudonyms, which need the pseudonym "
                            "key, and the config has no `privacy` block; add it (privacy.key_env, privacy.key_file, as "
                            "in conf/config.yaml) or set eval.background=none")
    return configured_key(privacy)


def _asr_pass(
    ecfg: DictConfig, asr_dir: Path, dataset_path: Path, test: Any, val: Any, rows: list[dict[str, Any]],
    skipped: str | None, background_source: Path | None = None, recordings: Sequence[Recording] = (),
    quote_words: bool = False,
) -> tuple[Any, dict[str, Any] | None, Decoding, Inference, dict[str, int]]:
    """Transcribe both splits, tune and apply the wake-word threshold (unless `skipped` says the
    labels cannot support one), and write each clip's transcript, errors and wake score into `rows`;
    last, per split, how many clips were too short for the model to read (Reader.read).
    `quote_words`: whether messages may quote transcripts (pipeline.tracking.transcripts_allowed)."""
    wake_word = _wake_word(ecfg)
    model, processor = load_eval_asr(asr_dir, pick_device(str(ecfg.device), "eval.device"), ecfg.cpu_fft_positional_conv)
    check_vocabulary(processor, test["text"], float(ecfg.max_oov_char_rate), dataset_path, asr_dir)
    spellable = True
    try:
        keyword = keyword_ids(processor, wake_word, bool(ecfg.wake_word_boundary), asr_dir)
    except PipelineError:
        spellable = False
        if not skipped:
            raise
        # The labels rule the wake-word metrics out anyway (e.g. a digits corpus and a model that
        # cannot spell the wake word): score a word break instead, and drop those scores below.
        keyword = [processor.tokenizer.get_vocab()[processor.tokenizer.word_delimiter_token]]
    if not skipped:  # before the pass: a word nobody in the labels says is refused in seconds
        check_wake_word_said(ecfg, {str(ecfg.split): [r["transcript"] for r in rows if r["wake_word_present"]],
                                    str(ecfg.tune_split): [t for t, w in zip(val["text"], val["wake_word_present"]) if w]},
                             quote_words=quote_words)
    val_out, test_out, decoding = _transcribe_splits(ecfg, asr_dir, model, processor, keyword, val, test)
    final_hyps = test_out.decoded[0] if decoding.mode == "lm" else test_out.hypotheses
    too_short = {split: out.too_short for split, out in ((str(ecfg.tune_split), val_out), (str(ecfg.split), test_out))
                 if out.too_short}
    shortest = receptive_field(model)
    for split, count in too_short.items():
        log.warning("eval: %d clip(s) of split %s are too short for the ASR model (under %d samples, %.3f s, it gives "
                    "no output frame): scored as empty transcripts, never accepted as the wake word; to leave such "
                    "clips out of the dataset, rebuild it with data.min_duration_s above %.3f", count, split, shortest,
                    shortest / SAMPLING_RATE, shortest / SAMPLING_RATE)

    labels = np.array([r["wake_word_present"] for r in rows], dtype=bool)
    # With eval.wake_window_s only each clip's first seconds are scanned, and only they count as
    # hours of negative audio (pipeline.eval.coverage.clip_counts, by_source read `wake_seconds`).
    durations = scanned_seconds(np.array([r["duration"] for r in rows], dtype=float), ecfg.wake_window_s)
    val_labels = np.array(val["wake_word_present"], dtype=bool)
    wake, tuning = None, None
    if skipped:
        log.warning("eval: wake-word metrics skipped: %s", skipped)
    else:
        val_durations = scanned_seconds(np.array(val["duration"], dtype=float), ecfg.wake_window_s)
        target = float(ecfg.target_fa_per_hour)
        threshold = tune_threshold(val_out.wake_scores, val_labels, val_durations, target)
        wake = evaluate_wake(test_out.wake_scores, labels, durations, threshold)
        tuning = _tuning_details(val, val_out, val_labels, val_durations, target, str(ecfg.tune_split),
                                 clips_set_threshold=background_source is None)
        # Hours of background recordings, when there are any, replace the negative clips for the
        # threshold, FRR and false accepts per hour (pipeline.eval.stream).
        streamed, background = background_wake(ecfg, background_source, recordings, model, processor, keyword,
                                               val_out.wake_scores[val_labels], test_out.wake_scores[labels])
        wake = with_background(wake, streamed)
        tuning = {**tuning, "background": background}

    for row, hyp, greedy, score, seconds in zip(rows, final_hyps, test_out.hypotheses, test_out.wake_scores, durations):
        row["wake_seconds"] = float(seconds)
        row["hypothesis"] = normalize_text(hyp)
        row["greedy_hypothesis"] = normalize_text(greedy)
        row["wer"] = M.utterance_wer(row["reference"], hyp) if M.has_words([row["reference"]]) else None
        row["edit"] = M.edit_counts(row["reference"], hyp)
        row["wake_score"] = float(score) if spellable and math.isfinite(score) else None
        row["wake_detected"] = bool(wake is not None and score >= wake.threshold)
    return wake, tuning, decoding, test_out, too_short


def receptive_field(model: Any) -> int:
    """The fewest input samples the feature encoder gives one output frame for: its first kernel,
    and each later kernel's extra samples at the stride of the layers before it (400 for wav2vec2)."""
    kernels, strides = list(model.config.conv_kernel), list(model.config.conv_stride)
    return kernels[0] + sum((k - 1) * math.prod(strides[:n]) for n, k in enumerate(kernels[1:], 1))


def _transcribe_splits(
    ecfg: DictConfig, asr_dir: Path, model: Any, processor: Any, keyword: list[int], val: Any, test: Any,
) -> tuple[Inference, Inference, Decoding]:
    """Both splits through the ASR model; with the LM, every weight decodes validation and the one
    with the lowest WER decodes the test split (chosen like the wake-word threshold, never on test)."""
    infer = lambda split, decoders=(): transcribe(  # noqa: E731
        model, processor, split, keyword, int(ecfg.batch_size), ecfg.wake_window_s, decoders
    )
    decoding = Decoding(mode=_decoder_mode(ecfg, asr_dir))
    if decoding.mode == "greedy":
        return infer(val), infer(test), decoding
    weights = [float(w) for w in ecfg.lm_weights]
    if not weights:
        raise PipelineError("eval.lm_weights is empty; give the LM weights to try, e.g. [0.5, 1.0, 2.0]")
    beam = int(ecfg.beam_size)
    vocab = processor.tokenizer.get_vocab()
    search = {"word_delimiter": processor.tokenizer.word_delimiter_token,
              "beam_size_token": int(ecfg.beam_size_token), "beam_threshold": float(ecfg.beam_threshold)}
    val_refs = [normalize_text(t or "") for t in val["text"]]
    transcribed = M.has_words(val_refs)
    if not transcribed:  # a corpus that labels only: nothing to choose the weight on
        weights = weights[len(weights) // 2:][:1]
        log.warning("eval: split %s has no transcript to choose the LM weight on; decoding with eval.lm_weights' "
                    "middle value, %g", ecfg.tune_split, weights[0])
    val_out = infer(val, [BeamDecoder(asr_dir, vocab, w, beam, **search) for w in weights])
    decoding.tuning = [
        {"lm_weight": w, "wer": M.wer(val_refs, [normalize_text(h) for h in hyps]) if transcribed else None}
        for w, hyps in zip(weights, val_out.decoded)
    ]
    best = min(decoding.tuning, key=lambda t: (t["wer"] or 0.0, t["lm_weight"]))
    decoding.lm_weight, decoding.beam_size = best["lm_weight"], beam
    decoding.lm_order = read_lm_meta(asr_dir).get("order")
    test_out = infer(test, [BeamDecoder(asr_dir, vocab, decoding.lm_weight, beam, **search)])
    if transcribed:
        log.info("eval: LM weight %.2f (validation WER %.4f; greedy %.4f)", best["lm_weight"], best["wer"],
                 M.wer(val_refs, [normalize_text(h) for h in val_out.hypotheses]))
    return val_out, test_out, decoding


def _decoder_mode(ecfg: DictConfig, asr_dir: Path) -> str:
    """`auto` uses the ASR run's character LM when it has one; models from elsewhere decode greedily."""
    mode = str(ecfg.decoder)
    if mode not in ("auto", "greedy", "lm"):
        raise PipelineError(f"eval.decoder={mode}: use auto, greedy or lm")
    if mode == "auto":
        mode = "lm" if has_lm(asr_dir) else "greedy"
        if mode == "greedy":
            log.info("eval: %s has no character LM (lm/char_lm.arpa); decoding greedily", asr_dir)
    return mode


def _wake_skip_reason(splits: dict[str, np.ndarray]) -> str | None:
    """Why no wake-word metric can be computed, or None. A threshold needs validation clips with and
    without the wake word, and FRR / false accepts need both in the test split; a small corpus (or an
    unlucky keyed split of one) can lack either."""
    for name, labels in splits.items():
        if not labels.any():
            return f"split {name!r} has no clip with the wake word ({labels.size} clips)"
        if labels.all():
            return f"split {name!r} has no clip without the wake word ({labels.size} clips), so no false accept can be measured"
    return None


def _tuning_details(
    val: Any, val_out: Inference, val_labels: np.ndarray, val_durations: np.ndarray, target: float, split: str,
    clips_set_threshold: bool = True,
) -> dict[str, Any]:
    """How much the tuning split could resolve, and the clip the threshold was set against.

    With less than 1/target hours of negative audio the target allows no false accept at all, so the
    threshold sits just above the single hardest negative and the FRR depends on that one clip.
    """
    t = describe_tuning(val_out.wake_scores, val_labels, val_durations, target)
    bounding = None
    if t.bounding_index is not None:
        i = t.bounding_index
        score = float(val_out.wake_scores[i])
        bounding = {
            "utterance_id": val["utterance_id"][i],
            "score": score if math.isfinite(score) else None,
            "reference": normalize_text(val["text"][i] or ""),
            "hypothesis": normalize_text(val_out.hypotheses[i]),
        }
    if not t.resolvable and clips_set_threshold:  # with background recordings, they set it
        log.warning(
            "eval: %s has %.0f s of audio without the wake word; eval.target_fa_per_hour=%g needs at least %.0f s "
            "to permit one false accept, so the threshold rejects every %s negative and hinges on the hardest one (%s)",
            split, t.negative_hours * 3600, target, 3600 / target if target > 0 else math.inf, split,
            bounding["utterance_id"] if bounding else "none",
        )
    return {
        "split": split, "target_fa_per_hour": target, "negatives": t.negatives, "negative_hours": t.negative_hours,
        "allowed_false_accepts": t.allowed_false_accepts, "resolvable": t.resolvable, "bounding_clip": bounding,
    }


def _wake_word(ecfg: DictConfig) -> str:
    """The wake word as transcripts spell it: normalised like them, so it can only be matched when
    something of it survives normalisation."""
    raw = str(ecfg.wake_word or "")
    if not raw.strip():
        raise PipelineError("eval.wake_word is missing or empty; set it in conf/eval/default.yaml (e.g. wake_word: alexa)")
    word = normalize_text(raw)
    if not word:
        raise PipelineError(f"eval.wake_word={raw!r} has no letters the pipeline keeps after normalisation "
                            "(only a-z and the apostrophe stay, digits are spelled out); pick a word the ASR model can spell, "
                            "e.g. eval.wake_word=alexa")
    return word


def _load_splits(path: Path, split: str, tune_split: str, need_audio: bool = True) -> tuple[Any, Any]:
    """The evaluated split and the tuning split (None without an ASR model: only the ASR's LM weight
    and wake-word threshold are tuned; an NLU-only evaluation may read a text-only dataset)."""
    dd = open_saved(path)
    # The evaluated split gives every clip's gold labels; the tuning split only what tunes the LM
    # weight and the wake-word threshold.
    audio = ["audio"] if need_audio else []
    evaluated = require(dd, path, split, [*audio, *GOLD_COLUMNS], "evaluation", missing_split="set eval.split")
    if not need_audio:
        return evaluated, None
    return evaluated, require(dd, path, tune_split, [*audio, *TUNE_COLUMNS], "evaluation", missing_split="set eval.tune_split")


def _load_nlu(nlu_dir: Path) -> Any:
    from pipeline.nlu import NLUModel

    return NLUModel.from_pretrained(nlu_dir)


def check_wake_word_said(ecfg: DictConfig, positives: dict[str, list[str]], quote_words: bool = False) -> None:
    """The labels say which clips hold a wake word, `eval.wake_word` which word is scored: a run of a
    "jarvis" corpus left at the default "alexa" would report a confident FRR for a word nobody said.
    Refused when no transcript of a split's positives says it, a warning when fewer than half do
    (positives without a transcript, a corpus that labels only, are not counted).

    The positives' commonest first word is shown only with `quote_words` (pipeline.tracking.
    transcripts_allowed): the error and the warning reach the console, which the W&B run captures
    (logger.console), and transcripts are what users said."""
    word = _wake_word(ecfg)
    for split, transcripts in positives.items():
        said = [t for t in transcripts if t and t.strip()]
        if not said:
            continue
        share = sum(mentions(t, word) for t in said) / len(said)
        if quote_words:
            first = Counter(normalize_text(t).split()[0] for t in said if normalize_text(t)).most_common(1)
            hint = f" (their commonest first word: {first[0][0]!r})" if first else ""
        else:
            hint = " (their words are not quoted: logger.log_transcripts is off)"
        if share == 0:
            raise PipelineError(
                f"eval.wake_word={ecfg.wake_word!r} (scored as {word!r}): none of the {len(said)} clips of split "
                f"{split!r} labelled wake_word_present says it in its transcript{hint}; set eval.wake_word to the "
                "wake word of this dataset (a transcript holds what was said, the wake word included)")
        if share < 0.5:
            log.warning("eval: only %.0f%% of split %s's %d clips labelled wake_word_present say eval.wake_word %r in "
                        "their transcripts%s", 100 * share, split, len(said), word, hint)


def check_intents(known: Sequence[str], gold: list[str], max_rate: float, dataset_path: Path, split: str,
                  nlu_dir: Path) -> None:
    """A clip whose gold intent the NLU model has no label for can never be right: a dataset of other
    intents would score as a weak model, not as an error. Intent names are labels, not identifiers."""
    labels = set(known)
    unknown = Counter(g for g in gold if g not in labels)
    if not unknown:
        return
    share = sum(unknown.values()) / len(gold)
    examples = ", ".join(name for name, _ in unknown.most_common(3))
    if share > max_rate:
        raise PipelineError(
            f"dataset {dataset_path} split {split!r}: {share:.1%} of the clips with an intent have an intent "
            f"{nlu_dir}/nlu_labels.json lacks (e.g. {examples}); evaluate with the NLU model trained on this "
            "dataset's intents (or raise eval.max_unknown_intent_rate)"
        )
    log.warning("eval: %.1f%% of split %s's clips with an intent have an intent the NLU model lacks (e.g. %s); "
                "they count as NLU errors", 100 * share, split, examples)


def check_vocabulary(processor: Any, texts: list[str], max_rate: float, dataset_path: Path, asr_dir: Path) -> None:
    """A dataset whose characters the model never learned would score as garbage, not as an error."""
    vocab = set(processor.tokenizer.get_vocab())
    delimiter = processor.tokenizer.word_delimiter_token
    chars = [delimiter if ch == " " else ch for t in texts for ch in normalize_text(t or "")]
    unknown = [ch for ch in chars if ch not in vocab]
    if chars and len(unknown) / len(chars) > max_rate:
        raise PipelineError(
            f"dataset {dataset_path}: {len(unknown) / len(chars):.1%} of reference characters "
            f"({''.join(sorted(set(unknown)))!r}) are not in {asr_dir}/vocab.json; evaluate with the ASR model "
            "trained on this dataset's vocabulary (or raise eval.max_oov_char_rate)"
        )


def keyword_ids(processor: Any, wake_word: str, boundary: bool, asr_dir: Path) -> list[int]:
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    tokens = [tokenizer.word_delimiter_token if ch == " " else ch for ch in wake_word]
    if boundary:
        tokens.append(tokenizer.word_delimiter_token)
    missing = sorted({t for t in tokens if t not in vocab})
    if missing:
        # Only a missing word delimiter is helped by leaving the boundary out; a missing letter needs
        # another word or a model trained on it.
        fix = ("set eval.wake_word_boundary=false (the model has no word delimiter to end the keyword with)"
               if missing == [tokenizer.word_delimiter_token] else
               "pick a wake word the ASR model can spell (eval.wake_word=...), or evaluate a model whose vocabulary "
               "has these characters")
        raise PipelineError(f"eval.wake_word={wake_word!r} uses {missing}, which {asr_dir}/vocab.json lacks; {fix}")
    return [vocab[t] for t in tokens]


def load_eval_asr(asr_dir: Path, device: Any, fft: bool | str = "auto") -> tuple[Any, Any]:
    """The ASR model and processor as evaluation runs them: on a CPU in fp32 the positional
    convolution goes through the FFT (`eval.cpu_fft_positional_conv`), the same transcripts ~1.2x
    faster (96 demo clips: 0.28 against 0.33 s, 96 of 96 transcripts equal, wake scores within 6e-6;
    2026-12-01). Only this instance's `forward` changes; the model folder is never written."""
    model, processor = load_asr(asr_dir, device)
    configure_positional_conv(model, fft, next(model.parameters()).device, key="eval.cpu_fft_positional_conv")
    return model, processor


@dataclass
class Reader:
    """What turns a batch of waveforms into transcripts and wake-word scores: the model and how its
    output is read (the keyword's token ids, the blank, the wake window in frames, the decoders)."""

    model: Any
    processor: Any
    keyword: list[int]
    blank: int
    window: int | None  # frames from the clip's start the keyword must end within; None: the whole clip
    device: torch.device
    decoders: Sequence[BeamDecoder]
    end_is_boundary: bool = False  # the keyword ends with the word boundary, which a clip's end may stand in for

    @classmethod
    def for_model(cls, model: Any, processor: Any, keyword: list[int], window_s: float | None,
                  decoders: Sequence[BeamDecoder] = ()) -> "Reader":
        stride = samples_per_frame(model)
        return cls(
            model, processor, keyword, blank=processor.tokenizer.pad_token_id,
            window=None if window_s is None else max(1, math.ceil(window_s * SAMPLING_RATE / stride)),
            device=next(model.parameters()).device, decoders=decoders,
            end_is_boundary=keyword[-1] == processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.word_delimiter_token),
        )

    def log_probs(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """One length-sorted batch through the model: per-frame log-probs (on the CPU) and each clip's frames."""
        return log_probs_of(self.model, self.processor, waves)

    def wake_scores(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        return np.asarray(keyword_scores(log_probs, lengths, self.keyword, self.blank, self.window, self.end_is_boundary), dtype=float)

    def too_short(self, waves: list[np.ndarray]) -> list[bool]:
        """Per clip, whether it is shorter than the feature encoder's receptive field (400 samples,
        0.025 s, for wav2vec2), so the model gives it no output frame."""
        return [int(n) < 1 for n in output_lengths(self.model, [len(w) for w in waves])]

    def read(self, waves: list[np.ndarray]) -> tuple[list[str], np.ndarray, list[torch.Tensor]]:
        """One length-sorted batch: forward pass, greedy transcripts, wake scores, and each clip's
        unpadded log-probs where beam decoders will read them (`beam`).

        Clips with no output frame (`too_short`) stay out of the forward pass: a batch of only such
        clips (the shortest sort together) would stop it in the first convolutions, and beside
        longer clips they have no frame to read. Each reads as an empty transcript with a wake score
        of -inf, never accepted, like a clip too short for the keyword (pipeline.eval.wake)."""
        short = self.too_short(waves)
        kept = [b for b in range(len(waves)) if not short[b]]
        texts = [""] * len(waves)
        scores = np.full(len(waves), -np.inf)
        clips = [torch.empty(0, 0) for _ in waves] if self.decoders else []
        if kept:
            log_probs, lengths = self.log_probs([waves[b] for b in kept])
            read = zip(kept, greedy_decode(self.processor.tokenizer, log_probs, lengths), self.wake_scores(log_probs, lengths))
            for j, (b, text, score) in enumerate(read):
                texts[b], scores[b] = text, score
                if self.decoders:
                    clips[b] = log_probs[j, : int(lengths[j])]
        return texts, scores, clips

    def beam(self, clips: list[torch.Tensor]) -> list[list[str]]:
        """Each decoder's transcripts of these clips (a clip without frames: empty). One thread at a
        time: a flashlight decoder keeps its search state in itself."""
        return [[d.decode(c) if len(c) else "" for c in clips] for d in self.decoders]


def length_batches(split: Any, batch_size: int, columns: Sequence[str] = ()) -> tuple[Any, list[list[int]]]:
    """The split's audio (still encoded) with `columns`, and its clip indices in batches of similar
    length (shortest first, so padding stays small)."""
    from datasets import Audio

    audio = split.select_columns(["utterance_id", "audio", "duration", *columns]).cast_column(
        "audio", Audio(sampling_rate=SAMPLING_RATE, decode=False)
    )
    durations = [float(d) for d in audio["duration"]]
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    return audio, [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


@torch.inference_mode()
def transcribe(
    model: Any, processor: Any, split: Any, keyword: list[int], batch_size: int, window_s: float | None,
    decoders: Sequence[BeamDecoder] = (),
) -> Inference:
    """Greedy CTC transcripts and wake-word scores for every clip of `split`, batched by length, and
    each decoder's beam-search transcripts from the same log-probs."""
    audio, batches = length_batches(split, batch_size)
    reader = Reader.for_model(model, processor, keyword, window_s, decoders)
    hypotheses: list[str] = [""] * len(split)
    decoded: list[list[str]] = [[""] * len(split) for _ in decoders]
    scores = np.full(len(split), -np.inf)
    seconds = 0.0
    too_short = 0
    start = time.perf_counter()

    def read(_: list[int], waves: list[np.ndarray]) -> tuple[float, int, tuple[list[str], np.ndarray, list[torch.Tensor]]]:
        return sum(len(w) for w in waves) / SAMPLING_RATE, sum(reader.too_short(waves)), reader.read(waves)

    for idx, (audio_s, short, (texts, batch_scores, clips)) in map_batches(audio, batches, reader.device, read):
        seconds += audio_s
        too_short += short
        batch_decoded = reader.beam(clips)  # here, while the workers run the next batches
        for b, i in enumerate(idx):
            hypotheses[i], scores[i] = texts[b], batch_scores[b]
            for d in range(len(decoders)):
                decoded[d][i] = batch_decoded[d][b]
    return Inference(hypotheses, scores, seconds, time.perf_counter() - start, decoded, too_short)


def map_batches(audio: Any, batches: list[list[int]], device: torch.device,
                work: Callable[[list[int], list[np.ndarray]], T]) -> Iterator[tuple[list[int], T]]:
    """`(clip indices, work(clip indices, their decoded waveforms))` for each batch, denormals flushed.

    On a CPU with more than one torch thread, batches run side by side, one per thread, each on a
    single core: the small model's operators are too small to split well across cores (a barrier
    per operator), so two batches on two cores at once beat one batch on both (forward passes 1.1x
    faster at 16 clips, 1.2x at 8, on 2 cores, 2026-12-01). They start longest first (length_batches
    sorts shortest first), so no core is left with a long batch at the end, and come back as they
    finish. Each clip's result is the same either way up to float rounding. Elsewhere (a GPU, one
    thread) batches run in turn and in order (_read_batches).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(batches) < 2:
        with flushed_denormals():
            yield from ((idx, work(idx, waves)) for idx, waves in zip(batches, _read_batches(audio, batches, device)))
        return

    def run(idx: list[int]) -> tuple[list[int], T]:
        # Grad mode and the denormal flag are per thread: each worker sets its own.
        with torch.inference_mode(), flushed_denormals():
            return idx, work(idx, load_waves(audio, idx))

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from (job.result() for job in as_completed([pool.submit(run, idx) for idx in reversed(batches)]))
    finally:
        torch.set_num_threads(threads)


def _read_batches(audio: Any, batches: list[list[int]], device: torch.device) -> Iterator[list[np.ndarray]]:
    """Each batch's decoded waveforms, in order (map_batches' path where batches run in turn). Where
    a core is free (a GPU run, or more cores than torch's threads), the next batch is read and
    decoded in a thread while this one runs; where torch's threads use every core, that thread only
    stalls them (on 2 cores, 2 threads: the clip evaluation took 0.33 s with it and 0.29 s without,
    2026-12-01)."""
    if device.type == "cpu" and (os.cpu_count() or 1) <= torch.get_num_threads():
        yield from (load_waves(audio, idx) for idx in batches)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(load_waves, audio, batches[0]) if batches else None
        for n in range(len(batches)):
            waves = upcoming.result()
            if n + 1 < len(batches):
                upcoming = pool.submit(load_waves, audio, batches[n + 1])
            yield waves


def load_waves(audio: Any, idx: list[int]) -> list[np.ndarray]:
    """The decoded 16 kHz waveforms of clips `idx` of a length_batches `audio`."""
    from pipeline.asr.collate import decode_audio

    rows = audio[idx]
    return [decode_audio(a, u) for a, u in zip(rows["audio"], rows["utterance_id"])]


def _gold_rows(split: Any) -> list[dict[str, Any]]:
    # copy_of goes into predictions.jsonl so erasing an original also drops its copies' lines there.
    data = split.select_columns(list(GOLD_COLUMNS) + (["copy_of"] if "copy_of" in split.column_names else [])).to_dict()
    copies = data.get("copy_of") or [None] * len(data["utterance_id"])
    return [
        {
            "utterance_id": data["utterance_id"][i],
            **({"copy_of": copies[i]} if copies[i] else {}),
            "speaker": data["speaker"][i],
            "intent": data["intent"][i],
            "scenario": data["scenario"][i],
            "duration": float(data["duration"][i]),
            "wake_word_present": bool(data["wake_word_present"][i]),
            "transcript": data["transcript"][i] or "",
            "reference": normalize_text(data["text"][i] or data["transcript"][i] or ""),
            "gold_entities": [{"type": e["type"], "value": e["value"]} for e in data["entities"][i] or []],
        }
        for i in range(len(data["utterance_id"]))
    ]


def _score(
    rows: list[dict[str, Any]], with_intent: list[dict[str, Any]], wake: Any, inference: Inference | None,
    ecfg: DictConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics there are results for: ASR and wake word with an `inference`, NLU with scored
    `with_intent` rows, SLU with both (pipeline.eval.coverage drops what the labels rule out)."""
    have_asr = inference is not None
    refs = [r["reference"] for r in rows]
    hyps = [r.get("hypothesis", "") for r in rows]
    edges = [float(e) for e in ecfg.duration_buckets]
    understanding = _score_understanding(with_intent, _slu_mode(ecfg)) if with_intent else (None,) * 5
    nlu_intent, nlu_ents, slu_intent, slu_ents, slu = understanding
    metrics: dict[str, Any] = {}
    if have_asr and M.has_words(refs):  # else left out: coverage.label_reasons says why
        metrics["asr/wer"], metrics["asr/cer"] = M.error_rates(refs, hyps)
        # The acoustic model alone, to compare with runs or models decoded without the LM.
        metrics["asr/wer_greedy"], metrics["asr/cer_greedy"] = M.error_rates(
            refs, [r["greedy_hypothesis"] for r in rows])
    if have_asr:
        metrics.update({
            "wake/frr": wake.frr if wake else None,
            "wake/fa_per_hour": wake.fa_per_hour if wake else None,
            "wake/auc": wake.auc if wake else None,
            "wake/eer": wake.eer if wake else None,
            "wake/threshold": wake.threshold if wake else None,
        })
    if nlu_intent is not None:
        metrics.update({"nlu/intent_accuracy": nlu_intent["accuracy"], "nlu/intent_macro_f1": nlu_intent["macro_f1"],
                        "nlu/entity_f1": nlu_ents["f1"]})
    if slu_intent is not None:
        metrics.update({"slu/intent_accuracy": slu_intent["accuracy"], "slu/intent_macro_f1": slu_intent["macro_f1"],
                        "slu/entity_f1": slu_ents["f1"], "slu/slu_f1": slu["f1"]})
    metrics["eval/num_clips"] = len(rows)
    metrics["eval/audio_hours"] = sum(r["duration"] for r in rows) / 3600.0
    if have_asr:
        metrics["eval/rtf"] = inference.audio_seconds / max(inference.compute_seconds, 1e-9)
    threshold = wake.threshold if wake else None
    for row in rows:
        row["counts"] = clip_counts(row, threshold)
        for key in ("edit", "scoring_entities", "nlu_entity_counts", "slu_entity_counts", "slu_f1_counts"):
            row.pop(key, None)
    # False accepts streamed on background recordings: the Poisson interval of their count over their hours.
    rates = ({"wake/fa_per_hour": (wake.background_false_accepts, wake.background_hours)}
             if wake is not None and wake.background_hours else None)
    metrics.update(B.interval_metrics(B.clip_table(rows), metrics, int(ecfg.bootstrap_samples), int(ecfg.bootstrap_seed),
                                      rates=rates))
    details = {
        "wer_by": {
            "speaker": M.wer_by_slice(refs, hyps, [r["speaker"] for r in rows]),
            "intent": M.wer_by_slice(refs, hyps, [_intent_slice(r) for r in rows]),
            "scenario": M.wer_by_slice(refs, hyps, [r["scenario"] or "(none)" for r in rows]),
            "duration": M.wer_by_slice(refs, hyps, [M.duration_bucket(r["duration"], edges) for r in rows]),
            "wake_word": M.wer_by_slice(
                refs, hyps, ["wake word" if r["wake_word_present"] else "no wake word" for r in rows]
            ),
        } if have_asr else {},
        "nlu_entities_per_type": nlu_ents["per_type"] if nlu_ents else {},
        "slu_entities_per_type": slu_ents["per_type"] if slu_ents else {},
        "slu_f1_per_type": slu["per_type"] if slu else {},
        "wake": None if wake is None else {**wake.__dict__},
        "wake_errors": wake_errors(rows, int(ecfg.worst_n)) if wake is not None else [],
        "worst": [
            {k: r[k] for k in ("utterance_id", "speaker", "wer", "reference", "hypothesis")}
            for r in M.worst_utterances(rows, int(ecfg.worst_n))
        ] if have_asr else [],
    }
    return metrics, details


def _intent_slice(row: dict[str, Any]) -> str:
    """A clip's slice in the WER by intent: its intent, or what the labels say of a clip without one.
    Not "false wake": a wake-word corpus labels no intent on its wake-word clips, and a corpus without
    wake-word labels marks every clip as without the wake word."""
    if row["intent"]:
        return str(row["intent"])
    return "(no intent)" if row["wake_word_present"] else "(no intent, no wake word)"


def wake_errors(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The clips a person should listen to first: up to `n` rejected positives, lowest score first
    (no score: too short for the keyword), then up to `n` accepted negatives, highest score first.
    Each kind has its own `n`: one list cut at `n` would be filled by whichever kind is commoner, and
    a model that misses many positives would show none of its false accepts."""
    score = lambda r: r["wake_score"] if r.get("wake_score") is not None else -math.inf  # noqa: E731
    missed = sorted((r for r in rows if r["wake_word_present"] and not r["wake_detected"]), key=score)
    accepted = sorted((r for r in rows if not r["wake_word_present"] and r["wake_detected"]), key=lambda r: -score(r))
    keys = ("utterance_id", "speaker", "wake_word_present", "wake_score", "reference", "hypothesis")
    return [{k: r[k] for k in keys} for r in missed[:n] + accepted[:n]]


def _slu_mode(ecfg: DictConfig) -> str:
    mode = str(ecfg.slu_scoring)
    if mode not in M.SLU_SCORING:
        raise PipelineError(f"eval.slu_scoring={mode!r}: use one of {list(M.SLU_SCORING)}")
    return mode


def _scoring_gold(cfg: DictConfig, ecfg: DictConfig, with_intent: list[dict[str, Any]]) -> dict[str, Any]:
    """Sets each clip's `scoring_entities`: the gold entities its NLU and SLU scores count against,
    or None for a clip the mode does not score. `project`: the dataset's entities, every clip.
    `slurp`: SLURP's token-based fillers, for SLURP's records only (read from its jsonl)."""
    mode = _slu_mode(ecfg)
    if mode == "project":
        for row in with_intent:
            row["scoring_entities"] = row["gold_entities"]
        return {"mode": mode, "clips": len(with_intent), "scored": len(with_intent)}
    path = ecfg.slurp_gold
    if not path and OmegaConf.select(cfg, "data.source", default=None) == "slurp":
        path = OmegaConf.select(cfg, "data.path", default=None)
    if not path:
        raise PipelineError("eval.slu_scoring=slurp needs SLURP's own jsonl for its token-based gold fillers; "
                            "set eval.slurp_gold=<slurp>/test.jsonl (or evaluate a dataset built with data=slurp)")
    records = _slurp_records(Path(str(path)))
    for row in with_intent:
        record = records.get(slurp_id_of(str(row["utterance_id"])))
        row["scoring_entities"] = M.slurp_gold_entities(record) if record else None
    scored = sum(r["scoring_entities"] is not None for r in with_intent)
    if scored == 0:
        raise PipelineError(f"eval.slu_scoring=slurp: no clip of split {ecfg.split!r} is a record of {path}; "
                            "score this dataset with eval.slu_scoring=project")
    return {"mode": mode, "clips": len(with_intent), "scored": scored, "gold": str(path)}


def _slurp_records(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        raise PipelineError(f"eval.slurp_gold={path}: no such file; give SLURP's jsonl (e.g. test.jsonl)")
    records: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            records[int(obj["slurp_id"])] = {"tokens": obj["tokens"], "entities": obj.get("entities") or []}
        except (ValueError, KeyError, TypeError) as err:
            raise PipelineError(f"{path} line {n}: not a SLURP record with slurp_id and tokens ({err})") from None
    return records


def _score_understanding(with_intent: list[dict[str, Any]], mode: str) -> tuple[Any, ...]:
    """NLU (gold transcripts) and SLU (ASR transcripts) intent and entity scores under the scoring
    mode, and each clip's entity counts for the bootstrap (`<side>_scored`, `<side>_entity_counts`...)."""
    scored = [r for r in with_intent if r.get("scoring_entities") is not None]
    normalize = mode == "project"
    gold_intents = [r["intent"] for r in scored]
    gold_ents = [r["scoring_entities"] for r in scored]
    has_slu = all("slu_intent" in r for r in with_intent)  # no ASR model: no transcripts for the NLU to read
    for row in with_intent:
        row["nlu_scored"] = row.get("scoring_entities") is not None
        row["slu_scored"] = row["nlu_scored"] and has_slu
    for row in scored:
        gold = [row["scoring_entities"]]
        row["nlu_entity_counts"] = M.total_counts(M.entity_scores(gold, [row["nlu_entities"]], normalize))
        if has_slu:
            row["slu_entity_counts"] = M.total_counts(M.entity_scores(gold, [row["slu_entities"]], normalize))
            row["slu_f1_counts"] = M.total_counts(M.slu_f1(gold, [row["slu_entities"]], normalize))
    out: list[Any] = []
    for side in ("nlu", "slu") if has_slu else ("nlu",):
        intents = M.intent_scores(gold_intents, [r[f"{side}_intent"] for r in scored])
        if mode == "slurp":
            official = M.slurp_scores(gold_intents, gold_ents, [r[f"{side}_intent"] for r in scored],
                                      [r[f"{side}_entities"] for r in scored])
            intents["accuracy"], ents = official["intent_accuracy"], official["entity"]
            slu = official["slu"]
        else:
            ents = M.entity_scores(gold_ents, [r[f"{side}_entities"] for r in scored])
            slu = M.slu_f1(gold_ents, [r[f"{side}_entities"] for r in scored])
        out += [intents, ents]
    return (*out, slu) if has_slu else (*out, None, None, None)


def _test_data(dataset_path: Path, split: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the metrics were measured on, so runs can be compared clip for clip only when it is the
    same: the dataset's fingerprint (from its build report) and split, and a digest of the clips."""
    import hashlib

    fingerprint = (read_build_report(dataset_path) or {}).get("fingerprint")
    digest = hashlib.sha256(json.dumps([[r["utterance_id"], r["speaker"], r["reference"]] for r in rows]).encode())
    return {"dataset_fingerprint": fingerprint, "split": split, "clips": len(rows), "clips_digest": digest.hexdigest()[:20],
            "speakers": len({B.resampling_unit(r) for r in rows})}  # what the intervals resample


def _write_outputs(
    cfg: DictConfig, run_dir: Path, rows: list[dict[str, Any]], with_intent: list[dict[str, Any]],
    labels: np.ndarray, scores: np.ndarray, wake: Any, metrics: dict[str, Any], details: dict[str, Any],
    tracker: Tracker,
) -> None:
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    if wake is not None:
        plots["wake_det"] = plot_det(labels, scores, wake, plots_dir / "wake_det.png", details.get("wake_background"))
    if with_intent:
        plots["intent_confusion"] = plot_confusion(
            [r["intent"] for r in with_intent], [r["nlu_intent"] for r in with_intent], plots_dir / "intent_confusion.png"
        )
    if any(details["wer_by"].values()):  # a split without transcripts has a slicing but no WER in it
        plots["wer_slices"] = plot_slices(details["wer_by"], plots_dir / "wer_slices.png")

    # Each file whole or not at all, metrics.json last: `evaluate.py run=` rewrites them in place, and
    # compare and the gate pair predictions.jsonl clip for clip with the metrics beside it.
    write_text_atomic(run_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(run_dir / "eval_details.json", json.dumps(details, indent=2) + "\n")
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(run_dir, metrics, details, plots)

    tracker.log_summary({k: v for k, v in metrics.items() if v is not None})
    columns = ["utterance_id", "speaker", "duration", "wake_word_present", "wake_score", "wake_detected",
               "intent", "nlu_intent", "slu_intent", "wer"]
    if transcripts_allowed(cfg):
        columns += ["reference", "hypothesis"]
    tracker.log_table("predictions", columns, [[r.get(c) for c in columns] for r in rows])
    for key, path in plots.items():
        tracker.log_image(f"eval/{key}", path)
    log.info("eval: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))
