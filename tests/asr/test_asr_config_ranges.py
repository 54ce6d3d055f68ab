"""ASR settings refused before any work, and the stage's runs in a folder that already holds another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from asr_testkit import micro_cfg
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from pipeline.asr.checkpoints import checkpoint_steps
from pipeline.asr.config import ASRConfig
from pipeline.asr.model import build_model
from pipeline.asr.train import has_unused_weights, load_scaler, run_asr_stage
from pipeline.asr.vocab import build_vocab, make_processor
from pipeline.config import checked
from pipeline.runtime import PipelineError
from pipeline.stages import check_config
from tests.recording import RecordingTracker

REPO = Path(__file__).resolve().parents[2]


def test_edge_values_inside_the_ranges_are_accepted() -> None:
    typed = checked(micro_cfg("asr.warmup_steps=0", "asr.keep_last=1", "asr.lm_order=null", "asr.cpu_threads=null",
                              "asr.augment.speeds=[1.0]", "asr.max_train_minutes=0.5", "asr.lm_order=1").asr, ASRConfig, "asr")
    assert typed.lm_order == 1 and typed.augment.speeds == [1.0]


def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_local_model_that_is_no_wav2vec2_is_refused_before_the_data_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nlu = _folder(tmp_path / "nlu", {"config.json": json.dumps({"model_type": "bert"}), "nlu_labels.json": "{}"})
    bert = _folder(tmp_path / "bert", {"config.json": json.dumps({"model_type": "bert"})})
    empty = _folder(tmp_path / "empty", {})
    cases = {
        str(nlu): "it is an NLU model folder (it has nlu_labels.json)",
        str(bert): "its config.json is a 'bert' model, not wav2vec2",
        str(empty): "no config.json there",
        str(tmp_path / "absent"): "no such folder",
    }
    for source, reason in cases.items():
        with pytest.raises(PipelineError) as err:
            checked(micro_cfg(f"asr.model_name_or_path={source}", "asr.model_config=null").asr, ASRConfig, "asr")
        assert str(err.value).startswith(f"asr.model_name_or_path={source}: {reason}")
    monkeypatch.chdir(tmp_path)  # a relative path that exists locally is a folder, not a hub id
    with pytest.raises(PipelineError, match="^asr.model_name_or_path=bert: its config.json is a 'bert' model"):
        checked(micro_cfg("asr.model_name_or_path=bert", "asr.model_config=null").asr, ASRConfig, "asr")
    # A hub id is only read when the model is built.
    assert checked(micro_cfg("asr.model_name_or_path=facebook/wav2vec2-base", "asr.model_config=null").asr, ASRConfig, "asr")


def test_build_model_refuses_a_config_of_another_model_type(tmp_path: Path) -> None:
    bert = _folder(tmp_path / "bert", {"config.json": json.dumps({"model_type": "bert"})})
    processor = make_processor(build_vocab(["yes", "no"]), tmp_path / "proc", False)
    with pytest.raises(PipelineError, match="^asr.model_name_or_path=.*bert: its config.json is a 'bert' model, not wav2vec2"):
        build_model(micro_cfg(f"asr.model_name_or_path={bert}", "asr.model_config=null").asr, processor)


def test_ddp_looks_for_unused_weights_when_a_pretrained_checkpoint_brings_its_own_layerdrop(tmp_path: Path) -> None:
    # asr.model_config (layerdrop 0 in every shipped config) describes only a model built from it; a
    # checkpoint's own LayerDrop skips whole layers, and DDP told to expect every gradient fails on
    # the first step that skips one.
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    processor = make_processor(build_vocab(["yes", "no"]), tmp_path / "proc", False)
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=[8, 8],
                 conv_kernel=[10, 8], conv_stride=[5, 4], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    for layerdrop, expected in ((0.1, True), (0.0, False)):
        folder = tmp_path / f"pretrained-{layerdrop}"
        Wav2Vec2ForCTC(Wav2Vec2Config(**small, layerdrop=layerdrop)).save_pretrained(folder)
        cfg = micro_cfg(f"asr.model_name_or_path={folder}", "asr.model_config=null").asr
        assert has_unused_weights(build_model(cfg, processor)) is expected
    # Without time masking `masked_spec_embed` gets no gradient either.
    no_masking = micro_cfg(f"asr.model_name_or_path={tmp_path / 'pretrained-0.0'}", "asr.model_config=null", "asr.spec_augment.mask_time_prob=0.0")
    assert has_unused_weights(build_model(no_masking.asr, processor))


def test_a_fresh_run_replaces_the_checkpoints_of_an_earlier_run_in_its_folder(
    tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    run_asr_stage(micro_cfg("asr.max_steps=4", "asr.eval_every=2", "asr.lm_order=null"), tmp_path, tiny_dataset_path, RecordingTracker())
    root = tmp_path / "asr" / "checkpoints"
    assert max(checkpoint_steps(root)) == 4
    capsys.readouterr()
    cfg = micro_cfg("asr.max_steps=2", "asr.eval_every=1", "asr.keep_last=1", "asr.resume=never", "asr.lm_order=null")
    run_asr_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())
    assert f"removed the 2 checkpoint(s) of an earlier run from {root}" in capsys.readouterr().out
    steps = checkpoint_steps(root)
    assert max(steps) == 2  # the new run's newest is kept; the old run's step 4 is gone


def test_resuming_a_checkpoint_of_another_model_config_is_a_one_line_error(
    tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    run_asr_stage(micro_cfg("asr.max_steps=2", "asr.eval_every=2", "asr.lm_order=null"), tmp_path, tiny_dataset_path, RecordingTracker())
    checkpoint = checkpoint_steps(tmp_path / "asr" / "checkpoints")[2]
    wider = micro_cfg("asr.resume=auto", "asr.max_steps=4", "asr.model_config.hidden_size=48", "asr.lm_order=null")
    with pytest.raises(PipelineError) as err:
        run_asr_stage(wider, tmp_path, tiny_dataset_path, RecordingTracker())
    assert str(err.value) == (f"checkpoint {checkpoint} was made with another asr.model_config (or asr.model_name_or_path); "
                              "use asr.resume=never or a new run folder")
    # Same model, other seed and max_steps: it resumes, and says the run will differ; a budget below
    # the longest clip is named too.
    capsys.readouterr()
    run_asr_stage(micro_cfg("asr.resume=auto", "seed=8", "asr.max_steps=3", "asr.max_batch_seconds=0.5", "asr.lm_order=null"),
                  tmp_path, tiny_dataset_path, RecordingTracker())
    out = capsys.readouterr().out
    assert "resuming with seed=8 but the checkpoint was made with 7" in out
    assert "resuming with asr.max_steps=3 but the checkpoint was made with 2" in out
    assert "training clip(s) are longer than max_batch_seconds=0.5" in out


def test_a_checkpoint_without_loss_scaling_resumes_in_fp16_and_the_other_way() -> None:
    import torch

    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    saved_without = torch.amp.GradScaler("cpu", enabled=False).state_dict()  # bf16 / fp32 runs save {}
    load_scaler(fp16, saved_without)  # torch itself raises: "The source state dict is empty"
    assert fp16.get_scale() == 1024.0
    load_scaler(fp16, torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0).state_dict())
    assert fp16.get_scale() == 8.0
    off = torch.amp.GradScaler("cpu", enabled=False)
    load_scaler(off, fp16.state_dict())
    assert not off.is_enabled()


def test_the_stage_reads_the_checked_values_not_the_raw_strings(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: the check turned asr.freeze_feature_encoder='false' (a quoted override, or an
    ${oc.env:...}) into False, then the stage read the raw string "false", true to Python, and froze
    the feature encoder."""
    from safetensors.torch import load_file

    weights = {}
    for name, value in (("quoted", "'false'"), ("bool", "false")):
        run_asr_stage(micro_cfg("asr.max_steps=2", "asr.eval_every=2", "asr.lm_order=null",
                                f"asr.freeze_feature_encoder={value}"), tmp_path / name, tiny_dataset_path, RecordingTracker())
        weights[name] = load_file(str(tmp_path / name / "asr" / "model.safetensors"))
    conv = "wav2vec2.feature_extractor.conv_layers.0.conv.weight"
    assert torch.equal(weights["quoted"][conv], weights["bool"][conv])  # both trained the feature encoder alike


