"""The main job: run the configured stages in order inside one run folder.

Each stage is a plain function of (config, run folder, tracker) that writes its outputs under the
run folder, where the next stage reads them. This module decides the order, keeps the run's record
of its config (config.yaml, and `evaluate.py run=`'s recorded settings) and makes the tracker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline import run_folder
from pipeline.config import TrainerConfig, check_seed, check_top_level, checked, redact_hydra_record, redact_identifiers
from pipeline.runtime import PipelineError, configure_environment, requested_workers, seed_everything
from pipeline.tracking import make_tracker

KNOWN_STAGES = ("data", "asr", "nlu", "eval", "review")
# conf/config.yaml's top level (and conf/retrain.yaml's, whose jobs run these stages too).
TOP_LEVEL = ("stages", "seed", "run_dir", "cache_dir", "privacy", "paths", "data", "asr", "nlu", "trainer",
             "logger", "eval", "review", "retrain", "erase")
# The config keys each stage after `data` is made with (recorded_config).
STAGE_KEYS = {"asr": ("asr", "trainer", "seed"), "nlu": ("nlu", "trainer", "seed"), "eval": ("eval",),
              "review": ("review",)}


def run_stages(cfg: DictConfig, config_file: str = "conf/config.yaml") -> dict[str, Any]:
    if cfg.get("run_dir"):  # first: a config error below must not leave a raw id in Hydra's files
        redact_hydra_records(Path(cfg.run_dir))
    check_top_level(cfg, TOP_LEVEL, config_file)
    if isinstance(cfg.stages, str):  # stages=data: a list is meant (stages=[] resolves and tracks only)
        raise PipelineError(f"stages={cfg.stages!r}: give a list of stages, e.g. stages=[data] or stages=[data,asr]; "
                            f"known: {list(KNOWN_STAGES)}")
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in KNOWN_STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown} in stages={stages}; known: {list(KNOWN_STAGES)}")
    check_config(cfg, stages)
    run_dir = Path(cfg.run_dir).resolve()
    configure_environment(run_dir, Path(cfg.cache_dir).resolve())
    seed_everything(int(cfg.seed))
    # Stages without `data` continue a run folder: checked before this call writes anything into it.
    if stages and "data" not in stages and run_folder.dataset_path(run_dir) is None:
        review = "; to review a finished run: make review RUN=<run folder> (python -m pipeline.review <run folder>)"
        raise PipelineError(
            f"stages {stages} need a built dataset, but {run_dir}/{run_folder.BUILD_REPORT} does not exist; "
            "add `data` to stages, or pass hydra.run.dir=<a run folder whose data stage finished>"
            + (review if "review" in stages else "")
        )

    # `eval` without a training stage scores the models already in the folder: none is an error now,
    # not after the data stage.
    if "eval" in stages and not {"asr", "nlu"} & set(stages) and not any(
            (run_dir / kind / "config.json").is_file() for kind in ("asr", "nlu")):
        raise PipelineError(f"stages {stages} evaluate the run's models, and {run_dir} holds none (no asr/ or nlu/ "
                            "model): add the stages that train them, e.g. stages=[data,asr,nlu,eval], or pass "
                            "hydra.run.dir=<a run folder with models>")

    with run_folder.writing(run_dir):  # `make erase` waits for a run built on erased data to end
        return _run(cfg, stages, run_dir)


def _run(cfg: DictConfig, stages: list[str], run_dir: Path) -> dict[str, Any]:
    from pipeline.distributed import barrier, leave_group, place

    # Under torchrun every worker runs this function; the process group is joined first so that
    # rank 0 alone builds the dataset and evaluates while the others wait for it.
    placement = place(cfg.trainer) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    is_main = placement is None or placement.is_main
    # A new run records its config first (an interrupted run still has it); a call continuing a
    # run records its stages' settings only once they succeed, so a failed retry leaves the record
    # describing the models that are there.
    record = recorded_config(cfg, run_dir, stages)
    continuing = "data" not in stages and (run_dir / "config.yaml").is_file()
    if is_main and not continuing:
        write_record(run_dir, record)
    if continuing:  # the stages and the tracker see the run as it was made, not this call's defaults
        cfg = on_record(cfg, record, _command_line_keys(), ("stages", *CALL_KEYS))
    tracker = make_tracker(cfg, run_dir, stages)
    results: dict[str, Any] = {}
    try:
        if "data" in stages:
            from pipeline.data.build import run_data_stage

            if is_main:
                results["data"] = run_data_stage(cfg, run_dir, tracker)
                from pipeline.data.label_noise import copy_manifest

                copy_manifest(cfg, run_dir)  # the demo's planted annotation errors, if any
            if placement is not None:
                barrier(placement, "build the dataset")
        dataset_path = run_folder.dataset_path(run_dir)
        if "asr" in stages:
            from pipeline.asr.train import run_asr_stage

            results["asr"] = run_asr_stage(cfg, run_dir, dataset_path, tracker)
        if "nlu" in stages:
            from pipeline.nlu.train import run_nlu_stage

            results["nlu"] = run_nlu_stage(cfg, run_dir, dataset_path, tracker)
        if "eval" in stages:
            from pipeline.eval.run import run_eval_stage

            if is_main:
                results["eval"] = run_eval_stage(cfg, run_dir, dataset_path, tracker)
            if placement is not None:
                barrier(placement, "evaluate")
        if "review" in stages and is_main:
            from pipeline.review.stage import run_review_stage

            # With the run's recorded config, as `make review`: the NLU backbone and wake word the run's
            # models were made with, not this call's defaults.
            results["review"] = run_review_stage(record, run_dir, dataset_path, tracker)
        if is_main and continuing:
            write_record(run_dir, record)
    finally:
        tracker.finish()
        if placement is not None:
            leave_group()
    return results


def recorded_config(cfg: DictConfig, run_dir: Path, stages: list[str]) -> DictConfig:
    """What <run>/config.yaml is to say after this call: the record of how the run's dataset and
    models were made (`make review` and `make compare` read it). A call without `data` continues a
    run an earlier call made: it records the groups of the stages it runs (`stages=[nlu] nlu=tiny`
    retrains the NLU) and keeps the rest, so `stages=[eval]` or `stages=[review]` with the defaults
    leaves the run's nlu=tiny as it is."""
    path = run_dir / "config.yaml"
    if "data" in stages or not path.is_file():
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    recorded = read_record(path)
    current = OmegaConf.to_container(cfg, resolve=True)
    for key in dict.fromkeys(key for stage in stages for key in STAGE_KEYS[stage]):
        if key in current:
            recorded[key] = current[key]
    return recorded


