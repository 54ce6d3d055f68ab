"""The `asr` stage: fine-tune (or train from scratch) a Wav2Vec2ForCTC and save the best one.

A plain loop rather than the transformers Trainer, for three reasons that matter here: batches are
sized by audio seconds (the Trainer only knows a fixed batch size), a resumed run must replay
exactly the batches and random draws an uninterrupted one would have seen, and the loop must stop
on a wall-clock budget on CPU demo machines. Every random draw (dropout, SpecAugment masks,
augmentation) is re-seeded from (seed, epoch, micro-batch, rank), which is what makes a resume land
where an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.asr.checkpoints import (
    adopt_best_checkpoint, load_checkpoint, prune_checkpoints, recover_model_folder, remove_later_checkpoints,
    remove_old_checkpoints, resolve_resume, save_checkpoint, stage_model_folder, swap_in_model_folder,
)
from pipeline.asr.compiled import compile_buckets, compile_settings, compiled_loss, compiled_model
from pipeline.asr.collate import ClipDataset, CTCCollator, Plays, bucketed_durations, plan_augmentation, played_durations
from pipeline.asr.config import ASRConfig
from pipeline.asr.devices import fast_cpu_math, loader_workers
from pipeline.asr.fft_conv import configure_positional_conv
from pipeline.asr.lm import LM_DIR, write_char_lm
from pipeline.asr.model import (
    build_model, evaluate_clips, no_time_mask, output_lengths, probe_batch_seconds, samples_per_frame,
    skip_waveform_gradient, time_mask_fits, uses_attention_mask,
)
from pipeline.asr.sampler import (
    balanced_plays, epoch_batches, eval_batches, longest_play, over_budget_warning, played_clips, source_plays,
    spliced_plays,
)
from pipeline.asr.vocab import build_vocab, make_processor
from pipeline.config import TrainerConfig, with_checked
from pipeline.data.features import SAMPLING_RATE
from pipeline.data.saved import open_saved, require
from pipeline.distributed import Placement, all_agree, any_says, barrier, place, total
from pipeline.model_card import write_model_card
from pipeline.runtime import PipelineError, host_record, seed_everything
from pipeline.tracking import Tracker


def run_asr_stage(cfg: DictConfig, run_dir: Path, dataset_path: Path, tracker: Tracker) -> dict[str, Any]:
    """Train on `train`, select on `validation`, write `<run>/asr/` and `asr/asr_metrics.json`."""
    started = time.time()
    # A wrong type or value fails here, with its key; the stage reads the checked values.
    cfg = with_checked(with_checked(cfg, "asr", ASRConfig), "trainer", TrainerConfig)
    acfg = cfg.asr
    threads = torch.get_num_threads()
    if acfg.cpu_threads:
        # Fewer threads than cores is faster when the machine is shared: busy-waiting
        # OpenMP threads that compete with other processes slow every op down several-fold.
        torch.set_num_threads(int(acfg.cpu_threads))
    try:  # the count is process-wide: the stages after this one get back the count it found, even on error
        placement = place(cfg.trainer)
        with fast_cpu_math(placement.device, placement.amp_dtype), compile_settings(acfg):
            return _train(cfg, placement, Path(run_dir), Path(dataset_path), tracker, started)
    finally:
        torch.set_num_threads(threads)


@dataclass
class TrainingRun:
    """What a run sets up once and its steps, validations and end share: the data, the model (as
    trained, as DDP-wrapped and as stepped, compiled or not), the optimizer and the resumable state."""

    cfg: DictConfig
    placement: Placement
    tracker: Tracker
    dataset_path: Path
    out_dir: Path                 # <run>/asr: the saved model, its metrics
    ckpt_root: Path               # <run>/asr/checkpoints
    splits: Any                   # the DatasetDict (the LM reads the train transcripts at the end)
    train_set: ClipDataset        # without the clips CTC cannot align
    unalignable: int              # how many were left out
    val_loader: torch.utils.data.DataLoader
    processor: Any
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    step_model: torch.nn.Module   # what a step calls: ddp_model, or torch.compile of it
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: dict[str, Any]         # what a checkpoint saves (see _fresh_state)
    batch_seconds: float
    plays: list[float] | None     # per training clip, plays per epoch (asr.source_weights); None = once each
    buckets: tuple[int, ...] | None  # compiled: the padded lengths
    workers: int
    budget_s: float               # asr.max_train_minutes in seconds, or inf
    started: float                # when the stage began

    @property
    def acfg(self) -> DictConfig:
        return self.cfg.asr

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def accum(self) -> int:
        return max(int(self.acfg.grad_accum_steps), 1)


@dataclass
class Progress:
    """What the loop counts between optimizer steps, log lines and validations (not checkpointed)."""

    loop_start: float             # wall clock of step 0, resumed runs included (train_seconds ago)
    pending_seconds: float = 0.0  # audio trained on since the last validation, this process
    log_loss: float = 0.0         # summed loss since the last log line
    log_n: int = 0
    # Of the steps taken since the last log line, with a finite gradient: their summed gradient norms
    # (before clipping), how many asr.max_grad_norm clipped, how many. Tensors on the model's device,
    # read once a log line, so a GPU step waits for no copy to the host.
    log_grad_norm: Any = 0.0
    log_clipped: Any = 0
    log_steps: Any = 0
    in_accum: int = 0             # micro-batches of the optimizer step being accumulated
    bad_accum: bool = False       # one of them had a non-finite loss: the step will be skipped


def _train(
    cfg: DictConfig, placement: Placement, run_dir: Path, dataset_path: Path, tracker: Tracker, started: float,
) -> dict[str, Any]:
    run = set_up(cfg, placement, run_dir, dataset_path, tracker, started)
    stopped_by = _train_loop(run)
    return _end(run, stopped_by)


def set_up(
    cfg: DictConfig, placement: Placement, run_dir: Path, dataset_path: Path, tracker: Tracker, started: float,
) -> TrainingRun:
    """Data, processor, model, optimizer and state, fresh or from the checkpoint `asr.resume` names.

    The order matters for reproducibility: the fresh model's weights are drawn right after seeding."""
    acfg = cfg.asr
    ckpt_root = run_dir / "asr" / "checkpoints"
    splits = _load_splits(dataset_path)
    workers = loader_workers(cfg.trainer, placement)
    cache_mb = float(acfg.audio_cache_mb or 0) if workers == 0 else 0.0  # workers would drop theirs each epoch
    train_set, val_set = ClipDataset(splits["train"], cache_mb), ClipDataset(splits["validation"], cache_mb)

    if placement.is_main:  # a run killed while it replaced the model folder: its checkpoints back in place first
        recover_model_folder(run_dir / "asr")
    barrier(placement, "recover the model folder")
    resume_from = resolve_resume(acfg, ckpt_root)
    # Another run's checkpoint: this run's folder starts its own series, as a fresh run's does.
    foreign = resume_from is not None and resume_from.parent.resolve() != ckpt_root.resolve()
    if (resume_from is None or foreign) and placement.is_main:
        old = remove_old_checkpoints(ckpt_root)
        if old is not None:
            print(f"[asr] starting afresh (asr.resume={acfg.resume}): removed the {old} checkpoint(s) of an earlier run "
                  f"from {ckpt_root}", flush=True)
    elif resume_from is not None and placement.is_main:  # this run's own checkpoint, perhaps not its latest
        later = remove_later_checkpoints(ckpt_root, resume_from)
        if later:
            print(f"[asr] continuing from {resume_from.name}: removed the later checkpoint(s) of steps "
                  f"{', '.join(map(str, later))}, which this run replaces", flush=True)
    processor = _processor(acfg, resume_from, train_set)
    seed_everything(int(cfg.seed))  # the fresh model's initial weights depend only on the seed
    model = build_model(acfg, processor)
    train_set, unalignable = _drop_unalignable(train_set, model, placement)
    check_masks_fit(model)
    state = _fresh_state()
    if resume_from is not None:
        state = load_checkpoint(resume_from, model)
        if placement.is_main:
            print(f"[asr] resuming from {resume_from} (step {state['step']})", flush=True)
            _warn_changed_settings(state, cfg)
            if foreign:
                adopt_best_checkpoint(resume_from, state["best_step"], ckpt_root)
    state["seed"], state["max_steps"] = int(cfg.seed), int(acfg.max_steps)
    model.to(placement.device).train()
    # Opt-in speed patches of this instance (same results); the weights and the saved model stay transformers' own.
    configure_positional_conv(model, acfg.cpu_fft_positional_conv, placement.device, placement.amp_dtype, bool(acfg.compile))
    if acfg.skip_waveform_gradient:
        skip_waveform_gradient(model)
    longest_s = longest_play(train_set.durations, train_set.sources, acfg.get("splice"), str(dataset_path))
    batch_seconds = resolve_batch_seconds(acfg, model, placement, longest_s, len(processor.tokenizer))
    saved = float(state.get("max_batch_seconds") or 0) if resume_from is not None else 0.0
    if acfg.max_batch_seconds == "auto" and 0 < saved <= batch_seconds * (1 + float(acfg.auto_batch.margin) / 2):
        # The probe measures free memory, so it rarely gives the same float twice: the checkpoint's
        # size (within half the memory margin of what the probe found) keeps the resumed epoch's
        # batches those of the run it continues.
        batch_seconds = saved
        if placement.is_main:
            print(f"[asr] max_batch_seconds=auto: resuming with the checkpoint's {saved:g} s per batch", flush=True)
    oversized = over_budget_warning(train_set.durations, longest_s, batch_seconds)
    if oversized and placement.is_main:
        print(f"[asr] warning: {oversized}", flush=True)
    buckets = compile_buckets(acfg, train_set.durations, samples_per_frame(model), longest_s) if acfg.compile else None
    shape = epoch_shape(acfg, buckets)
    balance = acfg.get("word_balance")
    if resume_from is not None:
        _restart_epoch_if_batches_changed(state, placement, batch_seconds, shape)
    state["world_size"], state["max_batch_seconds"], state["epoch_shape"] = placement.world_size, batch_seconds, shape
    ddp_model = _wrap_ddp(model, placement)
    params, optimizer = _optimizer(acfg, model)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.precision == "fp16")
    if resume_from is not None:
        optimizer.load_state_dict(state.pop("optimizer"))
        load_scaler(scaler, state.pop("scaler"))
    return TrainingRun(
        cfg=cfg, placement=placement, tracker=tracker, dataset_path=dataset_path, out_dir=run_dir / "asr",
        ckpt_root=ckpt_root, splits=splits, train_set=train_set, unalignable=unalignable,
        val_loader=clip_loader(val_set, eval_batches(val_set.durations, batch_seconds), processor, None, 0, workers),
        processor=processor, model=model, ddp_model=ddp_model,
        step_model=compiled_model(ddp_model, model) if acfg.compile else ddp_model,
        params=params, optimizer=optimizer, scaler=scaler, state=state, batch_seconds=batch_seconds,
        plays=balanced_plays(source_plays(acfg.source_weights, train_set.sources, str(dataset_path)), balance,
                             train_set.sources, train_set.split["text"] if balance else None, str(dataset_path)),
        buckets=buckets, workers=workers,
        budget_s=float(acfg.max_train_minutes) * 60 if acfg.max_train_minutes is not None else math.inf,
        started=started,
    )


