"""`trainer.device` / `trainer.precision` resolve by one set of rules for every stage that trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.config import TrainerConfig, checked
from pipeline.distributed import resolve_device
from pipeline.nlu.config import NLUConfig
from pipeline.nlu.train import training_arguments
from pipeline.runtime import PipelineError

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_auto_on_the_cpu_is_fp32() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only resolution")
    assert resolve_device(OmegaConf.create({"device": "auto", "precision": "auto"})) == (torch.device("cpu"), "fp32")
    assert resolve_device(OmegaConf.create({"device": "cpu", "precision": "bf16"})) == (torch.device("cpu"), "bf16")


@pytest.mark.parametrize(("device", "precision", "message"), [
    ("cpu", "fp16", "trainer.precision=fp16 needs a GPU"),
    ("cpu", "fp8", "trainer.precision=fp8: use auto, fp32, fp16 or bf16"),
    pytest.param("cuda", "auto", "trainer.device=cuda but no CUDA GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")),
])
def test_a_setting_that_cannot_work_is_refused(device: str, precision: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        resolve_device(OmegaConf.create({"device": device, "precision": precision}))


def test_the_nlu_stage_resolves_like_the_asr_stage(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["nlu=tiny", "trainer.device=cpu", "trainer.precision=fp16"])
    nlu, trainer = checked(cfg.nlu, NLUConfig, "nlu"), checked(cfg.trainer, TrainerConfig, "trainer")
    with pytest.raises(PipelineError, match="trainer.precision=fp16 needs a GPU"):
        training_arguments(nlu, trainer, 0, tmp_path, has_eval=False)
    trainer.precision = "auto"
    args = training_arguments(nlu, trainer, 0, tmp_path, has_eval=False)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.logging_steps == cfg.trainer.log_every


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_eval_names_its_own_device_setting() -> None:
    from pipeline.distributed import pick_device

    assert pick_device("auto", "eval.device") == torch.device("cpu")
    with pytest.raises(PipelineError, match="eval.device=cuda:1 but no CUDA GPU is visible; use eval.device=cpu"):
        pick_device("cuda:1", "eval.device")


def test_each_torchrun_process_takes_its_own_gpu_and_auto_precision_follows_its_hardware(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A machine of two GPUs as torch reports them (this one has none): a V100-class card (compute
    # capability 7.0, bf16 only emulated) and an Ampere one.
    capability = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    cfg = OmegaConf.create({"device": "auto", "precision": "auto"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device(cfg) == (torch.device("cuda:0"), "fp16")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(cfg) == (torch.device("cuda:1"), "bf16")
    monkeypatch.setenv("LOCAL_RANK", "2")  # NPROC=3 on two GPUs
    with pytest.raises(PipelineError, match=r"LOCAL_RANK=2, and this machine has 2 GPU\(s\).*NPROC=2"):
        resolve_device(cfg)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(PipelineError, match=r"trainer.device=cuda:0 under torchrun would put every process on one GPU"):
        resolve_device(OmegaConf.create({"device": "cuda:0", "precision": "auto"}))


@pytest.mark.parametrize(("env", "folder"), [
    ({"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "f3a1"}, "hydra.run.dir=outputs/torchrun/f3a1"),
    ({"WORLD_SIZE": "1"}, None),
])
def test_torchrun_workers_share_one_run_folder_named_by_the_run(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], folder: str | None) -> None:
    from pipeline.runtime import pin_run_dir_for_torchrun

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert pin_run_dir_for_torchrun(["train.py", "seed=1"]) == ["train.py", "seed=1", *([folder] if folder else [])]
    assert pin_run_dir_for_torchrun(["train.py", "hydra.run.dir=x"]) == ["train.py", "hydra.run.dir=x"]


def test_a_torchrun_run_without_an_id_of_its_own_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Before the fix: torchrun without --standalone or --rdzv-id gives every run the id "none", and
    each such run wrote into outputs/torchrun/none, over the config and models of the last one."""
    from pipeline.runtime import pin_run_dir_for_torchrun

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(SystemExit) as stopped:
        pin_run_dir_for_torchrun(["train.py"])
    assert stopped.value.code == 2
    assert "pass torchrun --standalone (or --rdzv-id=<name>), or hydra.run.dir=<folder>" in capsys.readouterr().err
