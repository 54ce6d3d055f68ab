"""Scheduled retraining: `python retrain.py` (or `make retrain`). Exit codes: 0 promoted or nothing
to do, 1 crashed, 2 config error, 3 rejected by the gate, 4 another retraining job is running.
The decision and its numbers are in `<run folder>/decision.json`; see pipeline/ops/retrain.py."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="retrain")
def main(cfg: DictConfig) -> None:
    from pipeline.ops.retrain import run_retrain

    sys.exit(run_retrain(cfg))


if __name__ == "__main__":
    main()
