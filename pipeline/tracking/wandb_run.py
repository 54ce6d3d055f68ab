"""The W&B implementation of the `Tracker` every stage logs to.

Why it does more than forward calls:
- Offline by default: a run must never block on a network; `make sync` uploads later.
- The run id lives in `<run>/wandb_run_id`, so re-running in the same folder (resume, re-evaluation)
  continues the same W&B run instead of starting a new one.
- ASR and NLU each count their own steps from 0; W&B wants one increasing step per run, so each
  metric prefix (`asr/`, `nlu/`) gets its own step axis (`asr/step`, ...).
- At `finish` the run folder itself is logged (dataset fingerprint + card, models, evaluation) as
  artifacts, whatever the stages logged, so lineage does not depend on each stage remembering.
- Privacy: datasets are logged by reference only (their transcripts and audio never leave the
  machine), and with `logger.log_transcripts` off, text columns are dropped from tables and
  files that contain transcripts (predictions, report) are not uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import redact_identifiers, redacted_override
from pipeline.run_folder import read_build_report
from pipeline.runtime import PipelineError, flatten
from pipeline.tracking import NullTracker, Tracker, transcripts_allowed
from pipeline.tracking.config import logger_config

RUN_ID_FILE = "wandb_run_id"
# Table columns whose names contain one of these hold (parts of) what was said.
TEXT_COLUMN_HINTS = ("transcript", "text", "ref", "hyp", "words", "entit", "value", "slot")
# Files in the run folder that quote transcripts; uploaded only when transcripts may be logged.
TEXT_FILES = ("predictions.jsonl", "report.md", "report.html")
# A model's character LM (pipeline.asr.lm.LM_DIR): its n-grams spell the training transcripts.
TEXT_FOLDERS = ("lm",)


def resolve_mode(mode: str, env: Mapping[str, str]) -> str:
    """`auto` is offline unless the user set WANDB_MODE or has an API key in the environment."""
    if mode != "auto":
        return mode
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if env.get("WANDB_API_KEY") else "offline"


def git_commit(repo: Path) -> str:
    """HEAD's commit, with `-dirty` when tracked files changed; `unknown` outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _sweep_group_and_name(run_dir: Path) -> tuple[str | None, str]:
    """In a Hydra multirun, group the points by sweep folder and name each by its overrides."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                sweep = Path(hc.sweep.dir)
                group = "sweep-" + "_".join(sweep.parts[-2:])
                # Name a point by its overrides, leaving out paths (same for every point, and long)
                # and raw identifiers.
                named = [_for_wandb(o) for o in hc.overrides.task if "/" not in o.split("=", 1)[-1]]
                return group, f"{hc.job.num}:" + ",".join(named)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return None, "-".join(run_dir.parts[-2:])


def _path_digest(value: str) -> str:
    return f"sha256:{hashlib.sha256(value.encode()).hexdigest()[:16]}"


def _for_wandb(override: str) -> str:
    """An override as W&B may record it: identifier constants redacted, and a deletions file named
    by a digest of its path (request files are often named after the account they delete)."""
    key, sep, value = override.partition("=")
    if sep and key.lstrip("+~").rsplit(".", 1)[-1] == "deletions" and value not in ("", "null"):
        return f"{key}={_path_digest(value)}"
    return redacted_override(override)


def _wandb_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config as W&B gets it: `_for_wandb`'s rules (the run folder's config.yaml keeps the
    deletions path, as the run's provenance)."""
    config = redact_identifiers(config)
    data = config.get("data")
    if isinstance(data, dict):
        for entry in [data, *(e for e in data.get("sources") or [] if isinstance(e, dict))]:
            if isinstance(entry.get("deletions"), str) and entry["deletions"]:
                entry["deletions"] = _path_digest(entry["deletions"])
    return config


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "artifact"


