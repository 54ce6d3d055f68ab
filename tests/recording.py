"""The one test tracker: keeps everything a stage logs, so tests read the curves, summary, tables,
images and artifacts back (the `Tracker` protocol of pipeline/tracking/, nothing sent anywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RecordingTracker:
    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []  # (step, values) per log_metrics call
        self.summary: dict[str, Any] = {}
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.images: dict[str, Path] = {}
        self.artifacts: list[tuple[str, str, Path, dict[str, Any] | None]] = []
        self.used: list[tuple[str, str]] = []
        self.finished = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self.summary.update(metrics)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[key] = (columns, rows)

    def log_image(self, key: str, path: Path) -> None:
        self.images[key] = path

    def log_artifact(self, name: str, kind: str, path: Path, metadata: dict[str, Any] | None = None) -> None:
        self.artifacts.append((name, kind, path, metadata))

    def use_artifact(self, name: str, kind: str) -> None:
        self.used.append((name, kind))

    def finish(self) -> None:
        self.finished = True
