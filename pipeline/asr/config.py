"""The `asr` config group (conf/asr/*.yaml) as types: what `pipeline.config.checked` holds it to.

A new ASR setting is declared here as well as in conf/asr/tiny.yaml (which keeps its default; the
other ASR configs start from it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.config import check_builds, choice, did_you_mean
from pipeline.runtime import PipelineError, looks_like_path

# The shortest RT60 every simulated room can have (pipeline/asr/augment.py rooms of up to 8 x 6 x 3.2 m):
# below it Sabine's formula asks for walls that absorb more than all the sound, and pyroomacoustics refuses.
MIN_RT60_S = 0.15
MAX_LM_ORDER = 6  # the KenLM inside flashlight-text's wheel is compiled for at most 6-grams


def check_lm_order(order: Optional[int]) -> None:
    """Refuse an `asr.lm_order` the bundled KenLM cannot read; checked up front so that it cannot
    fail after training, when the LM is built."""
    if order is not None and not 1 <= order <= MAX_LM_ORDER:
        raise PipelineError(f"asr.lm_order={order}: use 1 to {MAX_LM_ORDER} (the bundled KenLM reads at most "
                            f"{MAX_LM_ORDER}-grams), or null for no LM")


# Wav2Vec2Config fields the run sets from its vocabulary and loss (pipeline/asr/model.py _ctc_overrides).
RUN_DECIDES = ("vocab_size", "pad_token_id", "ctc_loss_reduction", "ctc_zero_infinity")


def check_wav2vec2_settings(model_config: dict[str, Any], spec_augment: dict[str, Any], builds: bool) -> None:
    """Refuse `asr.model_config` / `asr.spec_augment` that transformers would take silently or refuse
    only once the model is built, after the data stage: a misspelt field becomes an unused attribute
    (`num_hidden_layer=12` trains 4 layers), a share above 1 or a head count that does not divide the
    width fails later. With `builds` (no model_name_or_path) the model is built now (`check_builds`).

    `asr.spec_augment.layerdrop` is the one way to turn off a pretrained checkpoint's own LayerDrop
    (`asr.model_config` is not read for one), which `asr.compile` requires and its error advises;
    a model built from `asr.model_config` takes `asr.model_config.layerdrop` instead."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    fields = sorted(Wav2Vec2Config().to_dict())
    if builds and "layerdrop" in spec_augment:
        raise PipelineError("asr.spec_augment.layerdrop: sets a pretrained checkpoint's LayerDrop "
                            "(asr.model_name_or_path); a model built from asr.model_config takes asr.model_config.layerdrop")
    for group, values, allowed in (("model_config", model_config, [f for f in fields if f not in RUN_DECIDES]),
                                   ("spec_augment", spec_augment, [f for f in fields if f.startswith("mask_") or f == "layerdrop"])):
        for key in values:
            if key not in allowed:
                why = "set by the run from its vocabulary" if key in RUN_DECIDES else "not a Wav2Vec2Config field"
                hint = did_you_mean(key, allowed) or f" for this group; known: {', '.join(allowed)}"
                raise PipelineError(f"asr.{group}.{key}: {why}{hint}")
    for key, value in spec_augment.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"asr.spec_augment.{key}={value!r}: give a number")
        if key.endswith("_prob") and not 0 <= value <= 1:
            raise PipelineError(f"asr.spec_augment.{key}={value}: a chance per frame, between 0 and 1")
        if key == "layerdrop" and not 0 <= value <= 1:
            raise PipelineError(f"asr.spec_augment.{key}={value}: a chance per layer and step, between 0 and 1")
        if key.endswith("_length") and value < 1:
            raise PipelineError(f"asr.spec_augment.{key}={value}: frames (or features) per mask, 1 or more")
        if key.endswith("_min_masks") and value < 0:
            raise PipelineError(f"asr.spec_augment.{key}={value}: 0 or more")
    if builds:
        check_builds("asr.model_config", "a wav2vec2 model",
                     lambda: Wav2Vec2ForCTC(Wav2Vec2Config(**model_config, **spec_augment)))


