"""Re-evaluate a finished run: `python evaluate.py run=<run folder>` (see conf/evaluate.yaml), with
the settings its config.yaml records and the command line's overrides on top.

Also evaluates any model on any built dataset: `asr_model=` alone, `nlu_model=` alone, or both, with
`dataset=`. Metrics the models or the labels cannot give are left out of metrics.json and the
report says why. Writes into the run folder.
"""

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline import run_folder
from pipeline.config import check_seed, check_top_level
from pipeline.runtime import PipelineError, configure_environment, fail, refuse_run_dir_file, seed_everything


# conf/evaluate.yaml's top level
TOP_LEVEL = ("run", "asr_model", "nlu_model", "dataset", "seed", "run_dir", "cache_dir", "privacy", "paths", "asr",
             "data", "eval", "logger")


@hydra.main(version_base=None, config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from pipeline.stages import recorded_config, with_recorded_settings, write_record
    from pipeline.tracking import make_tracker

    try:
        check_top_level(cfg, TOP_LEVEL, "conf/evaluate.yaml")
        run_dir = Path(cfg.run_dir).resolve()
        overrides = list(HydraConfig.get().overrides.task)
        in_place = any(o.split("=", 1)[0] == "run" for o in overrides)
        if in_place:  # the run's own eval and data settings, the call's overrides on top
            _check_in_place(cfg, run_dir)
            cfg = with_recorded_settings(cfg, run_dir, overrides)
        check_seed(cfg.seed)
        # Before seeding, which imports torch: a missing dataset= is answered at once, not seconds later.
        dataset = _dataset_path(cfg, run_dir, in_place)
        configure_environment(run_dir, Path(cfg.cache_dir).resolve())
        seed_everything(int(cfg.seed))
        from pipeline.eval.run import run_eval_stage  # torch and transformers: after the checks above

        tracker = make_tracker(cfg, run_dir, ["eval"])
        try:
            with run_folder.writing(run_dir):
                metrics = run_eval_stage(cfg, run_dir, dataset, tracker)
        finally:
            tracker.finish()
        if in_place and (run_dir / "config.yaml").is_file():  # the record says how metrics.json was made
            write_record(run_dir, recorded_config(cfg, run_dir, ["eval"]))
        print(json.dumps({k: v for k, v in metrics.items()}, indent=2))
        print(f"evaluation written to {run_dir}")
    except PipelineError as err:
        fail(str(err))


def _check_in_place(cfg: DictConfig, run_dir: Path) -> None:
    """`run=` replaces the run's evaluation files: they must stay its own models', under its own
    settings. Another model's figures in its metrics.json read as the run's in `make compare`, and
    without config.yaml conf/evaluate.yaml's defaults would re-score it (another wake word, LM weights)."""
    for key, own in (("asr_model", "asr"), ("nlu_model", "nlu")):
        given = cfg.get(key)
        if given and Path(str(given)).resolve() != (run_dir / own).resolve():
            raise PipelineError(f"{key}={given} is not the run's own model ({run_dir / own}): run= re-evaluates a run's "
                                f"own models in place; evaluate another model into a new folder, without run=: "
                                f"python evaluate.py {key}={given} dataset=<the run's dataset_path>")
    if not (run_dir / "config.yaml").is_file():
        raise PipelineError(f"{run_dir / 'config.yaml'} does not exist, so the settings the run was evaluated with are "
                            "unknown: restore it, or evaluate its models into a new folder, without run=: python "
                            f"evaluate.py asr_model={run_dir / 'asr'} nlu_model={run_dir / 'nlu'} dataset=<its dataset_path>")


def _dataset_path(cfg: DictConfig, run_dir: Path, in_place: bool) -> Path:
    if cfg.dataset:
        return Path(cfg.dataset).resolve()
    if not in_place:  # a new evaluation folder: it holds no build report to take the dataset from
        raise PipelineError("no dataset to evaluate on: give dataset=<built dataset folder> (the dataset_path in a "
                            "run's build_report.json), or run=<a finished run folder> to re-evaluate that run")
    path = run_folder.dataset_path(run_dir)
    if path is None:
        raise PipelineError(
            f"{run_dir / run_folder.BUILD_REPORT} does not exist: pass run=<a finished run folder>, "
            "or dataset=<built dataset folder>"
        )
    return path


def _check_run_argument(argv: list[str]) -> None:
    """A mistyped run= must not become a new, empty run folder, nor leave Hydra's files in a folder
    that is no run (a sweep's parent folder), which `make compare` would then list as one: Hydra
    writes into its run dir before main() runs."""
    given_dataset = any(arg.startswith("dataset=") for arg in argv[1:])
    for arg in argv[1:]:
        if not arg.startswith("run="):
            continue
        folder = Path(arg[len("run="):])
        if not folder.is_dir():
            fail(f"{arg}: no such run folder; pass the folder of a finished run (outputs/<date>/<time>)")
        if not given_dataset and not (folder / run_folder.BUILD_REPORT).is_file():
            fail(f"{arg}: not a run folder (no {run_folder.BUILD_REPORT}); pass the folder of a finished run "
                 "(outputs/<date>/<time>; a sweep's runs are its numbered subfolders), or give dataset=")


if __name__ == "__main__":
    refuse_run_dir_file(sys.argv[1:])
    _check_run_argument(sys.argv)
    try:
        main()
    except SystemExit as stop:
        from pipeline.ops.config import exit_if_refused

        exit_if_refused(stop, sys.argv[1:], "evaluate")
