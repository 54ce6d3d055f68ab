"""ASR training throughput: our stage against the recipe of Hugging Face's
`run_speech_recognition_ctc.py`, same model config, data, seed and step count, in one run.

    python -m bench.asr_throughput --dataset <built dataset> [--steps 60]      # CPU, asr=tiny model
    python -m bench.asr_throughput --synthetic 1500 --arch base --device cuda --precision bf16 --steps 300

The baseline follows the recipe: features and labels precomputed with `dataset.map` (the second
copy of the corpus the recipe writes; here to a temp folder), the transformers Trainer with `group_by_length` (v5: `train_sampling_strategy="group_by_length"`), a fixed number
of clips per batch padded to the longest; its batch size is our mean clips per batch, so both see
about the same audio per step. Each side runs in its own process (clean peak memory) and is scored
with the same validation code. Prints one JSON object: audio seconds per wall second of the training
loop, peak memory, validation loss at the last step, and (on a GPU) MFU. With `--warm-steps W` the
throughput counts only the steps after W, so that compilation, cuDNN's algorithm search and the
allocator's growth stay out of it (validation passes are left out too); the whole run's figure is
kept as `audio_seconds_per_second_whole_run`. `--repeats N` interleaves N
runs of each side in ABBA order and reports the median run of each (of an even count, the slower
of the two middle runs; this VM's speed drifts by 10-25%
between runs, and sometimes within a few minutes); `--baseline-fast-math` gives the recipe our CPU
settings too, to show what they alone buy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bench.cli import check_common, interleaved

ROOT = Path(__file__).resolve().parents[1]
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16
WORDS = "alexa play set turn on off the lights music alarm for seven am what is weather in paris call mom add milk to list".split()


def bench_cfg(args: argparse.Namespace, run_steps: int) -> DictConfig:
    asr = OmegaConf.load(ROOT / "conf/asr/tiny.yaml")
    if args.arch == "base":  # Wav2Vec2Config's defaults are the wav2vec2-base architecture
        asr.model_config = OmegaConf.create({"feat_extract_norm": "group", "do_stable_layer_norm": False, "layerdrop": 0.0})
        asr.freeze_feature_encoder = True
        asr.learning_rate = 1e-4
        asr.max_batch_seconds = _seconds(args.batch_seconds) or 200
        asr.auto_batch.fallback_seconds = 200
    elif args.batch_seconds:
        asr.max_batch_seconds = _seconds(args.batch_seconds)
    if args.auto_max_seconds:
        asr.auto_batch.max_seconds = args.auto_max_seconds
    asr.compile = bool(args.compile)
    if args.compile_buckets:
        asr.compile_buckets = args.compile_buckets
    if args.attn:
        asr.attn_implementation = args.attn
    warm = _warm(args, run_steps)
    # A validation at the end of warm-up marks where the timed span starts.
    asr.max_steps, asr.eval_every, asr.max_train_minutes = run_steps, warm or run_steps, None
    asr.warmup_steps = max(1, run_steps // 10)
    asr.cpu_threads = args.threads
    if args.augment_prob is not None:
        asr.augment.prob = args.augment_prob
    trainer = OmegaConf.load(ROOT / "conf/trainer/default.yaml")
    trainer.device, trainer.precision, trainer.log_every = args.device, args.precision, max(run_steps // 5, 1)
    if args.num_workers is not None:
        trainer.num_workers = args.num_workers
    if args.profile and warm:
        # A window that ends just before the timed span (writing the trace takes seconds), after the
        # steps in which compilation is most likely; the history's compiled_graphs shows whether it was done.
        active = max(1, min(8, warm // 4))
        trainer.profile.update({"enabled": True, "wait": max(1, warm - active - 4), "warmup": 2, "active": active})
    elif args.profile:  # a window after warm-up (and compilation), recorded for the GPU busy share
        trainer.profile.update({"enabled": True, "wait": max(1, run_steps // 2), "warmup": 2, "active": min(10, max(1, run_steps // 4))})
    return OmegaConf.create({"seed": args.seed, "asr": asr, "trainer": trainer})


def _warm(args: argparse.Namespace, run_steps: int) -> int:
    """The steps left out of the timed span; 0 (time the whole run) when they would leave nothing."""
    return args.warm_steps if 0 < args.warm_steps < run_steps else 0


def steady_span(history: list[dict[str, Any]], warm: int) -> dict[str, Any]:
    """Audio and wall seconds between the validation at step `warm` and the last one, validations left out."""
    if not warm:
        return {}
    first = next((h for h in history if h["step"] >= warm), None)
    last = history[-1]
    if first is None or first is last:
        return {}
    # train_seconds is read before each validation, so the span holds every one from `first` up to, not including, `last`.
    validating = sum(h.get("eval_seconds", 0.0) for h in history if first["step"] <= h["step"] < last["step"])
    span = {"warm_steps": first["step"], "steady_audio_seconds": (last["audio_hours"] - first["audio_hours"]) * 3600,
            "steady_seconds": last["train_seconds"] - first["train_seconds"] - validating}
    if "compiled_graphs" in last:  # 0 when every padded length was compiled before the span began
        span["graphs_compiled_in_span"] = last["compiled_graphs"] - first["compiled_graphs"]
    return span


def _seconds(value: str | None) -> float | str | None:
    """--batch-seconds: padded seconds, or auto (ours: a GPU memory probe; the recipe has no such thing)."""
    return value if value in (None, "auto") else float(value)


def synthetic_dataset(n: int, out: Path, seed: int, seconds: tuple[float, float] = (2, 10)) -> Path:
    """`n` clips of `seconds` (2-10 s) of tones in noise with random word transcripts (speed needs no real speech).

    The audio is written as WAV bytes with soundfile and the column cast to `Audio(decode=False)`:
    encoding arrays through `datasets` needs torchcodec, which a bare GPU machine may lack."""
    import io

    import soundfile as sf
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    rng = np.random.default_rng(seed)
    features = Features({"utterance_id": Value("string"), "audio": {"bytes": Value("binary"), "path": Value("string")},
                         "text": Value("string"), "duration": Value("float32")})

    def rows(count: int, prefix: str) -> list[dict[str, Any]]:
        made = []
        for i in range(count):
            dur = float(rng.uniform(*seconds))
            t = np.arange(int(dur * 16000)) / 16000
            wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
            buffer = io.BytesIO()
            sf.write(buffer, wave, 16000, format="WAV", subtype="FLOAT")
            text = " ".join(rng.choice(WORDS, size=max(1, int(dur * 2.5))))
            made.append({"utterance_id": f"{prefix}-{i}", "audio": {"bytes": buffer.getvalue(), "path": None}, "text": text, "duration": dur})
        return made

    def split(count: int, prefix: str) -> Dataset:
        return Dataset.from_list(rows(count, prefix), features=features).cast_column(
            "audio", Audio(sampling_rate=16000, decode=False))

    DatasetDict({"train": split(n, "train"), "validation": split(max(n // 20, 8), "val")}).save_to_disk(str(out))
    return out


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_audio_second(model: torch.nn.Module, device: torch.device, amp: torch.dtype | None) -> float:
    """Measured (torch FlopCounterMode) forward+backward FLOPs of one 8 s clip, per audio second."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 8 * 16000, device=device)
    labels = torch.randint(2, model.config.vocab_size, (1, 20), device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 8


def run_ours(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from pipeline.asr.model import load_asr
    from pipeline.asr.train import run_asr_stage
    from pipeline.tracking import NullTracker

    cfg = bench_cfg(args, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_asr_stage(cfg, Path(tmp), Path(args.dataset), NullTracker())
        audio_s = metrics["audio_hours_seen"] * 3600
        result.update(audio_seconds=audio_s, train_seconds=metrics["train_wall_seconds"], val_loss=metrics["history"][-1]["val_loss"],
                      steps=metrics["steps"], peak_memory_mb=peak_memory_mb(args.device), max_batch_seconds=metrics["max_batch_seconds"],
                      compile=bool(args.compile), attn_implementation=cfg.asr.attn_implementation,
                      **steady_span(metrics["history"], _warm(args, args.steps)))
        busy = Path(tmp) / "asr" / "profile" / "gpu_busy.json"
        if busy.exists():
            result["gpu_busy_share"] = json.loads(busy.read_text())["gpu_busy_share"]
        if args.device.startswith("cuda"):
            model, _ = load_asr(Path(tmp) / "asr", args.device)
            model.train()
            if cfg.asr.freeze_feature_encoder:
                model.freeze_feature_encoder()  # count the FLOPs training actually ran
            result["flops_per_audio_second"] = flops_per_audio_second(model, torch.device(args.device), _amp(args))


def _amp(args: argparse.Namespace) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)


def run_baseline(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The recipe: map() to features/labels, Trainer + group_by_length, pad to the longest."""
    from datasets import load_from_disk
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from pipeline.asr.collate import ClipDataset, decode_audio
    from pipeline.asr.devices import fast_cpu_math
    from pipeline.asr.model import build_model, evaluate_clips, uses_attention_mask
    from pipeline.asr.sampler import epoch_batches, eval_batches
    from pipeline.asr.train import clip_loader
    from pipeline.asr.vocab import build_vocab, make_processor
    from pipeline.nlu.train import length_grouping
    from pipeline.runtime import seed_everything

    cfg = bench_cfg(args, args.steps)
    acfg = cfg.asr
    if acfg.max_batch_seconds == "auto":
        raise SystemExit("asr_throughput: the recipe needs numeric --batch-seconds (auto is ours alone)")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    splits = load_from_disk(args.dataset)
    train = ClipDataset(splits["train"])
    with tempfile.TemporaryDirectory() as tmp:
        processor = make_processor(build_vocab(train.split["text"]), Path(tmp), uses_attention_mask(acfg))
        batches = epoch_batches(train.durations, float(acfg.max_batch_seconds), int(acfg.bucket_batches), args.seed, 0)
        batch_size = max(1, round(len(train) / len(batches)))
        started = time.time()

        def prepare(row: dict[str, Any]) -> dict[str, Any]:  # the recipe's prepare_dataset
            inputs = processor(decode_audio(row["audio"], row["utterance_id"]), sampling_rate=16000)
            return {"input_values": inputs.input_values[0], "input_length": len(inputs.input_values[0]),
                    "labels": processor.tokenizer(row["text"]).input_ids}

        # The recipe's second copy of the corpus: features written to Arrow by map() (here in a temp folder).
        prepared = train.split.map(prepare, remove_columns=train.split.column_names,
                                   cache_file_name=str(Path(tmp) / "prepared.arrow"))
        preprocess_seconds = time.time() - started
        batch_audio: list[float] = []  # per batch, in the order the Trainer takes them (one batch a step)

        def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:  # DataCollatorCTCWithPadding
            batch_audio.append(sum(len(f["input_values"]) for f in features) / 16000)
            batch = processor.pad([{"input_values": f["input_values"]} for f in features], padding=True, return_tensors="pt")
            labels = processor.tokenizer.pad([{"input_ids": f["labels"]} for f in features], padding=True, return_tensors="pt")
            batch["labels"] = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
            return batch

        seed_everything(args.seed)
        model = build_model(acfg, processor)
        grouping = length_grouping(True)
        training_args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=batch_size, **grouping,
            length_column_name="input_length", max_steps=args.steps, learning_rate=float(acfg.learning_rate),
            warmup_steps=int(acfg.warmup_steps), weight_decay=float(acfg.weight_decay), adam_beta2=float(acfg.adam_betas[1]),
            max_grad_norm=float(acfg.max_grad_norm), logging_steps=max(args.steps // 5, 1), save_strategy="no",
            report_to=[], seed=args.seed, dataloader_num_workers=0, bf16=args.precision == "bf16",
            fp16=args.precision == "fp16", use_cpu=args.device == "cpu", remove_unused_columns=False,
        )
        warm = _warm(args, args.steps)
        clock: dict[int, float] = {}

        class StepClock(TrainerCallback):  # wall time at the end of the warm-up step and of the last
            def on_step_end(self, _args: Any, state: Any, _control: Any, **_: Any) -> None:
                if state.global_step in (warm, args.steps):
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    clock[state.global_step] = time.time()

        trainer = Trainer(model=model, args=training_args, train_dataset=prepared, data_collator=collate, callbacks=[StepClock()])
        with fast_cpu_math(torch.device(args.device), _amp(args)) if args.baseline_fast_math else nullcontext():
            out = trainer.train()
        val = ClipDataset(splits["validation"])
        val_loader = clip_loader(val, eval_batches(val.durations, float(acfg.max_batch_seconds)), processor, None, 0, 0)
        scores = evaluate_clips(model, processor, val_loader, _amp(args))
        if warm and warm in clock and args.steps in clock:
            result.update(warm_steps=warm, steady_audio_seconds=sum(batch_audio[warm:args.steps]), steady_seconds=clock[args.steps] - clock[warm])
        result.update(audio_seconds=sum(batch_audio[:args.steps]), train_seconds=out.metrics["train_runtime"], val_loss=scores["loss"],
                      steps=trainer.state.global_step, batch_size=batch_size, preprocess_seconds=preprocess_seconds,
                      max_batch_seconds=float(acfg.max_batch_seconds),
                      peak_memory_mb=peak_memory_mb(args.device))
        if args.device.startswith("cuda"):
            model.train()
            result["flops_per_audio_second"] = flops_per_audio_second(model, next(model.parameters()).device, _amp(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a built DatasetDict (train/validation); default: --synthetic")
    parser.add_argument("--synthetic", type=int, default=600, help="clips of synthetic audio when no --dataset")
    parser.add_argument("--arch", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-seconds", default=None, help="padded seconds per batch, or auto (ours only)")
    parser.add_argument("--auto-max-seconds", type=float, help="asr.auto_batch.max_seconds: the most that --batch-seconds auto may choose")
    parser.add_argument("--warm-steps", type=int, default=0, help="steps left out of the throughput (compilation, warm-up); 0 = the whole run")
    parser.add_argument("--compile", action="store_true", help="ours with asr.compile=true")
    parser.add_argument("--compile-buckets", type=int, help="asr.compile_buckets (default: the config's)")
    parser.add_argument("--attn", choices=["eager", "sdpa"], help="asr.attn_implementation (both sides; default: the config's)")
    parser.add_argument("--profile", action="store_true", help="ours under torch.profiler: reports the GPU busy share")
    parser.add_argument("--json-out", help="also write the report here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--augment-prob", type=float, default=None, help="our waveform augmentation (default: the config's)")
    parser.add_argument("--only", choices=["ours", "baseline"], help="run one side")
    parser.add_argument("--num-workers", help="our trainer.num_workers (default: the config's, auto)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each side; the medians are reported")
    parser.add_argument("--baseline-fast-math", action="store_true",
                        help="give the baseline our CPU settings too (pipeline.asr.devices.fast_cpu_math), to see what they alone buy")
    parser.add_argument("--role", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_common(parser, args)
    sys.path.insert(0, str(ROOT))
    if args.role:
        result: dict[str, Any] = {}
        (run_ours if args.role == "ours" else run_baseline)(args, result)
        Path(args.out).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if not args.dataset:
            args.dataset = str(synthetic_dataset(args.synthetic, Path(tmp) / "synthetic", args.seed))
        report: dict[str, Any] = {"arch": args.arch, "device": args.device, "precision": args.precision, "steps": args.steps}
        if args.device.startswith("cuda"):
            report["gpu"] = torch.cuda.get_device_name()
        roles = [args.only] if args.only else ["ours", "baseline"]
        runs: dict[str, list[dict[str, Any]]] = {role: [] for role in roles}
        for _, role in interleaved(max(args.repeats, 1), roles):  # ours first, then the baseline first, ...
            side = run_side(args, role, Path(tmp) / f"{role}.json", report.get("gpu", ""))
            runs[role].append(side)
            print(f"{role}: {json.dumps(side)}", flush=True)  # each side as it ends, in case the other fails
        for role in roles:  # the median run of each side by throughput; of an even count, the slower middle one
            ordered = sorted(runs[role], key=lambda side: side["audio_seconds_per_second"])
            report[role] = ordered[(len(ordered) - 1) // 2]
        if args.only:
            print(json.dumps(report, indent=2))
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
            return
        report["speedup"] = report["ours"]["audio_seconds_per_second"] / report["baseline"]["audio_seconds_per_second"]
        if args.repeats > 1:
            report["speedup_per_repeat"] = [round(o["audio_seconds_per_second"] / b["audio_seconds_per_second"], 3)
                                            for o, b in zip(runs["ours"], runs["baseline"])]
        report["val_loss_ours_minus_baseline"] = report["ours"]["val_loss"] - report["baseline"]["val_loss"]
        print(json.dumps(report, indent=2))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


def run_side(args: argparse.Namespace, role: str, out: Path, gpu: str) -> dict[str, Any]:
    """One side in its own process, so its peak memory is its own."""
    argv = ["--dataset", args.dataset, "--arch", args.arch, "--steps", str(args.steps), "--device", args.device,
            "--precision", args.precision, "--seed", str(args.seed), "--role", role, "--out", str(out)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--batch-seconds", str(args.batch_seconds)] if args.batch_seconds else []
    argv += ["--compile"] if args.compile else []
    argv += ["--auto-max-seconds", str(args.auto_max_seconds)] if args.auto_max_seconds else []
    argv += ["--warm-steps", str(args.warm_steps)] if args.warm_steps else []
    argv += ["--compile-buckets", str(args.compile_buckets)] if args.compile_buckets else []
    argv += ["--attn", args.attn] if args.attn else []
    argv += ["--profile"] if args.profile else []
    argv += ["--augment-prob", str(args.augment_prob)] if args.augment_prob is not None else []
    argv += ["--num-workers", args.num_workers] if args.num_workers is not None else []
    argv += ["--baseline-fast-math"] if args.baseline_fast_math else []
    subprocess.run([sys.executable, "-m", "bench.asr_throughput", *argv], cwd=ROOT, check=True)
    side = json.loads(out.read_text())
    side["audio_seconds_per_second_whole_run"] = side["audio_seconds"] / side["train_seconds"]
    side["audio_seconds_per_second"] = (side["steady_audio_seconds"] / side["steady_seconds"] if side.get("steady_seconds")
                                        else side["audio_seconds_per_second_whole_run"])
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    if "flops_per_audio_second" in side and peak:
        side["mfu"] = side["audio_seconds_per_second"] * side["flops_per_audio_second"] / peak
    return side

if __name__ == "__main__":
    main()
