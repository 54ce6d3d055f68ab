"""What each CPU run-time patch of the ASR training model buys: training steps per second with
`asr.cpu_fft_positional_conv` and `asr.skip_waveform_gradient` off and on, in one run.

    python -m bench.asr_patches [--dataset <built dataset>] [--batches 10] [--repeats 8] [--threads 1]

Four variants (both off, each alone, both on) of the `asr=tiny` training run are set up side by
side by the stage itself (`pipeline.asr.train.set_up`: same seed, weights, optimizer, patches as
configured) and take training steps with the stage's own step functions (forward, backward, clip,
AdamW) on the same `--batches` collated micro-batches of the first epoch, loaded once (the patches do
not touch loading). A repeat times one block of those steps per variant, in an order rotated every
repeat, so the slow spells of a shared machine fall on every variant in turn; one untimed block each
comes first. Prints one JSON object: steps/s per block, their median and spread (min, max) per
variant, and each patched variant's speed-up as the median of its per-repeat ratios to the
unpatched block of the same repeat (blocks seconds apart).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.cli import check_common

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (asr.cpu_fft_positional_conv, asr.skip_waveform_gradient)
    "stock": (False, False),
    "fft": (True, False),
    "skip_waveform_grad": (False, True),
    "both": (True, True),
}


def variant_cfg(args: argparse.Namespace, fft: bool, skip: bool) -> DictConfig:
    """conf/asr/tiny.yaml and the default trainer on the CPU in fp32, with one variant's patches."""
    asr = OmegaConf.load(ROOT / "conf/asr/tiny.yaml")
    asr.max_train_minutes, asr.lm_order, asr.cpu_threads = None, None, args.threads
    asr.cpu_fft_positional_conv, asr.skip_waveform_gradient = fft, skip
    trainer = OmegaConf.load(ROOT / "conf/trainer/default.yaml")
    trainer.device, trainer.precision = "cpu", "fp32"
    return OmegaConf.create({"seed": args.seed, "asr": asr, "trainer": trainer})


def steps_per_second(run: Any, batches: list[dict[str, Any]]) -> float:
    """Training steps a second over `batches`, taken with the stage's own step functions (forward,
    backward, clip, AdamW), one micro-batch a step."""
    from pipeline.asr.train import Progress, accumulate, optimizer_step

    progress = Progress(loop_start=time.time())
    start = time.perf_counter()
    for batch in batches:
        accumulate(run, progress, batch)
        progress.in_accum = 0
        optimizer_step(run, progress)
    return len(batches) / (time.perf_counter() - start)


def spread(values: list[float]) -> dict[str, Any]:
    """Median, range and every figure of a benchmark's repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_repeat": values}


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    """Steps/s of each variant, one figure per repeat."""
    from pipeline.asr.config import ASRConfig
    from pipeline.asr.devices import fast_cpu_math
    from pipeline.asr.train import epoch_loader, set_up
    from pipeline.config import checked
    from pipeline.distributed import place
    from pipeline.tracking import NullTracker

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {}
    for name, (fft, skip) in VARIANTS.items():
        cfg = variant_cfg(args, fft, skip)
        checked(cfg.asr, ASRConfig, "asr")
        runs[name] = set_up(cfg, place(cfg.trainer), tmp / name, Path(args.dataset), NullTracker(), time.time())
    batches = list(itertools.islice(epoch_loader(runs["stock"]), args.batches))
    names = list(VARIANTS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    with fast_cpu_math(torch.device("cpu")):  # as the stage trains on the CPU in fp32
        for repeat in range(-1, args.repeats):  # repeat -1: untimed warm-up
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                rate = steps_per_second(runs[name], batches)
                if repeat >= 0:
                    rates[name].append(rate)
            if repeat >= 0:
                print(f"repeat {repeat}: " + ", ".join(f"{n} {rates[n][-1]:.2f}" for n in names), file=sys.stderr, flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a built DatasetDict (train/validation); default: --synthetic clips")
    parser.add_argument("--synthetic", type=int, default=120, help="clips of synthetic audio when no --dataset")
    parser.add_argument("--batches", type=int, default=10, help="training steps per block")
    parser.add_argument("--repeats", type=int, default=8, help="timed blocks per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json-out", help="also write the report here")
    args = parser.parse_args()
    check_common(parser, args)
    sys.path.insert(0, str(ROOT))
    from bench.asr_throughput import synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        synthetic = not args.dataset
        if synthetic:
            args.dataset = str(synthetic_dataset(args.synthetic, Path(tmp) / "synthetic", args.seed))
        rates = measure(args, Path(tmp))
    names = list(VARIANTS)
    report: dict[str, Any] = {
        "model": "asr=tiny", "device": "cpu", "precision": "fp32", "batches": args.batches, "repeats": args.repeats,
        "threads": args.threads or torch.get_num_threads(), "dataset": "synthetic" if synthetic else args.dataset,
        "steps_per_second": {name: spread(r) for name, r in rates.items()},
        "speedup_vs_stock": {name: spread([a / b for a, b in zip(rates[name], rates["stock"])]) for name in names[1:]},
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
