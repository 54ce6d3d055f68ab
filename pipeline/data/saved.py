"""A dataset the `data` stage saved, opened the same way by every stage that reads one.

Why one home: ASR and NLU training, evaluation and the review each opened it with their own
errors, and each missed a different mistake: a folder that holds no saved dataset, one split saved
on its own (iterating it to look for a split name decodes every clip), a split saved empty by
another tool (`datasets` cannot read such a dataset back at all), a split or column an older build
lacks. The errors name the folder, the split and the columns only: the rows are user data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.runtime import PipelineError

BUILD = "`python train.py stages=[data]`"
SINGLE_SPLIT = ("is a single split, not a dataset of splits; pass the folder holding dataset_dict.json "
                "(python train.py stages=[data] builds one)")


def open_saved(path: Path) -> Any:
    """The DatasetDict saved at `path`."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.exists():
        raise PipelineError(f"dataset {path} does not exist (a cleared cache, or erased after a deletion request?); "
                            f"build it again with {BUILD}: the same config and pseudonym key give the same splits")
    if (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        raise PipelineError(f"dataset {path} {SINGLE_SPLIT}")
    for state in sorted(path.glob("*/state.json")):
        # Another tool's save of an empty split has no data file, and then no split loads.
        if not json.loads(state.read_text()).get("_data_files"):
            raise PipelineError(f"dataset {path} split {state.parent.name!r} is empty and saved without a data file, "
                                f"so the dataset cannot be read back; rebuild it with {BUILD}")
    try:
        dd = load_from_disk(str(path))
    except FileNotFoundError:
        raise PipelineError(f"dataset {path} is not a saved dataset (no dataset_dict.json); pass the folder "
                            f"{BUILD} builds") from None
    except (OSError, ValueError) as err:
        raise PipelineError(f"dataset {path} does not load ({err.__class__.__name__}); rebuild it with {BUILD}") from err
    if not isinstance(dd, DatasetDict):
        raise PipelineError(f"dataset {path} {SINGLE_SPLIT}")
    return dd


def require(dd: Any, path: Path, split: str, columns: Iterable[str], reader: str, missing_split: str = "",
            nonempty: bool = True) -> Any:
    """`dd[split]`, checked to exist, to hold `columns` and (with `nonempty`) a row. `reader` says
    who reads it ("evaluation", "the ASR stage"); `missing_split` what to do when the split is absent."""
    if split not in dd:
        fix = missing_split or f"rebuild it with {BUILD}"
        raise PipelineError(f"dataset {path} has no split {split!r} (has {list(dd.keys())}); {fix}")
    missing = [c for c in columns if c not in dd[split].column_names]
    if missing == ["audio"] or (missing and "audio" in missing and "text" in dd[split].column_names):
        raise PipelineError(f"dataset {path} has no audio (a text-only source, such as massive_text), which {reader} "
                            "needs; train the NLU alone on it (stages=[data,nlu]) or build a source with audio")
    if missing:
        raise PipelineError(f"dataset {path} split {split!r} lacks the column(s) {missing} {reader} reads; "
                            f"rebuild it with {BUILD}")
    if nonempty and len(dd[split]) == 0:
        raise PipelineError(f"dataset {path} split {split!r} is empty; {reader} needs its clips")
    return dd[split]
