"""Reading what a run folder (or a published dataset) says about itself.

The data stage writes `build_report.json` twice: into the published dataset folder and, with the
`dataset_path` it was published at, into the run folder. Everything downstream (the later stages,
`evaluate.py`, retraining, the W&B run record) finds the dataset through it, so it is read here
only, with one set of errors.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.runtime import PipelineError, kept_from_children

BUILD_REPORT = "build_report.json"
# Beside it in the run folder: a line per clip of the dataset the build made, its utterance's pseudonym
# first, then its account's, device's and original's, so erasure finds the run's models (and the
# registry's) of a deleted clip when the cached dataset is gone (a cache cleaned to free disk) and
# the build report's fingerprint alone says nothing. The run's `pseudonym_key_id` (privacy.KEY_ID_FILE)
# names the key those pseudonyms were made with.
DATASET_CLIPS = "dataset_clips.txt"
# The build report's field naming the key (privacy.key_id) the dataset's pseudonyms were made with: the
# fingerprint hashes it in but cannot be read back, and erasure lists a cached dataset's clips into a run
# folder later only under that key (pipeline.ops.erase.write_missing_clip_lists). Reports of builds from
# before it was kept have none.
REPORT_KEY_ID = "pseudonym_key_id"
# The build's record of every input record it kept out, in the dataset folder and copied beside the report.
QUARANTINE_LINES = "quarantine.jsonl"
EVAL_CONFIG_DIR = ".hydra-evaluate"  # evaluate.py's config folder (conf/evaluate.yaml: hydra.output_subdir)


def read_build_report(folder: Path) -> dict[str, Any] | None:
    """The build report in `folder` (a run folder or a dataset folder); None when there is none."""
    path = Path(folder) / BUILD_REPORT
    if not path.is_file():
        return None
    try:
        text = path.read_text()
        if not text.strip():
            raise PipelineError(f"{path} is empty; re-run the `data` stage to rewrite it")
        report = json.loads(text)
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path} is not readable JSON ({err}); re-run the `data` stage to rewrite it") from err
    if not isinstance(report, dict):
        raise PipelineError(f"{path} holds no JSON object; re-run the `data` stage to rewrite it")
    return report


def dataset_path(run_dir: Path) -> Path | None:
    """The dataset a run folder's stages read, from its build report; None when no build ran there.

    A build that kept no record writes `"dataset_path": null`: its data needs fixing. A missing key or
    a value other than a path means the file was edited or comes from elsewhere: re-building rewrites it."""
    report = read_build_report(run_dir)
    if report is None:
        return None
    path = Path(run_dir) / BUILD_REPORT
    if "dataset_path" not in report and (Path(run_dir) / "dataset_dict.json").is_file():
        raise PipelineError(f"{run_dir} is a built dataset, not a run folder; pass the run folder whose data stage "
                            "built it (outputs/<date>/<time>), or give it as dataset=<folder> to evaluate.py")
    if "dataset_path" not in report:
        raise PipelineError(f"{path} has no `dataset_path` key: the data stage always writes one, so the file was "
                            "edited or comes from elsewhere; re-run the `data` stage to rewrite it")
    value = report["dataset_path"]
    if value is None:
        raise PipelineError(
            f"{path} names no dataset: its build kept no record "
            f"(see {Path(run_dir) / 'quarantine.jsonl'}); fix the data and re-run the `data` stage"
        )
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"{path}: `dataset_path` is {json.dumps(value)}, not a folder path; "
                            "re-run the `data` stage to rewrite it")
    return Path(value)


def dataset_ids(run_dir: Path) -> set[str]:
    """The utterance ids of every split of the dataset the run folder's build made (none without one)."""
    from datasets import load_from_disk

    path = dataset_path(run_dir)
    if path is None:
        return set()
    return {u for split in load_from_disk(str(path)).values() for u in split["utterance_id"]}


# --- A run folder being written ------------------------------------------------------------------
# Held (shared: every torchrun rank) while stages write into a run folder: `make erase` refuses a run
# built on an erased dataset while it is held, or the stages would write a model of deleted data
# after the receipt said erased. The kernel drops it when the process dies; forked workers (data
# map, data loader) close their copy (runtime.kept_from_children), so an orphaned one cannot keep it.
WRITING = ".writing"


@contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / WRITING, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        with kept_from_children(fd):
            yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def being_written(run_dir: Path) -> bool:
    """Whether a process holds the run folder's writing lock now."""
    path = Path(run_dir) / WRITING
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
