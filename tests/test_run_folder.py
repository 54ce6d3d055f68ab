"""The one reader of a run folder's build_report.json: present, absent, broken, or from a build that kept nothing;
and the run's config.yaml as a later call in the same folder leaves it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

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
    ("", "build_report.json is empty; re-run the `data` stage"),
    ("{}", "build_report.json has no `dataset_path` key"),
    (json.dumps({"dataset_path": 5}), "build_report.json: `dataset_path` is 5, not a folder path"),
    (json.dumps({"dataset_path": ""}), "build_report.json: `dataset_path` is \"\", not a folder path"),
])
def test_a_broken_report_is_an_error_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "build_report.json").write_text(content)
    with pytest.raises(PipelineError, match=message) as err:
        run_folder.dataset_path(tmp_path)
    assert str(tmp_path) in str(err.value)


def _recorded_run(tmp_path: Path) -> Path:
    """A run folder as `stages=[data,asr,nlu,eval] nlu=tiny` leaves it, as far as its config goes."""
    (tmp_path / "build_report.json").write_text(json.dumps({"dataset_path": "/data/abc"}))
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({
        "stages": ["data", "asr", "nlu", "eval"], "seed": 1, "data": {"source": "demo"}, "asr": {"lr": 1},
        "nlu": {"model_name_or_path": "tiny"}, "trainer": {"device": "cpu"}, "eval": {"wake_word": "alexa"}}))
    return tmp_path


def _this_call(stages: list[str]) -> DictConfig:
    """A later call's config with the defaults (nlu=minilm) and other eval and trainer settings."""
    return OmegaConf.create({
        "stages": stages, "seed": 2, "data": {"source": "jsonl"}, "asr": {"lr": 2},
        "nlu": {"model_name_or_path": "minilm"}, "trainer": {"device": "cuda"}, "eval": {"wake_word": "computer"},
        "review": {"folds": 4}})


@pytest.mark.parametrize(("stages", "changed"), [
    (["review"], {"review"}),
    (["eval"], {"eval"}),
    (["asr"], {"asr", "trainer", "seed"}),  # resuming: the ASR settings this call trains with
    (["nlu", "eval"], {"nlu", "trainer", "seed", "eval"}),
])
def test_a_later_call_records_only_the_settings_of_its_stages(tmp_path: Path, stages: list[str], changed: set[str]) -> None:
    from pipeline.stages import recorded_config

    run = _recorded_run(tmp_path)
    before = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    this_call = _this_call(stages)
    after = OmegaConf.to_container(recorded_config(this_call, run, stages))
    assert {key for key in after if after.get(key) != before.get(key)} == changed
    assert all(after[key] == this_call[key] for key in changed)


def test_a_call_that_builds_the_data_records_its_whole_config(tmp_path: Path) -> None:
    from pipeline.stages import recorded_config

    run = _recorded_run(tmp_path)
    assert recorded_config(_this_call(["data", "asr"]), run, ["data", "asr"]) == _this_call(["data", "asr"])


def test_a_later_eval_call_logs_no_transcripts_of_a_run_built_on_real_data(
    tiny_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the fix: `train.py stages=[eval] hydra.run.dir=<run>` ran the eval stage and made the
    tracker with this call's defaults (data=demo) in place of the run's own data settings, so on a
    run built from a jsonl export `logger.log_transcripts=auto` took the data for the synthetic demo
    and sent the users' transcripts to the tracker (and W&B got the demo as the run's data)."""
    import shutil

    from hydra import compose, initialize_config_dir

    import pipeline.stages
    from pipeline.stages import run_stages
    from tests.eval.test_eval_run import save_tiny_nlu
    from tests.recording import RecordingTracker

    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    save_tiny_nlu(tiny_dataset_path, run / "nlu")
    (run / "build_report.json").write_text(json.dumps({"dataset_path": str(tiny_dataset_path)}))
    paths = [f"paths.root_dir={tmp_path}", f"paths.run_dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"]
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base=None):
        built = compose("config", overrides=["data=jsonl", "data.path=export/annotations.jsonl", *paths])
        later = compose("config", overrides=["stages=[eval]", *paths])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(built, resolve=True))
    trackers: list[RecordingTracker] = []
    monkeypatch.setattr(pipeline.stages, "make_tracker", lambda *a: trackers.append(RecordingTracker()) or trackers[-1])

    run_stages(later)

    columns, rows = trackers[0].tables["predictions"]
    assert rows and "reference" not in columns and "hypothesis" not in columns
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
