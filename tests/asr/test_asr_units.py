"""Vocabulary, batching and collation: the pieces the training loop trusts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from pipeline.asr.collate import CTCCollator, plan_augmentation, played_durations
from pipeline.asr.model import load_asr
from pipeline.asr.sampler import balanced_plays, epoch_batches, eval_batches, played_clips, source_plays, spliced_plays
from pipeline.asr.vocab import PAD, UNK, WORD_DELIMITER, build_vocab, make_processor
from pipeline.text import ALPHABET
from pipeline.runtime import PipelineError


def test_vocab_has_blank_first_and_maps_unseen_characters_to_unk(tmp_path: Path) -> None:
    vocab = build_vocab(["play jazz", "don't stop"])
    assert vocab[PAD] == 0 and vocab[UNK] == 1 and WORD_DELIMITER in vocab
    # The whole alphabet of the normaliser, though these transcripts lack "x", "y" and most letters:
    # a model trained on them can still write a test transcript's "xylophone".
    assert set(vocab) - {PAD, UNK, WORD_DELIMITER} == set(ALPHABET)
    assert set(build_vocab(["café au lait"])) - set(vocab) == {"é"}  # what training text holds beyond it is kept too
    processor = make_processor(vocab, tmp_path, return_attention_mask=True)
    assert len(processor.tokenizer) == len(vocab)
    assert vocab[UNK] not in processor.tokenizer("play xylophone").input_ids
    ids = processor.tokenizer("play naïve señor").input_ids  # text that skipped normalisation
    assert ids.count(vocab[UNK]) == 2
    assert processor.tokenizer.decode(processor.tokenizer("play jazz").input_ids, group_tokens=False) == "play jazz"


def test_batches_fit_the_seconds_budget_and_cover_each_clip_once() -> None:
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 4.0, size=300).tolist()
    batches = epoch_batches(durations, max_batch_seconds=20, bucket_batches=5, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) * max(durations[i] for i in b) <= 20 for b in batches)
    # Grouped by length: padding is a small share of the padded seconds.
    padded = sum(len(b) * max(durations[i] for i in b) for b in batches)
    assert sum(durations) / padded > 0.85
    assert batches == epoch_batches(durations, 20, 5, seed=1, epoch=0)
    assert batches != epoch_batches(durations, 20, 5, seed=1, epoch=1)
    shards = [epoch_batches(durations, 20, 5, seed=1, epoch=0, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}
    # One batch for two ranks: neither trains (rank 0 alone would wait for rank 1's gradients for good).
    assert [epoch_batches([1.0, 1.0], 20, 5, seed=1, epoch=0, rank=r, world_size=2) for r in range(2)] == [[], []]
    ordered = eval_batches(durations, 20)
    assert sorted(i for b in ordered for i in b) == list(range(300))


def test_source_weights_thin_or_repeat_a_sources_clips_each_epoch() -> None:
    sources = ["demo"] * 400 + ["fsdd"] * 100 + ["speech_commands"] * 100
    durations = [3.0] * 400 + [0.5] * 100 + [1.0] * 100
    plays = source_plays({"demo": 0.5, "fsdd": 2}, sources, "the dataset")
    assert plays == [0.5] * 400 + [2.0] * 100 + [1.0] * 100
    def epoch_plays(epoch: int) -> list[int]:
        clips = played_clips(600, seed=1, epoch=epoch, plays=plays)
        return [clips[k] for b in epoch_batches([durations[i] for i in clips], 20, 5, seed=1, epoch=epoch) for k in b]

    epochs = [epoch_plays(e) for e in range(4)]
    for played in epochs:
        counts = np.bincount(played, minlength=600)
        assert set(counts[:400]) <= {0, 1} and 160 < counts[:400].sum() < 240  # a seeded half of the demo
        assert (counts[400:500] == 2).all() and (counts[500:] == 1).all()
    assert epochs[0] != epochs[1] and len({i for e in epochs for i in e if i < 400}) > 350  # another half each epoch
    assert epoch_plays(0) == epoch_plays(0)
    # No weights: each clip once, so the batches are those of a run without the knob.
    assert source_plays({}, sources, "the dataset") is None
    assert played_clips(600, seed=1, epoch=0) == list(range(600))
    with pytest.raises(PipelineError, match=r"\['fdsd'\] is no source of the dataset's train split"):
        source_plays({"fdsd": 2}, sources, "the dataset")
    with pytest.raises(PipelineError, match="no `source` column"):
        source_plays({"demo": 0.5}, None, "the dataset")
    with pytest.raises(PipelineError, match="would get weight 0"):
        source_plays({"demo": 0, "fsdd": 0, "speech_commands": 0}, sources, "the dataset")


def test_word_balance_plays_a_sources_rare_transcripts_more_up_to_a_cap() -> None:
    # Speech Commands' shape: a core word said by many, rarer words by a few; another source untouched.
    texts = ["yes"] * 40 + ["two"] * 10 + ["visual"] * 2 + ["two"] * 30
    sources = ["speech_commands"] * 52 + ["fsdd"] * 30
    balance = {"sources": ["speech_commands"], "max_plays": 8}
    plays = balanced_plays(source_plays({"speech_commands": 2, "fsdd": 2}, sources, "the dataset"), balance,
                           sources, texts, "the dataset")
    assert plays == [2.0] * 40 + [8.0] * 10 + [16.0] * 2 + [2.0] * 30  # 40/10 = 4x; 40/2 = 20x, capped at 8x
    # FSDD's "two" is counted within FSDD: 30 clips of its commonest transcript, played as before.
    clips = played_clips(82, seed=1, epoch=0, plays=plays)
    assert np.bincount(clips, minlength=82).tolist() == [2] * 40 + [8] * 10 + [16] * 2 + [2] * 30
    # Without source weights, the balance starts from one play each; without the knob, nothing changes.
    assert balanced_plays(None, {"sources": ["speech_commands"], "max_plays": 3}, sources, texts, "the dataset") == (
        [1.0] * 40 + [3.0] * 12 + [1.0] * 30)
    assert balanced_plays(None, None, sources, texts, "the dataset") is None
    with pytest.raises(PipelineError, match=r"asr.word_balance: \['speech_comands'\] is no source of the dataset's train split"):
        balanced_plays(None, {"sources": ["speech_comands"], "max_plays": 4}, sources, texts, "the dataset")
    with pytest.raises(PipelineError, match="no transcript per training clip"):
        balanced_plays(None, balance, sources, None, "the dataset")


def test_splice_joins_a_share_of_the_chosen_sources_plays_to_a_partner_clip() -> None:
    sources = ["demo"] * 300 + ["fsdd"] * 100 + ["speech_commands"] * 100
    splice = {"sources": ["fsdd"], "partners": ["demo"], "prob": 0.5}
    clips = played_clips(500, seed=1, epoch=0, plays=[1.0] * 300 + [2.0] * 200)
    plays = spliced_plays(clips, sources, splice, seed=1, epoch=0)
    assert len(plays) == len(clips)
    joined = [p for p in plays if isinstance(p, tuple)]
    for play, clip in zip(plays, clips):
        if isinstance(play, tuple):  # the played clip, and a demo clip before or after it
            assert clip in play and sources[clip] == "fsdd" and {sources[i] for i in play} == {"fsdd", "demo"}
        else:
            assert play == clip
    assert 70 < len(joined) < 130  # half of FSDD's 200 plays (each clip twice)
    assert 0.3 < sum(sources[p[0]] == "demo" for p in joined) / len(joined) < 0.7  # either order
    assert plays == spliced_plays(clips, sources, splice, seed=1, epoch=0)
    assert plays != spliced_plays(clips, sources, splice, seed=1, epoch=1)
    assert spliced_plays(clips, sources, None, seed=1, epoch=0) == clips
    with pytest.raises(PipelineError, match=r"\['fdsd'\] is no source of the dataset's train split"):
        spliced_plays(clips, sources, {**splice, "sources": ["fdsd"]}, seed=1, epoch=0, where="the dataset")
    with pytest.raises(PipelineError, match="no `source` column"):
        spliced_plays(clips, None, splice, seed=1, epoch=0)


def test_collator_pads_audio_and_masks_label_padding(tmp_path: Path) -> None:
    processor = make_processor(build_vocab(["turn on", "play jazz music"]), tmp_path, return_attention_mask=True)
    items = [
        {"index": 0, "audio": np.ones(8000, dtype=np.float32), "text": "turn on"},
        {"index": 1, "audio": np.ones(16000, dtype=np.float32), "text": "play jazz music 7%"},  # unseen chars
    ]
    batch = CTCCollator(processor)(items)
    assert batch["input_values"].shape == (2, 16000)
    assert batch["attention_mask"][0].sum() == 8000
    assert (batch["labels"][0] == -100).sum() == len("play jazz music 7%") - len("turn on")
    assert float(batch["audio_seconds"]) == pytest.approx(1.5)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"prob": 1.0, "speeds": [1.1], "noise_snr_db": [10, 10]})
    noisy = CTCCollator(processor, cfg, seed=3, plan=plan_augmentation(2, cfg, seed=3))
    out = noisy(items)
    assert out["input_values"].shape[1] == math.ceil(16000 / 1.1)  # 1.1x speed shortens the clips
    assert torch.equal(out["input_values"], noisy(items)["input_values"])  # same seed, same draw


def test_speed_plan_is_drawn_per_epoch_and_batches_follow_the_played_lengths(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"prob": 0.5, "speeds": [0.9, 1.0, 1.1], "noise_snr_db": None})
    plan = plan_augmentation(2000, cfg, seed=11)
    assert plan == plan_augmentation(2000, cfg, seed=11) and plan != plan_augmentation(2000, cfg, seed=12)
    assert 0.45 < sum(s is not None for s in plan) / 2000 < 0.55
    assert {s for s in plan if s is not None} == {0.9, 1.0, 1.1}
    assert plan_augmentation(10, OmegaConf.create({"prob": 0.0, "speeds": [0.9]}), seed=1) is None
    # Batches are packed by the played lengths, so speed perturbation adds no padding.
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 4.0, size=2000).tolist()
    played = played_durations(durations, plan)
    assert played[plan.index(0.9)] == pytest.approx(durations[plan.index(0.9)] / 0.9)

    def efficiency(lengths: list[float]) -> float:  # real over padded seconds
        batches = epoch_batches(lengths, 20, 5, seed=1, epoch=0)
        return sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert efficiency(played) > efficiency(durations) - 0.02
    batches = epoch_batches(played, 20, 5, seed=1, epoch=0)
    # The collator plays each clip at its planned speed: the batch is as long as its longest played clip.
    processor = make_processor(build_vocab(["on"]), tmp_path, return_attention_mask=False)
    batch = batches[0]
    items = [{"index": i, "audio": rng.standard_normal(round(durations[i] * 16000)).astype(np.float32), "text": "on"} for i in batch]
    out = CTCCollator(processor, cfg, seed=1, plan=plan)(items)
    assert abs(out["input_values"].shape[1] / 16000 - max(played[i] for i in batch)) < 0.01
    assert float(out["audio_seconds"]) == pytest.approx(sum(played[i] for i in batch), abs=0.01)


def test_decoded_clips_are_kept_in_memory_up_to_the_budget(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Later epochs reuse the decoded clip; past the budget clips are decoded each time, as without a cache."""
    from datasets import load_from_disk
    from omegaconf import OmegaConf

    from pipeline.asr.collate import ClipDataset

    split = load_from_disk(str(tiny_dataset_path))["train"]
    plain, cached = ClipDataset(split), ClipDataset(split, cache_mb=64)
    first = [cached[i] for i in range(len(cached))]
    for i, item in enumerate(first):
        again, fresh = cached[i], plain[i]
        assert again["audio"] is item["audio"]  # not decoded a second time
        assert np.array_equal(again["audio"], fresh["audio"]) and again["text"] == fresh["text"]
        assert fresh["audio"] is not plain[i]["audio"]  # cache_mb=0 decodes every time
    # A cached clip cannot be changed in place, and augmentation leaves it as it was.
    with pytest.raises(ValueError):
        first[0]["audio"][0] = 1.0
    before = first[0]["audio"].copy()
    processor = make_processor(build_vocab(split["text"]), tmp_path, return_attention_mask=True)
    cfg = OmegaConf.create({"prob": 1.0, "speeds": [0.9], "noise_snr_db": [10, 10]})
    CTCCollator(processor, cfg, seed=1, plan=plan_augmentation(len(cached), cfg, seed=1))([cached[0], cached[1]])
    assert np.array_equal(cached[0]["audio"], before)
    # The budget bounds the memory: with room for about two clips, two are kept.
    clip_mb = first[0]["audio"].nbytes / 2**20
    small = ClipDataset(split, cache_mb=2.5 * clip_mb)
    items = [small[i] for i in range(len(small))]
    kept = sum(small[i]["audio"] is item["audio"] for i, item in enumerate(items))
    assert kept == 2 and small.cache_bytes_left >= 0


