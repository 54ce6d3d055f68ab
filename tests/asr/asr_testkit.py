"""Shared by the ASR tests: a micro config, and a script entry so tests can run the stage in a
subprocess (to kill it) or under torchrun (DDP): `python asr_testkit.py CFG.yaml RUN_DIR DATASET`."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def micro_cfg(*dotlist: str) -> DictConfig:
    """conf/asr/tiny.yaml + conf/trainer/default.yaml with a model small enough for seconds-long tests."""
    cfg = OmegaConf.create({
        "seed": 7,
        "asr": OmegaConf.load(ROOT / "conf/asr/tiny.yaml"),
        "trainer": OmegaConf.load(ROOT / "conf/trainer/default.yaml"),
    })
    cfg.merge_with_dotlist([
        "asr.model_config.hidden_size=32", "asr.model_config.num_hidden_layers=2",
        "asr.model_config.num_attention_heads=2", "asr.model_config.intermediate_size=64",
        "asr.model_config.conv_dim=[16,16,32,32]", "asr.model_config.num_conv_pos_embeddings=16",
        "asr.model_config.num_conv_pos_embedding_groups=4",
        "asr.max_batch_seconds=12", "asr.warmup_steps=2", "asr.learning_rate=3e-3",
        "asr.max_train_minutes=null", "asr.max_steps=4", "asr.eval_every=2", "trainer.log_every=1", "asr.cpu_threads=1",
        *dotlist,
    ])
    return cfg


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from pipeline.asr.train import run_asr_stage
    from pipeline.tracking import NullTracker

    cfg_path, run_dir, dataset = sys.argv[1:4]
    run_asr_stage(OmegaConf.load(cfg_path), Path(run_dir), Path(dataset), NullTracker())