def epoch_shape(acfg: DictConfig, buckets: tuple[int, ...] | None) -> dict[str, Any]:
    """The settings besides the process count and batch size that decide an epoch's list of batches
    (`epoch_loader`): which clips it plays, the speed each is played at, how plays are spliced,
    grouped and padded. Saved with each checkpoint, so a resume can tell it would replay another list."""
    augment = acfg.augment
    prob = float(augment.prob or 0)
    splice, weights = acfg.get("splice"), acfg.source_weights
    return {
        "asr.augment.prob": prob,
        "asr.augment.speeds": [float(s) for s in (augment.speeds or [1.0])] if prob > 0 else None,  # unused when off
        "asr.source_weights": OmegaConf.to_container(weights) if weights else None,
        "asr.splice": OmegaConf.to_container(splice) if splice else None,
        "asr.word_balance": OmegaConf.to_container(acfg.word_balance) if acfg.get("word_balance") else None,
        "asr.bucket_batches": int(acfg.bucket_batches),
        "asr.compile_buckets": list(buckets) if buckets else None,
    }


def _restart_epoch_if_batches_changed(
    state: dict[str, Any], placement: Placement, batch_seconds: float, shape: dict[str, Any],
) -> None:
    """A resume replays its epoch's batches from the micro-batch it stopped at; those batches depend on
    the processes sharing them, on the batch size (`auto` may pick another on another GPU) and on
    the settings `epoch_shape` lists. Where one changed, the same position in another list of
    batches would play some clips twice and skip others, so the epoch starts over, and the log says
    so. A checkpoint made before a setting was saved says nothing about it, and is not compared on it."""
    before = {"processes": state.get("world_size"), "asr.max_batch_seconds": state.get("max_batch_seconds")}
    before = {k: v for k, v in before.items() if v is not None} | state.get("epoch_shape", {})
    now = {"processes": placement.world_size, "asr.max_batch_seconds": batch_seconds, **shape}
    changed = [f"{k} {_shown(before[k])} -> {_shown(now[k])}" for k in now if k in before and before[k] != now[k]]
    if changed and state.get("micro"):
        if placement.is_main:
            print(f"[asr] warning: resuming with other batches than the checkpoint's ({', '.join(changed)}): "
                  f"epoch {state['epoch']} starts over from its first batch", flush=True)
        state["micro"] = 0


