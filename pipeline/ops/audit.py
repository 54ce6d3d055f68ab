"""`make audit-deletions`: which models still hold data that someone asked us to delete?

Reads the same config as `retrain.py` (so the same inbox, corpus, registry and pseudonym key; pass
overrides as arguments: `python -m pipeline.ops.audit retrain.registry_dir=/srv/registry`), and
checks every model in the registry whose weights still exist against the deletion requests:
those already applied (tombstones) and those still waiting in the inbox. Prints counts and model
ids only, never the requested identifiers. Exit code 0 either way; the next `make retrain`
replaces an affected promoted model and removes the weights of affected retired ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from pipeline.ops.corpus import pending_deletions, pseudonym_key
from pipeline.ops.registry import Registry
from pipeline.runtime import PipelineError, fail

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load_config(overrides: list[str], config_name: str = "retrain") -> DictConfig:
    """Compose the Hydra config outside a Hydra app, with `${hydra:runtime.*}` pointing at the cwd."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    return cfg


def audit(cfg: DictConfig) -> list[dict[str, object]]:
    key = pseudonym_key(cfg.privacy)
    deleted = pending_deletions(Path(cfg.retrain.inbox), Path(cfg.retrain.corpus_dir), key)
    return Registry(Path(cfg.retrain.registry_dir)).affected_by(deleted)


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    try:
        affected = audit(cfg)
    except PipelineError as err:
        fail(str(err))
    registry = cfg.retrain.registry_dir
    if not affected:
        print(f"no model in {registry} was trained on data with a deletion request")
        return 0
    print(f"{len(affected)} model(s) in {registry} were trained on data with a deletion request:")
    for model in affected:
        action = ("the next `make retrain` replaces it" if model["status"] == "promoted"
                  else "the next `make retrain` deletes its weights")
        print(f"  {model['model_id']}  {model['status']}  {model['deleted_utterances']} deleted utterance(s): {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
