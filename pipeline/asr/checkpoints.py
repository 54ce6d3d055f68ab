"""Checkpoints under `<run>/asr/checkpoints/step-NNNNNN/`: model, processor and the loop's state.

A checkpoint is written under a temporary name and renamed when complete, so a run killed while
saving never leaves a half-written checkpoint that `resume=auto` would pick up.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file

from pipeline.runtime import PipelineError

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_steps(root: Path) -> dict[int, Path]:
    """Complete checkpoints in `root`, by step."""
    if not root.exists():
        return {}
    found = {}
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).exists():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def save_checkpoint(root: Path, step: int, model: Any, processor: Any, state: dict[str, Any],
                    elapsed: Callable[[], float] | None = None) -> Path:
    """Write `step-NNNNNN/` whole: the model, the processor, then the loop's `state`.

    `elapsed` (the run's wall-clock training seconds so far) is read after the weights and the
    processor are written, just before the state file, and set as `state["train_seconds"]` (in the
    caller's dict too): a run resumed from here then counts against `asr.max_train_minutes` the time
    the run it continues spent validating and writing this checkpoint, all but the state file's own
    write. Read before them, each resume gave the run that time again."""
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    if elapsed is not None:
        state["train_seconds"] = elapsed()
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def prune_checkpoints(root: Path, keep_last: int, best_step: int | None) -> None:
    """Delete all but the newest `keep_last` checkpoints and the best one."""
    steps = list(checkpoint_steps(root).items())
    keep = {s for s, _ in steps[-max(keep_last, 1):]} | ({best_step} if best_step is not None else set())
    for step, path in steps:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)


def resolve_resume(acfg: DictConfig, root: Path) -> Path | None:
    """The checkpoint to continue from: `never`, `auto` (latest in this run) or a given folder."""
    resume = str(acfg.resume)
    if resume in ("never", "false", "False", "none", "None"):
        return None
    if resume == "auto":
        steps = checkpoint_steps(root)
        return steps[max(steps)] if steps else None
    path = Path(resume)
    if path.is_dir() and not (path / STATE_FILE).exists():
        steps = checkpoint_steps(path / "asr" / "checkpoints") or checkpoint_steps(path / "checkpoints") or checkpoint_steps(path)
        path = steps[max(steps)] if steps else path
    if not (path / STATE_FILE).exists():
        raise PipelineError(f"asr.resume={resume}: no checkpoint ({STATE_FILE}) there; use auto, never or a step-N folder")
    return path


def adopt_best_checkpoint(resume_from: Path, best_step: int | None, root: Path) -> None:
    """Copy the best checkpoint of the run `resume_from` belongs to into this run's `root`.

    The resumed state names that run's best step; unless this run beats it, the model folder is
    made from it, and this run's folder must hold it (its checkpoints are what the erasure finds).
    Copied under a temporary name and renamed when complete, as `save_checkpoint` writes: a run
    killed mid-copy left a `step-N` folder with the state file but not all the weights, which
    `resume=auto` then took as this run's latest checkpoint and which was never copied again."""
    if best_step is None:
        return
    source = resume_from.parent / f"step-{best_step:06d}"
    if not (source / "model.safetensors").is_file():
        raise PipelineError(f"asr.resume={resume_from}: its run's best checkpoint {source} is missing (pruned or "
                            "moved); resume from a folder that holds it, or train afresh (asr.resume=never)")
    target = root / source.name
    if target.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{source.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    os.replace(tmp, target)


def remove_old_checkpoints(root: Path) -> int | None:
    """Delete another run's checkpoints before a run that starts afresh; how many there were (None: no folder).

    Left in place they would be pruned together with the new run's by step number (deleting the new
    run's newest instead of the old ones), and a later `resume=auto` would continue the old run. They
    are removed rather than moved aside: the registry's copy and the erasure audit know checkpoints
    only as `asr/checkpoints/*`, so a renamed folder would escape both."""
    if not root.exists() or not any(root.iterdir()):
        return None
    count = len(checkpoint_steps(root))
    shutil.rmtree(root)
    return count


def remove_later_checkpoints(root: Path, resume_from: Path) -> list[int]:
    """Delete this run's checkpoints after `resume_from` (one of them), before a run continues from it;
    the steps deleted.

    They belong to the continuation the run now abandons (`asr.resume=<an earlier step-N>`), and for the
    reasons `remove_old_checkpoints` gives they cannot stay: pruning by step number deleted each new
    checkpoint as soon as it was written and kept these, and `resume=auto` after a kill continued them."""
    steps = checkpoint_steps(root)
    resumed = next((step for step, path in steps.items() if path.resolve() == resume_from.resolve()), None)
    if resumed is None:
        return []
    later = [step for step in steps if step > resumed]
    for step in later:
        shutil.rmtree(steps[step])
    return later


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights into `model` and return the loop state saved with them."""
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    except RuntimeError as err:  # size mismatch or missing/unexpected keys: another architecture
        raise PipelineError(
            f"checkpoint {path} was made with another asr.model_config (or asr.model_name_or_path); "
            "use asr.resume=never or a new run folder"
        ) from err
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


# What `<run>/asr/` holds besides the model: the run's checkpoints and profiler traces, which a new
# model folder takes over from the one it replaces.
RUN_ENTRIES = ("checkpoints", "profile")


def _staged(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.new")


def _replaced(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def stage_model_folder(out_dir: Path) -> Path:
    """An empty sibling folder to write the new model folder in, before `swap_in_model_folder` puts it
    in place of `out_dir`. Written over the old folder file by file, a run killed part-way left new
    weights beside the earlier model's processor, metrics and card, and files the new model does
    not write (an earlier `generation_config.json`, say) stayed for good."""
    recover_model_folder(out_dir)
    staged = _staged(out_dir)
    staged.mkdir(parents=True)
    return staged


def swap_in_model_folder(staged: Path, out_dir: Path) -> None:
    """Put the complete folder `staged` in place of `out_dir` by renames, then move the run's own
    entries (`RUN_ENTRIES`) over from the folder it replaced. A kill in between leaves the earlier
    folder whole under a hidden name, which `recover_model_folder` puts back or finishes with."""
    old = _replaced(out_dir)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staged, out_dir)
    recover_model_folder(out_dir)


def recover_model_folder(out_dir: Path) -> None:
    """Finish a model folder replacement that a kill interrupted, before anything reads the folder.

    A staged folder that was not yet swapped in is dropped (the run writes it again). Killed between
    the two renames of `swap_in_model_folder`, `out_dir` is missing: the earlier folder, with its
    checkpoints, is put back. Killed after them, the run's entries still in the earlier folder are
    moved into the new one, and the rest of the earlier folder is deleted."""
    shutil.rmtree(_staged(out_dir), ignore_errors=True)
    old = _replaced(out_dir)
    if not old.exists():
        return
    if not out_dir.exists():
        os.replace(old, out_dir)
        return
    for name in RUN_ENTRIES:
        if (old / name).exists() and not (out_dir / name).exists():
            os.replace(old / name, out_dir / name)
    shutil.rmtree(old)
