"""The one reader of a run folder's build_report.json: present, absent, broken, or from a build that kept nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import run_folder
from pipeline.runtime import PipelineError


def test_a_finished_build_names_its_dataset(tmp_path: Path) -> None:
    (tmp_path / "build_report.json").write_text(json.dumps({"dataset_path": "/data/abc", "fingerprint": "abc"}))
    assert run_folder.read_build_report(tmp_path) == {"dataset_path": "/data/abc", "fingerprint": "abc"}
    assert run_folder.dataset_path(tmp_path) == Path("/data/abc")


def test_no_build_is_none(tmp_path: Path) -> None:
    assert run_folder.read_build_report(tmp_path) is None
    assert run_folder.dataset_path(tmp_path) is None


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "build_report.json is not readable JSON"),
    ("[1, 2]", "build_report.json holds no JSON object"),
    (json.dumps({"dataset_path": None, "records_kept": 0}), "names no dataset: its build kept no record"),
])
def test_a_broken_report_is_an_error_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "build_report.json").write_text(content)
    with pytest.raises(PipelineError, match=message) as err:
        run_folder.dataset_path(tmp_path)
    assert str(tmp_path) in str(err.value)
