"""The review group as a typed config (pipeline/review/config.py): the shipped file passes, and a
wrong type, a value out of range or a misspelt key is one PipelineError naming the key, before the
dataset or any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.config import checked
from pipeline.review.config import ReviewConfig
from pipeline.runtime import PipelineError
from pipeline.stages import check_config

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_review_config_passes() -> None:
    review = checked(OmegaConf.load(REPO / "conf" / "review" / "default.yaml"), ReviewConfig, "review")
    assert (review.folds, review.max_share, review.top_n, review.batch_size, review.device,
            review.transcript_tempos) == (5, 0.02, 10, 16, "auto", [0.85, 1.15])


@pytest.mark.parametrize(("override", "message"), [
    ("review.folds=1", "review.folds=1: cross-fitting needs at least 2 folds"),
    ("review.folds=five", "review.folds='five' is not a valid int"),
    ("review.max_share=2", r"review.max_share=2.0: use a share of clips between 0 and 1"),
    ("review.max_share=0", r"review.max_share=0.0: use a share of clips between 0 and 1"),
    ("review.c=0", "review.c=0.0: the inverse regularisation strength must be positive"),
    ("review.batch_size=0", "review.batch_size=0: must be at least 1"),
    ("review.device=tpu", "review.device='tpu' is not one of: auto, cpu, cuda, cuda:N"),
    ("review.transcript_tempos=[3.0]", r"review.transcript_tempos=\[3.0\]: give one or more playback speeds between 0.5"),
    ("review.transcript_tempos=[]", r"review.transcript_tempos=\[\]: give one or more playback speeds"),
    ("+review.fold=3", r"review.fold is not a setting of review; known: folds, .*pipeline/review/config.py"),
])
def test_a_bad_review_setting_names_its_key(override: str, message: str) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["stages=[data,asr,nlu,eval,review]", override])
    with pytest.raises(PipelineError, match=message):
        check_config(cfg, list(cfg.stages))


def test_an_unknown_key_in_a_users_review_yaml_is_refused(tmp_path: Path) -> None:
    mine = OmegaConf.load(REPO / "conf" / "review" / "default.yaml")
    mine.max_shares = 0.05
    (tmp_path / "mine.yaml").write_text(OmegaConf.to_yaml(mine))
    with pytest.raises(PipelineError, match="review.max_shares is not a setting of review; known: .*max_share"):
        checked(OmegaConf.load(tmp_path / "mine.yaml"), ReviewConfig, "review")


def test_python_m_pipeline_review_refuses_a_bad_override_before_any_work(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.review.__main__ import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml({
        "cache_dir": str(tmp_path / "cache"), "logger": {"name": "none"},
        "review": OmegaConf.load(REPO / "conf" / "review" / "default.yaml"),
    }))
    (run / "build_report.json").write_text('{"dataset_path": "%s"}' % (tmp_path / "no-dataset"))
    with pytest.raises(SystemExit):
        main([str(run), "review.max_share=1.5"])
    assert "review.max_share=1.5: use a share of clips between 0 and 1" in capsys.readouterr().err
    assert not (run / "review").exists()
