"""asr.compile: the compiled step computes the uncompiled model's loss, and clip counts add no graphs."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from pipeline.asr.compiled import compile_buckets, compile_settings, compiled_loss, compiled_model
from pipeline.asr.model import samples_per_frame
from pipeline.runtime import PipelineError

COMPILE = OmegaConf.create({"compile": True, "compile_buckets": 2, "spec_augment": {"mask_time_prob": 0.3, "mask_feature_prob": 0.0}})


def tiny_model(**overrides: object) -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    settings = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=[16, 16],
                    conv_kernel=[10, 8], conv_stride=[5, 4], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                    vocab_size=12, pad_token_id=0, ctc_loss_reduction="mean", mask_time_prob=0.3, mask_time_length=2,
                    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                    final_dropout=0.0, layerdrop=0.0)
    return Wav2Vec2ForCTC(Wav2Vec2Config(**{**settings, **overrides})).train()


def batch(clips: int, samples: int, seed: int = 0, padded: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {"input_values": torch.randn(clips, samples, generator=g), "labels": torch.randint(1, 12, (clips, 4), generator=g)}
    inputs["labels"][0, 3] = -100  # one shorter transcript
    if padded:
        mask = torch.ones(clips, samples, dtype=torch.long)
        mask[0, samples // 2:] = 0
        inputs["input_values"][0, samples // 2:] = 0
        inputs["attention_mask"] = mask
    return inputs


@pytest.mark.parametrize("padded", [False, True])
def test_compiled_loss_is_the_models_own_with_the_same_spec_augment_mask(padded: bool) -> None:
    model = tiny_model(feat_extract_norm="layer" if padded else "group")
    inputs = batch(4, 8000, padded=padded)
    np.random.seed(7)
    own = model(**inputs).loss
    with compile_settings(COMPILE):
        np.random.seed(7)
        ours = compiled_loss(model, model, inputs)
        np.random.seed(8)
        other_mask = compiled_loss(model, model, inputs)
    assert float(ours) == pytest.approx(float(own), rel=1e-6)
    assert float(other_mask) != pytest.approx(float(own), rel=1e-6), "the mask should change the loss"


def test_buckets_are_whole_frames_of_the_model_and_hold_the_longest_clip_as_played() -> None:
    model = tiny_model(conv_stride=[5, 6])  # 30 samples a frame: not a divisor of wav2vec2's usual 320
    hop = samples_per_frame(model)
    acfg = OmegaConf.create({"compile_buckets": 3, "augment": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1]}})
    buckets = compile_buckets(acfg, [0.4, 1.0, 2.5], hop)
    assert len(buckets) == 3 and list(buckets) == sorted(set(buckets))
    assert all(length % hop == 0 for length in buckets)
    assert buckets[-1] >= 2.5 / 0.9 * 16_000 > buckets[-1] - hop  # the slowest play of the longest clip, no frame to spare
    assert buckets[0] >= 0.4 / 1.1 * 16_000 > buckets[0] - hop


def test_the_largest_bucket_holds_every_spliced_play_as_played() -> None:
    """Before the fix the ladder ended at the longest clip: a person's word joined to the longest
    synthetic command (asr.splice) was padded to twice the largest bucket, a shape no graph had."""
    import math

    from pipeline.asr.collate import padded_length
    from pipeline.asr.sampler import longest_play, spliced_plays

    durations = [0.5] * 40 + [2.0, 3.0] * 30
    sources = ["person"] * 40 + ["synthetic"] * 60
    splice = {"sources": ["person"], "partners": ["synthetic"], "prob": 0.5, "gap_s": 0.2}
    longest = longest_play(durations, sources, splice)
    assert longest == pytest.approx(0.5 + 0.2 + 3.0)
    assert longest_play(durations, sources, None) == longest_play(durations, sources, {**splice, "prob": 0}) == 3.0
    acfg = OmegaConf.create({"compile_buckets": 3, "augment": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1]}})
    buckets = compile_buckets(acfg, durations, 320, longest)
    assert buckets[-1] >= longest / 0.9 * 16_000
    played = [sum(durations[i] for i in play) + 0.2 if isinstance(play, tuple) else durations[play]
              for epoch in range(3) for play in spliced_plays(list(range(100)), sources, splice, seed=1, epoch=epoch)]
    assert max(played) == pytest.approx(longest)  # some epoch joins a word to a 3 s command
    assert all(padded_length(math.ceil(d / 0.9 * 16_000), buckets) <= buckets[-1] for d in played)


def test_a_spliced_play_longer_than_the_batch_budget_is_warned_about_like_a_long_clip() -> None:
    from pipeline.asr.sampler import longest_play, over_budget_warning, pack_by_seconds, spliced_plays

    durations = [0.5] * 40 + [2.0, 3.0] * 30
    sources = ["person"] * 40 + ["synthetic"] * 60
    splice = {"sources": ["person"], "partners": ["synthetic"], "prob": 0.5, "gap_s": 0.2}
    longest = longest_play(durations, sources, splice)
    # Every clip fits a 3.5 s budget, but a word joined to a 3 s command does not: it is packed alone.
    plays = [play for epoch in range(3) for play in spliced_plays(list(range(100)), sources, splice, seed=1, epoch=epoch)]
    played = [sum(durations[i] for i in p) + 0.2 if isinstance(p, tuple) else durations[p] for p in plays]
    order = sorted(range(len(played)), key=played.__getitem__)
    alone = [b for b in pack_by_seconds(order, played, 3.5) if played[b[0]] > 3.5]
    assert alone and all(len(b) == 1 for b in alone)
    assert over_budget_warning(durations, longest, 3.5) == (
        "spliced plays (asr.splice) last up to 3.7 s, longer than max_batch_seconds=3.5; such a play goes in a "
        "batch of its own that exceeds the budget (raise asr.max_batch_seconds)")
    assert over_budget_warning(durations, longest, 2.5).startswith("30 training clip(s) are longer than max_batch_seconds=2.5")
    assert over_budget_warning(durations, longest, 4.0) is None
    assert over_budget_warning(durations, longest_play(durations, sources, None), 3.5) is None


def test_feature_masks_are_refused_when_compiling() -> None:
    cfg = OmegaConf.merge(COMPILE, {"spec_augment": {"mask_feature_prob": 0.1}})
    with pytest.raises(PipelineError, match="mask_feature_prob"):
        compile_settings(cfg)


def test_layerdrop_is_refused_when_compiling() -> None:
    model = tiny_model(layerdrop=0.1)
    with pytest.raises(PipelineError, match="layerdrop=0.1"):
        compiled_model(model, model)


def test_clip_counts_add_no_graphs_once_a_padded_length_is_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs are counted by dynamo, and the shapes they hold by AOTAutograd's dynamic-shape guards,
    so the aot_eager backend counts what inductor counts ([4, 4, 4, 8, 8, 8] for these batches, torch
    2.9.1) without inductor's C++ builds (61 s on 2 cores with an empty inductor cache, against 11 s).
    The training loop's compiled run in tests/asr/test_asr_loader.py builds with inductor itself."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    model = tiny_model()
    graphs = []
    with compile_settings(COMPILE):
        step = compiled_model(model, model)
        for clips, samples in [(6, 8000), (3, 8000), (5, 8000), (4, 12000), (7, 12000), (2, 8000)]:
            inputs = batch(clips, samples)
            for value in inputs.values():  # as the training loop marks them
                torch._dynamo.maybe_mark_dynamic(value, 0)
            torch._dynamo.maybe_mark_dynamic(inputs["labels"], 1)
            loss = compiled_loss(step, model, inputs)
            loss.backward()
            assert torch.isfinite(loss)
            graphs.append(int(counters["stats"]["unique_graphs"]))
    assert graphs[0] == graphs[1] == graphs[2], graphs  # new clip counts, one length
    assert graphs[3] > graphs[2] and graphs[3] == graphs[4] == graphs[5], graphs  # a second length, then nothing new


def test_the_layerdrop_setting_the_compile_error_advises_turns_a_pretrained_models_layerdrop_off(tmp_path: Path) -> None:
    """Before the fix: with a pretrained checkpoint that has LayerDrop (wav2vec2-base: 0.1), asr.compile=true
    stopped advising `+asr.spec_augment.layerdrop=0`, which the config check then refused ("not a
    Wav2Vec2Config field for this group"), and asr.model_config.layerdrop is not read for such a
    model: no setting could turn it off."""
    from asr_testkit import micro_cfg

    from pipeline.asr.config import ASRConfig
    from pipeline.asr.model import build_model
    from pipeline.asr.vocab import build_vocab, make_processor
    from pipeline.config import with_checked

    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=[8, 8],
                 conv_kernel=[10, 8], conv_stride=[5, 4], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    folder = tmp_path / "pretrained"
    Wav2Vec2ForCTC(Wav2Vec2Config(**small, layerdrop=0.1)).save_pretrained(folder)
    processor = make_processor(build_vocab(["yes", "no"]), tmp_path / "proc", False)
    with pytest.raises(PipelineError, match=r"\+asr.spec_augment.layerdrop=0"):
        compiled_model(model := build_model(micro_cfg(f"asr.model_name_or_path={folder}", "asr.model_config=null").asr, processor), model)
    cfg = with_checked(micro_cfg(f"asr.model_name_or_path={folder}", "asr.model_config=null", "asr.compile=true", "asr.spec_augment.layerdrop=0"),
                       "asr", ASRConfig)
    model = build_model(cfg.asr, processor)
    assert model.config.layerdrop == 0
    compiled_model(model, model)  # accepted: torch.compile compiles on the first call, which this test leaves out
    with pytest.raises(PipelineError, match=r"^asr.spec_augment.layerdrop=1.5: a chance per layer"):
        with_checked(micro_cfg(f"asr.model_name_or_path={folder}", "asr.model_config=null", "asr.spec_augment.layerdrop=1.5"), "asr", ASRConfig)
    with pytest.raises(PipelineError, match=r"^asr.spec_augment.layerdrop: .*asr.model_config.layerdrop"):
        with_checked(micro_cfg("asr.spec_augment.layerdrop=0"), "asr", ASRConfig)
