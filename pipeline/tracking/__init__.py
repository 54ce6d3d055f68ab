"""The experiment tracker every stage logs to: W&B, or nothing.

Stages only see this small interface, so a run without W&B (`logger=none`) takes the same
code path, and tests can read back what was logged. The W&B implementation (wandb_run) and the
offline-run reader (wandb_offline) live in this package, below the stages; a stage never imports
a tracker's library (wandb is imported inside wandb_run's functions). `make_tracker` here makes the
tracker for the stages, evaluate.py and the review; erasure reads wandb_run's file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from pipeline.config import choice
from pipeline.tracking.config import LOG_TRANSCRIPTS, logger_config


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_summary(self, metrics: dict[str, Any]) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def log_image(self, key: str, path: Path) -> None: ...
    def log_artifact(
        self, name: str, kind: str, path: Path, metadata: dict[str, Any] | None = None
    ) -> None: ...
    def use_artifact(self, name: str, kind: str) -> None: ...
    def finish(self) -> None: ...


class NullTracker:
    """Logs nothing: `logger=none`, and the default inside library calls and tests."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def log_image(self, key: str, path: Path) -> None:
        pass

    def log_artifact(
        self, name: str, kind: str, path: Path, metadata: dict[str, Any] | None = None
    ) -> None:
        pass

    def use_artifact(self, name: str, kind: str) -> None:
        pass

    def finish(self) -> None:
        pass


def transcripts_allowed(cfg: DictConfig) -> bool:
    """`logger.log_transcripts`: auto means only for the synthetic demo corpus (real users' words
    stay out of every tracker unless someone decides otherwise).

    The whole group is checked where the tracker is made (pipeline/tracking/config.py); a stage
    called as a library function may get a config without the setting, which is auto (null)."""
    setting = OmegaConf.select(cfg, "logger.log_transcripts")
    choice("logger.log_transcripts", setting, LOG_TRANSCRIPTS)
    if setting == "auto" or setting is None:
        return str(OmegaConf.select(cfg, "data.source", default="")) == "demo"
    return bool(setting)


def make_tracker(cfg: DictConfig, run_dir: Path, tags: list[str]) -> Tracker:
    """The tracker `logger.name` asks for (W&B, or none), tagged with what the call runs (its
    stages, `review`); the logger group is checked here, before the first stage, whichever it is."""
    if logger_config(cfg).name == "none":
        return NullTracker()
    from pipeline.tracking.wandb_run import make_wandb_tracker

    return make_wandb_tracker(cfg, run_dir, tags=tags)
