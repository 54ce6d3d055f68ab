"""The fast loader path (batched Arrow read, FLAC by dr_flac, planned speed perturbation as one matrix
product, features and labels written into the padded arrays) gives the values of the straightforward
one: soundfile, torchaudio's Resample, and the processor's feature extractor and tokenizer."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.transforms as AT
from omegaconf import OmegaConf

from pipeline.asr.collate import (
    CharLabels, ClipDataset, CTCCollator, Plays, bucketed_durations, decode_audio, padded_length, plan_augmentation, speed_perturb,
)
from pipeline.asr.vocab import build_vocab, make_processor

TEXTS = ["turn on the lights", "play jazz", "set an alarm for seven", "what's the weather", "call mom", "a  b"]


def _encoded(wave: np.ndarray, rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_split() -> object:
    """Six clips in every stored form the loader meets: FLAC mono/stereo/8 kHz and WAV."""
    from datasets import Audio, Dataset, Features, Value

    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(TEXTS):
        seconds = 0.6 + 0.3 * i
        rate = 8000 if i == 3 else 16000
        wave = (0.2 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
        if i == 2:
            wave = np.stack([wave, 0.5 * wave], axis=1)  # stereo
        audio = _encoded(wave, rate, "WAV" if i == 4 else "FLAC")
        rows.append({"utterance_id": f"u{i}", "audio": {"bytes": audio, "path": None}, "text": text, "duration": seconds})
    features = Features({"utterance_id": Value("string"), "audio": {"bytes": Value("binary"), "path": Value("string")},
                         "text": Value("string"), "duration": Value("float32")})
    return Dataset.from_list(rows, features=features).cast_column("audio", Audio(sampling_rate=16000, decode=False))


def _reference_wave(cell: dict) -> np.ndarray:
    """What the loader decoded before: libsndfile, channels averaged, torchaudio to 16 kHz."""
    wave, rate = sf.read(io.BytesIO(cell["bytes"]), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if rate != 16000:
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(wave), rate, 16000).numpy()
    return wave


def test_batched_read_decodes_every_stored_form_as_soundfile_does(clip_split: object) -> None:
    clips = ClipDataset(clip_split, cache_mb=0)
    items = clips.__getitems__([4, 0, 2, 3])
    assert [item["index"] for item in items] == [4, 0, 2, 3]
    for item in items:
        row = clip_split[item["index"]]
        assert item["text"] == row["text"]
        assert item["audio"].dtype == np.float32 and item["audio"].ndim == 1
        assert np.array_equal(item["audio"], _reference_wave(row["audio"]))
        assert np.array_equal(item["audio"], clips[item["index"]]["audio"])
    # A selected split (the training stage drops unalignable clips with `select`) reads the right rows.
    picked = ClipDataset(clip_split.select([5, 1]))
    assert [item["text"] for item in picked.__getitems__([0, 1])] == [TEXTS[5], TEXTS[1]]
    with pytest.raises(Exception, match="u9: the stored FLAC does not decode"):
        decode_audio({"bytes": b"fLaC" + b"\0" * 64, "path": None}, "u9")


def test_speed_perturbation_matches_torchaudio_resample() -> None:
    wave = (0.3 * np.random.default_rng(1).standard_normal(23_456)).astype(np.float32)
    for speed in (0.9, 1.1):
        expected = AT.Resample(int(16000 * speed), 16000)(torch.from_numpy(wave)).numpy()
        got = speed_perturb(wave, speed)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_collated_batch_equals_the_processor_output(clip_split: object, tmp_path: Path, masked: bool) -> None:
    clips = ClipDataset(clip_split)
    processor = make_processor(build_vocab(TEXTS[:4]), tmp_path, return_attention_mask=masked)  # some unseen characters
    cfg = OmegaConf.create({"prob": 1.0, "speeds": [0.9, 1.0, 1.1], "noise_snr_db": [10, 20]})
    plan = plan_augmentation(len(clips), cfg, seed=5)
    items = clips.__getitems__(list(range(len(clips))))
    batch = CTCCollator(processor, cfg, seed=5, plan=plan)(items)

    gen = torch.Generator().manual_seed(5 * 1_000_003 + 0)
    waves = []
    for item, speed in zip(items, plan):  # the previous path: torchaudio's module, then white noise
        x = torch.tensor(item["audio"])
        if speed != 1.0:
            x = AT.Resample(int(16000 * speed), 16000)(x)
        low, high = 10.0, 20.0
        snr = torch.tensor([low + (high - low) * torch.rand((), generator=gen).item()])
        x = __import__("torchaudio").functional.add_noise(x[None], torch.randn(x.shape, generator=gen)[None], snr)[0]
        waves.append(x.numpy())
    expected = processor.feature_extractor(waves, sampling_rate=16000, padding="longest", return_tensors="pt")
    tokens = processor.tokenizer([item["text"] for item in items], padding="longest", return_tensors="pt")
    torch.testing.assert_close(batch["input_values"], expected["input_values"], rtol=0, atol=2e-5)
    assert torch.equal(batch["labels"], tokens.input_ids.masked_fill(tokens.attention_mask.eq(0), -100))
    assert ("attention_mask" in batch) == masked
    if masked:
        assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["input_lengths"].tolist() == [len(w) for w in waves]


def test_a_clip_played_twice_draws_its_augmentation_twice(clip_split: object, tmp_path: Path) -> None:
    """asr.source_weights repeats a source's clips; each repeat is a play of its own, with its own
    speed (or none) from the plan, not a second copy of the first play."""
    clips = ClipDataset(clip_split)
    plays = Plays(clips, [1] * 8 + [0])  # clip 1 played eight times, clip 0 once
    cfg = OmegaConf.create({"prob": 0.5, "speeds": [0.9, 1.0, 1.1]})
    plan = plan_augmentation(len(plays), cfg, seed=3)
    assert len(set(plan[:8])) > 1
    items = plays.__getitems__(list(range(9)))
    assert [item["index"] for item in items] == list(range(9))
    assert all(np.array_equal(item["audio"], clips[1]["audio"]) for item in items[:8])
    assert items[8]["text"] == TEXTS[0]
    processor = make_processor(build_vocab(TEXTS), tmp_path, return_attention_mask=True)
    batch = CTCCollator(processor, cfg, seed=3, plan=plan)(items)
    wave = clips[1]["audio"]
    assert batch["input_lengths"].tolist()[:8] == [len(wave) if s in (None, 1.0) else len(speed_perturb(wave, s)) for s in plan[:8]]


def test_a_spliced_play_is_two_clips_joined_by_silence_and_their_transcripts(clip_split: object) -> None:
    """asr.splice: a play of two clips is one wave (first clip, gap, second clip) and one transcript,
    and its duration is what the sampler packs batches by."""
    clips = ClipDataset(clip_split)
    plays = Plays(clips, [0, (2, 1), 3], gap_s=0.25)
    items = plays.__getitems__([0, 1, 2])
    gap = np.zeros(4000, dtype=np.float32)
    assert np.array_equal(items[1]["audio"], np.concatenate([clips[2]["audio"], gap, clips[1]["audio"]]))
    assert items[1]["text"] == f"{TEXTS[2]} {TEXTS[1]}" and items[0]["text"] == TEXTS[0]
    assert np.array_equal(items[2]["audio"], clips[3]["audio"])
    assert [item["index"] for item in items] == [0, 1, 2]
    assert plays.durations() == [clips.durations[0], clips.durations[2] + 0.25 + clips.durations[1], clips.durations[3]]
    assert math.isclose(plays.durations()[1], len(items[1]["audio"]) / 16000, abs_tol=1e-3)


def test_character_labels_equal_the_tokenizer(tmp_path: Path) -> None:
    processor = make_processor(build_vocab(TEXTS), tmp_path, return_attention_mask=False)
    labels = CharLabels(processor.tokenizer)
    assert labels.plain  # the fast lookup is in use for this project's tokenizer
    for text in ["", " lead", "trail ", "two  spaces", "unseen ü ß 7%", "a|b", "a | b", "x<unk>y", "<pad>"]:
        assert labels(text) == processor.tokenizer(text).input_ids, text


def test_pad_buckets_bound_the_number_of_shapes(clip_split: object, tmp_path: Path) -> None:
    buckets = (16000, 32000)
    assert [padded_length(n, buckets) for n in (10, 16000, 16001, 32000, 40000)] == [16000, 16000, 32000, 32000, 64000]
    assert padded_length(12345, None) == 12345
    processor = make_processor(build_vocab(TEXTS), tmp_path, return_attention_mask=True)
    clips = ClipDataset(clip_split)
    batch = CTCCollator(processor, pad_buckets=buckets)(clips.__getitems__([0, 2]))  # 0.6 s and 1.2 s
    assert batch["input_values"].shape[1] == 32000
    assert batch["attention_mask"].sum().item() == sum(batch["input_lengths"].tolist())
    assert batch["input_values"][0, batch["input_lengths"][0]:].abs().sum() == 0  # masked padding stays 0


def test_batches_packed_on_bucketed_lengths_hold_the_budget_once_padded() -> None:
    from pipeline.asr.sampler import epoch_batches

    rng = np.random.default_rng(0)
    durations = [float(d) for d in rng.uniform(0.5, 6.0, size=300)]
    buckets = (16000, 32000, 64000, 96000)
    budget = 24.0

    def padded_seconds(batches: list[list[int]]) -> list[float]:
        return [len(b) * padded_length(max(math.ceil(durations[i] * 16000) for i in b), buckets) / 16000 for b in batches]

    on_own_lengths = padded_seconds(epoch_batches(durations, budget, 4, seed=1, epoch=0))
    assert max(on_own_lengths) > budget  # what a compiled run's batches did before
    packed = epoch_batches(bucketed_durations(durations, buckets), budget, 4, seed=1, epoch=0)
    assert max(padded_seconds(packed)) <= budget
    assert sorted(i for b in packed for i in b) == list(range(len(durations)))  # every clip, once
    assert bucketed_durations(durations, None) is durations


def test_loader_benchmark_compares_both_loaders(clip_split: object, tmp_path: Path) -> None:
    from datasets import DatasetDict

    from bench.loader_throughput import main

    DatasetDict({"train": clip_split}).save_to_disk(str(tmp_path / "ds"))
    report = main(["--dataset", str(tmp_path / "ds"), "--repeats", "2", "--out", str(tmp_path / "out"),
                   "--batch-seconds", "3", "--noise-snr-db", "10", "20"])
    assert report["max_abs_difference"] <= 2e-5
    for side in ("previous", "current"):
        assert len(report[side]["runs"]) == 2 and report[side]["audio_seconds_per_second_median"] > 0
    written = json.loads(next((tmp_path / "out").glob("loader_throughput-*.json")).read_text())
    assert written["speedup_median"] == report["speedup_median"]


def test_compiled_training_keeps_one_graph_set_per_bucket(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """asr.compile pads every batch to a bucket length and lets the clip count vary: after the first
    steps nothing more is compiled, however the batches differ (inductor on the CPU, ~30-60 s)."""
    import shutil as sh

    import torch._dynamo

    from pipeline.asr.train import run_asr_stage
    from tests.asr.asr_testkit import micro_cfg
    from tests.recording import RecordingTracker

    if sh.which("g++") is None and sh.which("c++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on the CPU, and none is installed")
    torch._dynamo.reset()
    cfg = micro_cfg("asr.compile=true", "asr.compile_buckets=1", "asr.max_steps=8", "asr.eval_every=3", "asr.lm_order=null",
                    "asr.augment.prob=0")
    metrics = run_asr_stage(cfg, tmp_path / "run", tiny_dataset_path, RecordingTracker())
    graphs = [h["compiled_graphs"] for h in metrics["history"]]
    assert len(graphs) == 3 and graphs[0] > 0 and graphs[0] == graphs[-1], graphs
    assert all(math.isfinite(h["val_loss"]) for h in metrics["history"])


def test_auto_batch_seconds_falls_back_on_the_cpu_and_fits_memory_linearly(tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.asr.model import fit_batch_seconds
    from pipeline.asr.train import run_asr_stage
    from pipeline.config import checked
    from pipeline.asr.config import ASRConfig
    from pipeline.runtime import PipelineError
    from tests.asr.asr_testkit import micro_cfg
    from tests.recording import RecordingTracker

    cfg = micro_cfg("asr.max_batch_seconds=auto", "asr.auto_batch.fallback_seconds=9", "asr.max_steps=2", "asr.lm_order=null")
    metrics = run_asr_stage(cfg, tmp_path / "run", tiny_dataset_path, RecordingTracker())
    assert metrics["max_batch_seconds"] == 9.0
    assert "max_batch_seconds=auto: no GPU to probe on cpu; using asr.auto_batch.fallback_seconds=9" in capsys.readouterr().out
    # 1 GB for the model, 0.1 GB per padded second: a 9 GB budget holds 80 s, bounded by max_seconds.
    gb = 10**9
    assert fit_batch_seconds(int(1.5 * gb), int(2.0 * gb), 5.0, 9 * gb, 3200) == pytest.approx(80.0)
    assert fit_batch_seconds(int(1.5 * gb), int(2.0 * gb), 5.0, 9 * gb, 60) == 60
    for bad in ("asr.max_batch_seconds=big", "asr.max_batch_seconds=-1", "asr.attn_implementation=fast"):
        with pytest.raises(PipelineError, match=bad.split("=")[0]):
            checked(micro_cfg(bad).asr, ASRConfig, "asr")


def test_gpu_busy_share_merges_overlapping_kernels() -> None:
    from pipeline.asr.train import busy_share

    steps = [(0.0, 50.0), (50.0, 100.0)]
    assert busy_share([(10, 30), (20, 40), (60, 70), (95, 120)], steps) == pytest.approx((30 + 10 + 5) / 100)
    assert busy_share([], steps) == 0.0
    assert math.isnan(busy_share([(0, 1)], []))


def test_gpu_summary_checks_only_what_was_measured(tmp_path: Path) -> None:
    """bench/gpu_check.sh's table: a run that did not finish leaves its checks unmeasured, not passed."""
    from bench.gpu_summary import main

    ours = {"audio_seconds_per_second": 6600.0, "val_loss": 2.9, "steps": 150, "gpu_busy_share": 0.93, "max_batch_seconds": 900.0}
    (tmp_path / "ours.json").write_text(json.dumps({"ours": ours}))
    (tmp_path / "eager.json").write_text(json.dumps({"ours": {**ours, "audio_seconds_per_second": 2000.0, "val_loss": 2.95}}))
    report = main(["--ours", str(tmp_path / "ours.json"), "--recipe", str(tmp_path / "missing.json"),
                   "--eager", str(tmp_path / "eager.json"), "--out", str(tmp_path / "out")])
    checks = report["checks"]
    assert checks["throughput_ok"] and checks["gpu_busy_ok"] and "speedup_ok" not in checks
    assert checks["val_loss_relative_to_eager"] == pytest.approx(2.9 / 2.95 - 1) and checks["val_loss_ok"]
    assert report["runs"]["recipe"] is None


