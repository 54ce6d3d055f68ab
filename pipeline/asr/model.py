"""Building the CTC model for training, and loading a trained one back (for evaluation and users)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

from pipeline.runtime import PipelineError, looks_like_path


def _ctc_overrides(cfg: DictConfig, processor: Wav2Vec2Processor) -> dict:
    """Config fields the fine-tuning run decides, whatever the checkpoint said."""
    tok = processor.tokenizer
    return {
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "ctc_loss_reduction": "mean",
        "ctc_zero_infinity": True,  # an impossible alignment (clip too short for its text) gives 0, not inf
        **OmegaConf.to_container(cfg.spec_augment, resolve=True),
    }


def build_model(cfg: DictConfig, processor: Wav2Vec2Processor) -> Wav2Vec2ForCTC:
    """A fresh small model from `model_config`, or a hub id / local folder through `from_pretrained`.

    A pretrained encoder without a CTC head (wav2vec2-base) or with another vocabulary gets a new
    `lm_head` sized to our vocabulary.
    """
    overrides = _ctc_overrides(cfg, processor)
    attention = str(cfg.get("attn_implementation") or "sdpa")  # sdpa: PyTorch's fused kernels, eager's results
    if cfg.model_name_or_path is None:
        config = Wav2Vec2Config(**OmegaConf.to_container(cfg.model_config, resolve=True), **overrides)
        model = Wav2Vec2ForCTC._from_config(config, attn_implementation=attention)
    else:
        source = str(cfg.model_name_or_path)
        # Local folders are checked by ASRConfig.validate before the data stage; a hub id's config can only be read here.
        where = str(Path(source).expanduser()) if looks_like_path(source) else source
        try:
            model_type = Wav2Vec2Config.get_config_dict(where)[0].get("model_type")
            if model_type != "wav2vec2":  # transformers would build a random wav2vec2 from it and only warn
                raise PipelineError(
                    f"asr.model_name_or_path={source}: its config.json is a {model_type!r} model, not wav2vec2; "
                    "give a wav2vec2 checkpoint, or null to build one from asr.model_config"
                )
            model = Wav2Vec2ForCTC.from_pretrained(where, ignore_mismatched_sizes=True, attn_implementation=attention, **overrides)
        except OSError as err:
            raise PipelineError(
                f"asr.model_name_or_path={source}: cannot load a wav2vec2 checkpoint ({err.__class__.__name__}); "
                "give a local folder with config.json and weights, or a hub id on a machine with hub access"
            ) from err
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if cfg.gradient_checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    return model


def skip_waveform_gradient(model: Wav2Vec2ForCTC) -> bool:
    """Stop transformers' feature encoder from asking for a gradient of the raw waveform.

    It marks its input as requiring grad in training so that gradient checkpointing (reentrant)
    has a differentiable input; without checkpointing that only makes the backward pass compute a
    gradient nobody reads, through the first, widest convolution (for `asr=tiny` on the CPU that
    layer's backward took 6.9 instead of 4.4 ms; docs/experiments.md). The weights still get theirs. Says
    whether it applied. Training calls it only with `asr.skip_waveform_gradient: true`, off by default:
    whole training steps measured 0.99x (0.66-1.45) with it (bench/asr_patches.py, 2026-12-01).
    """
    encoder = getattr(getattr(model, "wav2vec2", None), "feature_extractor", None)
    # transformers 5 renamed the flag (is_gradient_checkpointing warns there and goes in v6).
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing or encoder is None or not hasattr(encoder, "_requires_grad"):
        return False
    encoder._requires_grad = False
    return True


# What the asr stage saves (save_pretrained of the model and of its processor), each with the
# names other savers use; `load_asr` names the first of a missing one.
ASR_FILES = (
    ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"),
    ("vocab.json",),
    ("tokenizer_config.json",),
    ("processor_config.json", "preprocessor_config.json"),
)


def load_asr(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Wav2Vec2ForCTC, Wav2Vec2Processor]:
    """The trained model (eval mode) and its processor from `<run>/asr`, checked to belong together.

    The files are checked first: transformers' own messages for a missing one are a stack trace, a
    NoneType error or advice about huggingface.co, none of which names the file."""
    model_dir = Path(model_dir)
    if (model_dir / "nlu_labels.json").exists():
        raise PipelineError(f"{model_dir} is an NLU model folder (it has nlu_labels.json); pass it as nlu_model=, "
                            "and an ASR model folder (<run>/asr) as asr_model=")
    if not (model_dir / "config.json").exists():
        if (model_dir / "asr" / "config.json").exists():  # the run folder itself
            raise PipelineError(f"{model_dir} is a run folder; its ASR model is {model_dir / 'asr'}: pass that")
        raise PipelineError(f"{model_dir}: no ASR model here (config.json missing); run the `asr` stage first")
    missing = [names[0] for names in ASR_FILES if not any((model_dir / n).is_file() for n in names)]
    if missing:
        raise PipelineError(f"{model_dir}: the ASR model folder lacks {', '.join(missing)}; copy the whole folder "
                            "the `asr` stage saved (<run>/asr), or re-run the `asr` stage")
    try:
        processor = Wav2Vec2Processor.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError) as err:
        raise PipelineError(f"{model_dir}: the processor files (vocab.json, processor_config.json) are broken: {err}") from err
    try:
        model = Wav2Vec2ForCTC.from_pretrained(str(model_dir))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # a cut or foreign weights file
        reason = (str(err).splitlines() or [""])[0]  # transformers follows it with a table of every weight
        raise PipelineError(f"{model_dir}: the model (config.json, model.safetensors) does not load "
                            f"({err.__class__.__name__}: {reason}); copy the folder the `asr` stage saved again, "
                            "or re-run the `asr` stage") from err
    model = model.to(device).eval()
    vocab, head = len(processor.tokenizer), model.lm_head.out_features
    if vocab != head:
        raise PipelineError(
            f"{model_dir}: vocab.json has {vocab} tokens but the model's lm_head predicts {head}; "
            "the processor and weights come from different runs: re-save them together (re-run the asr stage)"
        )
    return model, processor


def greedy_decode(tokenizer: Any, log_probs: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None = None) -> list[str]:
    """The greedy CTC transcript of each clip of a batch of per-frame scores (logits or log-probs).

    Only a clip's own frames count (`lengths`, output frames; padding can emit characters), repeats
    merge and blanks drop, and an unknown character becomes nothing rather than the word "unk"
    once normalised; removed after merging, it keeps "a<unk>a" two letters. The training-time
    validation and the eval stage both read transcripts through here.
    """
    ids = log_probs.argmax(-1)
    rows = [ids[b] if lengths is None else ids[b, : int(lengths[b])] for b in range(ids.shape[0])]
    return [t.replace(tokenizer.unk_token, "") for t in tokenizer.batch_decode(rows)]


def output_lengths(model: Wav2Vec2ForCTC, samples: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Output frames of clips of `samples` audio samples each."""
    return model._get_feat_extract_output_lengths(torch.as_tensor(samples)).cpu()


def time_mask_fits(model: Wav2Vec2ForCTC, input_values: torch.Tensor) -> bool:
    """Whether SpecAugment's time mask fits the batch's padded frames: transformers refuses a mask
    longer than them, which stopped training at the first batch of only the shortest clips (0.2 s
    clips at speed 1.1 are 4 frames of 30 ms, against the recipe's 5-frame masks)."""
    frames = int(output_lengths(model, [input_values.shape[-1]])[0])
    return int(model.config.mask_time_length) <= frames


@contextmanager
def no_time_mask(model: Wav2Vec2ForCTC) -> Iterator[None]:
    """SpecAugment's time mask off for one forward pass (a batch too short for it); the feature
    mask stays."""
    prob = model.config.mask_time_prob
    model.config.mask_time_prob = 0.0
    try:
        yield
    finally:
        model.config.mask_time_prob = prob


def samples_per_frame(model: Wav2Vec2ForCTC) -> int:
    """Input samples per output frame (the feature encoder's strides multiplied: 320 = 20 ms at 16 kHz)."""
    return math.prod(model.config.conv_stride)


def log_probs_of(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, waves: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame log-probs (on the CPU) of raw 16 kHz waveforms padded to the longest, and each
    clip's own frames: the evaluation's clips and the streaming detector's windows both read here."""
    from pipeline.data.features import SAMPLING_RATE

    masked = bool(getattr(processor.feature_extractor, "return_attention_mask", False))
    device = next(model.parameters()).device
    inputs = processor.feature_extractor(list(waves), sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt",
                                         return_attention_mask=masked)
    kwargs = {"attention_mask": inputs["attention_mask"].to(device)} if masked else {}
    logits = model(inputs["input_values"].to(device), **kwargs).logits
    return logits.float().log_softmax(-1).cpu(), output_lengths(model, [len(w) for w in waves])


@torch.no_grad()
def transcribe(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, batch: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor | None]:
    """Greedy CTC transcripts of a collated batch, and its loss when the batch has labels."""
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_values", "attention_mask", "labels") if k in batch}
    out = model(**inputs)
    lengths = output_lengths(model, batch["input_lengths"]) if "input_lengths" in batch else None
    texts = greedy_decode(processor.tokenizer, out.logits.float().cpu(), lengths)
    return texts, (out.loss.detach().float().cpu() if out.loss is not None else None)


def uses_attention_mask(cfg: DictConfig) -> bool:
    """Layer-norm encoders take an attention mask; group-norm ones (wav2vec2-base) must not get one."""
    if cfg.model_name_or_path is None:
        return str(cfg.model_config.get("feat_extract_norm", "group")) == "layer"
    try:
        return Wav2Vec2Config.from_pretrained(str(cfg.model_name_or_path)).feat_extract_norm == "layer"
    except OSError as err:
        raise PipelineError(
            f"asr.model_name_or_path={cfg.model_name_or_path}: no config.json found ({err.__class__.__name__}); "
            "give a local wav2vec2 folder, or a hub id on a machine with hub access"
        ) from err


def evaluate_clips(
    model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, loader: torch.utils.data.DataLoader,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Validation loss, WER and CER (`pipeline.eval.metrics`, as the eval stage) over a loader of collated batches."""
    from pipeline.eval import metrics as M

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    refs: list[str] = []
    hyps: list[str] = []
    loss_sum, clips = 0.0, 0
    for batch in loader:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            texts, loss = transcribe(model, processor, batch)
        n = batch["input_values"].shape[0]
        loss_sum += float(loss) * n
        clips += n
        refs.extend(batch["texts"])
        hyps.extend(texts)
    model.train(was_training)
    loss = loss_sum / max(clips, 1)
    if not M.has_words(refs):  # nothing to score a word error rate against
        return {"loss": loss, "wer": float("nan"), "cer": float("nan"), "clips": clips}
    wer, cer = M.error_rates(refs, hyps)
    return {"loss": loss, "wer": wer, "cer": cer, "clips": clips}


def probe_batch_seconds(
    model: Wav2Vec2ForCTC, device: torch.device, amp_dtype: torch.dtype | None, clip_seconds: float,
    budget_bytes: int, max_seconds: float, vocab_size: int,
) -> float:
    """The padded seconds per batch whose training step (forward, backward) fits in `budget_bytes` of GPU memory.

    Two short steps of clips `clip_seconds` long (the longest a batch holds, so the shape is the
    worst one) measure the peak memory at one and at two clips per batch; memory grows linearly
    with the padded seconds beyond the model's own, so the fit gives the size, checked by one more
    step at that size (and 10% smaller while it runs out of memory). Gradients are dropped after.
    """
    samples = int(clip_seconds * 16_000)

    def peak(rows: int) -> int | None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randn(rows, samples, device=device)
            labels = torch.randint(2, vocab_size, (rows, max(1, int(clip_seconds * 12))), device=device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model(x, labels=labels).loss
            loss.backward()
            return int(torch.cuda.max_memory_allocated(device))
        except torch.OutOfMemoryError:
            return None
        finally:
            model.zero_grad(set_to_none=True)

    one, two = peak(1), peak(2)
    if one is None or two is None:
        return clip_seconds  # one clip per batch is all that fits
    seconds = fit_batch_seconds(one, two, clip_seconds, budget_bytes, max_seconds)
    while seconds > clip_seconds and peak(int(seconds // clip_seconds)) is None:
        seconds *= 0.9
    torch.cuda.empty_cache()
    return max(seconds, clip_seconds)


def fit_batch_seconds(peak_one: int, peak_two: int, clip_seconds: float, budget_bytes: int, max_seconds: float) -> float:
    """Padded seconds at which a linear fit of peak memory (one clip, two clips) meets the budget."""
    per_second = max((peak_two - peak_one) / clip_seconds, 1.0)
    fixed = peak_one - per_second * clip_seconds
    return float(min(max_seconds, max(clip_seconds, (budget_bytes - fixed) / per_second)))