def _shown(value: Any) -> str:
    """A setting as the log line shows it: numbers without trailing zeros (12, not 12.0)."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def load_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """The loss scale of a checkpoint, where there is one to continue: a run in bf16 or fp32 saved a
    disabled scaler's empty state, which an fp16 run (another GPU, `trainer.precision=fp16`) cannot
    load; it starts from a fresh scale instead. An fp16 checkpoint's scale means nothing to a
    run without loss scaling."""
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)


def _warn_changed_settings(state: dict[str, Any], cfg: DictConfig) -> None:
    """Say when a resumed run's seed or max_steps differ from its checkpoint's: the batches (seed) or the
    learning-rate schedule (max_steps) then differ from the run it continues. Raising max_steps to train
    longer is a fair reason, so this warns rather than refuses."""
    for key, now in (("seed", int(cfg.seed)), ("asr.max_steps", int(cfg.asr.max_steps))):
        before = state.get(key.split(".")[-1])
        if before is not None and before != now:
            print(f"[asr] warning: resuming with {key}={now} but the checkpoint was made with {before}; "
                  "the run will not match an uninterrupted one", flush=True)


def _load_splits(dataset_path: Path) -> Any:
    """The saved DatasetDict, which must hold non-empty train and validation splits."""
    splits = open_saved(dataset_path)
    for name in ("train", "validation"):
        require(splits, dataset_path, name, ("audio", "text"), "the ASR stage")
    return splits


def _processor(acfg: DictConfig, resume_from: Path | None, train_set: ClipDataset) -> Any:
    """The resumed checkpoint's processor, or a new one whose vocabulary is the training transcripts' characters."""
    from transformers import Wav2Vec2Processor

    if resume_from is not None:
        return Wav2Vec2Processor.from_pretrained(str(resume_from))
    with tempfile.TemporaryDirectory() as tmp:
        return make_processor(build_vocab(train_set.split["text"]), Path(tmp), uses_attention_mask(acfg))


def _optimizer(acfg: DictConfig, model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """AdamW over the trainable parameters (no weight decay for biases and norms), and those parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": float(acfg.weight_decay)},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=float(acfg.learning_rate), betas=tuple(acfg.adam_betas),
        fused=True,  # one kernel instead of a loop over ~80 tensors: 9 -> 1.6 ms of a ~150 ms CPU step
    )
    return params, optimizer


