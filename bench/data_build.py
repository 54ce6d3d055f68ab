"""Data-build throughput and peak memory: our build (num_proc = cores) against a naive baseline.

    python -m bench.data_build [--sizes 1000 10000] [--num-proc N] [--repeats N]

Synthetic clips (tones plus noise, 0.5-1.5 s at 22.05 or 44.1 kHz, so every clip is resampled) are
written once into a canonical export. Each variant then runs in its own subprocess while this
process samples the memory of that subprocess and all its children (the `map` workers) every 50 ms:
RSS summed over the tree (counts pages shared by forked workers once per worker), PSS (shares them
out) and heap = Pss_Anon (PSS without file pages: memory-mapped arrow files that the page cache can
drop at will grow with the corpus, the heap should not). Variants:
- ours: `run_data_stage` end to end (validation, content hashing, decoding in `num_proc` workers,
  FLAC encoding, save_to_disk, card), into a fresh cache so nothing is reused;
- baseline: single-process `datasets.map` that decodes each file with soundfile, resamples it with
  `torchaudio.functional.resample` and stores it through the `Audio` feature, then save_to_disk.
With `--repeats N` the variants run N times each, interleaved in ABBA order, and the median run of
each is reported (every run's seconds in `seconds_all`). Results: a table on stdout and
`bench/results/data_build.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

from bench.cli import check_common, interleaved, median_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def make_export(folder: Path, n: int, seed: int = 0) -> Path:
    """n synthetic clips with annotations; accounts repeat so splits have several clips each."""
    rng = np.random.default_rng(seed)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    with open(folder / "annotations.jsonl", "w") as f:
        for i in range(n):
            sr = (22050, 44100)[i % 2]
            t = np.arange(int(rng.uniform(0.5, 1.5) * sr)) / sr
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 800) * t) + 0.02 * rng.standard_normal(len(t))
            sf.write(folder / "audio" / f"c{i:05d}.wav", wave.astype(np.float32), sr)
            f.write(json.dumps({
                "utterance_id": f"c{i:05d}", "audio": f"audio/c{i:05d}.wav", "transcript": "alexa play jazz",
                "intent": "play_music", "entities": [{"type": "music_genre", "value": "jazz"}],
                "account_id": f"acct-{i % 97}", "device_serial": f"dev-{i % 53}",
            }) + "\n")
    return folder / "annotations.jsonl"


def run_ours(export: Path, work: Path, num_proc: int) -> int:
    from omegaconf import OmegaConf

    from pipeline.data.build import run_data_stage
    from pipeline.tracking import NullTracker

    cfg = OmegaConf.create({
        "cache_dir": str(work / "cache"),
        "privacy": {"key_env": "PIPELINE_BENCH_KEY_UNSET", "key_file": str(work / "key")},
        "data": {"source": "jsonl", "path": str(export), "num_proc": num_proc, "max_duration_s": 30,
                 "min_duration_s": 0.2, "deletions": None, "quarantine_flags": ["sensitive"], "split": {"validation": 0.1, "test": 0.1}},
    })
    return run_data_stage(cfg, work / "run", NullTracker())["records_kept"]


def _naive_decode(example: dict) -> dict:
    import torch
    import torchaudio.functional as AF

    wave, sr = sf.read(example["path"], dtype="float32", always_2d=True)
    mono = torch.from_numpy(wave.mean(axis=1))
    return {"audio": {"array": AF.resample(mono, sr, 16000).numpy(), "sampling_rate": 16000}}


def run_baseline(export: Path, work: Path) -> int:
    from datasets import Audio, Dataset, Features, Value

    rows = [json.loads(line) for line in export.read_text().splitlines()]
    ds = Dataset.from_list([{"utterance_id": r["utterance_id"], "path": str(export.parent / r["audio"])} for r in rows])
    features = Features({"utterance_id": Value("string"), "path": Value("string"), "audio": Audio(sampling_rate=16000)})
    (work / "map").mkdir(parents=True)
    ds = ds.map(_naive_decode, features=features, cache_file_name=str(work / "map" / "out.arrow"))
    ds.save_to_disk(str(work / "saved"))
    return len(ds)


def pss_anon(pid: int) -> int:
    """Proportional anonymous memory (heap, not page cache of memory-mapped arrow files), in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) * 1024
    return 0


