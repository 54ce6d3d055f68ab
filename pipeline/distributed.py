"""Where training runs: device, numeric precision and the torchrun process group, from `cfg.trainer`.

The same command runs on the CPU, one GPU or several: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK and
this module turns them into a process group (nccl on GPUs, gloo on the CPU); without torchrun it is
a single process and nothing distributed is touched. Every stage that trains resolves
`trainer.device` / `trainer.precision` here, so one setting means the same in each, and a value
that cannot work is refused before any training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipeline.runtime import PipelineError, first_line


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


def pick_device(wanted: str, key: str) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` as a device for this machine; a GPU that is not there is an
    error naming the setting (`key`), not a CUDA traceback later."""
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"{key}={wanted} but no CUDA GPU is visible; use {key}=cpu (or auto)")
    return torch.device(wanted)


def resolve_device(trainer_cfg: Any) -> tuple[torch.device, str]:
    """The device and precision (fp32 | fp16 | bf16) `trainer.device` / `trainer.precision` ask for,
    `auto` resolved for this machine; under torchrun each process takes its LOCAL_RANK's GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(str(trainer_cfg.device), "trainer.device")
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.index is not None:
            raise PipelineError(f"trainer.device={trainer_cfg.device} under torchrun would put every process on one GPU; "
                                "use trainer.device=cuda (or auto): each process takes its LOCAL_RANK's GPU")
        if local_rank >= torch.cuda.device_count():
            raise PipelineError(f"torchrun started process LOCAL_RANK={local_rank}, and this machine has "
                                f"{torch.cuda.device_count()} GPU(s): start one process per GPU (make train-ddp "
                                f"NPROC={torch.cuda.device_count()})")
    if device == torch.device("cuda"):
        device = torch.device(f"cuda:{local_rank}")
    precision = str(trainer_cfg.precision)
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            # Native bf16 from Ampere (compute capability 8) on; torch.cuda.is_bf16_supported() also
            # says yes where bf16 is only emulated (V100, T4), far slower than fp16 with loss scaling.
            precision = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if precision not in ("fp32", "fp16", "bf16"):
        raise PipelineError(f"trainer.precision={precision}: use auto, fp32, fp16 or bf16")
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("trainer.precision=fp16 needs a GPU; on the CPU use fp32 (or auto)")
    ddp = getattr(trainer_cfg, "ddp", None)
    if ddp is not None and str(ddp.backend) == "nccl" and device.type != "cuda":
        raise PipelineError(f"trainer.ddp.backend=nccl needs GPUs, and trainer.device={trainer_cfg.device} is the "
                            f"{device.type}; use trainer.ddp.backend=auto (gloo there) or gloo")
    return device, precision


def place(trainer_cfg: Any) -> Placement:
    """Resolve `trainer.device`/`trainer.precision` and join the torchrun group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device, precision = resolve_device(trainer_cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = str(trainer_cfg.ddp.backend)
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=float(trainer_cfg.ddp.timeout_minutes)))
    return Placement(device=device, precision=precision, rank=rank, world_size=world_size)


def leave_group() -> None:
    """Close the torchrun process group at the end of a run (NCCL warns at exit, and may hang, otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


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


def barrier(placement: Placement, waiting_for: str = "reach this point") -> None:
    """Wait for every rank. A rank that stopped (rank 0's config or data error, say) closes its
    connections: the others then say so in one line, not in a traceback of the broken connection."""
    if not placement.distributed:
        return
    try:
        dist.barrier()
    except RuntimeError as err:  # DistBackendError and gloo's connection errors are RuntimeErrors
        if "timed out" in str(err).lower() or "timeout" in str(err).lower():
            raise PipelineError(f"rank {placement.rank}: waited longer than trainer.ddp.timeout_minutes for the others "
                                f"to {waiting_for} ({first_line(err)}); raise it for a long build or evaluation") from err
        raise PipelineError(f"rank {placement.rank}: another process stopped while this one waited for it to "
                            f"{waiting_for} ({first_line(err)}); its error is above") from err
