"""`make sync`: upload the offline W&B runs of every run folder with `wandb sync`.

Runs log offline so training never waits for a network; this is the later, separate step. It only
finds the runs (they live inside each run folder, not in one `./wandb`) and hands them to wandb,
which marks each one synced so a second `make sync` uploads nothing twice.

    python -m pipeline.ops.sync [ROOT ...] [--dry-run] [-- extra wandb sync options]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_ROOTS = (Path("outputs"), Path("multirun"))


def unsynced_runs(roots: list[Path]) -> list[Path]:
    """Offline run folders whose transaction log has no `.synced` marker yet, oldest first."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for log in root.rglob("offline-run-*/run-*.wandb"):
            if not log.with_suffix(".wandb.synced").exists():
                found.append(log.parent)
    return sorted(set(found), key=lambda p: p.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ops.sync", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=list(DEFAULT_ROOTS))
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    args, extra = parser.parse_known_args(argv)
    runs = unsynced_runs(args.roots)
    if not runs:
        print("nothing to sync: every offline run is already uploaded")
        return 0
    for run in runs:
        print(run)
    if args.dry_run:
        print(f"{len(runs)} offline run(s) to sync")
        return 0
    if not os.environ.get("WANDB_API_KEY") and not (Path.home() / ".netrc").is_file():
        print("error: no W&B credentials: set WANDB_API_KEY or run `wandb login`, then `make sync` again",
              file=sys.stderr)
        return 2
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli) if wandb_cli.exists() else "wandb", "sync", "--yes",
               *[e for e in extra if e != "--"], *map(str, runs)]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
