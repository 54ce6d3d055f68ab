"""Main job: build the dataset, train ASR and NLU, evaluate. `python train.py --help` lists the config."""

import sys

import hydra
from omegaconf import DictConfig

from pipeline.runtime import PipelineError, fail, pin_run_dir_for_torchrun, refuse_run_dir_file


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from pipeline.stages import run_stages

    try:
        run_stages(cfg)
    except PipelineError as err:
        fail(str(err))


if __name__ == "__main__":
    refuse_run_dir_file(sys.argv[1:])
    sys.argv = pin_run_dir_for_torchrun(sys.argv)
    try:
        main()
    except SystemExit as stop:
        from pipeline.ops.config import exit_if_refused

        exit_if_refused(stop, sys.argv[1:], "config")
