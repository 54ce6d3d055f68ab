"""The asr stage end to end on the tiny espeak-ng fixture: outputs, loading, model sources, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from asr_testkit import micro_cfg
from transformers import Wav2Vec2Config, Wav2Vec2Model

from pipeline.asr.model import load_asr
from pipeline.asr.train import run_asr_stage
from pipeline.runtime import PipelineError
from tests.recording import RecordingTracker


@pytest.fixture(scope="module")
def trained_run(tiny_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, RecordingTracker]:
    run_dir = tmp_path_factory.mktemp("asr_run")
    tracker = RecordingTracker()
    cfg = micro_cfg("asr.max_steps=6", "asr.eval_every=3", "asr.keep_last=1", "asr.augment.prob=0.5")
    return run_dir, run_asr_stage(cfg, run_dir, tiny_dataset_path, tracker), tracker


def test_stage_writes_a_model_folder_metrics_and_curves(trained_run: tuple[Path, dict, RecordingTracker]) -> None:
    run_dir, result, tracker = trained_run
    saved = json.loads((run_dir / "asr" / "asr_metrics.json").read_text())
    for key in ("val_wer", "val_cer", "best_step", "steps", "audio_hours_seen", "train_wall_seconds"):
        assert key in saved
    assert saved["steps"] == 6 and saved["best_step"] in (3, 6)
    # What the arithmetic depends on beyond code, data and seed, to tell a host's drift from a change.
    assert saved["host"]["threads"] >= 1 and saved["host"]["cpu"] and saved["host"]["torch"] == torch.__version__
    assert 0 < saved["audio_hours_seen"] < 1 and saved["train_wall_seconds"] > 0
    assert [h["step"] for h in saved["history"]] == [3, 6]
    losses = [m["asr/train_loss"] for _, m in tracker.metrics if "asr/train_loss" in m]
    assert len(losses) == 6 and all(np.isfinite(losses))
    # One step per log line here, so each line says whether its own step's gradient was clipped.
    norms = [(m["asr/grad_norm"], m["asr/clipped"]) for _, m in tracker.metrics if "asr/grad_norm" in m]
    assert len(norms) == 6 and all(np.isfinite(n) and n > 0 for n, _ in norms)
    limit = float(micro_cfg().asr.max_grad_norm)
    assert all(clipped == float(n > limit) for n, clipped in norms)
    assert any("asr/val_wer" in m for _, m in tracker.metrics)
    # Keep the last 1 and the best: at most two checkpoints remain.
    kept = sorted(p.name for p in (run_dir / "asr" / "checkpoints").iterdir())
    assert "step-000006" in kept and len(kept) <= 2
    assert result["val_wer"] == saved["val_wer"]
    # The character LM of the training transcripts, in the model's token order, for the eval stage.
    lm = run_dir / "asr" / "lm"
    assert json.loads((lm / "lm.json").read_text())["order"] == 6
    vocab = json.loads((run_dir / "asr" / "vocab.json").read_text())
    assert (lm / "tokens.txt").read_text().splitlines() == sorted(vocab, key=vocab.get)
    assert "\\6-grams:" in (lm / "char_lm.arpa").read_text()
    # The model card: the dataset it was trained on, and the validation figures of asr_metrics.json.
    card = (run_dir / "asr" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: automatic-speech-recognition")
    assert "not built by this project's data stage (it has no build report)" in card and "| steps (best) | 6 (" in card
    assert f"| validation | {saved['val_cer']:.4g} | {saved['val_wer']:.4g} |" in card


def test_saved_model_loads_with_the_transformers_pipeline_and_load_asr(
    trained_run: tuple[Path, dict, RecordingTracker], tiny_dataset_path: Path
) -> None:
    from datasets import load_from_disk
    from transformers import pipeline

    model_dir = trained_run[0] / "asr"
    clip = load_from_disk(str(tiny_dataset_path))["test"][0]["audio"].get_all_samples()
    asr = pipeline("automatic-speech-recognition", model=str(model_dir))
    out = asr({"raw": clip.data[0].numpy(), "sampling_rate": clip.sample_rate})
    assert isinstance(out["text"], str)
    model, processor = load_asr(model_dir)
    assert model.lm_head.out_features == len(processor.tokenizer) and not model.training
    inputs = processor(clip.data[0].numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = model(inputs.input_values).logits.argmax(-1)
    assert processor.batch_decode(ids)[0] == out["text"]


def test_a_local_pretrained_encoder_is_fine_tuned_through_from_pretrained(tiny_dataset_path: Path, tmp_path: Path) -> None:
    # Like facebook/wav2vec2-base: an encoder without a CTC head, saved with save_pretrained.
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=[16, 16, 32, 32], conv_kernel=[10, 8, 4, 4], conv_stride=[5, 4, 4, 4],
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group")
    Wav2Vec2Model(config).save_pretrained(tmp_path / "pretrained")
    cfg = micro_cfg(f"asr.model_name_or_path={tmp_path / 'pretrained'}", "asr.model_config=null", "asr.freeze_feature_encoder=true",
                    "asr.gradient_checkpointing=true", "asr.max_steps=2")
    result = run_asr_stage(cfg, tmp_path / "run", tiny_dataset_path, RecordingTracker())
    model, processor = load_asr(tmp_path / "run" / "asr")
    assert result["steps"] == 2
    assert model.config.vocab_size == len(processor.tokenizer)
    assert not processor.feature_extractor.return_attention_mask  # group-norm encoders take no mask


def test_a_diverging_run_stops_with_a_clear_error(tiny_dataset_path: Path, tmp_path: Path) -> None:
    cfg = micro_cfg("asr.learning_rate=1e30", "asr.warmup_steps=0", "asr.max_steps=20", "asr.max_nonfinite_steps=3",
                    "asr.eval_every=100")
    with pytest.raises(PipelineError, match="non-finite"):
        run_asr_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())


def test_a_stage_refused_after_setting_its_thread_count_gives_it_back(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: `asr.cpu_threads` set torch's process-wide thread count before the device and
    precision were checked, outside the block that restores it, so a refused setting (fp16 on the
    CPU) left the ASR's thread count to the rest of the process."""
    found = torch.get_num_threads()
    before = 3 if found != 3 else 2  # a count `asr.cpu_threads=1` differs from
    torch.set_num_threads(before)
    try:
        with pytest.raises(PipelineError, match=r"trainer.precision=fp16 needs a GPU"):
            run_asr_stage(micro_cfg("trainer.device=cpu", "trainer.precision=fp16"), tmp_path, tiny_dataset_path,
                          RecordingTracker())
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(found)


