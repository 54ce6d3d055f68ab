"""Typed config groups: each group's settings as a dataclass, checked when a job starts.

Hydra refuses a misspelt key on the command line, but not a wrong type (`nlu.epochs=x`), a value
outside a fixed set, or an unknown key in a user's own YAML file; without a check those surface
deep inside a stage, after the earlier stages have run for an hour. `checked` turns a group into its
dataclass (converting `"3"` to 3 where the field says int) and raises a `PipelineError` that names
the key and what it accepts. The YAML files hold the groups' default values: these dataclasses
declare types and allowed values only.

Also here, as every job records its config: which keys hold raw identifiers, and their redaction in
the records of a run (config.yaml, Hydra's `.hydra/`, W&B).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from pipeline.runtime import PipelineError, write_text_atomic

T = TypeVar("T")


def checked(node: Any, schema: type[T], group: str, defaults: str | None = None) -> T:
    """`node` (a config group) as an instance of the dataclass `schema`, or a PipelineError naming
    `<group>.<key>`: an unknown key (with the known ones), a wrong type, a missing value, or (from the
    schema's `validate`) a value outside its allowed set. `defaults` names where the group's defaults
    live, when not in a folder of options `conf/<group>/` (the jobs' groups: conf/retrain.yaml)."""
    where_defaults = defaults or f"conf/{group.split('.')[0]}/"
    if node is None:
        raise PipelineError(f"the config has no `{group}` group; add it to the defaults list (see {where_defaults})")
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except ConfigKeyError as err:
        key = f"{group}.{err.full_key}" if err.full_key else group
        parent = key.rsplit(".", 1)[0]
        where = schema.__module__.replace(".", "/") + ".py"
        raise PipelineError(
            f"{key} is not a setting of {parent}; known: {', '.join(_field_names(schema, parent, group))} "
            f"(a new setting is declared in {where} and given its default in {where_defaults})"
        ) from None
    except MissingMandatoryValue as err:
        raise PipelineError(
            f"{group}.{err.full_key} has no value; set it in {where_defaults} or on the command line"
        ) from None
    except ValidationError as err:
        expected = _field_type(schema, f"{group}.{err.full_key}", group)
        raise PipelineError(
            f"{group}.{err.full_key}={_value(values, str(err.full_key))!r} is not a valid {expected}"
        ) from None
    _validate(typed)
    return typed  # type: ignore[return-value]


def with_checked(cfg: DictConfig, group: str, schema: type) -> DictConfig:
    """A copy of `cfg` whose `group` holds the checked values, so that a stage reads what the check
    read: `asr.compile='false'` (a quoted override, an `${oc.env:...}`) is the string "false" in the
    raw config, true to Python, and False once checked."""
    typed = checked(cfg.get(group), schema, group)
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out[group] = OmegaConf.create(dataclasses.asdict(typed))
    return out


def did_you_mean(name: str, known: list[str]) -> str:
    """"; did you mean a, b?" for a misspelt name, or "" when no known one is close."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def check_builds(key: str, what: str, build: Callable[[], Any]) -> Any:
    """Build a model from a config group (`asr.model_config`, `nlu.encoder_config`) on torch's meta
    device, which costs no memory, so that the checks transformers makes when it builds one (a head
    count that does not divide the width, conv lists of unequal length) run before the first stage.
    Returns what `build` returns."""
    import torch

    try:
        with torch.device("meta"):
            return build()
    except Exception as err:  # noqa: BLE001 - whatever transformers refuses is this setting's problem
        raise PipelineError(f"{key}: transformers cannot build {what} from it: {' '.join(str(err).split())}") from None


def check_device(key: str, device: str) -> None:
    """A device setting (`trainer.device`, `eval.device`, `review.device`): auto, cpu, cuda or cuda:N."""
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise PipelineError(f"{key}={device!r} is not one of: auto, cpu, cuda, cuda:N")


def check_seed(seed: Any) -> None:
    """`seed` is the one top-level setting every job reads outside a typed group."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PipelineError(f"seed={seed!r}: give a whole number, e.g. seed=1234")


def check_top_level(cfg: DictConfig, known: tuple[str, ...], config_file: str) -> None:
    """The top level is no typed group, so a misspelt `stages` or `seed` in a user's own YAML (or a
    `+key=` on the command line) would be ignored: every stage would run, an hour of it, with the
    default seed."""
    unknown = sorted(k for k in cfg if k not in known and k != "hydra")
    if unknown:
        raise PipelineError(f"{unknown[0]} is not a top-level setting; known: {', '.join(known)} (the defaults "
                            f"are in {config_file}; a group's settings go under its name, e.g. asr.learning_rate)")


def _validate(obj: Any) -> None:
    """Each dataclass's own `validate` (allowed values, ranges), nested groups first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value)
    if hasattr(obj, "validate"):
        obj.validate()


def choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """For a schema's `validate`: refuse a value outside a fixed set, naming the set."""
    if value not in allowed:
        raise PipelineError(f"{key}={value!r} is not one of: {', '.join(map(str, allowed))}")


def _unwrap(hint: Any, item: bool) -> Any:
    """`Optional[X]` as X; with `item` (a key like `sources[0]`), `list[X]` as X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    if item and typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    return hint


def _inner(schema: type, path: list[str]) -> type | None:
    """The dataclass of a nested group (`ddp` inside `trainer`, an entry `sources[0]` of a list, a
    value `gate.wer` of a mapping), or None."""
    names = iter(path)
    for name in names:
        hint = _unwrap(typing.get_type_hints(schema).get(name.split("[")[0]), "[" in name)
        if typing.get_origin(hint) is dict:  # the next part of the path is a key of the mapping
            hint = typing.get_args(hint)[1]
            if next(names, None) is None:
                return None
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        schema = hint
    return schema


def _path(key: str, group: str) -> list[str]:
    """The parts of `key` below `group` (which may itself hold dots: `data.split`)."""
    rest = key[len(group) + 1:] if key.startswith(group + ".") else ""
    return rest.split(".") if rest else []


def _field_names(schema: type, parent: str, group: str) -> list[str]:
    inner = _inner(schema, _path(parent, group))
    return [f.name for f in dataclasses.fields(inner)] if inner else []


def _field_type(schema: type, key: str, group: str) -> str:
    *path, name = _path(key, group) or [""]
    inner = _inner(schema, path)
    hint = typing.get_type_hints(inner).get(name.split("[")[0]) if inner else None
    if hint is None:
        return "value"
    hint = _unwrap(hint, "[" in name)  # Optional[float] is a float (or null); lm_weights[1] an item of the list
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _value(values: Any, key: str) -> Any:
    for part in key.replace("[", ".").replace("]", "").split("."):
        if isinstance(values, list) and part.isdigit() and int(part) < len(values):
            values = values[int(part)]
        elif isinstance(values, dict) and part in values:
            values = values[part]
        else:
            return None
    return values


# The trainer group: settings shared by the ASR and NLU training loops (conf/trainer/default.yaml).

@dataclass
class DDPConfig:
    backend: str = MISSING
    timeout_minutes: float = MISSING

    def validate(self) -> None:
        choice("trainer.ddp.backend", self.backend, ("auto", "nccl", "gloo"))


@dataclass
class ProfileConfig:
    enabled: bool = MISSING
    wait: int = MISSING
    warmup: int = MISSING
    active: int = MISSING


@dataclass
class TrainerConfig:
    device: str = MISSING
    precision: str = MISSING
    num_workers: Any = MISSING  # auto | N
    log_every: int = MISSING
    ddp: DDPConfig = field(default_factory=DDPConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def validate(self) -> None:
        check_device("trainer.device", self.device)
        choice("trainer.precision", self.precision, ("auto", "fp32", "fp16", "bf16"))
        if self.log_every < 1:
            raise PipelineError(f"trainer.log_every={self.log_every}: log at least every 1 step")


# ----------------------------------------------------------------------------- the config as recorded

# Config keys whose values are raw identifiers (`data.constants.device_serial=...` gives every record
# of a source one device, so that a deletion request for it matches): recorded and uploaded only as
# REDACTED. pipeline.data.privacy.RAW_IDS names the same fields; this module sits below the data layer.
IDENTIFIER_KEYS = ("account_id", "device_serial", "annotator_id")
REDACTED = "(redacted)"
# Hydra's record of a run's config and command line, written before any of the pipeline's code runs.
HYDRA_RECORD = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")


def redact_identifiers(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a plain container, changed in place) with every identifier constant (`data.constants`,
    `data.sources[i].constants`) replaced by REDACTED."""
    data = config.get("data")
    if not isinstance(data, dict):
        return config
    for entry in [data, *(e for e in data.get("sources") or [] if isinstance(e, dict))]:
        constants = entry.get("constants")
        if isinstance(constants, dict):
            for key in IDENTIFIER_KEYS:
                if constants.get(key) is not None:
                    constants[key] = REDACTED
    return config


def redacted_override(override: str) -> str:
    """`data.constants.account_id=amzn1.account.X` -> `data.constants.account_id=(redacted)`; so is an
    override whose value sets one (`data.sources=[{..., constants: {account_id: X}}]`). A column
    mapping (`data.columns.account_id=speaker_id`) names no identifier and stays."""
    key, sep, _ = override.partition("=")
    hides = "constants" in override and any(k in override for k in IDENTIFIER_KEYS)
    return f"{key}={REDACTED}" if sep and hides else override


def submitit_pickles(config: Any) -> list[Path]:
    """The pickles the submitit launcher (`hydra/launcher=slurm`) keeps of a sweep's jobs: each holds
    the job's composed config, identifier constants typed on the command line included."""
    launcher = OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None)
    if not launcher:
        return []
    root = Path(str(launcher).split("%j", 1)[0])
    return sorted(root.rglob("*.pkl")) if root.is_dir() else []


class SweepRecords(Callback):
    """Hydra callback (conf/config.yaml): once a sweep's jobs have all returned, submitit's pickles of
    them are removed; its logs and sbatch scripts stay. A job reads its pickle when it starts (and on a
    requeue), so they cannot go earlier, nor be redacted."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for path in submitit_pickles(config):
            path.unlink(missing_ok=True)


def redact_hydra_record(folder: Path) -> None:
    """Redact identifier constants in the files Hydra wrote into a run folder (HYDRA_RECORD) or a
    sweep folder (multirun.yaml): the composed config and the command line as typed."""
    for path in [folder / name for name in HYDRA_RECORD] + [folder / "multirun.yaml"]:
        if not path.is_file():
            continue
        record = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(record, list):  # overrides.yaml
            redacted: Any = [redacted_override(o) if isinstance(o, str) else o for o in record]
        else:
            redacted = redact_identifiers(copy.deepcopy(record))
            hydra = redacted.get("hydra")
            task = (hydra.get("overrides") or {}).get("task") if isinstance(hydra, dict) else None
            if isinstance(task, list) and any(redacted_override(o) != o for o in task):
                hydra["overrides"]["task"] = [redacted_override(o) for o in task]
                if isinstance(hydra.get("job"), dict):  # the overrides joined, one of them a raw id
                    hydra["job"]["override_dirname"] = REDACTED
        if redacted != record:
            write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(redacted)))
