"""Process-wide set-up every entry point does first: where caches go, seeds, one-line errors.

W&B and matplotlib write to ~/.cache and ~/.config even offline; pointing them into the run and
cache folders keeps a run self-contained and lets several runs share a machine.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class PipelineError(RuntimeError):
    """A problem the user can fix (bad config, missing file): printed as one line, exit code 2."""


log = logging.getLogger(__name__)


_set_here: dict[str, str] = {}  # the W&B folders this process set (configure_environment)

# Descriptors of `flock`s this process holds (the retraining lock, a run folder's writing lock). A
# forked child (a datasets map worker, a DataLoader worker) shares the lock through its copy and,
# orphaned when a killed job leaves it asleep, would hold it for good; so each child closes them.
_held_locks: set[int] = set()


def _close_held_locks_in_child() -> None:
    for fd in _held_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_held_locks_in_child)


@contextmanager
def kept_from_children(fd: int) -> Iterator[None]:
    """While held, the lock on `fd` is closed in every process forked from this one."""
    _held_locks.add(fd)
    try:
        yield
    finally:
        _held_locks.discard(fd)


# In the cache root: every run folder a job wrote into, one absolute path a line. Erasure and the
# deletion audit look in each (pipeline.ops.inventory.run_folders), wherever `hydra.run.dir` put it,
# besides every run under erase.outputs and erase.multirun.
RUN_FOLDERS_LIST = "run_folders.txt"


def out_of_reach(folder: str) -> bool:
    """A listed run folder gone together with the folder above it: on a disk or share that may just
    not be mounted now, so its line is kept and erasure and the audit say they could not look there."""
    return not os.path.isdir(folder) and not os.path.isdir(os.path.dirname(folder))


def list_run_folder(run_dir: Path, cache_dir: Path) -> None:
    """Adds the run folder to the cache's list, once, and drops the folders that were removed.

    A folder removed (by hand, or by erasure) has nothing left to erase, so its line only grows the
    list: it is dropped when the folder above it is still there. A folder whose parent is gone too
    may lie on a disk or share that is not mounted just now, so its line stays: dropping it would
    keep erasure from ever looking there again. The list is rewritten whole (a new file renamed over
    it, so a crash leaves the old one) under one lock on the cache folder, so two jobs starting
    together lose neither line."""
    listed, line = cache_dir / RUN_FOLDERS_LIST, str(run_dir.resolve())
    fd = os.open(cache_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines = listed.read_text().splitlines() if listed.is_file() else []
        kept = [folder for folder in dict.fromkeys([*lines, line])
                if folder == line or (os.path.isabs(folder) and (os.path.isdir(folder) or out_of_reach(folder)))]
        if kept != lines:
            tmp = listed.with_name(RUN_FOLDERS_LIST + ".tmp")
            tmp.write_text("".join(folder + "\n" for folder in kept))
            os.replace(tmp, listed)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def configure_environment(run_dir: Path, cache_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    list_run_folder(run_dir, cache_dir)
    # W&B keeps transcripts (tables) and model files (artifacts) in these: they must lie where
    # erasure and the deletion audit look (this run's folder, the cache root; pipeline/ops/inventory.py),
    # so a value set outside is replaced, not kept.
    private = {
        "WANDB_DIR": str(run_dir),
        "WANDB_CACHE_DIR": str(cache_dir / "wandb" / "cache"),
        "WANDB_DATA_DIR": str(cache_dir / "wandb" / "data"),
    }
    defaults = {
        "WANDB_CONFIG_DIR": str(cache_dir / "wandb" / "config"),
        "MPLCONFIGDIR": str(cache_dir / "matplotlib"),
        "MPLBACKEND": "Agg",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in private.items():
        # The user's own value is worth a line; this process's earlier one (a sweep's previous job) is not.
        if os.environ.get(key) not in (None, value, _set_here.get(key)):
            log.info("%s=%s replaced by %s: W&B files hold transcripts and model files, and erasure covers "
                     "only the run folder and the cache root", key, os.environ[key], value)
        os.environ[key] = _set_here[key] = value
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators from one integer (any size: numpy takes 32 bits).
    All three matter: transformers draws SpecAugment masks with numpy."""
    import torch

    seed = seed % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fail(message: str, code: int = 2) -> None:
    """Print one clear line and exit; for errors the user can act on, not for bugs."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def pin_run_dir_for_torchrun(argv: list[str]) -> list[str]:
    """Give every torchrun worker the same run folder, owned by rank 0.

    Hydra names the run folder after the clock, so N workers started a second apart would
    write N folders. Under torchrun all workers share TORCHELASTIC_RUN_ID, which names the
    folder instead; only rank 0 writes Hydra's own `.hydra/` files.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return argv
    args = list(argv)
    if not any(a.startswith("hydra.run.dir=") for a in args):
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run_id in ("", "none"):
            # torchrun's default id when neither --standalone nor --rdzv-id is given: every such run
            # would write into outputs/torchrun/none, over the last one's config and models.
            fail("torchrun gave this run no id of its own (TORCHELASTIC_RUN_ID=none), so its folder would be the "
                 "last such run's: pass torchrun --standalone (or --rdzv-id=<name>), or hydra.run.dir=<folder> "
                 "(make train-ddp does both)")
        args.append(f"hydra.run.dir=outputs/torchrun/{run_id}")
    if int(os.environ.get("RANK", "0")) != 0:
        args.append("hydra.output_subdir=null")
    return args