def check_model_source(model_name_or_path: Optional[str], model_config: Optional[dict[str, Any]]) -> None:
    """Refuse an `asr.model_config` beside `asr.model_name_or_path`: it describes a model built from
    scratch and only that. `build_model` (pipeline/asr/model.py) never reads it for a pretrained
    model, whose checkpoint keeps its own architecture and dropout (its LayerDrop and SpecAugment
    come from `asr.spec_augment`), so without this the run trains another model than its config says.
    Refuse no model at all as well: null for both leaves nothing to build or load."""
    if model_name_or_path is not None and model_config:
        raise PipelineError(
            f"asr.model_config ({', '.join(model_config)}) with asr.model_name_or_path={model_name_or_path}: a "
            "pretrained model keeps its checkpoint's architecture, and asr.model_config is not read for it; set "
            "asr.model_config=null (asr=base and asr=large do; a pretrained model's LayerDrop and SpecAugment go "
            "in asr.spec_augment), or asr.model_name_or_path=null to build the model asr.model_config describes")
    if model_name_or_path is None and model_config is None:
        raise PipelineError("asr.model_config=null with asr.model_name_or_path=null: give the Wav2Vec2Config fields "
                            "of a model to build from scratch (asr=tiny's), or a pretrained model in asr.model_name_or_path")


def wav2vec2_folder_problem(folder: Path) -> Optional[str]:
    """Why a local folder holds no wav2vec2 model to fine-tune, or None. Without this transformers
    builds a random wav2vec2 from another model's config and the run fails much later, on its loss."""
    if not folder.is_dir():
        return "no such folder"
    if (folder / "nlu_labels.json").exists():
        return "it is an NLU model folder (it has nlu_labels.json), not a wav2vec2 one"
    if not (folder / "config.json").is_file():
        return "no config.json there, so no model to load"
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        return f"its config.json does not read as a model config ({err.__class__.__name__})"
    if model_type != "wav2vec2":
        return f"its config.json is a {model_type!r} model, not wav2vec2"
    return None