def _twin_models(**config: Any) -> tuple[Wav2Vec2ForCTC, Wav2Vec2ForCTC]:
    """Two identical small training-mode models: one stays stock, the other gets a speed-up."""
    config = {"vocab_size": 12, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64, "conv_dim": [16, 32], "conv_kernel": [10, 8], "conv_stride": [5, 4],
              "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 4, "mask_time_prob": 0.0, **config}
    torch.manual_seed(0)
    stock, twin = Wav2Vec2ForCTC(Wav2Vec2Config(**config)).train(), Wav2Vec2ForCTC(Wav2Vec2Config(**config)).train()
    twin.load_state_dict(stock.state_dict())
    return stock, twin


def test_training_does_not_differentiate_the_waveform_but_trains_the_same_weights() -> None:
    """The input gradient transformers asks for is only needed by gradient checkpointing."""
    from pipeline.asr.model import skip_waveform_gradient

    stock, lean = _twin_models()
    assert skip_waveform_gradient(lean)
    waves, labels = torch.randn(2, 6400), torch.randint(2, 12, (2, 5))
    seen: dict[str, bool] = {}

    def record(name: str) -> Callable[..., None]:  # a forward pre-hook noting whether the waveform needs a gradient
        return lambda module, args: seen.__setitem__(name, args[0].requires_grad)

    stock.wav2vec2.feature_extractor.conv_layers[0].register_forward_pre_hook(record("stock"))
    lean.wav2vec2.feature_extractor.conv_layers[0].register_forward_pre_hook(record("lean"))
    for model in (stock, lean):
        torch.manual_seed(1)  # the same dropout draws for both
        model(input_values=waves, labels=labels).loss.backward()
    assert seen == {"stock": True, "lean": False}
    for (name, p), q in zip(stock.named_parameters(), lean.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert lean.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad.abs().sum() > 0
    # With gradient checkpointing the input gradient stays (checkpointed layers need one).
    checkpointed = _twin_models()[0]
    getattr(checkpointed, "activation_checkpointing_enable", checkpointed.gradient_checkpointing_enable)()
    assert not skip_waveform_gradient(checkpointed)


def test_load_asr_refuses_a_processor_from_another_model(tmp_path: Path) -> None:
    processor = make_processor(build_vocab(["abc"]), tmp_path / "v", return_attention_mask=False)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                            conv_dim=[8, 8], conv_kernel=[10, 4], conv_stride=[5, 4], num_conv_pos_embeddings=4,
                            num_conv_pos_embedding_groups=2, vocab_size=len(processor.tokenizer) + 3)
    Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    with pytest.raises(PipelineError, match="lm_head"):
        load_asr(tmp_path / "m")
    with pytest.raises(PipelineError, match="config.json"):
        load_asr(tmp_path / "missing")


def test_clips_too_short_for_their_transcript_are_left_out_of_training(tiny_dataset_path) -> None:
    """A clip with fewer CTC frames than labels has no alignment (infinite loss): it is dropped and counted."""
    import tempfile
    from pathlib import Path

    from datasets import load_from_disk

    from pipeline.asr.collate import ClipDataset
    from pipeline.distributed import Placement
    from pipeline.asr.model import build_model
    from pipeline.asr.train import _drop_unalignable
    from pipeline.asr.vocab import build_vocab, make_processor

    from asr_testkit import micro_cfg

    split = load_from_disk(str(tiny_dataset_path))["train"]
    # Pair one 2-second clip with a transcript far longer than its ~100 output frames.
    long_text = "alexa " * 60
    split = split.map(lambda ex, i: {"text": long_text.strip() if i == 0 else ex["text"]}, with_indices=True)
    clips = ClipDataset(split)
    cfg = micro_cfg()
    with tempfile.TemporaryDirectory() as tmp:
        processor = make_processor(build_vocab(clips.split["text"]), Path(tmp), False)
    model = build_model(cfg.asr, processor)
    kept, dropped = _drop_unalignable(clips, model, Placement(device=__import__("torch").device("cpu"), precision="fp32"))
    assert dropped == 1
    assert len(kept) == len(clips) - 1
    assert long_text.strip() not in kept.split["text"]


def test_num_workers_auto_loads_in_process_on_the_cpu_and_in_workers_on_a_gpu() -> None:
    from omegaconf import OmegaConf

    from pipeline.asr.devices import loader_workers
    from pipeline.distributed import Placement

    cpu, gpu = Placement(torch.device("cpu"), "fp32"), Placement(torch.device("cuda", 0), "bf16")
    assert loader_workers(OmegaConf.create({"num_workers": "auto"}), cpu) == 0
    assert 1 <= loader_workers(OmegaConf.create({"num_workers": "auto"}), gpu) <= 8
    assert loader_workers(OmegaConf.create({"num_workers": 3}), cpu) == 3
    for bad in (-1, "many"):
        with pytest.raises(PipelineError, match="trainer.num_workers"):
            loader_workers(OmegaConf.create({"num_workers": bad}), cpu)


def test_fast_cpu_math_flushes_denormals_and_skips_onednn_only_for_fp32_cpu_work() -> None:
    from pipeline.asr.devices import fast_cpu_math

    denormal = torch.tensor([1e-39])
    assert (denormal * 1.0).item() > 0  # denormals are kept by default
    assert torch.backends.mkldnn.enabled
    nnpack_default = torch._C._get_nnpack_enabled()
    can_flush = torch.set_flush_denormal(False)  # False where the CPU cannot (not x86)
    with fast_cpu_math(torch.device("cpu")):
        assert (denormal * 1.0).item() == (0.0 if can_flush else denormal.item())
        assert not torch.backends.mkldnn.enabled and not torch._C._get_nnpack_enabled()
        # PyTorch's own convolution, as used while training, gives oneDNN's result; a batch of 16
        # clips is where NNPACK would otherwise take a short kernel
        x, w = torch.randn(16, 32, 400), torch.randn(64, 32, 8)
        native = torch.nn.functional.conv1d(x, w, stride=4)
    assert torch.backends.mkldnn.enabled and (denormal * 1.0).item() > 0  # restored
    assert torch._C._get_nnpack_enabled() == nnpack_default
    torch.testing.assert_close(native, torch.nn.functional.conv1d(x, w, stride=4), rtol=1e-4, atol=1e-4)
    with fast_cpu_math(torch.device("cpu"), torch.bfloat16):
        assert torch.backends.mkldnn.enabled  # low-precision CPU kernels come from oneDNN


@pytest.mark.parametrize("kernel", [16, 15])  # even kernels drop one frame (SamePad), odd ones none
def test_fft_positional_conv_matches_the_stock_layer_and_saves_an_ordinary_model(tmp_path: Path, kernel: int) -> None:
    from pipeline.asr.fft_conv import use_fft_positional_conv

    stock, fast = _twin_models(num_conv_pos_embeddings=kernel, do_stable_layer_norm=True)
    assert use_fft_positional_conv(fast, torch.device("cpu"))
    assert stock.state_dict().keys() == fast.state_dict().keys()
    waves = torch.randn(3, 6400)
    waves[2, 4800:] = 0.0  # a padded clip
    labels = torch.randint(2, 12, (3, 5))

    def loss_and_grads(model: Wav2Vec2ForCTC) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(1)  # the same dropout and layerdrop draws for both
        loss = model(input_values=waves, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    stock_loss, stock_grads = loss_and_grads(stock)
    fast_loss, fast_grads = loss_and_grads(fast)
    torch.testing.assert_close(fast_loss, stock_loss, rtol=1e-5, atol=1e-5)
    scale = max(g.abs().max().item() for g in stock_grads.values())
    assert stock_grads.keys() == fast_grads.keys() and any("pos_conv_embed" in name for name in fast_grads)
    # fp32 FFT and direct convolution round differently, by an amount the CPU's kernels decide: the
    # output layer's gradient, summed over every frame, came within 2e-5 of the largest gradient on an
    # AMD EPYC (AVX2) and 1e-5 elsewhere. A conv one frame off moves gradients by half of it.
    for name, grad in stock_grads.items():  # incl. the weight-norm g and v of the positional conv
        torch.testing.assert_close(fast_grads[name], grad, rtol=0, atol=1e-4 * scale, msg=name)
    # The patched instance saves, and loads back, as a stock transformers model.
    fast.save_pretrained(tmp_path)
    reloaded = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    assert "forward" not in vars(reloaded.wav2vec2.encoder.pos_conv_embed)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(waves).logits, stock.eval()(waves).logits, rtol=1e-4, atol=1e-4)
    # GPUs and half precision keep the stock layer.
    assert not use_fft_positional_conv(Wav2Vec2ForCTC(stock.config), torch.device("cpu"), torch.bfloat16)
    assert not use_fft_positional_conv(Wav2Vec2ForCTC(stock.config), torch.device("cuda", 0))


def test_a_batch_of_only_empty_transcripts_gives_a_finite_loss(tmp_path: Path) -> None:
    """Before the fix: a batch whose transcripts were all empty (false wakes of noise, which the data
    stage keeps) had labels of width 0, and Wav2Vec2ForCTC's check of the largest label id raised
    "max(): Expected reduction dim to be specified", which stopped training or validation."""
    processor = make_processor(build_vocab(["turn on"]), tmp_path, return_attention_mask=True)
    items = [{"index": i, "audio": np.full(8000 + 800 * i, 0.1, dtype=np.float32), "text": ""} for i in range(2)]
    batch = CTCCollator(processor)(items)
    assert (batch["labels"] == -100).all()
    model, _ = _twin_models(vocab_size=len(processor.tokenizer), pad_token_id=processor.tokenizer.pad_token_id,
                            ctc_zero_infinity=True)
    loss = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.isfinite(loss)
