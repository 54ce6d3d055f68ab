"""The CPU speed patches behind `asr.cpu_fft_positional_conv` and `asr.skip_waveform_gradient`: off
means transformers' own code path; on, training still leaves an ordinary transformers checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from asr_testkit import micro_cfg
from omegaconf import DictConfig
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from pipeline.asr.config import ASRConfig
from pipeline.asr.devices import fast_cpu_math
from pipeline.asr.fft_conv import _positional_forward, configure_positional_conv
from pipeline.asr.train import TrainingRun, _end, set_up, _train_loop
from pipeline.config import checked
from pipeline.distributed import place
from pipeline.runtime import PipelineError
from tests.recording import RecordingTracker


def _set_up_run(cfg: DictConfig, dataset: Path, run_dir: Path) -> TrainingRun:
    """The stage's own set-up (data, model, patches, optimizer) without training."""
    return set_up(cfg, place(cfg.trainer), run_dir, dataset, RecordingTracker(), time.time())


def _patched(model: torch.nn.Module) -> tuple[bool, bool]:
    """(positional conv through the FFT, waveform gradient skipped) for a training model."""
    pos = model.wav2vec2.encoder.pos_conv_embed
    forward = vars(pos).get("forward")
    return getattr(forward, "__func__", None) is _positional_forward, not model.wav2vec2.feature_extractor._requires_grad


def test_each_flag_off_keeps_the_stock_code_path(tiny_dataset_path: Path, tmp_path: Path) -> None:
    fft_only = _set_up_run(micro_cfg("asr.cpu_fft_positional_conv=auto", "asr.skip_waveform_gradient=false"),
                           tiny_dataset_path, tmp_path / "a")
    assert _patched(fft_only.model) == (True, False)
    assert fft_only.model.wav2vec2.feature_extractor._requires_grad  # transformers' own flag, untouched
    skip_only = _set_up_run(micro_cfg("asr.cpu_fft_positional_conv=false", "asr.skip_waveform_gradient=true"),
                            tiny_dataset_path, tmp_path / "b")
    assert _patched(skip_only.model) == (False, True)
    assert "forward" not in vars(skip_only.model.wav2vec2.encoder.pos_conv_embed)  # the class's forward runs


def test_the_fft_setting_applies_where_it_can_and_refuses_clearly_where_it_cannot() -> None:
    config = Wav2Vec2Config(vocab_size=12, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            conv_dim=[16, 32], conv_kernel=[10, 8], conv_stride=[5, 4], num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=4)
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)

    def applied(setting: bool | str, device: torch.device, low: torch.dtype | None = None, compiled: bool = False) -> bool:
        model = Wav2Vec2ForCTC(config)
        swapped = configure_positional_conv(model, setting, device, low, compiled)
        assert swapped == ("forward" in vars(model.wav2vec2.encoder.pos_conv_embed))
        return swapped

    assert applied("auto", cpu) and applied(True, cpu)
    assert not applied(False, cpu)
    # auto: only where it is faster (the CPU in fp32, uncompiled); elsewhere the stock layer, silently.
    assert not applied("auto", gpu) and not applied("auto", cpu, torch.bfloat16) and not applied("auto", cpu, compiled=True)
    for device, low in ((gpu, None), (cpu, torch.bfloat16)):
        with pytest.raises(PipelineError, match="asr.cpu_fft_positional_conv=true"):
            applied(True, device, low)


def test_the_patch_settings_are_checked_with_their_keys() -> None:
    typed = checked(micro_cfg().asr, ASRConfig, "asr")
    assert typed.cpu_fft_positional_conv == "auto" and typed.skip_waveform_gradient is False  # the defaults: only the FFT pays today
    for bad, key in (("asr.cpu_fft_positional_conv=sometimes", "asr.cpu_fft_positional_conv"),
                     ("asr.cpu_fft_positional_conv=1", "asr.cpu_fft_positional_conv"),
                     ("asr.skip_waveform_gradient=sometimes", "asr.skip_waveform_gradient")):
        with pytest.raises(PipelineError, match=key):
            checked(micro_cfg(bad).asr, ASRConfig, "asr")
    with pytest.raises(PipelineError, match="asr.compile"):
        checked(micro_cfg("asr.cpu_fft_positional_conv=true", "asr.compile=true").asr, ASRConfig, "asr")


LOAD_FRESH = """
import json, sys, torch
from transformers import Wav2Vec2ForCTC
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PositionalConvEmbedding
folder, waves, out = sys.argv[1:4]
model, info = Wav2Vec2ForCTC.from_pretrained(folder, output_loading_info=True)
pos = model.wav2vec2.encoder.pos_conv_embed
with torch.no_grad():
    torch.save(model.eval()(torch.load(waves)).logits, out)
print(json.dumps({"missing": list(info["missing_keys"]), "unexpected": list(info["unexpected_keys"]),
                  "stock_forward": "forward" not in vars(pos) and pos.forward.__func__ is Wav2Vec2PositionalConvEmbedding.forward}))
"""


def test_training_with_the_patches_on_saves_a_stock_checkpoint(tiny_dataset_path: Path, tmp_path: Path) -> None:
    cfg = micro_cfg("asr.cpu_fft_positional_conv=true", "asr.skip_waveform_gradient=true", "asr.max_steps=2",
                    "asr.eval_every=2", "asr.lm_order=null")
    placement = place(cfg.trainer)
    with fast_cpu_math(placement.device, placement.amp_dtype):  # as run_asr_stage trains
        run = set_up(cfg, placement, tmp_path, tiny_dataset_path, RecordingTracker(), time.time())
        assert _patched(run.model) == (True, True)
        metrics = _end(run, _train_loop(run))
    assert metrics["best_step"] == metrics["steps"] == 2  # the saved weights are the in-memory model's
    folder = tmp_path / "asr"
    saved = json.loads((folder / "config.json").read_text())
    stock_fields = set(Wav2Vec2Config().to_dict()) | {"architectures", "transformers_version"}
    assert set(saved) <= stock_fields, set(saved) - stock_fields
    assert not set(saved) & {"cpu_fft_positional_conv", "skip_waveform_gradient"}

    torch.manual_seed(0)
    waves = torch.randn(2, 24_000)
    torch.save(waves, tmp_path / "waves.pt")
    # A fresh interpreter: nothing of this process (patched instances, imports) can help the load.
    done = subprocess.run([sys.executable, "-c", LOAD_FRESH, str(folder), str(tmp_path / "waves.pt"), str(tmp_path / "logits.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"missing": [], "unexpected": [], "stock_forward": True}
    run.model.eval()
    with torch.no_grad():
        trained = run.model(waves).logits  # through the FFT path, the patched instance
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), trained, rtol=1e-4, atol=1e-4)
