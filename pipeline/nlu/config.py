"""The `nlu` config group (conf/nlu/*.yaml) as types: what `pipeline.config.checked` holds it to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.config import choice
from pipeline.runtime import PipelineError


@dataclass
class HeadConfig:
    intent_pooling: str = MISSING
    tag_loss_weight: float = MISSING
    label_smoothing: float = MISSING
    head_dropout: float = MISSING

    def validate(self) -> None:
        choice("nlu.head.intent_pooling", self.intent_pooling, ("mean", "cls"))
        # cross_entropy refuses smoothing above 1, and at 1 every target is uniform: nothing is learnt.
        if not 0 <= self.label_smoothing < 1:
            raise PipelineError(f"nlu.head.label_smoothing={self.label_smoothing}: must be in [0, 1) (0 turns it off)")
        # torch refuses a dropout above 1 only when the model is built, after the data stage; at 1 the
        # heads see nothing but zeros.
        if not 0 <= self.head_dropout < 1:
            raise PipelineError(f"nlu.head.head_dropout={self.head_dropout}: must be in [0, 1) (0 turns it off)")
        if self.tag_loss_weight < 0:
            raise PipelineError(f"nlu.head.tag_loss_weight={self.tag_loss_weight}: 0 (no tagging learnt) or more; "
                                "a negative weight trains the tagger away from the gold tags")


@dataclass
class NLUConfig:
    model_name_or_path: str = MISSING
    model_sha256: Optional[str] = MISSING
    encoder_config: Optional[dict[str, Any]] = MISSING
    tokenizer_name_or_path: str = MISSING
    false_wake: str = MISSING
    asr_hypotheses: bool = MISSING
    max_length: int = MISSING
    epochs: float = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    learning_rate: float = MISSING
    head_learning_rate: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    cpu_threads: Optional[int] = MISSING
    group_by_length: bool = MISSING
    resume: bool = MISSING
    keep_checkpoints: bool = MISSING
    head: HeadConfig = field(default_factory=HeadConfig)

    def validate(self) -> None:
        choice("nlu.false_wake", self.false_wake, ("skip", "no_command"))
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise PipelineError(f"nlu.{key}={getattr(self, key)}: must be at least 1")
        # [CLS], the first sub-token of one word, [SEP]: with 2 every word is cut off (and tagged O), and
        # below the tokenizer's special tokens it turns truncation off altogether.
        if self.max_length < 3:
            raise PipelineError(f"nlu.max_length={self.max_length}: must be at least 3 sub-tokens ([CLS], a word, [SEP])")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise PipelineError(f"nlu.epochs={self.epochs} and nlu.max_steps={self.max_steps}: give a positive number of epochs (or steps)")
        # Checked here, not by torch or the Trainer, so a bad value fails before the earlier stages run.
        for key in ("learning_rate", "head_learning_rate"):
            if getattr(self, key) <= 0:
                raise PipelineError(f"nlu.{key}={getattr(self, key)}: must be positive (the model would not learn)")
        if not 0 <= self.warmup_ratio < 1:
            raise PipelineError(f"nlu.warmup_ratio={self.warmup_ratio}: must be in [0, 1), the share of steps spent warming up")
        if self.weight_decay < 0:
            raise PipelineError(f"nlu.weight_decay={self.weight_decay}: 0 (none) or more")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise PipelineError(f"nlu.cpu_threads={self.cpu_threads}: must be null (torch's default) or at least 1")
        # A trained NLU folder, a missing folder or a backbone whose weights are not the pinned ones:
        # refused before any stage runs, not after an ASR run (lazy imports: transformers).
        from pipeline.nlu.model import (check_backbone_positions, check_encoder_config, checked_tokenizer,
                                        refuse_trained_model, resolve_backbone)

        encoder = check_encoder_config(self.encoder_config, self.max_length) if self.encoder_config else None
        refuse_trained_model(self.model_name_or_path)
        backbone = resolve_backbone(self.model_name_or_path, self.model_sha256)
        if not self.encoder_config:
            encoder = check_backbone_positions(backbone, self.max_length)
        # Read only when the model is built: a missing tokenizer, or one that does not fit the encoder,
        # failed there, after the earlier stages. A hub id is read then still.
        checked_tokenizer(self, encoder, local_only=True)
