"""Evaluation throughput: our batched, length-sorted inference against one-clip-at-a-time
`transformers.pipeline("automatic-speech-recognition")` on the same clips, in one run.

    python -m bench.eval_throughput                          # tiny model (conf/asr/tiny.yaml), espeak-ng clips
    python -m bench.eval_throughput --asr-model <run>/asr --dataset <built dataset> [--split test]

Both start from the dataset's stored (encoded) audio and decode it with the same function; ours
also scores the wake word, which the baseline does not. The eval stage's default transcripts
come from beam search with the run's character LM, which the baseline does not do at all; that pass
is timed separately (`ours_lm_*`, `speedup_with_lm`) so the greedy ratio stays like for like.
Both sides are warmed up on other clips first; the medians of `--repeats` interleaved passes are
reported. Prints one JSON object.

Then (`--stream-minutes`, 0 = skip; `--stream-only` for this alone) the streaming wake-word
detector (pipeline.eval.stream) on background speech synthesised like the demo's: audio seconds
per compute second (median of `--repeats`), and the process's peak memory after a recording of N
minutes and after one of 4N minutes, streamed second: a detector whose memory grew with the
recording's length would raise the peak there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bench.cli import check_common, interleaved
from pipeline.asr.lm import LM_DIR, BeamDecoder, has_lm, write_char_lm
from pipeline.text import normalize_text

ROOT = Path(__file__).resolve().parents[1]
PHRASES = [
    "alexa play jazz music", "alexa set an alarm for seven am tomorrow morning please",
    "alexa what is the weather in paris", "alexander went to the market",
    "alexa turn off the lights in the kitchen and the living room", "the election is next week",
    "alexa add milk eggs and bread to my shopping list", "alexa call mom",
]


def synthetic_split(n: int) -> Any:
    """`n` espeak-ng clips (1 to 5 s) with the columns the eval stage reads."""
    import io
    import subprocess

    import soundfile as sf
    import torchaudio.functional as AF
    from datasets import Audio, Dataset, Features, Value

    rows = []
    for i in range(n):
        text = PHRASES[i % len(PHRASES)]
        raw = subprocess.run(["espeak-ng", "-s", str(140 + 10 * (i % 5)), "--stdout", text],
                             check=True, capture_output=True).stdout
        wave, sr = sf.read(io.BytesIO(raw), dtype="float32")
        wave = AF.resample(torch.from_numpy(wave), sr, 16000).numpy()
        rows.append({"utterance_id": f"bench-{i}", "audio": {"array": wave, "sampling_rate": 16000},
                     "duration": len(wave) / 16000})
    features = Features({"utterance_id": Value("string"), "audio": Audio(sampling_rate=16000),
                         "duration": Value("float32")})
    return Dataset.from_list(rows, features=features)


def tiny_model(out: Path, split: Any) -> Path:
    """A randomly initialised model of the demo's size (conf/asr/tiny.yaml): speed does not need training."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from pipeline.asr.vocab import WORD_DELIMITER, build_vocab, make_processor

    cfg = OmegaConf.load(ROOT / "conf/asr/tiny.yaml")
    vocab = build_vocab(PHRASES)
    processor = make_processor(vocab, out, return_attention_mask=cfg.model_config.feat_extract_norm == "layer")
    torch.manual_seed(0)
    config = Wav2Vec2Config(**OmegaConf.to_container(cfg.model_config), vocab_size=len(vocab), pad_token_id=0)
    Wav2Vec2ForCTC(config).save_pretrained(str(out))
    processor.save_pretrained(str(out))
    write_char_lm(out / LM_DIR, [normalize_text(p) for p in PHRASES], vocab, WORD_DELIMITER, int(cfg.lm_order))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asr-model", type=Path, default=None)
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--clips", type=int, default=48,
                        help="timed clips: synthetic (no --dataset), or the split's first N (the next N warm up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lm-weight", type=float, default=3.0, help="for the LM pass, when the model has lm/")
    parser.add_argument("--beam-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings of each side; medians are reported")
    parser.add_argument("--stream-minutes", type=float, default=5.0,
                        help="streaming bench: minutes of synthesised background (and 4x that for memory); 0 = skip")
    parser.add_argument("--stream-only", action="store_true", help="only the streaming bench")
    args = parser.parse_args()
    check_common(parser, args)
    torch.set_num_threads(args.threads)
    if args.stream_only:
        print(json.dumps({"stream": stream_bench(args)}, indent=2))
        return

    from datasets import Audio, load_from_disk
    from transformers import pipeline

    from pipeline.asr.collate import decode_audio
    from pipeline.asr.model import load_asr
    from pipeline.eval.run import keyword_ids, load_eval_asr, transcribe

    # The timed clips, and other clips to warm both sides up on first (allocator, thread pools and
    # oneDNN kernels for the first shapes): a long evaluation runs warmed up on clips it has not seen.
    if args.dataset:
        full = load_from_disk(str(args.dataset))[args.split]
        split = full.select(range(min(args.clips, len(full))))
        rest = range(len(split), min(2 * len(split), len(full)))
        warm = full.select(rest) if len(rest) else split
    else:
        both = synthetic_split(2 * args.clips)
        split, warm = both.select(range(args.clips)), both.select(range(args.clips, 2 * args.clips))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.asr_model or tiny_model(Path(tmp) / "asr", split)
        # Ours as the eval stage loads it (load_eval_asr: the FFT positional conv on a CPU); the
        # baseline gets its own stock instance of the same checkpoint.
        model, processor = load_eval_asr(model_dir, "cpu")
        stock, _ = load_asr(model_dir)
        keyword = keyword_ids(processor, "alexa", True, model_dir)

        def cells_of(clips: Any) -> list[tuple[dict[str, Any], str]]:
            raw = clips.cast_column("audio", Audio(sampling_rate=16000, decode=False))
            return list(zip(raw["audio"], raw["utterance_id"]))

        cells = cells_of(split)
        asr = pipeline("automatic-speech-recognition", model=stock, tokenizer=processor.tokenizer,
                       feature_extractor=processor.feature_extractor, device="cpu")
        transcribe(model, processor, warm, keyword, args.batch_size, window_s=2.0)
        for a, u in cells_of(warm):
            asr({"raw": decode_audio(a, u), "sampling_rate": 16000})

        decoder = None
        if has_lm(model_dir):
            decoder = BeamDecoder(model_dir, processor.tokenizer.get_vocab(), args.lm_weight, args.beam_size)
        # Interleaved repeats in ABBA order, medians reported: a neighbour's burst on a shared machine
        # then slows one repeat of every side instead of one side of the comparison. The first repeat is
        # each side's first sight of these clips' shapes; later ones may run on cached kernels (both sides).
        times: dict[str, list[float]] = {"ours": [], "ours_lm": [], "baseline": []}
        for _, side in interleaved(args.repeats, ("ours", "baseline")):
            if side == "ours":
                ours = transcribe(model, processor, split, keyword, args.batch_size, window_s=2.0)
                times["ours"].append(ours.compute_seconds)
                if decoder is not None:
                    times["ours_lm"].append(transcribe(model, processor, split, keyword, args.batch_size, 2.0, [decoder]).compute_seconds)
            else:
                started = time.perf_counter()
                baseline = [asr({"raw": decode_audio(a, u), "sampling_rate": 16000})["text"] for a, u in cells]
                times["baseline"].append(time.perf_counter() - started)

    unk = processor.tokenizer.unk_token
    same = sum(normalize_text(a) == normalize_text(b.replace(unk, "")) for a, b in zip(ours.hypotheses, baseline))
    audio_s = ours.audio_seconds
    ours_s, baseline_s = statistics.median(times["ours"]), statistics.median(times["baseline"])
    lm_s = statistics.median(times["ours_lm"]) if times["ours_lm"] else None
    print(json.dumps({
        "clips": len(cells), "audio_seconds": round(audio_s, 2), "threads": args.threads,
        "batch_size": args.batch_size, "model": str(args.asr_model or "random conf/asr/tiny.yaml"),
        "repeats": args.repeats, "ours_seconds": round(ours_s, 3), "baseline_seconds": round(baseline_s, 3),
        "ours_audio_s_per_s": round(audio_s / ours_s, 1),
        "baseline_audio_s_per_s": round(audio_s / baseline_s, 1),
        "speedup": round(baseline_s / ours_s, 2),
        "speedup_per_repeat": [round(b / o, 2) for o, b in zip(times["ours"], times["baseline"])],
        "same_transcripts": f"{same}/{len(cells)}",
        **({} if lm_s is None else {
            "ours_lm_seconds": round(lm_s, 3),
            "ours_lm_audio_s_per_s": round(audio_s / lm_s, 1),
            "speedup_with_lm": round(baseline_s / lm_s, 2),
        }),
        "stream": stream_bench(args) if args.stream_minutes > 0 else None,
    }, indent=2))


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stream_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The streaming detector's speed and peak memory on N and 4N minutes of background speech."""
    import resource

    import soundfile as sf

    from pipeline.data.background import BackgroundKnobs, ensure_demo_background, load_background
    from pipeline.data.privacy import recording_pseudonym
    from pipeline.eval.run import keyword_ids, load_eval_asr
    from pipeline.eval.stream import StreamSettings, stream_background

    minutes = args.stream_minutes
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        knobs = BackgroundKnobs(hours=minutes / 60, recording_minutes=minutes)
        export = ensure_demo_background(knobs, tmp_path / "cache", ("bench", "unused"))
        synth_s = time.perf_counter() - started
        short = next(r for r in load_background(export, ("bench", "unused"), "alexa", b"bench key") if r.split == "bench")
        # The long recording: the short one four times, written block by block.
        long_path = tmp_path / "long.flac"
        with sf.SoundFile(short.path) as src, sf.SoundFile(long_path, "w", src.samplerate, 1, format="FLAC",
                                                          subtype="PCM_16") as dst:
            for _ in range(4):
                src.seek(0)
                for block in src.blocks(blocksize=16000 * 30, dtype="float32"):
                    dst.write(block)
        long = replace(short, recording_id="long", path=long_path, seconds=4 * short.seconds,
                       name=recording_pseudonym(b"bench key", "long"), position="long.flac")

        model_dir = args.asr_model or tiny_model(tmp_path / "asr", None)
        model, processor = load_eval_asr(model_dir, "cpu")
        keyword = keyword_ids(processor, "alexa", True, model_dir)
        blank = processor.tokenizer.pad_token_id
        settings = StreamSettings()
        peak_mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 - Linux: KiB
        stream_background(model, processor, [short], keyword, blank, settings)  # warm-up: kernels for the window shape
        rates, cpu_rates = [], []
        for _ in range(args.repeats):
            cpu_before = cpu_seconds()
            stats = stream_background(model, processor, [short], keyword, blank, settings)
            rates.append(stats.audio_seconds / stats.compute_seconds)
            # On a shared machine wall time depends on the neighbours; CPU time spread over the
            # threads is what the same work would take on idle cores (an estimate: it assumes the
            # threads scale, and counts their spin-waits).
            cpu_rates.append(stats.audio_seconds / ((cpu_seconds() - cpu_before) / args.threads))
        after_short = peak_mb()
        long_stats = stream_background(model, processor, [long], keyword, blank, settings)
        after_long = peak_mb()
    return {
        "model": str(args.asr_model or "random conf/asr/tiny.yaml"), "threads": args.threads,
        "window_s": settings.window_s, "hop_s": settings.hop_s, "batch_size": settings.batch_size,
        "synthesis_seconds": round(synth_s, 1), "recording_minutes": round(short.seconds / 60, 2),
        "x_real_time": round(statistics.median(rates), 1), "x_real_time_per_repeat": [round(r, 1) for r in rates],
        "x_real_time_per_cpu_time": round(statistics.median(cpu_rates), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "long_recording_minutes": round(long.seconds / 60, 2),
        "long_x_real_time": round(long_stats.audio_seconds / long_stats.compute_seconds, 1),
        "peak_rss_mb_after_short": round(after_short, 1), "peak_rss_mb_after_long": round(after_long, 1),
    }


if __name__ == "__main__":
    main()
