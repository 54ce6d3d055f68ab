"""How the ASR stage feeds and runs its training loop on the machine it was placed on
(`pipeline.distributed.place`): DataLoader workers and the CPU's fast-math settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from omegaconf import DictConfig

from pipeline.distributed import Placement
from pipeline.runtime import requested_workers, usable_cores


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


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero for a forward-only pass, then stop flushing.

    A trained model's activations reach the denormal range (below 1.2e-38), where x86 arithmetic
    is several-fold slower; flushing changes no value a metric can see. On the reference VM it
    made the eval stage's batched inference ~8% faster (docs/experiments.md, 2026-12-01).
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextmanager
def fast_cpu_math(device: torch.device, low_precision: torch.dtype | None = None) -> Iterator[None]:
    """Flush denormal floats to zero, turn oneDNN convolutions off for fp32 on the CPU, and NNPACK
    (a CPU library) off.

    All three are about speed, not results. The first two together make the tiny model's CPU training ~1.4x
    faster (docs/experiments.md, "CPU throughput: denormals and oneDNN"). As a model trains, some values
    sink into the denormal range (below 1.2e-38), where x86 arithmetic is several-fold slower:
    without flushing, a CPU step's backward pass grew from 95 to 150 ms within 100 steps. oneDNN
    builds a convolution kernel for every new input shape, and audio batches come in a new length
    nearly every step; PyTorch's own convolutions need no per-shape set-up. bf16/fp16 on the CPU
    keep oneDNN's low-precision kernels. The eval stage stays on oneDNN: forward-only, its kernels
    win (bench/eval_throughput.py: 0.29 s against 0.65 s for 96 clips, 2026-12-01), and flushes
    denormals on its own (`flushed_denormals`); the validation passes inside training run under these
    settings too, at about half a second more each. Flushing is left off afterwards.

    Without oneDNN, PyTorch sends a float convolution with a kernel under 17 taps to NNPACK once a
    batch holds 16 clips or more (a batch of 1 s Speech Commands clips does). NNPACK's strided
    convolution took ~9 ms a call where PyTorch's own took ~1 ms: with it off, the human-voices model
    (`asr=tiny_budget`) took 1.24x the training steps a second on its real batches (1.17-1.31,
    bench/cpu_conv.py, 2026-12-01). Its floats differ from NNPACK's in the last bits only.
    """
    before = torch.backends.mkldnn.enabled
    torch.set_flush_denormal(True)
    torch.backends.mkldnn.enabled = before and not (device.type == "cpu" and low_precision is None)
    (nnpack_before,) = torch.backends.nnpack.set_flags(False)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
        torch.backends.nnpack.set_flags(nnpack_before)
        torch.set_flush_denormal(False)