def test_missing_resume_checkpoint_is_a_user_error(tiny_dataset_path: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="asr.resume"):
        run_asr_stage(micro_cfg(f"asr.resume={tmp_path / 'nowhere'}"), tmp_path, tiny_dataset_path, RecordingTracker())


def test_the_profiler_records_the_chosen_steps(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """trainer.profile (debug=profile): a trace and a table of the costliest operators in asr/profile/."""
    cfg = micro_cfg("trainer.profile.enabled=true", "trainer.profile.wait=0", "trainer.profile.warmup=1",
                    "trainer.profile.active=1", "asr.max_steps=3", "asr.eval_every=3", "asr.lm_order=null")
    run_asr_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())
    profile = tmp_path / "asr" / "profile"
    assert '"traceEvents"' in (profile / "trace.json").read_text()[:2000]
    assert "aten::" in (profile / "top_ops.txt").read_text()


def test_spliced_plays_train_through_the_stage(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """asr.splice, asr.source_weights and asr.word_balance as data=demo_speech sets them, through the
    real training loop, on a copy of the fixture with a `source` column (alternate clips one source
    and another)."""
    from datasets import load_from_disk

    splits = load_from_disk(str(tiny_dataset_path))
    splits["train"] = splits["train"].add_column("source", [("person" if i % 2 else "synthetic") for i in range(len(splits["train"]))])
    splits.save_to_disk(str(tmp_path / "data"))
    tracker = RecordingTracker()
    cfg = micro_cfg("asr.max_steps=3", "asr.eval_every=3", "asr.source_weights={person: 2, synthetic: 0.5}",
                    "asr.splice={sources: [person], partners: [synthetic], prob: 1.0, gap_s: 0.2}",
                    "asr.word_balance={sources: [person], max_plays: 4}")
    result = run_asr_stage(cfg, tmp_path / "run", tmp_path / "data", tracker)
    losses = [m["asr/train_loss"] for _, m in tracker.metrics if "asr/train_loss" in m]
    assert result["steps"] == 3 and len(losses) == 3 and all(np.isfinite(losses))
    # Misspelt sources stop the stage naming them.
    cfg = micro_cfg("asr.splice={sources: [persons], partners: [synthetic], prob: 1.0, gap_s: 0.2}")
    with pytest.raises(PipelineError, match=r"asr.splice: \['persons'\] is no source"):
        run_asr_stage(cfg, tmp_path / "run2", tmp_path / "data", RecordingTracker())
    cfg = micro_cfg("asr.word_balance={sources: [persons], max_plays: 4}")
    with pytest.raises(PipelineError, match=r"asr.word_balance: \['persons'\] is no source"):
        run_asr_stage(cfg, tmp_path / "run3", tmp_path / "data", RecordingTracker())


def test_a_time_mask_longer_than_a_batch_is_left_out_of_that_batch(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix transformers raised a ValueError ("`mask_length` has to be smaller than
    `sequence_length`") from inside the training step of the first batch too short for the mask:
    the recipe's 5-frame masks against a batch of 0.2 s clips played at speed 1.1 (4 frames of 30 ms)."""
    cfg = micro_cfg("asr.augment.prob=0.5", "asr.spec_augment.mask_time_prob=0.5", "asr.spec_augment.mask_time_length=1000",
                    "asr.max_steps=2", "asr.eval_every=2", "asr.lm_order=null")
    result = run_asr_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())
    assert result["steps"] == 2 and (tmp_path / "asr" / "model.safetensors").is_file()


def test_no_time_mask_turns_only_the_time_mask_off_and_back_on() -> None:
    from pipeline.asr.model import no_time_mask, time_mask_fits
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                          conv_dim=[8, 8], conv_kernel=[10, 8], conv_stride=[5, 4], mask_time_prob=0.3,
                                          mask_time_length=5, mask_feature_prob=0.2, vocab_size=8))
    # 20 samples a frame after a first window of 45: 125 samples are 5 frames, 124 are 4.
    assert time_mask_fits(model, torch.zeros(1, 125)) and not time_mask_fits(model, torch.zeros(1, 124))
    with no_time_mask(model):
        assert model.config.mask_time_prob == 0 and model.config.mask_feature_prob == 0.2
    assert model.config.mask_time_prob == 0.3


