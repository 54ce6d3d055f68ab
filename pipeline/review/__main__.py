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
from pipeline.config import checked
from pipeline.review.config import ReviewConfig
from pipeline.tracking import NullTracker, Tracker
from pipeline.runtime import PipelineError, configure_environment, fail, seed_everything

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
        cfg = OmegaConf.load(run_dir / "config.yaml")
        cfg.review = OmegaConf.merge(OmegaConf.load(CONF / "review" / "default.yaml"), cfg.get("review") or {})
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv[1:]))
        checked(cfg.review, ReviewConfig, "review")  # a bad `review.*` override fails before any model loads
        configure_environment(run_dir, Path(cfg.cache_dir))
        seed_everything(int(cfg.get("seed", 0)))
        from pipeline.review.stage import run_review_stage

        tracker = _tracker(cfg, run_dir)
        try:
            result = run_review_stage(cfg, run_dir, dataset, tracker)
        finally:
            tracker.finish()
        print(json.dumps(result, indent=2))
    except PipelineError as err:
        fail(str(err))


def _tracker(cfg: DictConfig, run_dir: Path) -> Tracker:
    """The run's own logger (W&B resumes the run's entry), as the stage runner makes it."""
    if OmegaConf.select(cfg, "logger.name", default="none") == "none":
        return NullTracker()
    from pipeline.tracking.wandb_run import make_wandb_tracker

    return make_wandb_tracker(cfg, run_dir, tags=["review"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1:])
