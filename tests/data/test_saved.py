"""Every stage that reads a saved dataset refuses the same broken ones with the same error, naming
the folder and split and never a row."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from datasets import DatasetDict, load_from_disk

from pipeline.runtime import PipelineError


def _asr(path: Path) -> Any:
    from pipeline.asr.train import _load_splits

    return _load_splits(path)


def _nlu(path: Path) -> Any:
    from pipeline.nlu.train import load_splits

    return load_splits(path)


def _evaluation(path: Path) -> Any:
    from pipeline.eval.run import _load_splits

    return _load_splits(path, "test", "validation")


def _review(path: Path) -> Any:
    from pipeline.review.stage import _load

    return _load(path)


READERS: dict[str, Callable[[Path], Any]] = {"asr": _asr, "nlu": _nlu, "evaluation": _evaluation, "review": _review}


def _broken(kind: str, built: Path, folder: Path) -> Path:
    dd = load_from_disk(str(built))
    path = folder / kind
    if kind == "single-split":
        dd["train"].save_to_disk(str(path))
    elif kind == "not-a-dataset":
        path.mkdir()
        (path / "notes.txt").write_text("clips are elsewhere")
    elif kind == "empty-split-saved-elsewhere":  # datasets' own save of an empty split: no data file
        DatasetDict({**dd, "test": dd["test"].select([])}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(("kind", "error"), [
    ("missing", r"^dataset <path> does not exist \(a cleared cache, or erased after a deletion request\?\); build it "
                r"again with `python train\.py stages=\[data\]`: the same config and pseudonym key give the same splits$"),
    ("not-a-dataset", r"^dataset <path> is not a saved dataset \(no dataset_dict\.json\)"),
    ("single-split", r"^dataset <path> is a single split, not a dataset of splits; pass the folder holding dataset_dict\.json"),
    ("empty-split-saved-elsewhere", r"^dataset <path> split 'test' is empty and saved without a data file, so the "
                                    r"dataset cannot be read back; rebuild it"),
])
def test_a_broken_dataset_gets_one_error_from_every_reader(
    reader: str, kind: str, error: str, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    path = _broken(kind, tiny_dataset_path, tmp_path)
    with pytest.raises(PipelineError, match=error.replace("<path>", re.escape(str(path)))) as info:
        READERS[reader](path)
    assert not any(uid in str(info.value) for uid in load_from_disk(str(tiny_dataset_path))["train"]["utterance_id"])


@pytest.mark.parametrize(("change", "error"), [
    (lambda dd: DatasetDict({"train": dd["train"], "test": dd["test"]}),
     r"^dataset <path> has no split 'validation' \(has \['train', 'test'\]\); rebuild it"),
    (lambda dd: dd.remove_columns("text"),
     r"^dataset <path> split 'train' lacks the column\(s\) \['text'\] the ASR stage reads; rebuild it"),
    (lambda dd: DatasetDict({**dd, "validation": dd["validation"].select([])}),
     r"^dataset <path> split 'validation' is empty; the ASR stage needs its clips$"),
], ids=["no-validation-split", "no-text-column", "empty-validation-split"])
def test_the_asr_stage_names_the_split_or_column_it_lacks(
    change: Callable[[DatasetDict], DatasetDict], error: str, tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    dd = change(load_from_disk(str(tiny_dataset_path)))
    path = tmp_path / "changed"
    dd.save_to_disk(str(path), num_shards={name: 1 for name, split in dd.items() if len(split) == 0})
    with pytest.raises(PipelineError, match=error.replace("<path>", re.escape(str(path)))):
        _asr(path)


def test_background_audio_saved_as_a_dataset_is_opened_the_same_way(tiny_dataset_path: Path, tmp_path: Path) -> None:
    from pipeline.data.background import load_background

    path = _broken("empty-split-saved-elsewhere", tiny_dataset_path, tmp_path)
    with pytest.raises(PipelineError, match=rf"^dataset {re.escape(str(path))} split 'test' is empty and saved without"):
        load_background(path, ("validation", "test"), "alexa", b"test key")
