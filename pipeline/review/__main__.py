"""`python -m pipeline.review <run folder> [key=value ...]` (or `make review RUN=<run>`): review a
finished run's annotations with its own models and config, in place.

The run's saved config.yaml decides the models' settings (its `nlu` backbone, its `eval` wake
word); `key=value` arguments override it (e.g. `review.folds=3`, `logger.name=none`). A review
setting the run's config lacks (a run made before it existed) takes its default from
conf/review/default.yaml.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import run_folder
from pipeline.config import check_seed, checked
from pipeline.review.config import ReviewConfig
from pipeline.tracking import NullTracker, make_tracker
from pipeline.runtime import PipelineError, configure_environment, fail, first_line, seed_everything

CONF = Path(__file__).resolve().parents[2] / "conf"


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        fail("usage: python -m pipeline.review <run folder> [key=value ...]  (make review RUN=outputs/<date>/<time>)")
    run_dir = Path(argv[0]).resolve()
    try:
        dataset = run_folder.dataset_path(run_dir)  # None without build_report.json; a broken one is an error
        if dataset is None or not (run_dir / "config.yaml").is_file():
            raise PipelineError(f"{run_dir}: not a finished run folder (config.yaml and {run_folder.BUILD_REPORT} expected); "
                                "pass the folder of a run whose data stage finished (outputs/<date>/<time>)")
        cfg = _run_config(run_dir, argv[1:])
        checked(cfg.review, ReviewConfig, "review")  # a bad `review.*` override fails before any model loads
        configure_environment(run_dir, Path(cfg.cache_dir))
        seed_everything(cfg.get("seed", 0))
        from pipeline.review.stage import run_review_stage

        # The run's own logger (W&B resumes the run's entry); a run that logged nowhere needs no check.
        logs = OmegaConf.select(cfg, "logger.name", default="none") != "none"
        tracker = make_tracker(cfg, run_dir, ["review"]) if logs else NullTracker()
        try:
            with run_folder.writing(run_dir):  # `make erase` waits for it, as for train.py and evaluate.py
                result = run_review_stage(cfg, run_dir, dataset, tracker)
        finally:
            tracker.finish()
        print(json.dumps(result, indent=2))
    except PipelineError as err:
        fail(str(err))


def _run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's config.yaml with the review defaults it may lack and the overrides on top; a file
    that is not the config a run writes is one error naming it."""
    path = run_dir / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig) or "cache_dir" not in cfg:
            raise ValueError("it has no cache_dir")
        cfg.review = OmegaConf.merge(OmegaConf.load(CONF / "review" / "default.yaml"), cfg.get("review") or {})
    except Exception as err:  # noqa: BLE001 - a YAML, OmegaConf or our own error: the file is not a run's config
        raise PipelineError(f"{path} is not the config a run writes ({err.__class__.__name__}: {first_line(err)}); "
                            "restore it from a copy of the run, or run the run again") from err
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as err:  # noqa: BLE001
        raise PipelineError(f"the overrides {overrides} do not apply ({first_line(err)}); give key=value pairs, "
                            "e.g. review.folds=3") from err
    check_seed(cfg.get("seed", 0))
    return cfg


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1:])
