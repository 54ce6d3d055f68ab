"""The erasure tests' store (tests/ops/test_erase.py, tests/ops/test_key_change.py): cached datasets,
run folders and a registry made without training, by bench/erase.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench.erase import KEY, build_store  # noqa: E402


@pytest.fixture(scope="module")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One store per test file and process; each test gets a copy (building one takes seconds,
    copying it milliseconds)."""
    from datasets import disable_progress_bars

    disable_progress_bars()
    root = tmp_path_factory.mktemp("template") / "store"
    return root, build_store(root, datasets=3, runs=6, clips=15, victim_in=1)


@pytest.fixture()
def store(built_store: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    template, built = built_store
    root = tmp_path / "store"
    shutil.copytree(template, root, symlinks=True)
    for report in root.rglob("build_report.json"):  # runs name their dataset by its absolute path
        report.write_text(report.read_text().replace(str(template), str(root)))
    moved = {name: [root / run.relative_to(template) for run in built[name]] for name in ("runs", "affected_runs")}
    layout = {**built, **moved}
    for name, value in {"PIPELINE_PSEUDONYM_KEY": KEY, "PIPELINE_CACHE_DIR": str(root / "cache"),
                        "PIPELINE_INBOX": str(root / "inbox"), "PIPELINE_REGISTRY_DIR": str(root / "registry"),
                        "WANDB_MODE": "offline"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return {"root": root, **layout}