def resolved(path: Path) -> Path | None:
    """`path` with symlinks followed; None where no file could be there (a NUL in the name, a name too
    long for the file system, a symlink loop), which Path.resolve raises on."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def file_in_the_way(folder: Path) -> Path | None:
    """The file at `folder` or at one of its parents, which stops the folder being made."""
    for place in (folder, *folder.parents):
        if place.exists() and not place.is_dir():
            return place
    return None


def refuse_run_dir_file(argv: list[str]) -> None:
    """`hydra.run.dir=<a file>` (or a folder under one): Hydra's makedirs failed before the job, a
    traceback and exit 1."""
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        blocker = file_in_the_way(Path(value)) if key == "hydra.run.dir" and value else None
        if blocker is not None:
            fail(f"{arg}: {blocker} is a file, not a folder; give the folder the run writes into (created if absent)")


def usable_cores() -> int:
    """The cores this process may use (a container's limit), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def first_line(err: BaseException) -> str:
    """The gist of an error whose message runs to several lines (transformers' load errors, YAML's)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def table_cell(value: Any, missing: str = "-", spec: str = ".4f") -> str:
    """A value as a table shows it: floats to `spec`, a missing one as `missing`."""
    if value is None:
        return missing
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def looks_like_path(name: str) -> bool:
    """Whether a `model_name_or_path` means a local folder rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def host_record() -> dict[str, Any]:
    """What a training run's float arithmetic depends on beyond code, data and seed: the same run on
    another CPU (other vector kernels) or thread count sums in another order and drifts from the
    first steps on, so a run records them to tell such a difference from a real one."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def requested_workers(trainer_cfg: Any) -> int | None:
    """`trainer.num_workers` as a number of DataLoader processes, or None for `auto` (each stage decides)."""
    wanted = trainer_cfg.num_workers
    if str(wanted) == "auto":
        return None
    try:
        workers = int(wanted)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise PipelineError(f"trainer.num_workers={wanted}: use auto or a number of worker processes (0 = load in the training process)")
    return workers


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temp file beside it, flushed, then renamed over it): a
    reader, or a job killed half-way, never finds half a file. A line that is not UTF-8 (kept in an
    export as read) is written back as it was."""
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_abandoned_temp_dirs(target: Path) -> None:
    """Delete `.tmp-<target>-<pid>` folders left next to `target` by killed writers.

    Builds write into such a folder and rename it into place when complete; a folder whose
    process is gone will never be renamed, so it is garbage. A live writer's folder is kept.
    """
    for tmp in target.parent.glob(f".tmp-{target.name}-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


@contextmanager
def staged_folder(final: Path, marker: str) -> Iterator[Path]:
    """A fresh temporary folder beside `final` that becomes `final` when the block ends without an
    error (publish) and is removed either way, so a cache folder appears only complete and a killed
    writer leaves nothing a later run would read (its leftovers are removed on the next call)."""
    remove_abandoned_temp_dirs(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish(tmp, final, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path, marker: str) -> None:
    """Rename a finished temporary folder into place, atomically.

    If another process published the same content first (its `marker` file exists), theirs is
    identical and ours is simply dropped by the caller's clean-up.
    """
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / marker).exists():
            return
        if not final.is_dir() or final.is_symlink():
            raise
        # A folder without its marker was never published whole (folders appear only by this rename):
        # one partly removed by hand. Kept, it made every later publish fail.
        shutil.rmtree(final)
        os.rename(tmp, final)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested configs and metrics as `a.b.c` (or `a/b/c`) keys, as W&B and the comparison table show them."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + sep, sep))
        else:
            out[name] = value
    return out