def _train_loop(run: TrainingRun) -> str:
    """Epochs of micro-batches until `asr.max_steps` or the time budget; says which one stopped it."""
    state = run.state
    if state["step"] < int(run.acfg.max_steps) and state["train_seconds"] >= run.budget_s:
        # A run resumed from the checkpoint its time budget ended at (killed while the model folder
        # was written): the budget is spent, so it ends there, as the run it continues did, instead
        # of training one more step past the budget and validating it.
        return "max_train_minutes"
    progress = Progress(loop_start=time.time() - state["train_seconds"])
    _set_lr(run.optimizer, run.acfg, state["step"], state["train_seconds"], run.budget_s)
    profiler = start_profiler(run.cfg.trainer.profile, run.out_dir / "profile") if run.placement.is_main else None
    stopped_by = "max_steps"
    while state["step"] < int(run.acfg.max_steps):
        for batch in epoch_loader(run):
            accumulate(run, progress, batch)
            if progress.in_accum < run.accum:
                continue
            progress.in_accum = 0
            if not optimizer_step(run, progress):
                continue
            if profiler is not None:
                profiler.step()
            stop = _after_step(run, progress)
            if stop is not None:
                stopped_by = stop
                break
        else:
            state["epoch"] += 1
            state["micro"] = 0
            continue
        break
    if profiler is not None:
        profiler.stop()
    return stopped_by


def epoch_loader(run: TrainingRun) -> torch.utils.data.DataLoader:
    """This epoch's micro-batches for this process, from the one a resumed run stopped at.

    The augmentation plan and the batches depend only on (seed, epoch, rank), so a resume replays them."""
    acfg, state, placement = run.acfg, run.state, run.placement
    epoch_seed = run.seed * 1000 + state["epoch"]
    clips = played_clips(len(run.train_set), run.seed, state["epoch"], run.plays)  # one entry per play
    if not clips:  # weights below 1 are shares drawn per epoch: small enough, an epoch draws no clip at all
        raise PipelineError(f"asr.source_weights={dict(acfg.source_weights)}: epoch {state['epoch']} plays none of the "
                            f"{len(run.train_set)} training clips of {run.dataset_path}; raise the weights")
    splice = acfg.get("splice")
    plays = Plays(run.train_set, spliced_plays(clips, run.train_set.sources, splice, run.seed, state["epoch"], str(run.dataset_path)),
                  float(splice.gap_s) if splice else 0.0)
    plan = plan_augmentation(len(plays), acfg.augment, epoch_seed)  # per play; None when augmentation is off
    batches = epoch_batches(
        bucketed_durations(played_durations(plays.durations(), plan), run.buckets), run.batch_seconds,
        int(acfg.bucket_batches), run.seed, state["epoch"], placement.rank, placement.world_size,
    )
    if not batches:
        raise PipelineError(f"{run.dataset_path}: the train split gives fewer batches of asr.max_batch_seconds="
                            f"{run.batch_seconds:g} than the {placement.world_size} processes that share them; lower "
                            "asr.max_batch_seconds, or train with fewer processes")
    return clip_loader(plays, batches[state["micro"]:], run.processor, acfg.augment, epoch_seed,
                       run.workers, plan, run.buckets, prefetch=run.accum)