def test_a_feature_mask_wider_than_the_model_is_refused_before_the_first_step(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix transformers raised a ValueError from inside the first training step."""
    cfg = micro_cfg("asr.spec_augment.mask_feature_prob=0.1", "asr.spec_augment.mask_feature_length=64")
    with pytest.raises(PipelineError, match=r"^asr\.spec_augment\.mask_feature_length=64 is wider than the model's 32 "
                                            r"features; set it to 32 or less$"):
        run_asr_stage(cfg, tmp_path, tiny_dataset_path, RecordingTracker())


def test_source_weights_too_small_to_play_a_clip_are_named(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: weights so small that an epoch drew no clip at all stopped the run saying the
    train split gave fewer batches of asr.max_batch_seconds than the processes sharing them, and
    advised lowering asr.max_batch_seconds, which changes nothing."""
    from datasets import load_from_disk

    splits = load_from_disk(str(tiny_dataset_path))
    splits["train"] = splits["train"].add_column("source", [("person" if i % 2 else "synthetic") for i in range(len(splits["train"]))])
    splits.save_to_disk(str(tmp_path / "data"))
    cfg = micro_cfg("asr.max_steps=3", "asr.source_weights={person: 0, synthetic: 0.0001}")
    with pytest.raises(PipelineError, match=r"^asr.source_weights=.*: epoch 0 plays none of the 24 training clips"):
        run_asr_stage(cfg, tmp_path / "run", tmp_path / "data", RecordingTracker())
