"""The side-by-side table and the checks of bench/gpu_check.sh, from its three bench.asr_throughput reports.

    python -m bench.gpu_summary --ours ours.json --recipe recipe.json --eager eager.json [--out bench/results]

A run that did not finish is shown as missing and its checks as not measured; nothing is filled in.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GOALS = {"audio_seconds_per_second": 6000.0, "speedup_over_recipe": 5.0, "val_loss_within": 0.02, "gpu_busy_share": 0.90}


def _side(path: str, role: str) -> dict[str, Any] | None:
    file = Path(path)
    if not file.exists():
        return None
    return json.loads(file.read_text()).get(role)


def summarize(ours: dict | None, recipe: dict | None, eager: dict | None) -> dict[str, Any]:
    """Rows per run and the issue's checks (True/False, or None where a run is missing)."""
    rows = {}
    for name, side in (("ours", ours), ("recipe", recipe), ("ours_eager", eager)):
        rows[name] = None if side is None else {
            key: side.get(key) for key in ("audio_seconds_per_second", "audio_seconds_per_second_whole_run", "warm_steps",
                                           "graphs_compiled_in_span", "mfu", "peak_memory_mb", "max_batch_seconds", "batch_size",
                                           "val_loss", "steps", "gpu_busy_share", "compile", "attn_implementation")
        }
    checks: dict[str, Any] = {}
    if ours:
        checks["throughput_ok"] = ours["audio_seconds_per_second"] >= GOALS["audio_seconds_per_second"]
        busy = ours.get("gpu_busy_share")
        checks["gpu_busy_ok"] = None if busy is None else busy >= GOALS["gpu_busy_share"]
    if ours and recipe:
        checks["speedup_over_recipe"] = ours["audio_seconds_per_second"] / recipe["audio_seconds_per_second"]
        checks["speedup_ok"] = checks["speedup_over_recipe"] >= GOALS["speedup_over_recipe"]
    if eager and recipe:  # what loader, batching and kernels buy before compilation
        checks["reference_speedup_over_recipe"] = eager["audio_seconds_per_second"] / recipe["audio_seconds_per_second"]
    if ours and eager and ours.get("steps") == eager.get("steps"):
        checks["val_loss_relative_to_eager"] = ours["val_loss"] / eager["val_loss"] - 1
        checks["val_loss_ok"] = abs(checks["val_loss_relative_to_eager"]) <= GOALS["val_loss_within"]
    return {"runs": rows, "checks": checks, "goals": GOALS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--eager", required=True)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    report = summarize(_side(args.ours, "ours"), _side(args.recipe, "baseline"), _side(args.eager, "ours"))
    report["finished_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    # audio-s/s: the steps after warm-up; whole: the whole run, compilation and warm-up included
    print(f"{'run':<11} {'audio-s/s':>10} {'whole':>7} {'MFU':>7} {'peak MB':>9} {'batch s':>8} {'steps':>6} {'val loss':>9} {'busy':>6}")
    for name, row in report["runs"].items():
        if row is None:
            print(f"{name:<11} (not measured)")
            continue
        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        print(f"{name:<11} {fmt(row['audio_seconds_per_second'], '10.0f')} {fmt(row['audio_seconds_per_second_whole_run'], '7.0f')} "
              f"{fmt(row['mfu'], '7.1%')} {fmt(row['peak_memory_mb'], '9.0f')} {fmt(row['max_batch_seconds'], '8.0f')} "
              f"{fmt(row['steps'], '6d')} {fmt(row['val_loss'], '9.3f')} {fmt(row['gpu_busy_share'], '6.1%')}")
    print(json.dumps(report["checks"], indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check-{report['finished_utc'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {path}")
    return report


if __name__ == "__main__":
    main()