def accumulate(run: TrainingRun, progress: Progress, batch: dict[str, Any]) -> None:
    """Forward and backward of one micro-batch, its random draws seeded by (seed, epoch, micro-batch, rank)."""
    state, placement = run.state, run.placement
    seed_everything(((run.seed * 1_000_003 + state["epoch"]) * 1_000_003 + state["micro"]) * 101 + placement.rank)
    state["micro"] += 1
    progress.in_accum += 1
    syncing = progress.in_accum == run.accum
    progress.pending_seconds += float(batch["audio_seconds"])
    # non_blocking: from pinned memory the copy overlaps the previous step's kernels
    inputs = {k: batch[k].to(placement.device, non_blocking=True) for k in ("input_values", "attention_mask", "labels") if k in batch}
    if run.buckets is not None:  # the clip count and transcript length vary; the padded length is a bucket's
        for key, value in inputs.items():
            torch._dynamo.maybe_mark_dynamic(value, 0)
        torch._dynamo.maybe_mark_dynamic(inputs["labels"], 1)
    # Accumulating micro-batches skip DDP's gradient all-reduce; the last one of a step does it.
    sync_ctx = run.ddp_model.no_sync() if placement.distributed and not syncing else nullcontext()
    with sync_ctx:
        with torch.autocast(placement.device.type, dtype=placement.amp_dtype or torch.float32, enabled=placement.amp_dtype is not None):
            if run.buckets is not None:
                loss = compiled_loss(run.step_model, run.model, inputs) / run.accum
            else:
                with nullcontext() if time_mask_fits(run.model, inputs["input_values"]) else no_time_mask(run.model):
                    loss = run.step_model(**inputs).loss / run.accum
        finite = all_agree(bool(torch.isfinite(loss).item()), placement)
        if finite and not progress.bad_accum:
            run.scaler.scale(loss).backward()
            progress.log_loss += float(loss.detach()) * run.accum
            progress.log_n += 1
        else:
            progress.bad_accum = True


def optimizer_step(run: TrainingRun, progress: Progress) -> bool:
    """Clip and apply the accumulated gradients; says whether the step was taken.

    A non-finite loss or gradient skips the update and is counted; too many in a row mean the run
    has diverged, and it stops with an error."""
    state, placement = run.state, run.placement
    if not progress.bad_accum:
        run.scaler.unscale_(run.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, float(run.acfg.max_grad_norm))
        progress.bad_accum = placement.precision != "fp16" and not all_agree(bool(torch.isfinite(grad_norm).item()), placement)
    if progress.bad_accum:
        run.optimizer.zero_grad(set_to_none=True)
        state["nonfinite_steps"] += 1
        state["nonfinite_streak"] += 1
        progress.bad_accum = False
        if state["nonfinite_streak"] >= int(run.acfg.max_nonfinite_steps):
            raise PipelineError(
                f"asr: {state['nonfinite_streak']} optimizer steps in a row had a non-finite loss or gradient "
                f"(at step {state['step']}); lower asr.learning_rate, use trainer.precision=fp32, or check the data"
            )
        return False
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    finite = torch.isfinite(grad_norm)  # fp16: an overflow the scaler skipped is no step's norm
    progress.log_grad_norm = progress.log_grad_norm + torch.where(finite, grad_norm.detach(), 0.0)
    progress.log_clipped = progress.log_clipped + (finite & (grad_norm > float(run.acfg.max_grad_norm))).int()
    progress.log_steps = progress.log_steps + finite.int()
    state["step"] += 1
    state["nonfinite_streak"] = 0
    return True


def _after_step(run: TrainingRun, progress: Progress) -> str | None:
    """The schedule, the log line and, when due, validation and a checkpoint; what stops the run now, or None."""
    acfg, state, placement = run.acfg, run.state, run.placement
    step, max_steps = state["step"], int(acfg.max_steps)
    lr = _set_lr(run.optimizer, acfg, step, time.time() - progress.loop_start, run.budget_s)
    if step % int(run.cfg.trainer.log_every) == 0 and progress.log_n and placement.is_main:
        metrics = {"asr/train_loss": progress.log_loss / progress.log_n, "asr/lr": lr}
        steps = int(progress.log_steps)
        if steps:  # how hard asr.max_grad_norm bites: the mean norm and the share of steps clipped
            metrics["asr/grad_norm"] = float(progress.log_grad_norm) / steps
            metrics["asr/clipped"] = int(progress.log_clipped) / steps
        run.tracker.log_metrics(metrics, step=step)
        norm = f" grad norm {metrics['asr/grad_norm']:.2f}" if "asr/grad_norm" in metrics else ""
        print(f"[asr] step {step} loss {metrics['asr/train_loss']:.3f}{norm} ({time.time() - progress.loop_start:.0f}s)", flush=True)
        progress.log_loss, progress.log_n = 0.0, 0
        progress.log_grad_norm, progress.log_clipped, progress.log_steps = 0.0, 0, 0
    out_of_time = any_says(time.time() - progress.loop_start >= run.budget_s, placement)
    if step % max(int(acfg.eval_every), 1) == 0 or step >= max_steps or out_of_time:
        state["audio_seconds"] += total(progress.pending_seconds, placement)
        progress.pending_seconds = 0.0
        state["train_seconds"] = time.time() - progress.loop_start
        _evaluate_and_save(run, progress.loop_start)
    if out_of_time:
        return "max_train_minutes"
    return "max_steps" if step >= max_steps else None


def _end(run: TrainingRun, stopped_by: str) -> dict[str, Any]:
    """The character LM, the best checkpoint as the model folder, and the stage's metrics."""
    if run.state["step"] == 0 or run.state["best_step"] is None:
        raise PipelineError("asr: training ended before any validated step; raise asr.max_steps or asr.max_train_minutes")
    # The new model folder is written beside the old one and swapped in when complete (an earlier
    # run's LM, like its other files, goes with the old folder: eval.decoder=auto would still use it).
    staged = stage_model_folder(run.out_dir) if run.placement.is_main else None
    if staged is not None and run.acfg.lm_order is not None:
        # Seconds of work, so it is built fresh rather than checkpointed; see pipeline/asr/lm.py.
        tok = run.processor.tokenizer
        write_char_lm(staged / LM_DIR, run.splits["train"]["text"], tok.get_vocab(), tok.word_delimiter_token, int(run.acfg.lm_order))
    metrics = _save_best(run, stopped_by, staged)
    barrier(run.placement)
    return metrics


