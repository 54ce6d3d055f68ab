"""The `nlu` stage: fine-tune the joint intent/entity model on gold transcripts and save it.

Training runs on the transformers `Trainer` (checkpoints, resume, length-grouped batches, linear
warm-up/decay come with it); this module only prepares the columns, builds the model and the
optimiser (heads learn faster than the pretrained encoder), and scores the saved model through
the same `NLUModel.predict` the evaluation stage and users call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from omegaconf import DictConfig
from transformers import (
    DataCollatorForTokenClassification,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from pipeline.config import TrainerConfig, checked
from pipeline.data.saved import open_saved, require
from pipeline.distributed import resolve_device
from pipeline.eval import metrics as M
from pipeline.model_card import write_model_card
from pipeline.nlu.config import NLUConfig
from pipeline.nlu.model import (
    NLUModel,
    build_model,
    build_model_from_config,
    checked_tokenizer,
    encode_words,
    has_unused_weights,
    refuse_trained_model,
    resolve_backbone,
)
from pipeline.runtime import PipelineError, requested_workers
from pipeline.tracking import Tracker

NO_COMMAND = "no_command"
ENTITY_SCORES = ("entity_precision", "entity_recall", "entity_f1")
NO_ENTITY = "the split has no clip with an entity"
IGNORE = -100
FINGERPRINT_FILE = "fingerprint.json"
# Settings that say how long or how a run trains, not what its checkpoints hold: a run restarted
# with more epochs still continues from them.
RESUMABLE_CHANGES = ("epochs", "max_steps", "resume", "keep_checkpoints", "cpu_threads", "eval_batch_size")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NLUJob:
    """One run of the stage: its checked settings and where it reads, writes and logs.

    Every step takes this one object, so a step that needs one more setting does not grow a long
    parameter list (and the order of six loose arguments cannot be mixed up).
    """

    ncfg: NLUConfig
    tcfg: TrainerConfig
    seed: int
    dataset_path: Path
    run_dir: Path
    tracker: Tracker

    @property
    def out_dir(self) -> Path:
        """`<run>/nlu/`: what users load (model, tokenizer, label maps) and `nlu_metrics.json`."""
        return self.run_dir / "nlu"

    @property
    def checkpoint_dir(self) -> Path:
        """Where the Trainer checkpoints, so a cut-off run resumes; removed at the end unless kept."""
        return self.out_dir / "checkpoints"


@dataclasses.dataclass(frozen=True)
class NLUData:
    """The utterances the stage trains and selects on, and the label maps that training defines."""

    splits: DatasetDict
    train_rows: list[dict[str, Any]]  # gold transcripts first, then any ASR-hypothesis rows
    gold_count: int  # how many of `train_rows` are gold transcripts
    val_rows: list[dict[str, Any]]  # per-epoch model selection; empty without a validation split
    intents: list[str]
    tags: list[str]


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """The finished Trainer (its state names the steps and the best checkpoint) and what it cost."""

    trainer: Trainer
    tokenizer: Any
    resumed: bool
    seconds: float


def run_nlu_stage(cfg: DictConfig, run_dir: Path, dataset_path: Path, tracker: Tracker) -> dict[str, Any]:
    """Train the NLU on the dataset's train split, save it to `<run>/nlu/` and score the saved model.

    Returns `nlu_metrics.json`'s content plus `model_dir`. `nlu.cpu_threads` sets torch's thread
    count for the whole process, so the count this stage found is restored when it ends or fails:
    the stages after it in the same process (evaluation, the review) keep their own.
    """
    job = NLUJob(  # numpy and the Trainer take 32-bit seeds; any integer is a valid `seed`
        ncfg=checked(cfg.nlu, NLUConfig, "nlu"), tcfg=checked(cfg.trainer, TrainerConfig, "trainer"),
        seed=int(cfg.seed) % 2**32, dataset_path=Path(dataset_path), run_dir=Path(run_dir), tracker=tracker,
    )
    threads = torch.get_num_threads()
    try:
        return train_and_score(job)
    finally:
        torch.set_num_threads(threads)


def train_and_score(job: NLUJob) -> dict[str, Any]:
    """Read top to bottom, the steps are the recipe: load data, build the model, train, save, score,
    write and log the metrics."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    data = load_training_data(job)
    model, tokenizer = build_model_and_tokenizer(job, data)
    trained = fit(job, data, model, tokenizer)
    if not trained.trainer.is_world_process_zero():  # under torchrun, rank 0 alone saves and scores
        return {"model_dir": str(job.out_dir)}
    saved = save_model(job, trained)
    metrics = {**training_facts(data, trained), **score_splits(saved, data.splits, int(job.ncfg.eval_batch_size))}
    write_metrics(job, metrics)
    write_model_card(job.out_dir, "nlu", job.dataset_path, {
        "steps": metrics["global_step"], "epochs": metrics["epochs"], "training utterances": metrics["train_utterances"],
        "ASR hypotheses added": metrics["train_asr_hypotheses"] or None, "intents": metrics["intents"],
        "entity types": metrics["entity_types"], "training seconds": metrics["train_seconds"]},
        # A split without a clip that has an intent (a small build's test split) has nothing to report;
        # one without an entity has no entity F1, and a note says why.
        {split: {"utterances": metrics[split]["utterances"], "intent accuracy": metrics[split]["intent_accuracy"],
                 "entity F1": metrics[split].get("entity_f1")} for split in ("validation", "test")
         if metrics.get(split, {}).get("utterances")},
        notes=[f"{split}: entity F1 not computed: {why}" for split in ("validation", "test")
               if (why := metrics.get(split, {}).get("not_computed", {}).get("entity_f1"))])
    log_summary(job, metrics)
    return {"model_dir": str(job.out_dir), **metrics}


