"""Hugging Face datasets as a source (`data=hf`): a hub id, a local `audiofolder`, or a folder
written by `save_to_disk`.

Every kind is opened into one `datasets.Dataset` (memory-mapped arrow on disk, so memory stays flat
whatever its size) whose audio column is cast to `decode=False`: the metadata pass reads only the
mapped text columns, and the audio pass fetches each kept row's raw bytes (or file path) by row
index and decodes it in the build's own workers. A streamed hub dataset (`data.streaming=true`) is
spooled once into such a file first, since the build reads its rows twice.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.data.config import SourceConfig
from pipeline.runtime import PipelineError

log = logging.getLogger(__name__)

# Canonical fields a dataset column can be mapped onto (`data.columns.<field>=<column>`).
FIELDS = (
    "utterance_id", "transcript", "intent", "scenario", "entities", "annotation", "wake_word_present",
    "device_serial", "account_id", "annotator_id", "recorded_at", "flags", "locale",
)
# Used when `data.columns` does not map a field: a column with the field's own name, or one of the
# names common corpora give it (Common Voice `sentence`/`client_id`, LibriSpeech `text`/`speaker_id`).
ALIASES = {
    "transcript": ("transcription", "text", "sentence"),
    "account_id": ("speaker_id", "client_id", "speaker"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HFSource:
    """One opened dataset: its rows, the audio column, and how its columns map onto the fields."""

    def __init__(self, data_cfg: SourceConfig, name: str, config_name: str | None, cache_dir: Path) -> None:
        from datasets import Audio

        self.name = name
        self.spool: Path | None = None
        path = data_cfg.path
        if not path:
            raise PipelineError(
                f"data.path is not set for the {name!r} source (source: hf); pass a hub id (data.path=google/speech_commands), "
                "a local audiofolder (a folder with metadata.jsonl or metadata.csv and the audio files) or a save_to_disk folder"
            )
        self.path = str(path)
        self.local = Path(self.path).exists()
        self.root = Path(self.path).resolve() if self.local else None
        self.kind, dataset = self._open(data_cfg, config_name, cache_dir)
        self.audio_column = find_audio_column(dataset.features, _plain(data_cfg.columns).get("audio"), self.path)
        self.dataset = dataset.cast_column(self.audio_column, Audio(decode=False))
        self.mapping = map_columns(self.dataset, _plain(data_cfg.columns), self.path)
        self.constants = {k: v for k, v in _plain(data_cfg.constants).items() if v is not None}
        unknown = sorted(set(self.constants) - set(FIELDS))
        if unknown:
            raise PipelineError(f"data.constants: {unknown} are not canonical fields; use some of {list(FIELDS)}")
        self.labels = {
            field: self.dataset.features[column].names
            for field, column in self.mapping.items()
            if type(self.dataset.features[column]).__name__ == "ClassLabel"
        }
        log.info("data: %s %s (%s, %d rows): audio column %r, columns %s, constants %s", name, self.path, self.kind,
                 len(self.dataset), self.audio_column, self.mapping, self.constants)
        if "account_id" not in self.mapping and "account_id" not in self.constants:
            log.warning("data: %s has no speaker column (map one with data.columns.account_id=<column>); every clip "
                        "counts as its own account, so splits are not speaker-disjoint", name)

    # -- opening ------------------------------------------------------------------------------------
    def _open(self, data_cfg: SourceConfig, config_name: str | None, cache_dir: Path) -> tuple[str, Any]:
        from datasets import Dataset, DatasetDict, load_from_disk

        split = data_cfg.split
        if isinstance(split, dict):
            split = None  # the shares form of data.split (as in conf/data/jsonl.yaml): every split of the dataset
        if split is not None and not isinstance(split, str):
            raise PipelineError(
                f"data.split={split!r}: for source hf it is the dataset's split as in load_dataset (train, test, "
                "'train+validation') or null for all of them; the account split shares are data.split_shares"
            )
        if self.local and ((Path(self.path) / "dataset_dict.json").exists() or (Path(self.path) / "state.json").exists()):
            loaded = load_from_disk(self.path)
            return "save_to_disk", _one_dataset(loaded, split, self.path)
        if not self.local and not HUB_ID.match(self.path):
            raise PipelineError(
                f"data.path={self.path}: no such folder; give an existing audiofolder or save_to_disk folder, or a hub id like owner/name"
            )
        streaming = bool(data_cfg.streaming)  # conf/data/hf.yaml: false; an entry of data.sources may leave it out
        hf_cache = str(cache_dir / "huggingface")
        from datasets import load_dataset

        try:
            loaded = load_dataset(self.path, config_name, split=split, streaming=streaming, cache_dir=hf_cache)
        except Exception as err:  # noqa: BLE001 - sorted into hub / local problems below
            if self.local:
                raise PipelineError(f"data.path={self.path}: cannot read it as a Hugging Face dataset "
                                    f"({type(err).__name__}: {err}); an audiofolder needs metadata.jsonl or metadata.csv "
                                    "with a file_name column beside the audio files") from None
            raise PipelineError(hub_error(self.path, err)) from None
        kind = "audiofolder" if self.local else "hub"
        if streaming:
            return kind + " (streamed)", self._spool(loaded, cache_dir)
        if isinstance(loaded, DatasetDict):
            return kind, _one_dataset(loaded, None, self.path)
        assert isinstance(loaded, Dataset)
        return kind, loaded

    def _spool(self, stream: Any, cache_dir: Path) -> Any:
        """A streamed dataset, written once to a local arrow file with its audio still encoded."""
        from datasets import Audio, Dataset, IterableDatasetDict, concatenate_datasets

        if isinstance(stream, IterableDatasetDict):
            stream = concatenate_datasets([stream[k] for k in sorted(stream)])
        features = stream.features
        if features is None:
            stream = stream._resolve_features()
            features = stream.features
        column = find_audio_column(features, None, self.path)
        stream = stream.cast_column(column, Audio(decode=False))
        self.spool = cache_dir / "datasets" / f".tmp-stream-{os.getpid()}"
        self.spool.mkdir(parents=True, exist_ok=True)
        return Dataset.from_generator(_rows, gen_kwargs={"stream": stream}, features=stream.features,
                                      cache_dir=str(self.spool))

    # -- reading ------------------------------------------------------------------------------------
    def records(self, batch_size: int = 1000) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
        """(row index, canonical fields, audio {"bytes", "path"} or None), streamed in batches."""
        columns = sorted(set(self.mapping.values()) | {self.audio_column})
        row = 0
        for batch in self.dataset.select_columns(columns).iter(batch_size=batch_size):
            for i in range(len(batch[self.audio_column])):
                record = dict(self.constants)
                for field, column in self.mapping.items():
                    value = batch[column][i]
                    if field in self.labels and isinstance(value, int) and 0 <= value < len(self.labels[field]):
                        value = self.labels[field][value]
                    if field in ("transcript", "utterance_id", "account_id", "device_serial", "annotator_id") \
                            and isinstance(value, int) and not isinstance(value, bool):
                        value = str(value)
                    record[field] = value
                if "wake_word_present" not in record:
                    # Unlabelled: a clip with a command had the wake word before it; one without is
                    # not a wake (a corpus of digits or words must not count as wake-word positives).
                    record["wake_word_present"] = record.get("intent") is not None
                yield row, record, batch[self.audio_column][i]
                row += 1

    def close(self) -> None:
        if self.spool is not None:
            import shutil

            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool = None


def _rows(stream: Any) -> Iterator[dict[str, Any]]:
    yield from stream


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


def _one_dataset(loaded: Any, split: str | None, path: str) -> Any:
    """The requested split of a DatasetDict (`a+b` joins several), or all of them, in name order."""
    from datasets import Dataset, concatenate_datasets

    if isinstance(loaded, Dataset):
        return loaded
    names = sorted(loaded) if split is None else [s.strip() for s in split.split("+")]
    missing = [n for n in names if n not in loaded]
    if missing:
        raise PipelineError(f"data.split={split}: {path} has no split {missing} (it has {sorted(loaded)})")
    parts = [loaded[n] for n in names]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def find_audio_column(features: Any, named: str | None, path: str) -> str:
    """The column whose feature type is `Audio` (`data.columns.audio` picks one when there are several)."""
    audio = [name for name, feature in features.items() if type(feature).__name__ == "Audio"]
    if named:
        if named not in audio:
            raise PipelineError(f"data.columns.audio={named}: {path} has no audio column of that name "
                                f"(audio columns: {audio}; all columns: {list(features)})")
        return named
    if not audio:
        raise PipelineError(f"{path}: no column has the Audio feature type (columns: {list(features)}); "
                            "cast one with Dataset.cast_column(<column>, datasets.Audio()) before save_to_disk")
    if len(audio) > 1:
        raise PipelineError(f"{path} has several audio columns {audio}; pick one with data.columns.audio=<column>")
    return audio[0]


def map_columns(dataset: Any, columns: dict[str, Any], path: str) -> dict[str, str]:
    """field -> dataset column: `data.columns` first, then same-named columns, then ALIASES."""
    have = list(dataset.column_names)
    explicit = {k: v for k, v in columns.items() if k != "audio" and v is not None}
    unknown = sorted(set(explicit) - set(FIELDS))
    if unknown:
        raise PipelineError(f"data.columns: {unknown} are not canonical fields; map some of {list(FIELDS)} "
                            f"(and optionally audio) onto columns of {path}")
    for field, column in explicit.items():
        if column not in have:
            raise PipelineError(f"data.columns.{field}={column}: {path} has no column {column!r}; its columns are {have}")
    mapping = {field: str(column) for field, column in explicit.items()}
    taken = set(mapping.values())
    for field in FIELDS:
        if field in mapping:
            continue
        for candidate in (field, *ALIASES.get(field, ())):
            if candidate in have and candidate not in taken:
                mapping[field] = candidate
                taken.add(candidate)
                break
    return mapping


def hub_error(path: str, err: Exception) -> str:
    """What to do when a hub id cannot be loaded: the hub is unreachable, or the id is wrong."""
    name = type(err).__name__
    text = str(err)
    unreachable = (
        "Offline" in name or "Connect" in name or "Timeout" in name or "LocalEntryNotFound" in name
        or "offline" in text.lower() or "couldn't reach" in text.lower() or "connection" in text.lower()
        or os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True", "ON", "YES")
        or os.environ.get("HF_DATASETS_OFFLINE") in ("1", "true", "True", "ON", "YES")
    )
    local_hint = ("pass a local folder instead: data.path=<folder> holding metadata.jsonl (or metadata.csv, with a "
                  "file_name column) beside the audio files (an audiofolder), or a folder written by "
                  "Dataset(Dict).save_to_disk, e.g. data.path=../shared/data/speech/fsdd")
    if unreachable:
        return (f"data.path={path}: the Hugging Face hub is unreachable from this machine ({name}), so the dataset "
                f"cannot be downloaded; {local_hint}")
    return f"data.path={path}: cannot load it from the Hugging Face hub ({name}: {text.splitlines()[0] if text else ''}); " \
           f"check the id and data.name, or {local_hint}"
