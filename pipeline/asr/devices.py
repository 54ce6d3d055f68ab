"""Where training runs: device, numeric precision and the torchrun process group, from `cfg.trainer`.

The same command runs on the CPU, one GPU or several: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK and
this module turns them into a process group (nccl on GPUs, gloo on the CPU); without torchrun it is
a single process and nothing distributed is touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from pipeline.runtime import PipelineError, requested_workers, usable_cores


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | fp16 | bf16
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)


def place(trainer_cfg: DictConfig) -> Placement:
    """Resolve `trainer.device`/`trainer.precision` and join the torchrun group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = str(trainer_cfg.get("device", "auto"))
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"trainer.device={wanted} but no CUDA GPU is visible; use trainer.device=cpu (or auto)")
    device = torch.device(f"cuda:{local_rank}" if wanted == "cuda" else wanted)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("fp32", "fp16", "bf16"):
        raise PipelineError(f"trainer.precision={precision}: use auto, fp32, fp16 or bf16")
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("trainer.precision=fp16 needs a GPU; on the CPU use fp32 (or auto)")
    if world_size > 1 and not dist.is_initialized():
        ddp = trainer_cfg.get("ddp", {}) or {}
        backend = str(ddp.get("backend", "auto"))
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=float(ddp.get("timeout_minutes", 30))))
    return Placement(device=device, precision=precision, rank=rank, world_size=world_size)


def loader_workers(trainer_cfg: DictConfig, placement: Placement) -> int:
    """DataLoader worker processes for `trainer.num_workers` (auto | N).

    auto: none on the CPU, where workers would take cores from the step itself; on a GPU, enough to
    decode, augment and featurise clips while the GPU trains (in the main process, on an H200, loading
    held a wav2vec2-base step to 3-6% MFU), leaving one core per process for the training loop.
    """
    workers = requested_workers(trainer_cfg)
    if workers is not None:
        return workers
    if placement.device.type != "cuda":
        return 0
    return max(1, min(8, usable_cores() // placement.world_size - 1))


def all_agree(flag: bool, placement: Placement) -> bool:
    """True only when every process says True (e.g. "this loss is finite")."""
    if not placement.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=placement.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def any_says(flag: bool, placement: Placement) -> bool:
    """True when at least one process says True (e.g. "the time budget is spent")."""
    return not all_agree(not flag, placement)


def total(value: float, placement: Placement) -> float:
    """Sum of `value` over all processes."""
    if not placement.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=placement.device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(placement: Placement) -> None:
    if placement.distributed:
        dist.barrier()


@contextmanager
def fast_cpu_math(device: torch.device, low_precision: torch.dtype | None = None) -> Iterator[None]:
    """Flush denormal floats to zero, and turn oneDNN convolutions off for fp32 on the CPU.

    Both are about speed, not results; together they make the tiny model's CPU training ~1.4x
    faster (docs/experiments.md, "CPU throughput: denormals and oneDNN"). As a model trains, some values
    sink into the denormal range (below 1.2e-38), where x86 arithmetic is several-fold slower:
    without flushing, a CPU step's backward pass grew from 95 to 150 ms within 100 steps. oneDNN
    builds a convolution kernel for every new input shape, and audio batches come in a new length
    nearly every step; PyTorch's own convolutions need no per-shape set-up. bf16/fp16 on the CPU
    keep oneDNN's low-precision kernels. The eval stage stays on oneDNN: forward-only, its kernels
    win (bench/eval_throughput.py: 330 against 210 audio-s/s); the validation passes inside training
    run under these settings too, at about half a second more each. Flushing is left off afterwards.
    """
    before = torch.backends.mkldnn.enabled
    torch.set_flush_denormal(True)
    torch.backends.mkldnn.enabled = before and not (device.type == "cpu" and low_precision is None)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
        torch.set_flush_denormal(False)