@dataclass
class ConditionsConfig:
    """Real recording conditions (pipeline/asr/augment.py): a chance per augmented clip, and a range."""

    reverb_prob: float = MISSING
    reverb_rt60_s: list[float] = MISSING
    noise_prob: float = MISSING
    noise_snr_db: list[float] = MISSING
    telephone_prob: float = MISSING
    gain_prob: float = MISSING
    gain_db: list[float] = MISSING
    trim_prob: float = 0.0
    pad_prob: float = 0.0
    pad_s: list[float] = field(default_factory=lambda: [0.0, 0.0])
    pitch_prob: float = 0.0
    pitch_semitones: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def validate(self) -> None:
        for key in ("reverb_prob", "noise_prob", "telephone_prob", "gain_prob", "trim_prob", "pad_prob", "pitch_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise PipelineError(f"asr.augment.conditions.{key}={getattr(self, key)}: a chance, between 0 and 1")
        for key in ("reverb_rt60_s", "noise_snr_db", "gain_db", "pad_s", "pitch_semitones"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                raise PipelineError(f"asr.augment.conditions.{key}={value}: give [low, high]")
        if self.pad_s[0] < 0:
            raise PipelineError(f"asr.augment.conditions.pad_s={self.pad_s}: seconds of silence, 0 or more")
        if self.reverb_rt60_s[0] < MIN_RT60_S:
            raise PipelineError(f"asr.augment.conditions.reverb_rt60_s={self.reverb_rt60_s}: the simulated rooms (3-8 m "
                                f"across) reverberate for at least {MIN_RT60_S} s; give a low of {MIN_RT60_S} or more")


@dataclass
class AugmentConfig:
    prob: float = MISSING
    speeds: list[float] = MISSING
    noise_snr_db: Optional[list[float]] = MISSING
    # Not in conf/asr/tiny.yaml: off unless a data recipe that needs it sets it (conf/data/demo_speech.yaml;
    # the data group is merged after the asr group, so a recipe can set ASR keys).
    conditions: Optional[ConditionsConfig] = None

    def validate(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise PipelineError(f"asr.augment.prob={self.prob}: a share of clips, between 0 and 1")
        if self.noise_snr_db is not None and len(self.noise_snr_db) != 2:
            raise PipelineError(f"asr.augment.noise_snr_db={self.noise_snr_db}: give [low, high] in dB, or null")
        if not self.speeds or any(s <= 0 for s in self.speeds):
            raise PipelineError(f"asr.augment.speeds={list(self.speeds)}: give one or more positive speed factors, "
                                "e.g. [0.9, 1.0, 1.1]; [1.0] for no speed perturbation")


@dataclass
class SpliceConfig:
    sources: list[str] = MISSING    # sources whose plays may be joined ...
    partners: list[str] = MISSING   # ... to a random clip of one of these
    prob: float = MISSING           # share of those plays joined
    gap_s: float = MISSING          # silence between the two clips

    def validate(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise PipelineError(f"asr.splice.prob={self.prob}: a share of plays, between 0 and 1")
        if self.gap_s < 0:
            raise PipelineError(f"asr.splice.gap_s={self.gap_s}: seconds of silence, 0 or more")
        if not self.sources or not self.partners:
            raise PipelineError("asr.splice: give sources and partners, e.g. {sources: [speech_commands], partners: [demo]}")


@dataclass
class WordBalanceConfig:
    sources: list[str] = MISSING    # sources whose rarely said transcripts are played more often ...
    max_plays: float = MISSING      # ... up to this many times as often as their source's commonest one

    def validate(self) -> None:
        if not self.sources:
            raise PipelineError("asr.word_balance: give sources, e.g. {sources: [speech_commands], max_plays: 4}")
        if isinstance(self.max_plays, bool) or self.max_plays < 1:
            raise PipelineError(f"asr.word_balance.max_plays={self.max_plays!r}: at most how many times more a rare "
                                "transcript is played, 1 or more")


@dataclass
class AutoBatchConfig:
    """How `max_batch_seconds: auto` sizes batches on a GPU (a probe at start-up; see pipeline/asr/model.py)."""

    fallback_seconds: float = MISSING   # used where no probe can run (the CPU)
    margin: float = MISSING             # share of the device memory left free
    max_seconds: float = MISSING        # never larger than this

    def validate(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise PipelineError(f"asr.auto_batch.margin={self.margin}: a share of the device memory to leave free, in [0, 1)")
        if self.fallback_seconds <= 0 or self.max_seconds <= 0:
            raise PipelineError("asr.auto_batch.fallback_seconds and max_seconds must be positive seconds")


@dataclass
class ASRConfig:
    model_name_or_path: Optional[str] = MISSING
    model_config: Optional[dict[str, Any]] = MISSING  # Wav2Vec2Config fields of a model built from scratch; null otherwise
    freeze_feature_encoder: bool = MISSING
    gradient_checkpointing: bool = MISSING
    spec_augment: dict[str, Any] = MISSING        # Wav2Vec2Config's mask_* fields; layerdrop for a pretrained model
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    audio_cache_mb: float = MISSING
    max_batch_seconds: Any = MISSING               # padded seconds per batch and process | auto (GPU probe)
    auto_batch: AutoBatchConfig = field(default_factory=AutoBatchConfig)
    attn_implementation: str = MISSING             # eager | sdpa | flash_attention_2 (transformers' attention kernels)
    compile: bool = MISSING                        # torch.compile the model; batches padded to compile_buckets lengths
    compile_buckets: int = MISSING
    bucket_batches: int = MISSING
    source_weights: Optional[dict[str, float]] = None  # plays per epoch by `source` (pipeline/asr/sampler.py)
    splice: Optional[SpliceConfig] = None            # plays of two clips (pipeline/asr/sampler.py spliced_plays)
    word_balance: Optional[WordBalanceConfig] = None  # rare transcripts played more (pipeline/asr/sampler.py)
    learning_rate: float = MISSING
    weight_decay: float = MISSING
    adam_betas: list[float] = MISSING
    warmup_steps: int = MISSING
    lr_schedule: str = MISSING
    grad_accum_steps: int = MISSING
    max_grad_norm: float = MISSING
    max_steps: int = MISSING
    max_train_minutes: Optional[float] = MISSING
    eval_every: int = MISSING
    keep_last: int = MISSING
    resume: str = MISSING                          # never | auto | a checkpoint folder
    max_nonfinite_steps: int = MISSING
    lm_order: Optional[int] = MISSING
    cpu_threads: Optional[int] = MISSING
    cpu_fft_positional_conv: Any = MISSING         # auto | true | false (pipeline/asr/fft_conv.py)
    skip_waveform_gradient: bool = MISSING         # no gradient of the raw audio (pipeline/asr/model.py)

    def validate(self) -> None:
        choice("asr.lr_schedule", self.lr_schedule, ("linear", "cosine", "constant"))
        for key in ("max_steps", "eval_every", "grad_accum_steps", "max_nonfinite_steps", "bucket_batches"):
            if getattr(self, key) < 1:
                raise PipelineError(f"asr.{key}={getattr(self, key)}: must be at least 1")
        if self.max_batch_seconds != "auto" and (
            isinstance(self.max_batch_seconds, (bool, str)) or not isinstance(self.max_batch_seconds, (int, float))
            or self.max_batch_seconds <= 0
        ):
            raise PipelineError(f"asr.max_batch_seconds={self.max_batch_seconds!r}: give positive seconds, or auto")
        for name, weight in (self.source_weights or {}).items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise PipelineError(f"asr.source_weights.{name}={weight!r}: how often an epoch plays that source's clips, 0 or more")
        choice("asr.attn_implementation", self.attn_implementation, ("eager", "sdpa", "flash_attention_2"))
        if self.compile_buckets < 1:
            raise PipelineError(f"asr.compile_buckets={self.compile_buckets}: must be at least 1")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise PipelineError(f"asr.adam_betas={self.adam_betas}: give two numbers in [0, 1), e.g. [0.9, 0.98]")
        if self.weight_decay < 0:
            raise PipelineError(f"asr.weight_decay={self.weight_decay}: 0 (none) or more")
        if self.attn_implementation == "flash_attention_2":
            import importlib.util

            import torch

            if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
                raise PipelineError("asr.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn "
                                    "package; use sdpa (PyTorch's fused kernels) otherwise")
        check_model_source(self.model_name_or_path, self.model_config)
        check_wav2vec2_settings(self.model_config or {}, self.spec_augment, builds=self.model_name_or_path is None)
        if self.learning_rate <= 0:
            raise PipelineError(f"asr.learning_rate={self.learning_rate}: must be positive (e.g. 5e-3 from scratch, 1e-4 fine-tuning)")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise PipelineError(f"asr.max_train_minutes={self.max_train_minutes}: give positive minutes, or null for no time budget")
        if self.max_grad_norm <= 0:
            raise PipelineError(f"asr.max_grad_norm={self.max_grad_norm}: must be positive (e.g. 1.0); "
                                "a large value leaves gradients unclipped")
        if self.warmup_steps < 0:
            raise PipelineError(f"asr.warmup_steps={self.warmup_steps}: must be 0 (no warmup) or more")
        if self.keep_last < 1:
            raise PipelineError(f"asr.keep_last={self.keep_last}: must be at least 1 (the newest checkpoint is what a resume continues)")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise PipelineError(f"asr.cpu_threads={self.cpu_threads}: give at least 1, or null for all cores")
        check_lm_order(self.lm_order)
        source = self.model_name_or_path
        if source is not None and looks_like_path(source):
            problem = wav2vec2_folder_problem(Path(source).expanduser())
            if problem:
                raise PipelineError(f"asr.model_name_or_path={source}: {problem}; give a folder with a wav2vec2 "
                                    "config.json and weights, a hub id, or null to build one from asr.model_config")
        fft = self.cpu_fft_positional_conv
        if not (isinstance(fft, bool) or fft == "auto"):
            raise PipelineError(f"asr.cpu_fft_positional_conv={fft!r}: give auto, true or false")
        if fft is True and self.compile:
            raise PipelineError(
                "asr.cpu_fft_positional_conv=true with asr.compile=true: inductor mis-strides the FFT's output "
                "(torch 2.9), so a compiled model keeps the stock convolution; use auto or false"
            )