def _flat_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in flatten(metrics, sep="/").items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class WandbTracker:
    """One W&B run per run folder; holds the run, the step axes defined so far and what was logged."""

    def __init__(self, run: Any, run_dir: Path, log_transcripts: bool, log_artifacts: bool) -> None:
        self.run = run
        self.run_dir = run_dir
        self.log_transcripts = log_transcripts
        self.log_artifacts = log_artifacts
        self.offline = bool(run.settings._offline)
        self._step_axes: set[str] = set()
        self._logged: dict[str, Any] = {}
        self._inputs: list[str] = []
        self._images = 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is None:
            self.run.log(dict(metrics))
            return
        rows: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            rows.setdefault(key.split("/", 1)[0] if "/" in key else "", {})[key] = value
        for prefix, row in rows.items():
            if not prefix:  # no prefix, no axis of its own: W&B's own step
                self.run.log(row)
                continue
            axis = f"{prefix}/step"
            if axis not in self._step_axes:
                self.run.define_metric(axis)
                self.run.define_metric(f"{prefix}/*", step_metric=axis)
                self._step_axes.add(axis)
            self.run.log({**row, axis: step})

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(dict(metrics))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        keep = [i for i, c in enumerate(columns)
                if self.log_transcripts or not any(h in c.lower() for h in TEXT_COLUMN_HINTS)]
        table = wandb.Table(columns=[columns[i] for i in keep],
                            data=[[row[i] for i in keep] for row in rows])
        self.run.log({key: table})

    def log_image(self, key: str, path: Path) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))})
        self._images += 1

    def log_artifact(
        self, name: str, kind: str, path: Path, metadata: dict[str, Any] | None = None
    ) -> None:
        import wandb

        if not self.log_artifacts:
            return
        path = Path(path)
        # Lineage: a model comes from the dataset; an evaluation from everything logged before it.
        inputs = [i for i in self._inputs if i.endswith(":dataset")] if kind == "model" else self._inputs
        artifact = wandb.Artifact(_artifact_name(name), type=kind,
                                  metadata={**(metadata or {}), "inputs": list(inputs)})
        if kind == "dataset":
            # By reference: the audio and transcripts stay on this machine.
            artifact.add_reference(path.resolve().as_uri(), name="data", checksum=False)
            card = path / "README.md"
            if card.is_file():
                artifact.add_file(str(card), name="README.md")
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if "checkpoints" in file.relative_to(path).parts:
                    continue  # training state, not the model
                parts = file.relative_to(path).parts
                if self.log_transcripts or (file.name not in TEXT_FILES and not set(parts[:-1]) & set(TEXT_FOLDERS)):
                    artifact.add_file(str(file), name=file.relative_to(path).as_posix())
        else:
            artifact.add_file(str(path))
        if kind == "dataset" and not self.offline:
            # Online, the dataset is the run's input (the root of the lineage graph); offline
            # runs cannot use artifacts, so there it is an output, and `inputs` keeps the link.
            self.run.use_artifact(artifact)
        else:
            self.run.log_artifact(artifact)
        self._logged[_artifact_name(name)] = artifact
        self._inputs.append(f"{_artifact_name(name)}:{kind}")

    def use_artifact(self, name: str, kind: str) -> None:
        name = _artifact_name(name)
        if name in self._logged:
            return
        self._inputs.append(f"{name}:{kind}")
        if not self.offline:  # offline runs cannot resolve artifacts; the metadata keeps the link
            import wandb

            try:
                self.run.use_artifact(f"{name}:latest", type=kind)
            except wandb.errors.CommError:
                pass  # never logged to this project: lineage stays in the metadata only

    def finish(self) -> None:
        failed = sys.exc_info()[0] is not None
        try:
            log_run_folder(self, self.run_dir)
        finally:
            import wandb

            self.run.finish(exit_code=1 if failed else 0)
            # finish() can return before wandb-core has flushed the transaction log; teardown
            # waits for it, so the run folder is complete when the stages return.
            wandb.teardown()


