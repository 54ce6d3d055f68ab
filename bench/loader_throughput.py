"""Loader throughput: audio seconds of ready training batches (decode + augmentation + collate) that
one loader worker produces per second, the previous loader against the current one, in one run.

    python -m bench.loader_throughput --dataset <demo build> [--repeats 7] [--augment-prob 0.5]

One worker is one process on one thread, as a DataLoader worker is: each side runs one epoch of the
train split through the same batches (pipeline.asr.sampler, the config's max_batch_seconds and
augmentation plan), without the decoded-clip cache (workers have none). Sides alternate in ABBA order,
so a busy spell of a shared machine hits both; the medians and the spread (min-max) are reported, and
both sides' batches are checked to be equal. The JSON goes to stdout and bench/results/.

The previous loader is kept here as it was: one row per clip from `datasets`, soundfile into a
two-dimensional array and a mean over channels, torchaudio's Resample module, and the processor's
feature extractor and tokenizer on lists.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bench.cli import check_common, interleaved

ROOT = Path(__file__).resolve().parents[1]


class PreviousClipDataset(torch.utils.data.Dataset):
    """The loader's dataset before the batched Arrow read: one `datasets` row per clip."""

    def __init__(self, split: Any) -> None:
        from pipeline.asr.collate import ClipDataset

        self.split = ClipDataset(split).split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import soundfile as sf

        row = self.split[int(index)]
        wave, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
        if rate != 16000:
            import torchaudio.functional as AF

            wave = AF.resample(torch.from_numpy(wave), rate, 16000).numpy()
        return {"index": int(index), "audio": wave, "text": row["text"] or ""}


@dataclass
class PreviousCollator:
    """The collator before: torchaudio Resample per clip, then the processor on lists."""

    processor: Any
    augment_cfg: Any
    seed: int
    plan: list[float | None] | None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torchaudio.functional as AF

        waves = [item["audio"] for item in items]
        if self.augment_cfg is not None and self.plan is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + items[0]["index"])
            out = []
            for item, wave in zip(items, waves):
                speed = self.plan[item["index"]]
                if speed is None:
                    out.append(wave)
                    continue
                x = torch.tensor(wave)
                if speed != 1.0:
                    with torch.no_grad():
                        x = _previous_resampler(int(16000 * speed))(x)
                if self.augment_cfg.noise_snr_db:
                    low, high = (float(v) for v in self.augment_cfg.noise_snr_db)
                    snr = torch.tensor([low + (high - low) * torch.rand((), generator=gen).item()])
                    x = AF.add_noise(x[None], torch.randn(x.shape, generator=gen)[None], snr)[0]
                out.append(x.numpy())
            waves = out
        batch = self.processor.feature_extractor(waves, sampling_rate=16000, padding="longest", return_tensors="pt")
        labels = self.processor.tokenizer([item["text"] for item in items], padding="longest", return_tensors="pt")
        batch["labels"] = labels.input_ids.masked_fill(labels.attention_mask.eq(0), -100)
        batch["texts"] = [item["text"] for item in items]
        batch["input_lengths"] = torch.tensor([len(w) for w in waves])
        batch["audio_seconds"] = torch.tensor(sum(len(w) for w in waves) / 16000)
        return batch


_RESAMPLERS: dict[int, Any] = {}


def _previous_resampler(orig: int) -> Any:
    import torchaudio.transforms as AT

    if orig not in _RESAMPLERS:
        _RESAMPLERS[orig] = AT.Resample(orig, 16000)
    return _RESAMPLERS[orig]


def one_epoch(dataset: Any, collate: Any, batches: list[list[int]], batched: bool) -> tuple[float, float, list[Any]]:
    """(audio seconds, wall seconds, a few batches to compare) for one pass over `batches`."""
    kept: list[Any] = []
    seconds = 0.0
    started = time.perf_counter()
    for n, indices in enumerate(batches):
        items = dataset.__getitems__(indices) if batched else [dataset[i] for i in indices]
        batch = collate(items)
        seconds += float(batch["audio_seconds"])
        if n < 3:
            kept.append(batch)
    return seconds, time.perf_counter() - started, kept