def test_nnpack_benchmark_times_both_settings_on_the_same_steps(tmp_path: Path) -> None:
    """bench/cpu_conv.py on short synthetic clips (batches of 16+, where NNPACK would be used)."""
    from bench.cpu_conv import main

    out = tmp_path / "report.json"
    report = main(["--synthetic", "40", "--seconds", "0.8", "1.0", "--batches", "2", "--repeats", "2", "--json-out", str(out)])
    rates = report["steps_per_second"]
    assert set(rates) == {"nnpack_on", "nnpack_off"} and all(len(r["per_repeat"]) == 2 for r in rates.values())
    ratios = [a / b for a, b in zip(rates["nnpack_off"]["per_repeat"], rates["nnpack_on"]["per_repeat"])]
    assert report["speedup_nnpack_off"]["per_repeat"] == ratios
    assert json.loads(out.read_text()) == report


def test_throughput_span_leaves_out_warm_up_and_validation() -> None:
    """bench.asr_throughput --warm-steps: audio and wall time between the validation at the warm-up step
    and the last one, less the validations in between (train_seconds is read before each)."""
    from bench.asr_throughput import steady_span

    history = [
        {"step": 10, "audio_hours": 1.0, "train_seconds": 100.0, "eval_seconds": 5.0, "compiled_graphs": 4},
        {"step": 20, "audio_hours": 2.0, "train_seconds": 125.0, "eval_seconds": 5.0, "compiled_graphs": 4},
        {"step": 30, "audio_hours": 3.0, "train_seconds": 150.0, "eval_seconds": 5.0, "compiled_graphs": 4},
    ]
    span = steady_span(history, 10)
    assert span == {"warm_steps": 10, "steady_audio_seconds": 7200.0, "steady_seconds": 40.0, "graphs_compiled_in_span": 0}
    assert steady_span(history, 0) == {} and steady_span(history[:1], 10) == {}
