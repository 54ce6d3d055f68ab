"""What an offline W&B run logged, printed without a server, before `make sync` uploads it:

    python -m pipeline.ops.wandb_offline <run folder or offline-run-* folder>

The reader itself is pipeline/tracking/wandb_offline.py (the erasure job and the tests use it too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.tracking.wandb_offline import read_offline_run, transaction_logs


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.ops.wandb_offline <run folder>", file=sys.stderr)
        return 2
    for log in transaction_logs(Path(argv[0])):
        run = read_offline_run(log)
        print(f"== {log}")
        print(json.dumps({"id": run.run_id, "group": run.group, "tags": run.tags,
                          "summary": {k: v for k, v in run.summary.items() if not k.startswith("_")},
                          "artifacts": {k: v["type"] for k, v in run.artifacts.items()},
                          "history_rows": len(run.history)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