def load_training_data(job: NLUJob) -> NLUData:
    """Train rows (plus ASR-hypothesis rows when `nlu.asr_hypotheses` is set), validation rows, label maps.

    Fails before any model is built when nothing could be trained on, so a bad dataset costs seconds.
    """
    false_wake = str(job.ncfg.false_wake)
    splits = load_splits(job.dataset_path)
    train_rows = training_rows(splits["train"], false_wake)
    gold_count = len(train_rows)
    if job.ncfg.asr_hypotheses:
        from pipeline.nlu.asr_augment import hypothesis_rows

        extra = hypothesis_rows(job.dataset_path, job.run_dir / "asr")
        train_rows += training_rows_from(extra, false_wake)
    if not train_rows:
        raise PipelineError(f"the train split of {job.dataset_path} has no utterances with an intent to train the NLU on")
    if all(r["intent"] == NO_COMMAND for r in train_rows):
        # Only false wakes: the model would learn one class, with loss 0, and look like it trained.
        raise PipelineError(
            f"the train split of {job.dataset_path} has no utterance with a real intent (every clip is a false wake); "
            "build the dataset from a source with intents or leave `nlu` out of `stages`"
        )
    intents, tags = label_maps(train_rows)
    val_rows = training_rows(splits["validation"], false_wake) if "validation" in splits else []
    return NLUData(splits, train_rows, gold_count, val_rows, intents, tags)


def build_model_and_tokenizer(job: NLUJob, data: NLUData) -> tuple[torch.nn.Module, Any]:
    """The joint model with heads sized to the label maps, and the backbone's tokenizer.

    The seed is set here, right before the heads are initialised, so the same seed gives the same model.
    `nlu.encoder_config` builds a randomly initialised encoder (tests, benchmarks). Either encoder
    reads the tokenizer of `nlu.tokenizer_name_or_path` (by default the backbone's own).
    """
    ncfg = job.ncfg
    if ncfg.cpu_threads:
        torch.set_num_threads(ncfg.cpu_threads)
    set_seed(job.seed)
    if ncfg.encoder_config:
        model = build_model_from_config(dict(ncfg.encoder_config), data.intents, data.tags, ncfg.head, ncfg.max_length)
    else:
        refuse_trained_model(ncfg.model_name_or_path)  # before the checksum, which would blame the package
        backbone = resolve_backbone(ncfg.model_name_or_path, ncfg.model_sha256)
        model = build_model(backbone, data.intents, data.tags, ncfg.head, ncfg.max_length)
    return model, checked_tokenizer(ncfg, model.config)


def make_trainer(job: NLUJob, data: NLUData, model: torch.nn.Module, tokenizer: Any) -> Trainer:
    """A Trainer on tokenised rows, selecting the best epoch on validation when there is one.

    Features are built here rather than with the rows because they need the backbone's tokenizer.
    """
    max_length = int(job.ncfg.max_length)
    train_ds = to_features(data.train_rows, tokenizer, data.intents, data.tags, max_length)
    val_ds = to_features(data.val_rows, tokenizer, data.intents, data.tags, max_length) if data.val_rows else None
    args = training_arguments(job.ncfg, job.tcfg, job.seed, job.checkpoint_dir, has_eval=val_ds is not None,
                              unused_weights=has_unused_weights(model))
    tags = data.tags
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE),
        compute_metrics=lambda p: selection_metrics(p, tags),
        optimizers=(make_optimizer(model, job.ncfg), None),
        callbacks=[TrackerCallback(job.tracker)],
    )