def read_record(path: Path) -> DictConfig:
    """A run's config.yaml, or an error that says how to go on without it."""
    try:
        recorded = OmegaConf.load(path)
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{path} is not a readable config ({err.__class__.__name__}); restore it, "
                            "or re-run the stages with `data` in a new run folder") from err
    if not isinstance(recorded, DictConfig):
        raise PipelineError(f"{path} holds no mapping; restore it, or re-run the stages with `data` in a new run folder")
    return recorded


# What `evaluate.py run=<run>` takes from the call rather than from the run's record: where things
# are, and how to log.
CALL_KEYS = ("run", "asr_model", "nlu_model", "dataset", "run_dir", "cache_dir", "paths", "logger", "hydra")


def with_recorded_settings(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """`evaluate.py run=<run>`: the run's recorded settings (its config.yaml: the wake word, LM
    weights, background and bootstrap it was evaluated with, its data), with what `overrides` (the
    command line) sets on top. conf/evaluate.yaml's defaults would re-score a run made with
    `eval.wake_word=computer` on "alexa", with other LM weights, and give its continued W&B entry the
    config of placeholder models. An `eval` setting newer than the run keeps its default."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return cfg
    return on_record(cfg, read_record(path), override_keys(overrides), CALL_KEYS)


def on_record(cfg: DictConfig, recorded: DictConfig, given: list[str], call_keys: tuple[str, ...]) -> DictConfig:
    """`cfg` with each setting of `recorded` (a run's record) in place of its own, but for `call_keys`
    and the keys the command line sets (`given`: `data=demo_speech` keeps the call's whole group,
    `eval.wake_word=computer` that one setting)."""
    with open_dict(cfg):
        for key, value in recorded.items():
            if key in call_keys or key in given:
                continue
            if key == "eval" and isinstance(cfg.get("eval"), DictConfig):
                value = OmegaConf.merge(cfg.eval, value)
            kept = {g: OmegaConf.select(cfg, g) for g in given if g.startswith(f"{key}.")}
            cfg[key] = value
            for g, v in kept.items():
                OmegaConf.update(cfg, g, v, force_add=True)
    return cfg


def override_keys(overrides: list[str]) -> list[str]:
    """The keys a command line's overrides set (`+a.b=1`, `~a`: `a.b`, `a`)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides]


def _command_line_keys() -> list[str]:
    """The keys this job's command line sets (Hydra's overrides), none outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return override_keys(list(HydraConfig.get().overrides.task)) if HydraConfig.initialized() else []


def redact_hydra_records(run_dir: Path) -> None:
    """Identifier constants out of the files Hydra wrote for this job (pipeline.config.redact_hydra_record):
    the run folder's `.hydra/` and, in a sweep, its multirun.yaml. Rank 0 only, under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    redact_hydra_record(run_dir)
    sweep = hydra_sweep_dir()
    if sweep is not None:
        redact_hydra_record(sweep)


def hydra_sweep_dir() -> Path | None:
    """The sweep folder of a Hydra multirun job (where its multirun.yaml is), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def write_record(run_dir: Path, record: DictConfig) -> None:
    """config.yaml, rewritten only when it changes (a folder named otherwise than `<date>/<time>` and
    without Hydra's record is ordered by its time in `make compare`); an
    identifier constant shows as redacted (the build has read it already)."""
    path = run_dir / "config.yaml"
    text = OmegaConf.to_yaml(redact_identifiers(OmegaConf.to_container(record, resolve=False)))
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def check_config(cfg: DictConfig, stages: list[str]) -> None:
    """The typed groups the chosen stages read (pipeline.config.checked), all before the first stage:
    a wrong type or value fails in a second, not after an hour of ASR training."""
    from pipeline.asr.config import ASRConfig
    from pipeline.data.config import DataConfig
    from pipeline.eval.config import EvalConfig
    from pipeline.nlu.config import NLUConfig
    from pipeline.review.config import ReviewConfig

    if "seed" in cfg:
        check_seed(cfg.seed)
    if "data" in stages:  # `privacy` too, when the data stage (always the first) starts
        data = checked(cfg.get("data"), DataConfig, "data")
        kinds = {data.source} if data.sources is None else {entry.source for entry in data.sources}
        if kinds == {"massive_text"} and "asr" in stages:
            raise PipelineError("data.source=massive_text has no audio, which the asr stage needs; train the NLU "
                                "alone on it: stages=[data,nlu] (add eval to score it)")
    if "asr" in stages:
        checked(cfg.get("asr"), ASRConfig, "asr")
    if "asr" in stages or "nlu" in stages:
        checked(cfg.get("trainer"), TrainerConfig, "trainer")
        # The device, precision and loader workers asked for: refused here, not after the data build.
        from pipeline.distributed import resolve_device  # torch: here, so the errors above show without it

        resolve_device(cfg.trainer)
        requested_workers(cfg.trainer)
    if "nlu" in stages:
        nlu = checked(cfg.get("nlu"), NLUConfig, "nlu")
        if nlu.asr_hypotheses and "data" in stages and "asr" not in stages:  # a new run folder: no ASR model in it
            raise PipelineError("nlu.asr_hypotheses=true reads the run's ASR model, which stages without `asr` do not "
                                "train: add it (stages=[data,asr,nlu]) or set nlu.asr_hypotheses=false")
    if "eval" in stages:
        checked(cfg.get("eval"), EvalConfig, "eval")
    if "review" in stages:
        checked(cfg.get("review"), ReviewConfig, "review")
