"""`make sync`: upload the offline W&B runs of every run folder with `wandb sync`.

Runs log offline so training never waits for a network; this is the later, separate step. It only
finds the runs (they live inside each run folder, not in one `./wandb`) and hands them to wandb,
which marks each one synced so a second `make sync` uploads nothing twice. A run folder that
`make erase` marked `DO_NOT_SYNC` (trained on erased data) is refused, whatever is left in it.

    python -m pipeline.ops.sync [ROOT ...] [--dry-run] [-- extra wandb sync options]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from pipeline.ops.inventory import DO_NOT_SYNC, searched_roots

DEFAULT_ROOTS = (Path("outputs"), Path("multirun"))


def do_not_sync(run: Path) -> Path | None:
    """The `DO_NOT_SYNC` marker erasure left in the run folder holding this offline run, if any.
    Searched from the absolute path: a relative one (`make sync` given `.` inside a run's wandb/)
    has no parent left to hold the marker."""
    for folder in run.resolve().parents:
        if (folder / DO_NOT_SYNC).is_file():
            return folder / DO_NOT_SYNC
    return None


def _offline_logs(roots: list[Path]) -> list[Path]:
    """The transaction log of every offline run under the roots, uploaded or not."""
    return [log for root in roots if root.is_dir() for log in root.rglob("offline-run-*/run-*.wandb")]


def unsynced_runs(roots: list[Path]) -> list[Path]:
    """Offline run folders whose transaction log has no `.synced` marker yet, oldest first; runs
    marked do-not-sync by `make erase` are left out (see `refused_runs`)."""
    found = [log.parent for log in _offline_logs(roots)
             if not log.with_suffix(".wandb.synced").exists() and do_not_sync(log.parent) is None]
    return sorted(set(found), key=lambda p: p.name)


def refused_runs(roots: list[Path]) -> list[Path]:
    """Run folders that erasure marked: they were trained on erased data and must never be uploaded.
    Those under the roots, and the one holding a root (`make sync` given a marked run's wandb/)."""
    found = {m.parent for root in roots if root.is_dir() for m in root.rglob(DO_NOT_SYNC)}
    found |= {marker.parent for root in roots if root.is_dir() and (marker := do_not_sync(root)) is not None}
    return sorted(found)


def unreachable_server(url: str, timeout_s: float = 10.0) -> str | None:
    """Why a TCP connection to the server of `url` fails, or None when it opens."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout_s).close()
    except OSError as err:
        return f"{parsed.hostname}:{port}: {err.strerror or err}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ops.sync", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[])
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    argv = list(sys.argv[1:] if argv is None else argv)
    # What follows `--` is wandb sync's, as the usage says: argparse would read it as more roots.
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_known_args(argv[:cut])
    extra += argv[cut + 1:]
    args.roots = searched_roots(parser, args.roots, DEFAULT_ROOTS)
    refused = refused_runs(args.roots)
    for run in refused:
        print(f"refusing {run}: marked {DO_NOT_SYNC} by `make erase` (trained on erased data)")
    runs = unsynced_runs(args.roots)
    if not runs:
        logs = _offline_logs(args.roots)
        marked = sum(do_not_sync(log.parent) is not None for log in logs)
        if not logs:
            why = (f"no offline W&B run under {', '.join(map(str, args.roots))} (logger=wandb writes them; "
                   "debug=smoke and logger=none do not)")
        elif marked == len(logs):  # not uploaded: they must never be
            why = (f"every offline run here is in a run marked {DO_NOT_SYNC} by `make erase` (trained on erased "
                   "data), so it is never uploaded")
        else:
            why = "every offline run is uploaded or refused" if marked else "every offline run is already uploaded"
        print(f"nothing to sync: {why}")
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
    server = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    unreachable = unreachable_server(server)
    if unreachable:  # `wandb sync` itself waits on an unreachable server without a word
        print(f"error: the W&B server {server} cannot be reached ({unreachable}); nothing was uploaded, run "
              "`make sync` again once it can", file=sys.stderr)
        return 2
    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli) if wandb_cli.exists() else "wandb", "sync", "--yes",
               *extra, *map(str, runs)]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
