"""Scheduled retraining: `python retrain.py` (or `make retrain`). Exit codes: 0 promoted, rolled
back or nothing to do, 1 crashed, 2 config error (a mistyped override included), 3 rejected by the
gate, 4 another retraining job is running. The decision and its numbers are in
`<run folder>/decision.json` and one line of `<registry>/decisions.jsonl`; see
pipeline/ops/retrain.py. `make promote MODEL=<id>` and `make rollback` run here too."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"
# The run folder is `<time>-<pid>` (conf/retrain.yaml): unique per job even within one second.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
_job_started = False


@hydra.main(version_base=None, config_path="conf", config_name="retrain")
def main(cfg: DictConfig) -> None:
    global _job_started
    _job_started = True
    from pipeline.ops.retrain import run_retrain

    sys.exit(run_retrain(cfg))


if __name__ == "__main__":
    from pipeline.runtime import refuse_run_dir_file

    refuse_run_dir_file(sys.argv[1:])  # no run folder to record a decision in
    try:
        main()
    except SystemExit as stop:
        if _job_started or stop.code in (0, None):
            raise
        # Hydra refused the command line before the job started; it printed why.
        from pipeline.ops.retrain import refuse_config

        code = refuse_config(sys.argv[1:], CONF_DIR)
        sys.exit(stop.code if code is None else code)