def _set_lr(optimizer: torch.optim.Optimizer, acfg: DictConfig, step: int, elapsed: float, budget_s: float) -> float:
    """Warmup, then decay over the run's progress: the larger of steps done and time budget used.

    Decaying by time as well means a run cut short by `max_train_minutes` on a slow or shared
    machine still ends at a low learning rate instead of being stopped mid-schedule. Without a
    time budget the rate depends on the step alone, so resumed runs match uninterrupted ones.
    """
    warmup = int(acfg.warmup_steps)
    progress = min(1.0, max(step / max(int(acfg.max_steps), 1), elapsed / budget_s if math.isfinite(budget_s) else 0.0))
    factor = {"linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress)), "constant": 1.0}.get(str(acfg.lr_schedule))
    if factor is None:
        raise PipelineError(f"asr.lr_schedule={acfg.lr_schedule}: use linear, cosine or constant")
    if warmup > 0 and step < warmup:
        factor = min(factor, (step + 1) / warmup)
    lr = float(acfg.learning_rate) * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def start_profiler(pcfg: DictConfig, folder: Path) -> torch.profiler.profile | None:
    """torch.profiler over optimizer steps (`trainer.profile`, on with debug=profile), or None.

    After `wait` steps and `warmup` more, `active` steps are recorded; their trace (trace.json, for
    https://ui.perfetto.dev) and the costliest operators (top_ops.txt) are written to `folder`.
    """
    if not pcfg.enabled:
        return None
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = torch.cuda.is_available()

    def save(prof: profile) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30)
        (folder / "top_ops.txt").write_text(table + "\n")
        if cuda:  # the share of the profiled steps' wall time in which a GPU kernel ran
            from torch.autograd import DeviceType

            events = prof.events()
            steps = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("ProfilerStep#")]
            if not steps:  # some torch releases leave the step markers out of events(): the window's extent
                steps = [(min(e.time_range.start for e in events), max(e.time_range.end for e in events))] if events else []
            kernels = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]
            share = busy_share(kernels, steps)
            (folder / "gpu_busy.json").write_text(json.dumps({"gpu_busy_share": share, "steps": len(steps)}) + "\n")
            print(f"[asr] GPU busy {share:.1%} of the profiled steps' time", flush=True)
        print(f"[asr] profile of {int(pcfg.active)} steps written to {folder}", flush=True)

    profiler = profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
        schedule=schedule(wait=int(pcfg.wait), warmup=int(pcfg.warmup), active=int(pcfg.active), repeat=1),
        on_trace_ready=save,
    )
    profiler.start()
    return profiler


def busy_share(busy: list[tuple[float, float]], steps: list[tuple[float, float]]) -> float:
    """Share of the steps' wall time (their first start to last end) covered by the `busy` intervals (merged)."""
    if not steps:
        return float("nan")
    start, end = min(s for s, _ in steps), max(e for _, e in steps)
    covered, reach = 0.0, start
    for s, e in sorted(busy):
        s, e = max(s, reach), min(e, end)
        if e > s:
            covered += e - s
            reach = e
    return covered / max(end - start, 1e-9)


def _fresh_state() -> dict[str, Any]:
    return {
        "step": 0, "epoch": 0, "micro": 0, "audio_seconds": 0.0, "train_seconds": 0.0,
        "nonfinite_steps": 0, "nonfinite_streak": 0, "best_wer": None, "best_step": None, "history": [],
    }


def _wrap_ddp(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    if not placement.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [placement.device.index] if placement.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=has_unused_weights(model))


def has_unused_weights(model: torch.nn.Module) -> bool:
    """Whether some weights may get no gradient in a step, which DDP must then look for every step:
    `masked_spec_embed` without time masking, and whole layers that LayerDrop skips. Read from the
    built model: a pretrained checkpoint (asr=base, asr=large) brings its own LayerDrop, which
    `asr.model_config` does not describe."""
    config = model.config
    no_time_masking = not getattr(config, "apply_spec_augment", True) or float(getattr(config, "mask_time_prob", 0) or 0) <= 0
    return no_time_masking or float(getattr(config, "layerdrop", 0) or 0) > 0


def clip_loader(
    dataset: ClipDataset | Plays, batches: list[list[int]], processor: Any, augment_cfg: DictConfig | None, seed: int, workers: int,
    plan: list[float | None] | None = None, buckets: tuple[int, ...] | None = None, prefetch: int = 1,
) -> torch.utils.data.DataLoader:
    """Collated batches of `dataset` in the given order (the sampler decided it), for training or validation.

    Workers keep two optimizer steps of micro-batches (`prefetch` per step) ready between them, in
    pinned memory on a GPU machine so the copy to the device runs asynchronously."""
    extra = {"prefetch_factor": max(2, math.ceil(2 * prefetch / workers))} if workers > 0 else {}
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=CTCCollator(processor, augment_cfg, seed, plan, buckets), num_workers=workers,
        persistent_workers=False, pin_memory=torch.cuda.is_available(), **extra,
    )


