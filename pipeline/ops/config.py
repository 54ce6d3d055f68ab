"""The retraining and erasure settings of conf/retrain.yaml (`retrain`, `erase`) as types: what
`pipeline.config.checked` holds them to.

Checked where a job starts (`retrain.py`, `make erase`, `make audit-deletions`): without it a
`retrain.gate_policy=maybe` surfaced only at the gate, after an hour of training, and a misspelt key
in a user's YAML was silently ignored. A new setting is declared here and given its default in
conf/retrain.yaml (the one place for default values).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, open_dict

from pipeline.config import REDACTED, checked, choice, redacted_override
from pipeline.data.privacy import PSEUDONYM_HEX
from pipeline.ops.gate import GATE_LIMITS, GATE_POLICIES, rule_problem
from pipeline.runtime import PipelineError, fail
from pipeline.tracking.config import LoggerConfig, logger_config

DEFAULTS = "conf/retrain.yaml"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# `erase.wandb_online`: auto follows logger.mode; the words are what the job has always accepted.
WANDB_ONLINE = ("auto", "true", "false", "on", "off", "yes", "no")


@dataclass
class GateRule:
    """One rule of `retrain.gate`: a metric and how far it may move the wrong way (pipeline/ops/gate.py)."""

    metric: str = MISSING
    # Exactly one of the two; the other is left out of the rule (None here).
    max_increase: Optional[float] = None
    max_decrease: Optional[float] = None

    def as_rule(self) -> dict[str, Any]:
        """The rule as pipeline/ops/gate.py reads it: the metric and its one limit."""
        return {"metric": self.metric, **{k: getattr(self, k) for k in GATE_LIMITS if getattr(self, k) is not None}}


@dataclass
class RetrainConfig:
    inbox: str = MISSING
    corpus_dir: str = MISSING
    registry_dir: str = MISSING
    force: bool = MISSING
    promote: Optional[str] = MISSING    # a model id: promote it instead of training
    rollback: bool = MISSING
    gate: dict[str, GateRule] = MISSING
    gate_policy: str = MISSING

    def validate(self) -> None:
        choice("retrain.gate_policy", self.gate_policy, GATE_POLICIES)
        if not self.gate:
            # Else every candidate passes ("every gated metric passes: " and nothing after it).
            raise PipelineError("retrain.gate is empty: with no rule every candidate would be promoted; keep the "
                                "rules of conf/retrain.yaml, or give at least one with "
                                "+retrain.gate.<name>={metric: ..., max_increase: ...} (max_decrease for a metric "
                                "that is better higher)")
        for name, rule in self.gate.items():
            problem = rule_problem(name, rule.as_rule())
            if problem:
                raise PipelineError(problem)

    def gate_rules(self) -> dict[str, dict[str, Any]]:
        return {name: rule.as_rule() for name, rule in self.gate.items()}


@dataclass
class EraseConfig:
    cache_root: str = MISSING
    outputs: str = MISSING
    multirun: str = MISSING
    receipts_dir: str = MISSING
    wandb_online: Any = MISSING         # auto | true | false
    retire_key: Any = None              # a lost pseudonym key's id (key_<16 hex>): remove what was made under it

    def validate(self) -> None:
        choice("erase.wandb_online", self.online_setting(), WANDB_ONLINE)
        if self.retire_key is not None and not re.fullmatch(rf"key_[0-9a-f]{{{PSEUDONYM_HEX}}}", str(self.retire_key)):
            raise PipelineError(f"erase.retire_key={self.retire_key!r}: give the id of the lost key, as a model record's "
                                "`key_id` or a pseudonym_key_id file names it (key_ and 16 hex digits), or leave it null")

    def online_setting(self) -> str:
        """`true`, `false` and `auto` however they were written (a YAML bool, `off`, `Yes`)."""
        return str(self.wandb_online).lower()


@dataclass
class JobConfig:
    """What the retraining and erasure jobs read beyond the stages' own groups."""

    retrain: RetrainConfig
    erase: EraseConfig
    logger: LoggerConfig


def retrain_config(cfg: DictConfig) -> RetrainConfig:
    return checked(cfg.get("retrain"), RetrainConfig, "retrain", DEFAULTS)


def erase_config(cfg: DictConfig) -> EraseConfig:
    return checked(cfg.get("erase"), EraseConfig, "erase", DEFAULTS)


def job_config(cfg: DictConfig) -> JobConfig:
    """Every group a job reads, checked at its start: a PipelineError naming the key otherwise."""
    return JobConfig(retrain_config(cfg), erase_config(cfg), logger_config(cfg))


def load_config(overrides: list[str], config_name: str = "retrain", config_dir: Path = CONF_DIR) -> DictConfig:
    """Compose the Hydra config outside a Hydra app (`make erase`, the audit, a refused command line),
    with `${hydra:runtime.*}` pointing at the cwd."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    return cfg


def is_config_error(err: Exception) -> bool:
    """A problem the user fixes in the config or command line (exit 2), not a bug."""
    return isinstance(err, PipelineError) or type(err).__module__.split(".")[0] in ("hydra", "omegaconf")


def command_line_problem(overrides: list[str], config_name: str, config_dir: Path = CONF_DIR) -> tuple[str | None, list[str]]:
    """Why a command line does not compose a config (a misspelt key, a missing group option), in one
    line naming each override that fails, and the overrides that do compose; (None, overrides) when
    it composes."""
    from hydra.core.global_hydra import GlobalHydra

    def composed(args: list[str]) -> DictConfig:
        GlobalHydra.instance().clear()  # the Hydra app that refused the command line initialised it
        return load_config(args, config_name, config_dir)

    def why(err: Exception) -> str:
        lines = [str(e).split("Config search path")[0].strip().splitlines()
                 for e in (err, err.__cause__) if e is not None]
        return " ".join(" ".join(dict.fromkeys(" ".join(part) for part in lines if part)).split())

    def hidden(text: str) -> str:  # an identifier constant's value never shows (pipeline.config.redacted_override)
        for arg in overrides:
            if redacted_override(arg) != arg and arg.partition("=")[2]:
                text = text.replace(arg.partition("=")[2], REDACTED)
        return text

    try:
        composed(overrides)
        return None, list(overrides)
    except Exception as err:  # noqa: BLE001 - any composition failure is the user's to fix
        whole = why(err)
    accepted: list[str] = []
    refused: list[str] = []
    # Group choices (`data=hf`) first, as Hydra applies them: the keys they bring are then there.
    for arg in sorted(overrides, key=lambda a: "." in a.partition("=")[0]):
        try:
            composed([*accepted, arg])
            accepted.append(arg)
        except Exception as err:  # noqa: BLE001
            refused.append(f"{redacted_override(arg)}: {why(err)}")
    return hidden("the command line does not compose a config: " + ("; ".join(refused) or whole)), accepted


def exit_if_refused(stop: SystemExit, overrides: list[str], config_name: str) -> None:
    """For `train.py` and `evaluate.py` when their Hydra app exited: a command line Hydra refused
    exits 2 with one line, as every config error does (Hydra alone exits 1 after its message);
    anything else (the job's own exit, Hydra's flags) exits as it was."""
    if stop.code in (0, None) or any(arg.startswith(("-", "hydra.mode=")) for arg in overrides):
        raise stop  # Hydra's flags and sweeps: Hydra's answer (or the job's) stands
    problem, _ = command_line_problem(overrides, config_name)
    if problem is None:
        raise stop
    fail(problem)