def _asr_option(name: str, *overrides: str) -> DictConfig:
    """The `asr` group as train.py composes it with `asr=<name>` (its defaults list included)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[f"asr={name}", *overrides]).asr


def test_a_model_config_beside_a_pretrained_model_is_refused_naming_both_keys() -> None:
    """A pretrained model keeps its checkpoint's architecture: `asr.model_config` is never read for it
    (pipeline/asr/model.py build_model; its LayerDrop and SpecAugment go in asr.spec_augment), so a
    user who sets both is told before any stage runs instead of training another model than asked for.

    Before the fix: accepted, and the model_config (asr=tiny's 128-wide model, or a user's
    num_hidden_layers=6) was silently ignored."""
    with pytest.raises(PipelineError) as err:
        checked(micro_cfg("asr.model_name_or_path=facebook/wav2vec2-base").asr, ASRConfig, "asr")
    message = str(err.value)
    assert message.startswith("asr.model_config (hidden_size, num_hidden_layers, ")
    assert "asr.model_name_or_path=facebook/wav2vec2-base" in message
    assert "asr.model_config=null" in message and "asr=base" in message
    # The whole config check refuses it, before the data stage.
    with pytest.raises(PipelineError, match=r"^asr\.model_config \(.*\) with asr\.model_name_or_path="):
        check_config(OmegaConf.create({"asr": _asr_option("tiny", "asr.model_name_or_path=facebook/wav2vec2-base")}),
                     ["asr"])
    # Without one, the pretrained model is accepted; a model built from nothing is refused.
    assert checked(micro_cfg("asr.model_name_or_path=facebook/wav2vec2-base", "asr.model_config=null").asr, ASRConfig, "asr")
    with pytest.raises(PipelineError, match=r"^asr\.model_config=null with asr\.model_name_or_path=null: "):
        checked(micro_cfg("asr.model_config=null").asr, ASRConfig, "asr")


@pytest.mark.parametrize("option", ["tiny", "tiny_budget", "base", "large"])
def test_every_shipped_asr_config_passes_the_check(option: str) -> None:
    """asr=base and asr=large start from asr=tiny's settings, its model_config among them; they clear it."""
    typed = checked(_asr_option(option), ASRConfig, "asr")
    assert (typed.model_config is None) == (typed.model_name_or_path is not None)