def resolve_batch_seconds(acfg: DictConfig, model: torch.nn.Module, placement: Placement, longest_s: float, vocab_size: int) -> float:
    """`asr.max_batch_seconds`, or for `auto` the largest batch a training step fits in the GPU's memory.

    The probe (pipeline.asr.model.probe_batch_seconds) takes a few steps' time at start-up; every
    process of a DDP run probes its own GPU and they agree on the smallest answer. Where nothing
    can be probed (the CPU) `asr.auto_batch.fallback_seconds` is used, and the log says so."""
    if acfg.max_batch_seconds != "auto":
        return float(acfg.max_batch_seconds)
    auto = acfg.auto_batch
    if placement.device.type != "cuda":
        seconds = float(auto.fallback_seconds)
        if placement.is_main:
            print(f"[asr] max_batch_seconds=auto: no GPU to probe on {placement.device}; using "
                  f"asr.auto_batch.fallback_seconds={seconds:g}", flush=True)
        return seconds
    speeds = [float(s) for s in (acfg.augment.speeds or [1.0])] if float(acfg.augment.prob or 0) > 0 else [1.0]
    longest = longest_s / min(speeds + [1.0])  # the longest play (sampler.longest_play), slowed
    free, total_bytes = torch.cuda.mem_get_info(placement.device)
    budget = int(total_bytes * (1.0 - float(auto.margin))) - (total_bytes - free - torch.cuda.memory_allocated(placement.device))
    seconds = probe_batch_seconds(model, placement.device, placement.amp_dtype, longest, budget, float(auto.max_seconds), vocab_size)
    if placement.distributed:
        import torch.distributed as dist

        box = torch.tensor([seconds], dtype=torch.float64, device=placement.device)
        dist.all_reduce(box, op=dist.ReduceOp.MIN)
        seconds = float(box.item())
    if placement.is_main:
        print(f"[asr] max_batch_seconds=auto: {seconds:.0f} padded seconds per batch and process fit "
              f"{(1 - float(auto.margin)):.0%} of {total_bytes / 2**30:.0f} GiB ({placement.precision}, longest play {longest:.1f} s)", flush=True)
    return seconds


