"""The `logger` config group (conf/logger/*.yaml) as types: what `pipeline.config.checked` holds it to.

Checked where a tracker is made (pipeline/stages.py, the W&B tracker itself) and where a job starts
that reads the W&B settings (the erasure job), so `logger.mode=sometimes` fails in a second with the
key named, not as a W&B error after training. A new setting is declared here and given its default
in conf/logger/wandb.yaml (`logger=none` starts from it and changes only the name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from pipeline.config import checked, choice
from pipeline.runtime import PipelineError

LOGGERS = ("none", "wandb")
MODES = ("auto", "offline", "online", "disabled")
# null is auto, as it always was; pipeline.tracking.transcripts_allowed decides what auto means.
LOG_TRANSCRIPTS = ("auto", True, False, None)
# What wandb.Settings(console=...) accepts.
CONSOLE = ("auto", "off", "wrap", "redirect", "wrap_raw", "wrap_emu")


@dataclass
class LoggerConfig:
    name: str = MISSING
    mode: str = MISSING                 # auto: offline unless WANDB_MODE or WANDB_API_KEY says otherwise
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING      # null: runs of one multirun are grouped by their sweep folder
    job_type: str = MISSING
    tags: list[str] = MISSING
    log_transcripts: Any = MISSING      # auto | true | false
    log_artifacts: bool = MISSING
    console: str = MISSING

    def validate(self) -> None:
        choice("logger.name", self.name, LOGGERS)
        choice("logger.mode", self.mode, MODES)
        choice("logger.log_transcripts", self.log_transcripts, LOG_TRANSCRIPTS)
        choice("logger.console", self.console, CONSOLE)
        if not self.project.strip():
            raise PipelineError("logger.project is empty: name the W&B project the runs go to (conf/logger/wandb.yaml: "
                                "voice-pipeline)")


def logger_config(cfg: DictConfig) -> LoggerConfig:
    """The run's `logger` group, typed and checked (a PipelineError naming the key otherwise)."""
    return checked(cfg.get("logger"), LoggerConfig, "logger")
