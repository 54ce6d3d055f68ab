"""What turning NNPACK off buys the CPU training step (`pipeline.asr.devices.fast_cpu_math`):
training steps per second with PyTorch's NNPACK convolutions on and off, in one run.

    python -m bench.cpu_conv [--dataset <built dataset>] [--asr tiny_budget] [--batches 40] [--repeats 6]

With oneDNN off (as the stage trains in fp32 on the CPU), PyTorch runs a float convolution whose
kernel is under 17 taps through NNPACK when the batch holds 16 clips or more, so the figure depends
on the clips: short ones (Speech Commands' 1 s words) make big batches. Without `--dataset` the
clips are synthetic tones of `--seconds` (default 0.6-2 s, like the human-voices corpora).

One training run is set up by the stage itself (`pipeline.asr.train.set_up`, the `--asr` config on
the CPU in fp32) and takes steps with the stage's own step functions (forward, backward, clip,
AdamW) on the same `--batches` collated micro-batches of its first epoch, loaded once. A repeat
times one block of those steps with NNPACK on and one with it off, the order swapped every repeat;
one untimed block of each comes first. Prints one JSON object: steps/s per block, median and spread
per setting, and the speed-up as the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.cli import check_common

ROOT = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    from hydra import compose, initialize_config_dir

    from bench.asr_patches import steps_per_second
    from pipeline.asr.devices import fast_cpu_math
    from pipeline.asr.train import epoch_loader, set_up
    from pipeline.distributed import place
    from pipeline.tracking import NullTracker

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[
            f"asr={args.asr}", "asr.max_train_minutes=null", "asr.lm_order=null", f"asr.cpu_threads={args.threads or 'null'}",
            "trainer.device=cpu", "trainer.precision=fp32", f"seed={args.seed}",
        ])
    if args.threads:
        torch.set_num_threads(args.threads)
    run = set_up(cfg, place(cfg.trainer), tmp / "run", Path(args.dataset), NullTracker(), time.time())
    batches = list(itertools.islice(epoch_loader(run), args.batches))
    rates: dict[str, list[float]] = {"nnpack_on": [], "nnpack_off": []}
    with fast_cpu_math(torch.device("cpu")):  # as the stage trains on the CPU in fp32 (NNPACK off)
        for repeat in range(-1, args.repeats):  # repeat -1: untimed warm-up
            order = ["nnpack_on", "nnpack_off"] if repeat % 2 else ["nnpack_off", "nnpack_on"]
            for name in order:
                with torch.backends.nnpack.flags(enabled=name == "nnpack_on"):
                    rate = steps_per_second(run, batches)
                if repeat >= 0:
                    rates[name].append(rate)
            if repeat >= 0:
                print(f"repeat {repeat}: " + ", ".join(f"{n} {r[-1]:.2f}" for n, r in rates.items()), file=sys.stderr, flush=True)
    return rates


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a built DatasetDict (train/validation); default: --synthetic clips")
    parser.add_argument("--synthetic", type=int, default=400, help="clips of synthetic audio when no --dataset")
    parser.add_argument("--seconds", type=float, nargs=2, default=(0.6, 2.0), help="synthetic clip lengths (low high)")
    parser.add_argument("--asr", default="tiny_budget", help="an asr config group option (conf/asr/)")
    parser.add_argument("--batches", type=int, default=40, help="training steps per block")
    parser.add_argument("--repeats", type=int, default=6, help="timed blocks per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json-out", help="also write the report here")
    args = parser.parse_args(argv)
    check_common(parser, args)
    sys.path.insert(0, str(ROOT))
    from bench.asr_patches import spread
    from bench.asr_throughput import synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        synthetic = not args.dataset
        if synthetic:
            args.dataset = str(synthetic_dataset(args.synthetic, Path(tmp) / "synthetic", args.seed, tuple(args.seconds)))
        rates = measure(args, Path(tmp))
    ratios = [a / b for a, b in zip(rates["nnpack_off"], rates["nnpack_on"])]
    report: dict[str, Any] = {
        "model": f"asr={args.asr}", "device": "cpu", "precision": "fp32", "batches": args.batches, "repeats": args.repeats,
        "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
        "dataset": f"synthetic {args.seconds[0]}-{args.seconds[1]} s" if synthetic else args.dataset,
        "steps_per_second": {name: spread(r) for name, r in rates.items()},
        "speedup_nnpack_off": spread(ratios),
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
