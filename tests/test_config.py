"""The Hydra config's conventions: the `paths` group for the run and cache roots, and the `debug` group."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(*overrides: str, name: str = "config", output_dir: str = "/runs/one") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):  # what @hydra.main sets up before the job: the run folder, ${hydra:...}
        cfg.hydra.runtime.output_dir = output_dir
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("name", ["config", "evaluate", "retrain"])
def test_paths_resolve_to_the_run_folder_and_the_cache(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_CACHE_DIR", raising=False)
    cfg = config(name=name)
    assert cfg.run_dir == cfg.paths.run_dir == "/runs/one"
    assert cfg.cache_dir == cfg.paths.cache_dir == str(Path.cwd() / ".cache")


def test_the_cache_moves_by_environment_paths_group_or_the_old_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", "/env/cache")
    assert config().cache_dir == "/env/cache"
    cfg = config("paths.cache_dir=/group/cache")
    assert (cfg.cache_dir, cfg.privacy.key_file) == ("/group/cache", "/group/cache/pseudonym.key")
    assert config("cache_dir=/alias/cache").privacy.key_file == "/alias/cache/pseudonym.key"


def test_debug_smoke_shrinks_every_stage() -> None:
    plain, smoke = config(), config("debug=smoke")
    assert smoke.stages == plain.stages  # every stage still runs
    assert smoke.data.demo.max_utterances <= 200 and smoke.asr.max_steps <= 5 and smoke.nlu.epochs == 1
    assert smoke.nlu.encoder_config.hidden_size == 32  # nlu=tiny, no pretrained encoder to load
    assert smoke.logger.name == "none" and not smoke.trainer.profile.enabled
    assert smoke.hydra.run.dir.startswith("outputs/debug/")


def test_debug_profile_turns_on_the_profiler_and_combines_with_smoke() -> None:
    assert not config().trainer.profile.enabled
    assert config("debug=profile").trainer.profile.enabled
    both = config("debug=[smoke,profile]")
    assert both.trainer.profile.enabled and both.asr.max_steps == config("debug=smoke").asr.max_steps


def test_comparing_runs_ignores_their_run_folders() -> None:
    from pipeline.ops.compare import RunSummary, differing_keys
    from pipeline.runtime import flatten

    runs = [RunSummary(Path(p), 0.0, flatten({"run_dir": p, "paths": {"run_dir": p}, "seed": s}), {})
            for p, s in (("/runs/a", 1), ("/runs/b", 2))]
    assert differing_keys(runs) == ["seed"]


def test_debug_smoke_runs_every_stage_in_seconds(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, str(CONF.parent / "train.py"), "debug=[smoke,profile]", f"hydra.run.dir={run}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("build_report.json", "asr/asr_metrics.json", "asr/profile/trace.json", "nlu/nlu_metrics.json",
                 "metrics.json", "report.md"):
        assert (run / name).is_file(), name
    assert json.loads((run / "asr/asr_metrics.json").read_text())["steps"] == 3


def test_every_config_key_the_readme_names_for_the_human_voices_recipe_exists() -> None:
    """The README named the recipe's demo knobs `data.demo.*`, which Hydra refuses under
    data=demo_speech: there the demo is an entry of `data.sources`."""
    import re

    readme = (CONF.parent / "README.md").read_text()
    section = readme[readme.index("### Human voices"):readme.index("### The demo corpus")]
    keys = sorted(set(re.findall(r"`((?:data|asr|eval)\.[a-z_.0-9]+)(?:=[^`]*)?`", section)))
    assert any(k.startswith("data.sources.3.demo.") for k in keys)
    cfg = config("data=demo_speech")
    missing = [k for k in keys if OmegaConf.select(cfg, k, default="<missing>") == "<missing>"]
    assert not missing, f"README.md names keys data=demo_speech does not have: {missing}"
