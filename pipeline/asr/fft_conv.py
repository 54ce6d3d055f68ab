"""wav2vec2's positional convolution computed through the FFT, for CPU training and evaluation.

The positional embedding is a wide grouped convolution (kernel 32 in `asr=tiny`, 128 in
wav2vec2-base) over the encoder frames. PyTorch's CPU kernel for it runs one small matrix product
per group and clip, and was the most expensive convolution of a `asr=tiny` step (about 20 ms of a
~160 ms step on 2 cores). In the frequency domain the same correlation is one product per
frequency bin: exact up to float rounding (~1e-6), and 1.8x faster forward + backward at the tiny
model's shapes (docs/experiments.md). Only the model instance's `forward` is swapped: the weights, their
names and the saved model are transformers' own. `asr.cpu_fft_positional_conv` (training) and
`eval.cpu_fft_positional_conv` (evaluation) decide whether it is used (configure_positional_conv);
`auto` by default: whole training steps 1.12x (1.04-1.18, bench/asr_patches.py) and clip evaluation
~1.2x (bench/eval_throughput.py) on 2 idle cores, 2026-12-01.
"""

from __future__ import annotations

from types import MethodType

import torch

from pipeline.runtime import PipelineError


def _fft_size(n: int) -> int:
    """The smallest length >= n with no prime factor above 5: pocketfft is slow on large primes."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_grouped_conv(x: torch.Tensor, conv: torch.nn.Conv1d, remove: int) -> torch.Tensor:
    """`conv` over time-major `x` [batch, time, channels], minus `remove` trailing frames.

    Same result as `conv(x.transpose(1, 2))[..., :T + 2p - k + 1 - remove].transpose(1, 2)`.
    """
    batch, frames, channels = x.shape
    weight = conv.weight  # through the weight-norm parametrization, so its gradient reaches g and v
    groups, kernel, pad = conv.groups, weight.shape[-1], conv.padding[0]
    per_in, per_out = channels // groups, weight.shape[0] // groups
    out_frames = frames + 2 * pad - kernel + 1 - remove
    n = _fft_size(frames + kernel)
    # Correlation is convolution with the flipped kernel; full linear convolution index m holds
    # the output frame m - (kernel - 1 - pad).
    xf = torch.fft.rfft(x, n=n, dim=1).view(batch, -1, groups, per_in)
    wf = torch.fft.rfft(weight.flip(-1).view(groups, per_out, per_in, kernel), n=n).permute(3, 0, 2, 1)
    yf = torch.einsum("bfgi,fgio->bfgo", xf, wf).reshape(batch, -1, groups * per_out)
    y = torch.fft.irfft(yf, n=n, dim=1)
    start = kernel - 1 - pad
    y = y[:, start : start + out_frames]
    return y + conv.bias if conv.bias is not None else y


def _positional_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    remove = int(getattr(self.padding, "num_pad_remove", 0))
    return self.activation(fft_grouped_conv(hidden_states, self.conv, remove))


def use_fft_positional_conv(model: torch.nn.Module, device: torch.device, low_precision: torch.dtype | None = None) -> bool:
    """Make this model instance compute its positional convolution through the FFT, on the CPU in fp32.

    Says whether it did. GPUs keep cuDNN's kernel, and bf16/fp16 keep the stock path (the CPU's FFT
    has no half precision). The instance's `forward` is replaced, not its class or its weights, so a
    checkpoint saved from it is an ordinary transformers model."""
    encoder = getattr(getattr(model, "wav2vec2", None), "encoder", None)
    pos = getattr(encoder, "pos_conv_embed", None)
    conv = getattr(pos, "conv", None)
    usable = (
        device.type == "cpu" and low_precision is None and isinstance(conv, torch.nn.Conv1d)
        and conv.stride == (1,) and conv.dilation == (1,) and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
    )
    if usable:
        pos.forward = MethodType(_positional_forward, pos)
    return usable


def configure_positional_conv(
    model: torch.nn.Module, setting: bool | str, device: torch.device, low_precision: torch.dtype | None = None,
    compiled: bool = False, key: str = "asr.cpu_fft_positional_conv",
) -> bool:
    """Apply the setting `key` (`asr.` or `eval.cpu_fft_positional_conv`) to a model; says whether
    the FFT path is in use.

    `auto` takes it where it is faster today (the CPU in fp32, an uncompiled model), `true` insists
    on it and fails clearly where it cannot run, `false` keeps transformers' layer untouched."""
    if setting is False or (setting == "auto" and compiled):
        return False
    if compiled:  # inductor mis-strides the FFT's output (torch 2.9); compiled, the plain conv is fused anyway
        raise PipelineError(f"{key}=true does not combine with asr.compile=true; use auto or false")
    applied = use_fft_positional_conv(model, device, low_precision)
    if setting is True and not applied:
        precision = "fp32" if low_precision is None else str(low_precision).removeprefix("torch.")
        raise PipelineError(
            f"{key}=true: the FFT path runs only on the CPU in fp32 with a stock wav2vec2 "
            f"positional convolution (this run: {device.type}, {precision}); use auto or false"
        )
    return applied