def _evaluate_and_save(run: TrainingRun, loop_start: float) -> None:
    """Validate on rank 0, keep the best/last checkpoints; the other ranks wait.

    The history entry keeps the training seconds read before validating (throughput leaves
    validation out); the state, saved and in memory, counts the validation and the checkpoint's
    write too (`save_checkpoint`), which is what the time budget of a run resumed from it starts at."""
    state, placement, acfg = run.state, run.placement, run.acfg
    started = time.time()
    if placement.is_main:
        scores = evaluate_clips(run.model, run.processor, run.val_loader, placement.amp_dtype)
        step = state["step"]
        entry = {"step": step, "val_loss": scores["loss"], "val_wer": scores["wer"], "val_cer": scores["cer"],
                 "audio_hours": state["audio_seconds"] / 3600, "train_seconds": state["train_seconds"]}
        if acfg.compile:  # graphs compiled so far in this process: flat once every bucket has been seen
            from torch._dynamo.utils import counters

            entry["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
        if _better(scores, state):
            state["best_wer"], state["best_step"] = scores["wer"], step
        state["history"].append(entry)
        run.tracker.log_metrics({"asr/val_loss": scores["loss"], "asr/val_wer": scores["wer"], "asr/val_cer": scores["cer"]}, step=step)
        print(f"[asr] step {step} val_loss {scores['loss']:.3f} val_wer {scores['wer']:.3f} val_cer {scores['cer']:.3f}", flush=True)
        run.ckpt_root.mkdir(parents=True, exist_ok=True)
        full = {**state, "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict()}

        def clock() -> float:
            # train_seconds is wall time and so includes validation: throughput over a span of steps
            # leaves this out (bench/asr_throughput.py). Read just before the state file is written,
            # so that a run resumed from this checkpoint has it too.
            now = time.time()
            entry["eval_seconds"] = now - started
            return now - loop_start

        save_checkpoint(run.ckpt_root, step, run.model, run.processor, full, clock)
        state["train_seconds"] = full["train_seconds"]
        prune_checkpoints(run.ckpt_root, int(acfg.keep_last), state["best_step"])
    # Every rank needs the same best/history to save the same state if it becomes rank 0's copy.
    if placement.distributed:
        import torch.distributed as dist

        box = [state if placement.is_main else None]
        dist.broadcast_object_list(box, src=0)
        state.update(box[0])
    barrier(placement)


def _better(scores: dict[str, float], state: dict[str, Any]) -> bool:
    """Lower validation WER; on a tie (early runs sit at WER 1.0 for several validations) lower loss.

    A validation split without a transcribed word has no WER (NaN, `evaluate_clips`): every
    validation ties, so the loss decides. Compared as floats, NaN equals nothing and the first
    validated step stayed the best however much lower the later losses were."""
    if state["best_wer"] is None or scores["wer"] < state["best_wer"]:
        return True
    best = next(h for h in state["history"] if h["step"] == state["best_step"])
    tied = scores["wer"] == state["best_wer"] or (math.isnan(scores["wer"]) and math.isnan(state["best_wer"]))
    return tied and scores["loss"] < best["val_loss"]


def _drop_unalignable(train_set: ClipDataset, model: Any, placement: Placement) -> tuple[ClipDataset, int]:
    """Leave out clips too short for their transcript, and say how many.

    CTC needs one output frame per label plus a blank between repeated characters; a clip with
    fewer frames has no valid alignment, and its infinite loss is what turns training into NaNs.
    The stored `duration` column gives the frame counts without decoding any audio.
    """
    samples = torch.tensor([round(d * SAMPLING_RATE) for d in train_set.durations], dtype=torch.long)
    frames = output_lengths(model, samples).tolist()
    texts = train_set.split["text"]
    needed = [len(t) + sum(a == b for a, b in zip(t, t[1:])) for t in (x or "" for x in texts)]
    keep = [i for i, (n, f) in enumerate(zip(needed, frames)) if n <= f]
    dropped = len(texts) - len(keep)
    if dropped == 0:
        return train_set, 0
    if not keep:
        raise PipelineError("asr: every training clip is shorter than its transcript needs for CTC; check the audio/transcript pairing")
    if placement.is_main:
        print(f"[asr] left out {dropped} training clip(s) with fewer output frames than transcript characters", flush=True)
    return ClipDataset(train_set.split.select(keep), train_set.cache_mb), dropped


def check_masks_fit(model: Any) -> None:
    """A SpecAugment feature mask wider than the model's features fails every training step
    (transformers refuses it); said by key before the first one. (A time mask longer than a batch's
    frames is left out of that batch instead: `time_mask_fits`.)"""
    config = model.config
    if (getattr(config, "apply_spec_augment", True) and float(config.mask_feature_prob or 0) > 0
            and int(config.mask_feature_length) > int(config.hidden_size)):
        raise PipelineError(f"asr.spec_augment.mask_feature_length={config.mask_feature_length} is wider than the model's "
                            f"{config.hidden_size} features; set it to {config.hidden_size} or less")


def _save_best(run: TrainingRun, stopped_by: str, staged: Path | None) -> dict[str, Any]:
    """Write the best checkpoint's weights, the processor, asr_metrics.json and the card into `staged`
    (rank 0; None on the others) and swap it in as the model folder."""
    state, placement, model = run.state, run.placement, run.model
    best = next(h for h in state["history"] if h["step"] == state["best_step"])
    metrics = {
        "val_wer": best["val_wer"], "val_cer": best["val_cer"], "val_loss": best["val_loss"],
        "best_step": state["best_step"], "steps": state["step"], "epochs": state["epoch"],
        "audio_hours_seen": state["audio_seconds"] / 3600, "train_wall_seconds": state["train_seconds"],
        "stage_wall_seconds": time.time() - run.started, "stopped_by": stopped_by,
        "nonfinite_steps": state["nonfinite_steps"], "unalignable_clips": run.unalignable,
        "world_size": placement.world_size, "max_batch_seconds": state.get("max_batch_seconds"),
        "device": str(placement.device), "precision": placement.precision, "host": host_record(),
        "num_parameters": sum(p.numel() for p in model.parameters()), "history": state["history"],
        "model_dir": str(run.out_dir),
    }
    if placement.is_main:
        best_dir = run.ckpt_root / f"step-{state['best_step']:06d}"
        if not (best_dir / "model.safetensors").is_file():  # never a model folder without its model
            raise PipelineError(f"asr: the best checkpoint {best_dir} has no model.safetensors; resume from it with "
                                "asr.resume=<its run folder>, or train afresh (asr.resume=never)")
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            if (best_dir / name).exists():
                shutil.copy2(best_dir / name, staged / name)
        run.processor.save_pretrained(str(staged))
        (staged / "asr_metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(staged, "asr", run.dataset_path, {
            "steps (best)": f"{state['step']} ({state['best_step']})", "epochs": state["epoch"],
            "audio hours heard": metrics["audio_hours_seen"], "training minutes": state["train_seconds"] / 60,
            "stopped by": stopped_by, "parameters": metrics["num_parameters"], "processes": placement.world_size,
            "device, precision": f"{placement.device}, {placement.precision}"},
            {"validation": {"greedy WER": best["val_wer"], "greedy CER": best["val_cer"]}})
        swap_in_model_folder(staged, run.out_dir)
        run.tracker.log_summary({f"asr/{k}": v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        print(f"[asr] best step {state['best_step']}: val_wer {best['val_wer']:.3f} val_cer {best['val_cer']:.3f}; "
              f"{state['step']} steps in {state['train_seconds'] / 60:.1f} min ({stopped_by})", flush=True)
    return metrics