def max_difference(old: list[Any], new: list[Any]) -> float:
    """Largest absolute difference of input values between the sides' first batches (labels must be equal)."""
    worst = 0.0
    for a, b in zip(old, new):
        if not torch.equal(a["labels"], b["labels"]) or a["input_values"].shape != b["input_values"].shape:
            raise SystemExit("loader_throughput: the two loaders made different batches (labels or shapes differ)")
        worst = max(worst, float((a["input_values"] - b["input_values"]).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a built DatasetDict with a train split (the data stage's output)")
    parser.add_argument("--repeats", type=int, default=5, help="epochs per side, interleaved ABBA")
    parser.add_argument("--augment-prob", type=float, default=None, help="share of clips augmented (default: conf/asr/tiny.yaml's)")
    parser.add_argument("--noise-snr-db", type=float, nargs=2, default=None, help="add white noise at this SNR range")
    parser.add_argument("--batch-seconds", type=float, default=None, help="padded seconds per batch (default: tiny.yaml's)")
    parser.add_argument("--clips", type=int, default=None, help="use only the first N train clips (a quick check)")
    parser.add_argument("--out", default=str(ROOT / "bench/results"), help="folder for the JSON result")
    args = parser.parse_args(argv)
    check_common(parser, args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker, one core
    try:
        return _measure(args)
    finally:
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import load_from_disk

    from pipeline.asr.collate import ClipDataset, CTCCollator, plan_augmentation, played_durations
    from pipeline.asr.sampler import epoch_batches
    from pipeline.asr.vocab import build_vocab, make_processor

    acfg = OmegaConf.load(ROOT / "conf/asr/tiny.yaml")
    if args.augment_prob is not None:
        acfg.augment.prob = args.augment_prob
    if args.noise_snr_db is not None:
        acfg.augment.noise_snr_db = list(args.noise_snr_db)
    batch_seconds = float(args.batch_seconds or acfg.max_batch_seconds)
    split = load_from_disk(args.dataset)["train"]
    if args.clips:
        split = split.select(range(min(args.clips, len(split))))
    current, previous = ClipDataset(split, cache_mb=0), PreviousClipDataset(split)
    with tempfile.TemporaryDirectory() as tmp:
        processor = make_processor(build_vocab(current.split["text"]), Path(tmp), False)
    augment_cfg = acfg.augment if float(acfg.augment.prob) > 0 else None
    plan = plan_augmentation(len(current), augment_cfg, 0)
    batches = epoch_batches(played_durations(current.durations, plan), batch_seconds, int(acfg.bucket_batches), 0, 0)
    sides = {
        "previous": (previous, PreviousCollator(processor, augment_cfg, 0, plan), False),
        "current": (current, CTCCollator(processor, augment_cfg, 0, plan), True),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    kept: dict[str, list[Any]] = {}
    audio_seconds = 0.0
    for repeat, name in interleaved(max(args.repeats, 1), sides):
        dataset, collate, batched = sides[name]
        audio_seconds, wall, kept[name] = one_epoch(dataset, collate, batches, batched)
        rates[name].append(audio_seconds / wall)
        print(f"repeat {repeat} {name}: {audio_seconds / wall:.0f} audio-s/s", flush=True)
    report: dict[str, Any] = {
        "dataset": str(args.dataset), "clips": len(current), "batches": len(batches), "audio_seconds_per_epoch": round(audio_seconds, 1),
        "max_batch_seconds": batch_seconds, "augment_prob": float(acfg.augment.prob), "noise_snr_db": OmegaConf.to_container(acfg.augment)["noise_snr_db"],
        "threads": 1, "repeats": args.repeats,
        "max_abs_difference": max_difference(kept["previous"], kept["current"]),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for name, values in rates.items():
        report[name] = {"audio_seconds_per_second_median": round(statistics.median(values), 1),
                        "min": round(min(values), 1), "max": round(max(values), 1), "runs": [round(v, 1) for v in values]}
    report["speedup_median"] = round(statistics.median(c / p for c, p in zip(rates["current"], rates["previous"])), 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"loader_throughput-{report['finished_utc'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {path}")
    return report


if __name__ == "__main__":
    main()