def fit(job: NLUJob, data: NLUData, model: torch.nn.Module, tokenizer: Any) -> TrainedModel:
    """Train, picking up from the last checkpoint when `nlu.resume` is set and it suits this run.

    Only `trainer.train` is timed: `nlu/train_seconds` compares training speed, not data loading.
    """
    trainer = make_trainer(job, data, model, tokenizer)
    fingerprint = checkpoint_fingerprint(job, data)
    resumed = bool(job.ncfg.resume) and can_resume(job, fingerprint)
    if not resumed:  # stale checkpoints would be resumed from, or mixed with the new ones, later
        for stale in job.checkpoint_dir.glob("checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if trainer.is_world_process_zero():
        job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (job.checkpoint_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resumed else None)
    return TrainedModel(trainer, tokenizer, resumed, time.perf_counter() - started)


def checkpoint_fingerprint(job: NLUJob, data: NLUData) -> dict[str, Any]:
    """What checkpoints are made of: the nlu settings, seed, label maps, dataset and training rows.

    Stored beside the checkpoints, so a later run resumes only from checkpoints of the same training
    (another learning rate or backbone would otherwise be ignored, or crash on mismatched sizes).
    """
    settings = {k: v for k, v in dataclasses.asdict(job.ncfg).items() if k not in RESUMABLE_CHANGES}
    rows = json.dumps([[r["transcript"], r["intent"], r["bio_tags"]] for r in data.train_rows])
    return {
        "nlu": settings,
        "seed": job.seed,
        "intents": data.intents,
        "tags": data.tags,
        "dataset": str(job.dataset_path.resolve()),
        "dataset_fingerprint": {name: split._fingerprint for name, split in data.splits.items()},
        "train_rows_sha256": hashlib.sha256(rows.encode()).hexdigest(),
    }


def can_resume(job: NLUJob, fingerprint: dict[str, Any]) -> bool:
    """Whether the last checkpoint continues this very training and leaves steps to run.

    Otherwise one line says why and the run starts fresh: a checkpoint of other settings, or one
    already past the asked `nlu.epochs`/`nlu.max_steps`, would give a model other than asked for.
    """
    last = get_last_checkpoint(str(job.checkpoint_dir)) if job.checkpoint_dir.is_dir() else None
    if last is None:
        return False
    stored_file = job.checkpoint_dir / FINGERPRINT_FILE
    try:
        stored = json.loads(stored_file.read_text())
    except (OSError, ValueError):
        stored = None
    if stored != fingerprint:
        differ = _differences(stored, fingerprint) if isinstance(stored, dict) else ["unrecorded"]
        log.info("nlu: not resuming from %s: made with other settings (%s); starting fresh", job.checkpoint_dir, ", ".join(differ))
        return False
    try:
        state = json.loads((Path(last) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        log.info("nlu: not resuming from %s: its trainer_state.json is unreadable; starting fresh", last)
        return False
    ncfg = job.ncfg
    done = state.get("global_step", 0) >= ncfg.max_steps if ncfg.max_steps > 0 else state.get("epoch", 0) >= ncfg.epochs
    if done:
        log.info("nlu: not resuming from %s: it already reached nlu.epochs=%s/nlu.max_steps=%s; starting fresh",
                 last, ncfg.epochs, ncfg.max_steps)
        return False
    return True


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of what changed, `nlu.<key>` for settings, for the log line."""
    names = [f"nlu.{k}" for k in sorted(set(stored.get("nlu") or {}) | set(current["nlu"]))
             if (stored.get("nlu") or {}).get(k) != current["nlu"].get(k)]
    return names + [k for k in current if k != "nlu" and stored.get(k) != current[k]]


def save_model(job: NLUJob, trained: TrainedModel) -> NLUModel:
    """Save model, tokenizer and label maps to `nlu/`, drop the checkpoints unless kept, and load back.

    The loaded copy is what gets scored, so the scores are those of the files users and the eval
    stage load, not of the in-memory model.
    """
    NLUModel(trained.trainer.model, trained.tokenizer).save_pretrained(job.out_dir)
    if not job.ncfg.keep_checkpoints:
        shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
    return NLUModel.from_pretrained(job.out_dir)


def training_facts(data: NLUData, trained: TrainedModel) -> dict[str, Any]:
    """What was trained and how long it took: the first keys of `nlu_metrics.json`, in their order."""
    state = trained.trainer.state
    return {
        "train_seconds": round(trained.seconds, 1),
        "train_utterances": data.gold_count,
        "train_asr_hypotheses": len(data.train_rows) - data.gold_count,
        "global_step": state.global_step,
        "epochs": round(float(state.epoch or 0.0), 4),  # what ran: nlu.max_steps may stop short of nlu.epochs
        "resumed": trained.resumed,
        "intents": len(data.intents),
        "entity_types": len(data.tags) // 2,
        "best_checkpoint": state.best_model_checkpoint and Path(state.best_model_checkpoint).name,
    }


def score_splits(nlu: NLUModel, splits: DatasetDict, batch_size: int) -> dict[str, dict[str, Any]]:
    """`score` on the validation and test splits (those present), through the saved model's `predict`.

    Scored are the clips the eval stage scores: those with an intent (false wakes are the wake-word
    detector's to reject), whatever `nlu.false_wake` taught the model.
    """
    return {
        split: score(nlu, training_rows(splits[split], "skip"), batch_size)
        for split in ("validation", "test") if split in splits
    }


def write_metrics(job: NLUJob, metrics: dict[str, Any]) -> None:
    """`nlu/nlu_metrics.json`, next to the model it describes."""
    (job.out_dir / "nlu_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def log_summary(job: NLUJob, metrics: dict[str, Any]) -> None:
    """The numeric split scores as `nlu/val_*` and `nlu/test_*` run summary values, plus the training time."""
    summary = {
        f"nlu/{'val' if split == 'validation' else split}_{name}": value
        for split in ("validation", "test") if split in metrics
        for name, value in metrics[split].items() if isinstance(value, (int, float))
    }
    job.tracker.log_summary({**summary, "nlu/train_seconds": metrics["train_seconds"]})
    for split in ("validation", "test"):
        for why in sorted(set((metrics.get(split) or {}).get("not_computed", {}).values())):
            log.warning("nlu: not computed on %s (%s): %s", split, why,
                        ", ".join(k for k, v in metrics[split]["not_computed"].items() if v == why))


def load_splits(dataset_path: Path) -> DatasetDict:
    dd = open_saved(dataset_path)
    require(dd, dataset_path, "train", (), "the NLU stage")
    # The NLU reads text only: never decode audio.
    return DatasetDict({k: v.remove_columns([c for c in ("audio",) if c in v.column_names]) for k, v in dd.items()})


def training_rows(split: Dataset, false_wake: str) -> list[dict[str, Any]]:
    """`words`, `bio_tags`, `intent`, `transcript`, `entities` per utterance, false wakes handled by config.

    `false_wake: skip` leaves them out (the wake-word detector handles them); `no_command` teaches
    the NLU an explicit "nothing to do" intent, so a false wake that gets through does no harm.
    """
    columns = ["transcript", "words", "bio_tags", "intent", "entities"]  # entities: what the scores count against
    missing = set(columns) - set(split.column_names)
    if missing:
        raise PipelineError(f"the dataset lacks column(s) {sorted(missing)} the NLU needs; rebuild it with the `data` stage")
    # The utterance id names a record in errors (a transcript is what was said, and stays out of them).
    named = ["utterance_id"] if "utterance_id" in split.column_names else []
    return training_rows_from(split.select_columns(named + columns), false_wake)


def training_rows_from(examples: Any, false_wake: str) -> list[dict[str, Any]]:
    """The examples with an intent (`no_command` for a false wake under `nlu.false_wake=no_command`),
    each checked to have one BIO tag per word; an error names the record by its `utterance_id`, or
    by its row where the examples have none."""
    if false_wake not in ("skip", NO_COMMAND):
        raise PipelineError(f"nlu.false_wake={false_wake!r} is not one of: skip, {NO_COMMAND}")
    rows = []
    for index, ex in enumerate(examples):
        intent = ex["intent"]
        if intent is None:
            if false_wake == "skip":
                continue
            intent = NO_COMMAND
        if len(ex["words"]) != len(ex["bio_tags"]):
            record = f"utterance {ex['utterance_id']}" if ex.get("utterance_id") is not None else f"row {index}"
            raise PipelineError(f"{record} has {len(ex['words'])} words but {len(ex['bio_tags'])} BIO tags; rebuild the "
                                "dataset with the `data` stage, which derives both from the same transcript")
        rows.append({**ex, "intent": intent})
    return rows


def label_maps(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Intents and BIO tags seen in training, sorted so the same data gives the same ids."""
    intents = sorted({r["intent"] for r in rows})
    types = sorted({t[2:] for r in rows for t in r["bio_tags"] if t != "O"})
    return intents, ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def to_features(rows: list[dict[str, Any]], tokenizer: Any, intents: list[str], tags: list[str], max_length: int) -> Dataset:
    """Token ids plus labels: the intent id, and each word's tag on its first sub-token only.

    Intents and tags unseen in training become IGNORE, so a validation set may hold them.
    """
    intent_id = {name: i for i, name in enumerate(intents)}
    tag_id = {name: i for i, name in enumerate(tags)}
    columns: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": [], "intent_labels": []}
    has_types = None
    for start in range(0, len(rows), 512):
        chunk = rows[start : start + 512]
        enc, firsts = encode_words(tokenizer, [r["words"] for r in chunk], max_length)
        has_types = "token_type_ids" in enc
        if has_types:
            columns.setdefault("token_type_ids", [])
        for b, (row, first) in enumerate(zip(chunk, firsts)):
            n = int(enc["attention_mask"][b].sum())
            labels = [IGNORE] * n
            for pos, tag in zip(first, row["bio_tags"]):
                if pos >= 0:
                    labels[pos] = tag_id.get(tag, IGNORE)
            columns["input_ids"].append(enc["input_ids"][b, :n].tolist())
            columns["attention_mask"].append([1] * n)
            if has_types:
                columns["token_type_ids"].append(enc["token_type_ids"][b, :n].tolist())
            columns["labels"].append(labels)
            columns["intent_labels"].append(intent_id.get(row["intent"], IGNORE))
    return Dataset.from_dict(columns)


def make_optimizer(model: torch.nn.Module, ncfg: NLUConfig) -> torch.optim.Optimizer:
    """AdamW with the new heads at `head_learning_rate`; no weight decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = not name.startswith("encoder.")
        no_decay = param.ndim < 2
        groups.setdefault((is_head, no_decay), []).append(param)
    lr, head_lr, decay = float(ncfg.learning_rate), float(ncfg.head_learning_rate), float(ncfg.weight_decay)
    return torch.optim.AdamW(
        [
            {"params": params, "lr": head_lr if is_head else lr, "weight_decay": 0.0 if no_decay else decay}
            for (is_head, no_decay), params in sorted(groups.items())
        ],
        lr=lr,
        fused=True,  # one kernel per step instead of a loop over tensors: ~10% faster steps on the CPU
    )


def length_grouping(enabled: bool) -> dict[str, Any]:
    """Batches of similar length, as this transformers spells it: a sampling strategy in releases
    from early 2026 on (5.x), the `group_by_length` flag before."""
    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length" if enabled else "random"}
    return {"group_by_length": enabled}


def training_arguments(ncfg: NLUConfig, tcfg: TrainerConfig, seed: int, output_dir: Path, has_eval: bool,
                       unused_weights: bool = False) -> TrainingArguments:
    device, precision = resolve_device(tcfg)  # the ASR stage's rules: a setting that cannot work is refused
    strategy = "epoch" if has_eval else "no"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=float(ncfg.epochs),
        max_steps=ncfg.max_steps if ncfg.max_steps > 0 else -1,
        per_device_train_batch_size=int(ncfg.batch_size),
        per_device_eval_batch_size=int(ncfg.eval_batch_size),
        learning_rate=float(ncfg.learning_rate),
        lr_scheduler_type="linear",
        warmup_steps=float(ncfg.warmup_ratio),
        max_grad_norm=1.0,
        **length_grouping(bool(ncfg.group_by_length)),
        eval_strategy=strategy,
        save_strategy=strategy if has_eval else "epoch",
        save_total_limit=1,
        load_best_model_at_end=has_eval,
        metric_for_best_model="score" if has_eval else None,
        greater_is_better=True,
        logging_steps=tcfg.log_every,
        label_names=["labels", "intent_labels"],
        # DDP walks the graph each step for weights without a gradient only where there are some
        # (pipeline.nlu.model.has_unused_weights); the Trainer's default walks it always, and warns.
        ddp_find_unused_parameters=unused_weights,
        seed=seed,
        data_seed=seed,
        use_cpu=device.type == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Tokenised text batches cost next to nothing to build: `auto` loads them in the training process.
        dataloader_num_workers=requested_workers(tcfg) or 0,
        report_to="none",
        disable_tqdm=True,
    )


def selection_metrics(pred: EvalPrediction, tags: list[str]) -> dict[str, float]:
    """Per-epoch model selection on validation: intent accuracy, tag F1 (seqeval), and their mean.

    Both come from `pipeline.eval.metrics`, the one home of every score; intents unseen in training
    (IGNORE) are left out, as they cannot be predicted by this model.
    """
    intent_logits, tag_logits = pred.predictions
    tag_labels, intent_labels = pred.label_ids
    keep = intent_labels != IGNORE
    accuracy = (
        M.intent_scores(intent_labels[keep].tolist(), intent_logits.argmax(-1)[keep].tolist())["accuracy"]
        if keep.any() else 0.0
    )
    tag_pred = tag_logits.argmax(-1)
    gold_seqs, pred_seqs = [], []
    for gold_row, pred_row in zip(tag_labels, tag_pred):
        mask = gold_row != IGNORE
        gold_seqs.append([tags[i] for i in gold_row[mask]])
        pred_seqs.append([tags[i] for i in pred_row[mask]])
    f1 = M.tag_f1(gold_seqs, pred_seqs)
    return {"intent_accuracy": accuracy, "tag_f1": f1, "score": (accuracy + f1) / 2}


def score(nlu: NLUModel, rows: list[dict[str, Any]], batch_size: int = 64) -> dict[str, Any]:
    """Intent accuracy and entity precision / recall / F1 of `predict` on gold text (see `score_predictions`)."""
    preds = nlu.predict([r["transcript"] for r in rows], batch_size=batch_size) if rows else []
    known_types = {t[2:] for t in nlu.tags if t != "O"}
    return score_predictions(rows, preds, set(nlu.intents), known_types)


def score_predictions(
    rows: list[dict[str, Any]], preds: list[dict[str, Any]], known_intents: set[str], known_types: set[str],
) -> dict[str, Any]:
    """Scored by `pipeline.eval.metrics` exactly as the eval stage scores its `nlu/` metrics.

    Gold intents or entity types the model never saw are counted as errors and listed, not crashed on.
    Clips without a single gold entity leave the entity scores out, with the reason under
    `not_computed`, as the eval stage leaves out `nlu/entity_f1`: their 0.0 would read as a result.
    """
    unseen_intents = Counter(r["intent"] for r in rows if r["intent"] not in known_intents)
    unseen_types = Counter(e["type"] for r in rows for e in r["entities"] if e["type"] not in known_types)
    scores: dict[str, Any] = {}
    not_computed: dict[str, str] = {}
    if rows:  # a split without a clip that has an intent has nothing to score
        scores = M.understanding_scores(
            [r["intent"] for r in rows], [p["intent"] for p in preds],
            [r["entities"] for r in rows], [p["entities"] for p in preds],
        )
        if not any(r["entities"] for r in rows):
            not_computed = dict.fromkeys(ENTITY_SCORES, NO_ENTITY)
            scores = {k: v for k, v in scores.items() if k not in not_computed}
    return {
        "utterances": len(rows),
        **scores,
        "unseen_intents": dict(sorted(unseen_intents.items())),
        "unseen_entity_types": dict(sorted(unseen_types.items())),
        **({"not_computed": not_computed} if not_computed else {}),
    }


class TrackerCallback(TrainerCallback):
    """Forwards the Trainer's logs to our tracker under `nlu/` names."""

    NAMES = {
        "loss": "nlu/train_loss",
        "learning_rate": "nlu/learning_rate",
        "grad_norm": "nlu/grad_norm",
        "eval_loss": "nlu/val_loss",
        "eval_intent_accuracy": "nlu/val_intent_accuracy",
        "eval_tag_f1": "nlu/val_tag_f1",
    }

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        metrics = {self.NAMES[k]: float(v) for k, v in (logs or {}).items() if k in self.NAMES and np.isfinite(v)}
        if metrics:
            self.tracker.log_metrics(metrics, step=state.global_step)
