"""What `asr.compile=true` changes: the padded lengths, dynamo's settings, and a step with no graph break.

A compiled wav2vec2 keeps one graph per input shape. Batches are padded to a few lengths
(`compile_buckets`), the clip count is marked dynamic, and nothing inside the step may break the
graph: the frames dynamo resumes after a break do not inherit the dynamic clip count, so every new
count compiled more graphs until the recompile limit, and on an H200 (torch 2.11, transformers 5.17)
the run then ran out of memory. Two things broke it there: SpecAugment's in-place boolean mask and
LayerDrop's per-layer draw. Tests: tests/asr/test_asr_compile.py.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from typing import Any
from unittest import mock

import torch
from omegaconf import DictConfig

from pipeline.asr.model import output_lengths, time_mask_fits
from pipeline.data.features import SAMPLING_RATE
from pipeline.runtime import PipelineError


def compile_buckets(acfg: DictConfig, durations: list[float], hop: int, longest_s: float | None = None) -> tuple[int, ...]:
    """`asr.compile_buckets` padded lengths in samples, spaced evenly in log-length from the shortest
    clip to the longest play (`longest_s`, sampler.longest_play; default the longest clip) as played
    (speed perturbation stretches clips by up to 1/min speed), each a whole number of the model's
    output frames (`hop` samples: `samples_per_frame`), so no padded sample is left over past the last frame.

    A compiled model keeps one graph per input length; padding to these few lengths instead of each
    batch's longest clip bounds the compilations, at the cost of some padding (about half a step of
    the ladder on average)."""
    speeds = [float(s) for s in (acfg.augment.speeds or [1.0])] if float(acfg.augment.prob or 0) > 0 else [1.0]
    longest_s = max(durations) if longest_s is None else max(longest_s, max(durations))
    shortest, longest = min(durations) / max(speeds + [1.0]), longest_s / min(speeds + [1.0])
    count = int(acfg.compile_buckets)
    ratio = (longest / shortest) ** (1 / max(count - 1, 1)) if count > 1 else 1.0

    def whole_frames(seconds: float) -> int:
        return math.ceil(seconds * SAMPLING_RATE / hop) * hop

    lengths = {whole_frames(shortest * ratio**k) for k in range(count)} | {whole_frames(longest)}
    return tuple(sorted(lengths)[-count:])


def compile_settings(acfg: DictConfig) -> Any:
    """With `asr.compile`: static lengths (one graph per bucket), and SpecAugment's mask applied out
    of place (`_mask_hidden_states_where`, drawn by `spec_augment_mask`); otherwise nothing changes."""
    if not acfg.compile:
        return nullcontext()
    import torch._dynamo.config as dynamo_config

    import transformers.models.wav2vec2.modeling_wav2vec2 as w2v

    if float(acfg.spec_augment.get("mask_feature_prob") or 0) > 0:
        raise PipelineError("asr.compile=true supports SpecAugment's time masks only: set asr.spec_augment.mask_feature_prob=0 "
                            "or asr.compile=false")
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    stack = ExitStack()
    stack.enter_context(dynamo_config.patch(automatic_dynamic_shapes=False, **{limit: max(8, 2 * int(acfg.compile_buckets))}))
    stack.enter_context(mock.patch.object(w2v.Wav2Vec2Model, "_mask_hidden_states", _mask_hidden_states_where))
    return stack


def compiled_model(ddp_model: torch.nn.Module, model: Any) -> Any:
    """torch.compile of the model as a step calls it, once LayerDrop is known to be off.

    LayerDrop draws a random number per layer and branches on it in Python: a graph break per layer,
    each with the costs `compile_settings` describes."""
    layerdrop = float(getattr(model.config, "layerdrop", 0.0) or 0.0)
    if layerdrop > 0:
        raise PipelineError(
            f"asr.compile=true needs LayerDrop off, and the model's config has layerdrop={layerdrop:g}: set "
            "asr.model_config.layerdrop=0 (a model built from model_config), add +asr.spec_augment.layerdrop=0 "
            "(a pretrained model: passed to from_pretrained), or set asr.compile=false"
        )
    return torch.compile(ddp_model)


def _mask_hidden_states_where(self: Any, hidden_states: torch.Tensor, mask_time_indices: torch.Tensor | None = None,
                              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Wav2Vec2Model._mask_hidden_states for a compiled model: the time mask comes drawn, out of place."""
    if not getattr(self.config, "apply_spec_augment", True) or mask_time_indices is None:
        return hidden_states
    return torch.where(mask_time_indices[:, :, None], self.masked_spec_embed.to(hidden_states.dtype), hidden_states)


def spec_augment_mask(model: Any, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """SpecAugment's time mask for a batch, drawn as transformers draws it inside the forward pass.

    Nothing between the start of the forward pass and its draw uses numpy's generator, so with the same
    seed this is the mask the uncompiled model would have drawn."""
    cfg = model.config
    if not model.training or not getattr(cfg, "apply_spec_augment", True) or float(cfg.mask_time_prob) <= 0:
        return None
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    if not time_mask_fits(model, input_values):
        return None
    frames = int(output_lengths(model, torch.tensor([input_values.shape[1]]))[0])
    frame_mask = None if attention_mask is None else model.wav2vec2._get_feature_vector_attention_mask(frames, attention_mask)
    mask = _compute_mask_indices((input_values.shape[0], frames), mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
                                 attention_mask=frame_mask, min_masks=cfg.mask_time_min_masks)
    return torch.tensor(mask, device=input_values.device, dtype=torch.bool)


def compiled_loss(step_model: Any, model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's CTC loss with only the network compiled: the loss gathers a batch's transcripts into
    one vector of varying length, which would recompile for every batch, so it runs eagerly here.

    It is Wav2Vec2ForCTC's own loss, written out: transformers releases differ in what
    `model.loss_function` resolves to for this model (5.17 gives a causal-LM loss)."""
    # The encoder's own training flag only decides LayerDrop, which compiled runs have off (see
    # compiled_model); cleared, the encoder skips the per-layer draw whose tensor comparison breaks
    # the graph in some transformers releases (5.17). train() sets it again after each validation.
    model.wav2vec2.encoder.training = False
    values, mask = inputs["input_values"], inputs.get("attention_mask")
    extra = {}
    time_mask = spec_augment_mask(model, values, mask)
    if time_mask is not None:
        torch._dynamo.maybe_mark_dynamic(time_mask, 0)
        extra["mask_time_indices"] = time_mask
    logits = step_model(input_values=values, attention_mask=mask, **extra).logits
    samples = mask.sum(-1) if mask is not None else torch.full((logits.shape[0],), values.shape[1], device=logits.device)
    cfg, labels = model.config, inputs["labels"]
    labelled = labels >= 0
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):  # as transformers does: cuDNN's CTC takes other inputs
        return torch.nn.functional.ctc_loss(
            log_probs, labels.masked_select(labelled), output_lengths(model, samples).to(logits.device, torch.long), labelled.sum(-1),
            blank=cfg.pad_token_id, reduction=cfg.ctc_loss_reduction, zero_infinity=cfg.ctc_zero_infinity,
        )
