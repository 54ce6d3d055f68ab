"""Reading a hub-style Hugging Face dataset (saved to disk): our `data=hf` build against a naive
`datasets.map` that decodes each row.

    python -m bench.hf_read [--sizes 2000 10000] [--num-proc N] [--baseline-max N]

The dataset is written once per size the way hub datasets store audio: a DatasetDict saved with
`save_to_disk` whose `audio` column holds encoded WAV bytes (16 kHz, like Speech Commands, and
22.05 kHz, resampled by both variants), with `transcription`, `speaker_id` and a ClassLabel
`label`. Each variant then runs in its own subprocess while this process samples the memory of its
process tree every 50 ms (RSS, PSS and heap = Pss_Anon, as bench/data_build.py does: the
memory-mapped arrow files are page cache, the heap is what must stay flat as the corpus grows).
- ours: `run_data_stage` with `data.source=hf` end to end (column mapping, schema checks,
  pseudonyms, content hashing, decoding in `num_proc` workers, FLAC encoding, save_to_disk, card);
- baseline: `load_from_disk`, `cast_column("audio", Audio(sampling_rate=16000))` and one
  single-process `datasets.map` that reads each decoded row (datasets' own decoder and resampler)
  and stores it back through the `Audio` feature with its duration, then save_to_disk.
Results: a table on stdout and `bench/results/hf_read.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.cli import check_common
from bench.data_build import run_measured, run_sizes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def make_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """n rows of hub-style audio (encoded bytes in the arrow files), written in chunks so the
    writer's memory stays small; three quarters at 16 kHz, a quarter at 22.05 kHz."""
    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value, concatenate_datasets

    rng = np.random.default_rng(seed)
    features = Features({"audio": Audio(), "transcription": Value("string"), "speaker_id": Value("string"),
                         "label": ClassLabel(names=WORDS)})
    parts = []
    for start in range(0, n, 1000):
        rows: dict[str, list] = {"audio": [], "transcription": [], "speaker_id": [], "label": []}
        for i in range(start, min(n, start + 1000)):
            sr = 22050 if i % 4 == 3 else 16000
            t = np.arange(int(rng.uniform(0.5, 1.5) * sr)) / sr
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 800) * t) + 0.02 * rng.standard_normal(len(t))
            buffer = io.BytesIO()
            sf.write(buffer, wave.astype(np.float32), sr, format="WAV", subtype="PCM_16")
            rows["audio"].append({"bytes": buffer.getvalue(), "path": f"clip{i:05d}.wav"})
            rows["transcription"].append(WORDS[i % 10])
            rows["speaker_id"].append(f"{i % 311:08x}")
            rows["label"].append(i % 10)
        parts.append(Dataset.from_dict(rows, features=features))
    DatasetDict({"train": concatenate_datasets(parts)}).save_to_disk(str(folder / "saved"))
    return folder / "saved"


def run_ours(saved: Path, work: Path, num_proc: int) -> int:
    from omegaconf import OmegaConf

    from pipeline.data.build import run_data_stage
    from pipeline.tracking import NullTracker

    cfg = OmegaConf.create({
        "cache_dir": str(work / "cache"),
        "privacy": {"key_env": "PIPELINE_BENCH_KEY_UNSET", "key_file": str(work / "key")},
        "data": {"source": "hf", "path": str(saved), "num_proc": num_proc, "max_duration_s": 30,
                 "min_duration_s": 0.2, "deletions": None, "quarantine_flags": ["sensitive"], "columns": {"transcript": "transcription", "account_id": "speaker_id"},
                 "split_shares": {"validation": 0.1, "test": 0.1}},
    })
    return run_data_stage(cfg, work / "run", NullTracker())["records_kept"]


def _naive(example: dict) -> dict:
    audio = example["audio"]  # decoded (and resampled) by datasets
    samples = audio.get_all_samples() if hasattr(audio, "get_all_samples") else None
    if samples is not None:
        array, sr = samples.data.mean(0).numpy(), int(samples.sample_rate)
    else:
        array, sr = np.asarray(audio["array"]), int(audio["sampling_rate"])
    return {"audio": {"array": array, "sampling_rate": sr}, "duration": len(array) / sr}


def run_baseline(saved: Path, work: Path) -> int:
    from datasets import Audio, Value, load_from_disk

    ds = load_from_disk(str(saved))["train"].cast_column("audio", Audio(sampling_rate=16000))
    features = ds.features.copy()
    features["duration"] = Value("float32")
    (work / "map").mkdir(parents=True)
    ds = ds.map(_naive, features=features, cache_file_name=str(work / "map" / "out.arrow"))
    ds.save_to_disk(str(work / "saved"))
    return len(ds)


def measure(variant: str, saved: Path, num_proc: int) -> dict:
    """Run one variant in a subprocess; wall time and peak memory of its whole process tree."""
    with tempfile.TemporaryDirectory(prefix=f"bench-hf-{variant}-") as work:
        seconds, out, peaks = run_measured([
            sys.executable, "-m", "bench.hf_read", "--worker", variant, "--saved", str(saved),
            "--work", work, "--num-proc", str(num_proc)])
    rows = int(out.strip().splitlines()[-1])
    return {"variant": variant, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1),
            **peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--baseline-max", type=int, default=None, help="skip the baseline above this many rows")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant per size (the median is kept)")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--saved", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_common(parser, args)

    if args.worker == "ours":
        print(run_ours(args.saved, args.work, args.num_proc))
        return
    if args.worker == "baseline":
        print(run_baseline(args.saved, args.work))
        return

    results = run_sizes(args, "bench-hf", make_dataset, measure, "rows_per_s")

    print(f"{'rows':>6} {'variant':>9} {'seconds':>8} {'rows/s':>8} {'RSS MB':>8} {'PSS MB':>8} {'heap MB':>8} {'speedup':>8}")
    for r in results:
        print(f"{r['n']:>6} {r['variant']:>9} {r['seconds']:>8} {r['rows_per_s']:>8} {r['peak_rss_mb']:>8} "
              f"{r['peak_pss_mb']:>8} {r['peak_heap_mb']:>8} {r.get('speedup', ''):>8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "hf_read.json"
    out.write_text(json.dumps({"cores": len(os.sched_getaffinity(0)), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