def run_measured(cmd: list[str]) -> tuple[float, str, dict[str, float]]:
    """Run `cmd` from the repository root; wall seconds, its stdout, and the peak memory (MB) of its
    whole process tree: RSS, PSS and the anonymous part of PSS (the heap, which is what grows)."""
    started = time.perf_counter()
    errors = tempfile.TemporaryFile(mode="w+")  # not a pipe: nobody reads it while the child runs
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
    parent = psutil.Process(proc.pid)
    peak_rss = peak_pss = peak_anon = 0
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            info = [p.memory_full_info() for p in tree if p.is_running()]
            peak_rss = max(peak_rss, sum(m.rss for m in info))
            peak_pss = max(peak_pss, sum(m.pss for m in info))
            peak_anon = max(peak_anon, sum(pss_anon(p.pid) for p in tree))
        except (psutil.Error, OSError):
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        errors.seek(0)
        tail = "".join(errors.readlines()[-15:])
        raise SystemExit(f"{' '.join(cmd[2:5])} failed with exit code {proc.returncode}:\n{tail}")
    errors.close()
    peaks = {"peak_rss_mb": round(peak_rss / 2**20, 1), "peak_pss_mb": round(peak_pss / 2**20, 1),
             "peak_heap_mb": round(peak_anon / 2**20, 1)}
    return seconds, out, peaks


def measure(variant: str, export: Path, num_proc: int) -> dict:
    """Run one variant in a subprocess; wall time and peak memory of its whole process tree."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as work:
        seconds, out, peaks = run_measured([
            sys.executable, "-m", "bench.data_build", "--worker", variant, "--export", str(export),
            "--work", work, "--num-proc", str(num_proc)])
    clips = int(out.strip().splitlines()[-1])
    return {"variant": variant, "clips": clips, "seconds": round(seconds, 2),
            "clips_per_s": round(clips / seconds, 1), **peaks}


def run_sizes(args: argparse.Namespace, prefix: str, make_input: Callable[[Path, int], Path],
              measure: Callable[[str, Path, int], dict], rate: str) -> list[dict]:
    """Per size in `args.sizes`: the input made once, both variants run on it `args.repeats` times in
    ABBA order and the median run of each kept (the baseline single-process, and skipped above
    `args.baseline_max`), printed as each size ends; `rate` (a per-second key) gives the speed-up."""
    results = []
    for n in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-{n}-"))
        try:
            data = make_input(folder, n)
            runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
            for _, variant in interleaved(args.repeats, ("baseline", "ours")):
                if variant == "ours":
                    runs["ours"].append(measure("ours", data, args.num_proc))
                elif args.baseline_max is None or n <= args.baseline_max:
                    runs["baseline"].append(measure("baseline", data, 1))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        ours = {"n": n, "num_proc": args.num_proc, **median_run(runs["ours"])}
        if runs["baseline"]:
            base = {"n": n, **median_run(runs["baseline"])}
            ours["speedup"] = round(ours[rate] / base[rate], 2)
            results.append(base)
        results.append(ours)
        print(json.dumps(results[-2:] if runs["baseline"] else results[-1:]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--baseline-max", type=int, default=None,
                        help="skip the (slow) baseline above this many clips; default: run it at every size")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved (ABBA) runs of each variant per size; "
                        "the median run is kept")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_common(parser, args)

    if args.worker == "ours":
        print(run_ours(args.export, args.work, args.num_proc))
        return
    if args.worker == "baseline":
        print(run_baseline(args.export, args.work))
        return

    results = run_sizes(args, "bench-export", make_export, measure, "clips_per_s")

    print(f"{'clips':>6} {'variant':>9} {'seconds':>8} {'clips/s':>8} {'RSS MB':>8} {'PSS MB':>8} {'heap MB':>8} "
          f"{'speedup':>8}")
    for r in results:
        print(f"{r['n']:>6} {r['variant']:>9} {r['seconds']:>8} {r['clips_per_s']:>8} {r['peak_rss_mb']:>8} "
              f"{r['peak_pss_mb']:>8} {r['peak_heap_mb']:>8} {r.get('speedup', ''):>8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "data_build.json"
    out.write_text(json.dumps({"cores": len(os.sched_getaffinity(0)), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
