"""The retraining and erasure settings (`retrain`, `erase`) and the `logger` group are typed: a wrong
type, value or key is one clear error naming the key, when the job or the tracker starts, not after
an hour of training (pipeline/ops/config.py, pipeline/tracking/config.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.ops.config import job_config, load_config
from pipeline.ops.retrain import EXIT_CONFIG, run_retrain
from pipeline.runtime import PipelineError
from pipeline.tracking import make_tracker
from pipeline.tracking.wandb_run import make_wandb_tracker

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("override", "message"), [
    ("logger.mode=sometimes", "logger.mode='sometimes' is not one of: auto, offline, online, disabled"),
    ("logger.console=loud", "logger.console='loud' is not one of: auto, off, wrap"),
    ("logger.log_transcripts=maybe", "logger.log_transcripts='maybe' is not one of: auto, True, False"),
    ("logger.log_artifacts=perhaps", "logger.log_artifacts='perhaps' is not a valid bool"),
    ("logger.tags=retrain", "logger.tags='retrain' is not a valid list"),
    ("+logger.projct=x", "logger.projct is not a setting of logger; known: .*project.*pipeline/tracking/config.py"),
    ("retrain.gate_policy=maybe", "retrain.gate_policy='maybe' is not one of: not_worse, non_inferior"),
    ("retrain.force=perhaps", "retrain.force='perhaps' is not a valid bool"),
    ("retrain.gate.wer.max_increase=lots", "retrain.gate.wer.max_increase='lots' is not a valid"),
    ("+retrain.gate.rtf.metric=eval/rtf", "retrain.gate.rtf must have `metric` and exactly one of max_increase"),
    ("+retrain.gate.wer.max_increse=0.1",
     "retrain.gate.wer.max_increse is not a setting of retrain.gate.wer; known: metric, max_increase, max_decrease"),
    ("+retrain.inbx=/srv/inbox", r"retrain.inbx is not a setting of retrain; known: inbox, .*conf/retrain.yaml\)"),
    ("erase.wandb_online=maybe", "erase.wandb_online='maybe' is not one of: auto, true, false"),
    ("+retrain.gate.x={metric: asr/wr, max_increase: 0.1}",
     r"retrain.gate.x.metric='asr/wr' is no metric the evaluation writes; use one of asr/wer, .*by_source/<source>/<metric>"),
    ("+erase.output=/srv/runs", "erase.output is not a setting of erase; known: .*outputs"),
    # nan fails every comparison: it passed here and rejected every candidate after training.
    ("retrain.gate.wer.max_increase=nan", r"retrain.gate.wer.max_increase=nan is not a finite number"),
    ("retrain.gate.slu_f1.max_decrease=inf", r"retrain.gate.slu_f1.max_decrease=inf is not a finite number"),
])
def test_a_bad_job_setting_names_its_key_and_what_it_accepts(override: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        job_config(load_config([override]))


@pytest.mark.parametrize(("override", "message"), [
    ("+retrain.gate.f1={metric: nlu/entity_f1, max_increase: 0.0}",
     r"retrain.gate.f1.max_increase: nlu/entity_f1 gets worse when it falls, so the rule needs max_decrease"),
    ("+retrain.gate.cer={metric: by_source/demo/asr/cer, max_decrease: 0.0}",
     r"retrain.gate.cer.max_decrease: by_source/demo/asr/cer gets worse when it rises, so the rule needs max_increase"),
])
def test_a_gate_rule_limiting_the_metric_on_its_better_side_is_refused(override: str, message: str) -> None:
    """Before the fix: a rule such as {metric: nlu/entity_f1, max_increase: 0.0} (the form the docs show
    for adding a rule) was accepted, and the gate then rejected every candidate that raised the F1 and
    promoted any that lowered it."""
    with pytest.raises(PipelineError, match=message):
        job_config(load_config([override]))


@pytest.mark.parametrize("overrides", [[], ["logger=none"], ["erase.wandb_online=true"], ["erase.wandb_online=off"],
                                       ["retrain.gate_policy=non_inferior", "retrain.promote=20261201-abc"],
                                       ["retrain.gate.wer.max_increase=-0.01"]])  # a candidate must improve by 0.01
def test_the_shipped_job_config_passes(overrides: list[str]) -> None:
    settings = job_config(load_config(overrides))
    assert settings.retrain.gate_rules()["slu_f1"] == {"metric": "slu/slu_f1", "max_decrease": 0.0}
    assert settings.logger.job_type == "retrain" and settings.logger.tags == ["retrain"]


def test_the_shipped_gate_is_the_one_the_readme_states() -> None:
    # README, "Scheduled retraining": asr/wer may rise at most 0.005, neither wake/frr nor
    # wake/fa_per_hour may rise, slu/slu_f1 may not fall; judged on the interval's best case (not_worse).
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "`asr/wer` may rise at most 0.005, neither `wake/frr` nor `wake/fa_per_hour` may rise" in " ".join(readme.split())
    settings = job_config(load_config([]))
    assert settings.retrain.gate_rules() == {
        "wer": {"metric": "asr/wer", "max_increase": 0.005}, "frr": {"metric": "wake/frr", "max_increase": 0.0},
        "fa_per_hour": {"metric": "wake/fa_per_hour", "max_increase": 0.0},
        "slu_f1": {"metric": "slu/slu_f1", "max_decrease": 0.0}}
    assert settings.retrain.gate_policy == "not_worse"


def test_an_unknown_key_in_a_users_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("retrain:\n  gate_polcy: non_inferior\n")
    cfg = load_config([])
    OmegaConf.set_struct(cfg, False)  # as Hydra merges a config file of the user's own: any key goes in
    cfg = OmegaConf.merge(cfg, OmegaConf.load(tmp_path / "site.yaml"))
    with pytest.raises(PipelineError, match="retrain.gate_polcy is not a setting of retrain; known: .*gate_policy"):
        job_config(cfg)


def test_the_retraining_job_records_a_bad_setting_before_it_takes_anything(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the run folder of a config composed outside retrain.py
    (tmp_path / "inbox" / "b1").mkdir(parents=True)
    (tmp_path / "inbox" / "b1" / "annotations.jsonl").write_text("{}\n")
    cfg = load_config([f"retrain.inbox={tmp_path / 'inbox'}", f"retrain.registry_dir={tmp_path / 'registry'}",
                             f"cache_dir={tmp_path / 'cache'}", "retrain.gate_policy=maybe"])
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["decision"] == "config_error" and "retrain.gate_policy='maybe'" in decision["reason"]
    assert (tmp_path / "inbox" / "b1" / "annotations.jsonl").is_file(), "the batch is still in the inbox"
    assert not (tmp_path / "cache" / "retrain").exists()


@pytest.mark.parametrize("logger", ["wandb", "none"])
def test_the_tracker_refuses_a_bad_logger_setting_before_any_stage(logger: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"logger={logger}", "logger.mode=sometimes"])
    with pytest.raises(PipelineError, match="logger.mode='sometimes'"):
        make_tracker(cfg, tmp_path, ["eval"])
    with pytest.raises(PipelineError, match="logger.mode='sometimes'"):
        make_wandb_tracker(cfg, tmp_path, ["eval"])
    assert not (tmp_path / "wandb_run_id").exists()


@pytest.mark.parametrize(("override", "message"), [
    # The path is not echoed: a request file is often named after the account it asks about.
    ("data.deletions=/srv/amzn1.account.AFGY7.jsonl", r"^data.deletions is not read by retraining: put the request file "
                                                      r"in .*/inbox/deletions/"),
    ("data.path=/srv/export/annotations.jsonl", r"^data.path is not read by retraining"),
    ("data=demo", r"data=demo is not read by retraining: it trains on the batches of retrain.inbox"),
    ("data=demo_speech", r"^data=demo_speech is not read by retraining"),  # sets no data.source: was "data=None"
    ("data.source=hf", r"^data.source=hf is not read by retraining"),
])
def test_a_data_setting_the_job_would_replace_is_refused_before_the_intake(override: str, message: str, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """The job builds from its corpus and replaced these: a deletion file given here was read nowhere,
    and its clips were trained on and promoted."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox" / "b1").mkdir(parents=True)
    (tmp_path / "inbox" / "b1" / "annotations.jsonl").write_text("{}\n")
    cfg = load_config([f"retrain.inbox={tmp_path / 'inbox'}", f"retrain.registry_dir={tmp_path / 'registry'}",
                       f"cache_dir={tmp_path / 'cache'}", override])
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["decision"] == "config_error"
    assert re.search(message, decision["reason"]), decision["reason"]
    written = (tmp_path / "decision.json").read_text() + (tmp_path / "registry" / "decisions.jsonl").read_text()
    assert "AFGY7" not in written
    assert (tmp_path / "inbox" / "b1" / "annotations.jsonl").is_file(), "the batch is still in the inbox"
    assert not (tmp_path / "cache" / "retrain").exists()


@pytest.mark.parametrize("under", ["", "models"])
def test_a_registry_folder_that_is_a_file_is_a_config_error_with_a_decision(tmp_path: Path, monkeypatch, under: str) -> None:
    """It was a FileExistsError (or, under a file, NotADirectoryError) traceback from the lock, exit
    1, and no decision.json."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "registry").write_text("not a folder\n")
    root = tmp_path / "registry" / under if under else tmp_path / "registry"
    cfg = load_config([f"retrain.inbox={tmp_path / 'inbox'}", f"retrain.registry_dir={root}",
                       f"cache_dir={tmp_path / 'cache'}"])
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["decision"] == "config_error"
    assert decision["reason"] == (f"retrain.registry_dir={root}: {tmp_path / 'registry'} is a file, not a folder; "
                                  "point it at the registry folder (created if absent)")


def test_an_empty_gate_is_refused() -> None:
    """Before the fix: `retrain.gate={}` was accepted, and every candidate passed with the reason
    "every gated metric passes: " and nothing after it."""
    cfg = load_config([])
    cfg.retrain.gate = {}
    with pytest.raises(PipelineError, match=r"retrain.gate is empty: .*conf/retrain.yaml.*\+retrain.gate.<name>="):
        job_config(cfg)