def log_run_folder(tracker: WandbTracker, run_dir: Path) -> None:
    """Log what the stages left in the run folder, in lineage order dataset -> models -> evaluation."""
    report = read_build_report(run_dir)
    fingerprint = None
    if report is not None:
        fingerprint = report.get("fingerprint")
        tracker.run.config.update({"dataset_fingerprint": fingerprint}, allow_val_change=True)
        tracker.log_summary({"data/fingerprint": fingerprint,
                             **{f"data/{k}": v for k, v in report.items()
                                if k in ("records_in", "records_kept", "records_quarantined")}})
        dataset_path = Path(report["dataset_path"] or "")  # None when every record was quarantined
        if "dataset" not in tracker._logged and report["dataset_path"] and dataset_path.is_dir():
            tracker.log_artifact("dataset", "dataset", dataset_path, {
                "fingerprint": fingerprint, "splits": report.get("splits", {}),
                "quarantine_reasons": report.get("quarantine_reasons", {})})
    for stage in ("asr", "nlu"):
        folder = run_dir / stage
        name = f"{stage}-model"
        if folder.is_dir() and name not in tracker._logged:
            metrics_file = folder / f"{stage}_metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
            tracker.log_artifact(name, "model", folder, {
                "dataset_fingerprint": fingerprint, "metrics": _flat_numbers(metrics)})
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = _flat_numbers(json.loads(metrics_path.read_text()))
        tracker.log_summary(metrics)
        plots = [*sorted(run_dir.glob("*.png")), *sorted(run_dir.glob("plots/*.png"))]
        if tracker._images == 0:  # the eval stage did not log its plots itself
            for png in plots:
                tracker.log_image(f"plots/{png.stem}", png)
        if "evaluation" not in tracker._logged:
            files = [metrics_path, *plots]
            files += [run_dir / f for f in TEXT_FILES if tracker.log_transcripts and (run_dir / f).is_file()]
            _log_files(tracker, "evaluation", "evaluation", files, run_dir,
                       {"dataset_fingerprint": fingerprint, "metrics": metrics})


def _log_files(tracker: WandbTracker, name: str, kind: str, files: list[Path], root: Path,
               metadata: dict[str, Any]) -> None:
    import wandb

    if not tracker.log_artifacts:
        return
    artifact = wandb.Artifact(name, type=kind, metadata={**metadata, "inputs": list(tracker._inputs)})
    for file in files:
        artifact.add_file(str(file), name=file.relative_to(root).as_posix())
    tracker.run.log_artifact(artifact)
    tracker._logged[name] = artifact


def _init(wandb: Any, **kwargs: Any) -> Any:
    """wandb.init, or None when it refuses for want of an API key (a traceback from deep in wandb)."""
    try:
        return wandb.init(**kwargs)
    except wandb.errors.UsageError as err:
        if "api key" not in str(err).lower():
            raise
        return None


def make_wandb_tracker(cfg: DictConfig, run_dir: Path, tags: list[str]) -> Tracker:
    """Start (or resume) the W&B run of this run folder; only rank 0 logs under torchrun."""
    logger = logger_config(cfg)  # every rank: a bad setting fails the same way everywhere
    if int(os.environ.get("RANK", "0")) != 0:
        return NullTracker()
    mode = resolve_mode(logger.mode, os.environ)
    if mode == "disabled":
        return NullTracker()
    import wandb
    from wandb.sdk.lib.runid import generate_id

    run_dir = Path(run_dir)
    id_file = run_dir / RUN_ID_FILE
    resumed = id_file.is_file()
    run_id = id_file.read_text().strip() if resumed else generate_id()
    id_file.write_text(run_id + "\n")
    group, name = _sweep_group_and_name(run_dir)
    config = _wandb_config(OmegaConf.to_container(cfg, resolve=True))
    config["git_commit"] = git_commit(Path(__file__).resolve().parents[2])
    # A later call on the run (evaluate.py run=, make review) keeps the entry's name, group and tags
    # as its training gave them (a sweep's point name, its stages), unless the logger sets them.
    # W&B records the command line (sys.argv) with the run, where an identifier constant was typed.
    argv = sys.argv
    sys.argv = [*argv[:1], *map(_for_wandb, argv[1:])]
    try:
        run = _init(
            wandb,
            project=logger.project,
            entity=logger.entity or None,
            group=logger.group or (None if resumed else group),
            name=None if resumed else name,
            job_type=logger.job_type,
            tags=sorted({*map(str, tags), *logger.tags}) if not resumed or logger.tags else None,
            config=config,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(run_dir),
            settings=wandb.Settings(console=logger.console, silent=True),
        )
    finally:
        sys.argv = argv
    if run is None:
        raise PipelineError(f"logger.mode resolves to online (logger.mode={logger.mode}, WANDB_MODE="
                            f"{os.environ.get('WANDB_MODE', '')!r}) and W&B has no API key: set WANDB_API_KEY or run "
                            "`wandb login`, or log offline (logger.mode=offline) and upload later with `make sync`")
    return WandbTracker(run, run_dir, transcripts_allowed(cfg), logger.log_artifacts)
