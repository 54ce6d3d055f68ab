"""NLU benchmarks on the CPU: quality on MASSIVE en-US, training throughput against an intent-only
`Trainer` baseline, and inference latency.

    python -m bench.nlu_bench quality [nlu.epochs=10 ...]   # train on MASSIVE train, score on dev
    python -m bench.nlu_bench speed [--steps 60]             # joint vs baseline utt/s, latency p50/p95

The MASSIVE loader here reads the jsonl directly (annot_utt -> transcript, entities, words,
bio_tags), so the quality run does not depend on the data stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from hydra import compose, initialize_config_dir
from transformers import TrainingArguments

from pipeline.data.annotations import bio_tags, parse_inline
from pipeline.data.features import dataset_features
from pipeline.nlu.train import length_grouping
from pipeline.tracking import NullTracker

ROOT = Path(__file__).resolve().parents[1]
MASSIVE = ROOT.parent / "shared" / "data" / "massive"


def massive_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        text, entities = parse_inline(rec["annot_utt"])
        words, tags = bio_tags(text, entities)
        rows.append({
            "utterance_id": f"massive-{rec['id']}", "transcript": text, "text": text,
            "intent": rec["intent"], "scenario": rec["scenario"],
            "entities": [e.as_dict() for e in entities], "words": words, "bio_tags": tags,
            "wake_word_present": True, "duration": 0.0, "speaker": None, "device": None,
            "annotator": None, "locale": rec["locale"], "recorded_at": None,
        })
    return rows


def massive_dataset(cache: Path) -> Path:
    """MASSIVE en-US as a text-only DatasetDict: train, and dev as both validation and test."""
    path = cache / "massive_en_us"
    if not path.exists() and not (MASSIVE / "en-US.train.jsonl").is_file():
        raise SystemExit(f"bench.nlu_bench needs MASSIVE en-US (en-US.train.jsonl, en-US.dev.jsonl) in {MASSIVE}, "
                         "the shared data folder beside the repository; it is absent here")
    if not path.exists():
        features = dataset_features(with_audio=False)
        dev = Dataset.from_list(massive_rows(MASSIVE / "en-US.dev.jsonl"), features=features)
        DatasetDict({
            "train": Dataset.from_list(massive_rows(MASSIVE / "en-US.train.jsonl"), features=features),
            "validation": dev, "test": dev,
        }).save_to_disk(str(path))
    return path


def _config(overrides: list[str]):
    # Groups other engineers have not written yet are dropped; the NLU needs only nlu, trainer, seed.
    drop = [f"~{g}" for g in ("data", "asr", "trainer", "eval") if not (ROOT / "conf" / g / "default.yaml").exists()
            and not any((ROOT / "conf" / g).glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=["logger=none", "run_dir=unused", "cache_dir=unused", *drop, *overrides])


def quality(overrides: list[str]) -> None:
    from pipeline.nlu.train import run_nlu_stage

    cfg = _config(overrides)
    run_dir = ROOT / "outputs" / "nlu_bench" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    dataset = massive_dataset(ROOT / ".cache" / "bench")
    result = run_nlu_stage(cfg, run_dir, dataset, NullTracker())
    print(json.dumps({"run_dir": str(run_dir), "overrides": overrides, **result}, indent=2))


def baseline_arguments(joint: TrainingArguments, output_dir: Path) -> TrainingArguments:
    """The intent-only baseline's Trainer arguments, taken from the joint run's: the same steps, batch
    size, learning rate, data order (seeds, length grouping), device, precision and loader workers."""
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=joint.max_steps, per_device_train_batch_size=joint.per_device_train_batch_size,
        learning_rate=joint.learning_rate, **{key: getattr(joint, key) for key in length_grouping(True)},
        seed=joint.seed, data_seed=joint.data_seed, use_cpu=joint.use_cpu, bf16=joint.bf16, fp16=joint.fp16,
        dataloader_num_workers=joint.dataloader_num_workers, save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=10_000)


def speed(steps: int, overrides: list[str]) -> None:
    """Time per training step of the joint model vs `AutoModelForSequenceClassification` under the same
    `Trainer`, batch size, data order and backbone; then predict latency at batch 1 and 64."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

    from pipeline.config import TrainerConfig, checked
    from pipeline.nlu.config import HeadConfig, NLUConfig
    from pipeline.nlu.model import NLUModel, build_model, load_tokenizer
    from pipeline.nlu.train import (DataCollatorForTokenClassification, label_maps, make_optimizer, resolve_backbone,
                                    to_features, training_arguments, training_rows)

    cfg = _config(overrides)
    if cfg.nlu.cpu_threads:
        torch.set_num_threads(int(cfg.nlu.cpu_threads))
    torch.manual_seed(0)
    splits = load_from_disk(str(massive_dataset(ROOT / ".cache" / "bench")))
    rows = training_rows(splits["train"], "skip")
    intents, tags = label_maps(rows)
    backbone = resolve_backbone(str(cfg.nlu.model_name_or_path), cfg.nlu.model_sha256)
    model = build_model(backbone, intents, tags, HeadConfig(**cfg.nlu.head), int(cfg.nlu.max_length))
    tokenizer = load_tokenizer(backbone, model.config)
    train = to_features(rows, tokenizer, intents, tags, int(cfg.nlu.max_length))
    out = ROOT / "outputs" / "nlu_bench" / "speed"
    batch = int(cfg.nlu.batch_size)

    def timed(trainer: Trainer) -> float:
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started

    cfg.nlu.max_steps = steps
    nlu, trainer_cfg = checked(cfg.nlu, NLUConfig, "nlu"), checked(cfg.trainer, TrainerConfig, "trainer")
    args = training_arguments(nlu, trainer_cfg, int(cfg.seed), out / "joint", has_eval=False)
    args.save_strategy = "no"
    joint = timed(Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                          data_collator=DataCollatorForTokenClassification(tokenizer),
                          optimizers=(make_optimizer(model, nlu), None)))

    base_model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=len(intents))
    base_train = train.remove_columns(["labels"]).rename_column("intent_labels", "labels")
    base_args = baseline_arguments(args, out / "baseline")
    baseline = timed(Trainer(model=base_model, args=base_args, train_dataset=base_train, processing_class=tokenizer,
                             data_collator=DataCollatorWithPadding(tokenizer)))

    nlu = NLUModel(model, tokenizer)
    texts = [r["transcript"] for r in training_rows(splits["validation"], "skip")]
    single = []
    for text in texts[:200]:
        started = time.perf_counter()
        nlu.predict([text])
        single.append((time.perf_counter() - started) * 1000)
    batched = []
    for k in range(0, 64 * 10, 64):
        started = time.perf_counter()
        nlu.predict(texts[k : k + 64], batch_size=64)
        batched.append((time.perf_counter() - started) * 1000 / 64)

    def pct(values: list[float], q: int) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1], 2)

    print(json.dumps({
        "steps": steps, "batch_size": batch, "threads": torch.get_num_threads(),
        "joint_train_utt_per_s": round(steps * batch / joint, 1),
        "baseline_train_utt_per_s": round(steps * batch / baseline, 1),
        "joint_time_over_baseline": round(joint / baseline, 3),
        "latency_ms_batch1": {"p50": pct(single, 50), "p95": pct(single, 95)},
        "latency_ms_per_utt_batch64": {"p50": pct(batched, 50), "p95": pct(batched, 95)},
    }, indent=2))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["quality", "speed"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. nlu.epochs=8")
    args = parser.parse_intermixed_args(argv)
    if args.mode == "quality":
        quality(args.overrides)
    else:
        speed(args.steps, args.overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
