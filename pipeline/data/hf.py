"""Hugging Face datasets as a source (`data=hf`): a hub id, a local `audiofolder`, or a folder
written by `save_to_disk`.

Every kind is opened into one `datasets.Dataset` (memory-mapped arrow on disk, so memory stays flat
whatever its size) whose audio column is cast to `decode=False`: the metadata pass reads only the
mapped text columns, and the audio pass fetches each kept row's raw bytes (or file path) by row
index and decodes it in the build's own workers. A streamed hub dataset (`data.streaming=true`) is
spooled once into such a file first, since the build reads its rows twice.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from omegaconf import OmegaConf

from pipeline.data.config import SourceConfig
from pipeline.data.privacy import RAW_IDS
from pipeline.data.schema import ExportRecord, json_lines
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
# Raw identifiers: never logged, whether they come from a column or from data.constants.
IDENTIFIERS = tuple(RAW_IDS)
# Text fields a corpus often stores as numbers (speaker 101, utterance 7): read as their digits.
TEXT_FIELDS = ("transcript", "utterance_id", *IDENTIFIERS)
# Fields a record cannot do without: a blank cell in their column quarantines the row instead of
# falling back to a default (the clip as its own account, an id made from the file name), unless
# data.constants sets the field. A blank wake_word_present cell is a clip nobody labelled, as an
# export's null is: inferring it from the intent, as for a dataset without the column, would count an
# unlabelled clip as a wake or a false wake.
REQUIRED = ("utterance_id", "transcript", "account_id")
QUARANTINED_WHEN_BLANK = (*REQUIRED, "wake_word_present")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


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
        self.constants = check_constants(_plain(data_cfg.constants), name)
        self.path = str(path)
        self.local = Path(self.path).exists()
        self.root = Path(self.path).resolve() if self.local else None
        if (self.root is not None and (self.root / "annotations.jsonl").is_file()
                and not any((self.root / n).is_file() for n in ("dataset_dict.json", "state.json"))  # save_to_disk
                and not any(next(self.root.rglob(n), None) for n in METADATA_FILES)):
            raise PipelineError(
                f"data.path={path} holds annotations.jsonl, the project's own export format, which `data=hf` does not "
                f"read: build it with data=jsonl data.path={self.root / 'annotations.jsonl'} (data=hf reads an audiofolder "
                "with metadata.jsonl or metadata.csv, a save_to_disk folder, or a hub id)")
        self.kind, dataset = self._open(data_cfg, config_name, cache_dir)
        self.audio_column = find_audio_column(dataset.features, _plain(data_cfg.columns).get("audio"), self.path)
        self.dataset = dataset.cast_column(self.audio_column, Audio(decode=False))
        self.mapping = map_columns(self.dataset, _plain(data_cfg.columns), self.path)
        self.dataset = _float_ids_as_text(self.dataset, self.mapping)
        # The loader reads metadata.csv with pandas' missing-value words: these cells as written.
        self.csv_cells = csv_text_cells(self.root, [c for f, c in self.mapping.items() if f in TEXT_FIELDS]) \
            if self.kind == "audiofolder" and self.root is not None else {}
        # pyarrow reads a metadata.jsonl string that looks like a date ("2026-04-13T02:19:08Z") as a
        # timestamp, dropping how it was written (its "Z", a date without a time): those cells as written.
        dated = [c for c in set(self.mapping.values()) if _is_date(self.dataset.features[c])]
        self.jsonl_cells = jsonl_text_cells(self.root, dated) \
            if self.kind == "audiofolder" and self.root is not None else {}
        self.labels = {
            field: self.dataset.features[column].names
            for field, column in self.mapping.items()
            if type(self.dataset.features[column]).__name__ == "ClassLabel"
        }
        log.info("data: %s %s (%s, %d rows): audio column %r, columns %s, constants %s", name, self.path, self.kind,
                 len(self.dataset), self.audio_column, self.mapping, shown_constants(self.constants))
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
            features = csv_text_features(Path(self.path), _plain(data_cfg.columns)) if self.local else None
            loaded = load_dataset(self.path, config_name, split=split, streaming=streaming, cache_dir=hf_cache,
                                  **({"features": features} if features is not None else {}))
        except Exception as err:  # noqa: BLE001 - sorted into hub / local problems below
            if split is not None and "Unknown split" in str(err):
                raise PipelineError(f"data.split={split}: {str(err).strip().splitlines()[0]} (a '+' joins several; "
                                    "null reads every split)") from None
            if self.local:
                raise PipelineError(local_error(Path(self.path), err)) from None
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
                    if field in self.labels and isinstance(value, int):
                        value = label_name(self.labels[field], value)
                    if _blank(value) and field in TEXT_FIELDS and self.csv_cells:
                        value = self._cell_as_written(batch[self.audio_column][i], column, self.csv_cells)
                    if isinstance(value, datetime.date):  # a timestamp column: every field is text or not a date
                        value = (self._cell_as_written(batch[self.audio_column][i], column, self.jsonl_cells)
                                 or value.isoformat())
                    if _blank(value):
                        if field in QUARANTINED_WHEN_BLANK and field not in self.constants:
                            record[field] = None  # quarantined as invalid_record, naming the field
                        continue  # otherwise the constant, or absent: the schema's default applies
                    if field in TEXT_FIELDS:
                        value = _as_text(value)
                    if field == "entities":
                        value = _entity_list(value)
                    record[field] = value
                if "wake_word_present" not in record:
                    # Unlabelled: a clip with a command had the wake word before it; one without is
                    # not a wake (a corpus of digits or words must not count as wake-word positives).
                    record["wake_word_present"] = record.get("intent") is not None
                yield row, record, batch[self.audio_column][i]
                row += 1

    def _cell_as_written(self, audio: Any, column: str, cells: dict[str, dict[str, str]]) -> str | None:
        """A cell the loader read as missing (metadata.csv) or as a timestamp (metadata.jsonl), from
        `cells` (csv_text_cells, jsonl_text_cells): the file as written ("" stays missing)."""
        path = audio.get("path") if isinstance(audio, dict) else None
        cell = cells.get(str(Path(path).resolve()), {}).get(column) if path else None
        return cell or None

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


def _blank(value: Any) -> bool:
    """An empty cell: null (a blank CSV cell, JSON null), or a float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _entity_list(value: Any) -> Any:
    """Entities as a list of objects. `Sequence({"type": ..., "value": ...})`, how `datasets` declares a
    list of entities, gives a row one list per field ({"type": [...], "value": [...]}): the i-th of
    each list is the i-th entity. Anything else is left for the schema to judge."""
    if (isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values())
            and len({len(v) for v in value.values()}) == 1):
        return [dict(zip(value, cells)) for cells in zip(*value.values())]
    return value


def label_name(names: list[str], code: int) -> str | None:
    """A class-label column's code as its name (hub datasets store labels so); -1 is a row without one."""
    return names[code] if 0 <= code < len(names) else None


def _as_text(value: Any) -> Any:
    """A whole number as its digits, as a text field holds it (a Hydra override parses 12345 as an int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def csv_text_features(folder: Path, columns: dict[str, Any]) -> Any:
    """The features of an audiofolder with metadata.csv, its columns of ids and transcripts as strings
    (None without such a file or columns).

    pandas guesses each CSV column's type: speaker 0101 becomes 101 (a deletion request for "0101"
    then matches nothing), and a column of 17-digit account numbers with one blank cell becomes
    floats that merge two people (12345678901234567 and ...568 are the same float). Given features,
    the loader reads those columns as text. A file pandas cannot read is left to the loader's error."""
    files = sorted(folder.rglob("metadata.csv"))
    if not files:
        return None
    import pandas as pd
    import pyarrow as pa
    from datasets import Audio, Features, Value

    text = {str(columns[f]) for f in TEXT_FIELDS if columns.get(f)} | set(TEXT_FIELDS)
    text |= {alias for f in TEXT_FIELDS for alias in ALIASES.get(f, ())}
    try:
        frames = [pd.read_csv(f, dtype={c: str for c in text}) for f in files]
        inferred = Features.from_arrow_schema(pa.Schema.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False))
    except Exception:  # noqa: BLE001 - the loader says what is wrong with the file
        return None
    if "file_name" not in inferred or not text & set(inferred):
        return None
    return Features({"audio": Audio(), **{c: Value("string") if c in text else f
                                          for c, f in inferred.items() if c != "file_name"}})


def csv_text_cells(folder: Path, columns: list[str]) -> dict[str, dict[str, str]]:
    """Per audio file (its resolved path), the text columns of its metadata.csv row as written.

    The loader reads metadata.csv with pandas, which takes NA, NaN, None, null, n/a (and more) for a
    blank cell, with no way to ask otherwise: a transcript "None" or speaker "NA" read as empty and
    the clip was quarantined. Read again here with no missing-value words; a blank cell stays blank."""
    files = sorted(folder.rglob("metadata.csv"))
    if not files or not columns:
        return {}
    import pandas as pd

    cells: dict[str, dict[str, str]] = {}
    for file in files:
        try:
            frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        except Exception:  # noqa: BLE001 - the loader has read it already, or said what is wrong with it
            continue
        wanted = [c for c in columns if c in frame.columns]
        if "file_name" not in frame.columns or not wanted:
            continue
        for row in frame[["file_name", *wanted]].itertuples(index=False):
            cells[str((file.parent / row[0]).resolve())] = dict(zip(wanted, row[1:]))
    return cells


def _is_date(feature: Any) -> bool:
    """A column of dates or times (`timestamp[s]`, `date32`, ...), which rows give as `datetime` values."""
    return type(feature).__name__ == "Value" and feature.dtype.startswith(("timestamp", "date"))


def jsonl_text_cells(folder: Path, columns: list[str]) -> dict[str, dict[str, str]]:
    """Per audio file (its resolved path), the string cells of `columns` in its metadata.jsonl line.

    For the columns the loader read as timestamps: a `recorded_at` is copied, so it stays as the
    export wrote it, not as pyarrow's reading of it ("...Z" lost, a date given a midnight)."""
    files = sorted(folder.rglob("metadata.jsonl")) if columns else []
    cells: dict[str, dict[str, str]] = {}
    for file in files:
        for line in json_lines(file):
            name = line.record.get("file_name") if line.record is not None else None
            written = {c: v for c, v in (line.record or {}).items() if c in columns and isinstance(v, str)}
            if isinstance(name, str) and written:
                cells[str((file.parent / name).resolve())] = written
    return cells


def _float_ids_as_text(dataset: Any, mapping: dict[str, str]) -> Any:
    """Float columns mapped onto text fields, rewritten as strings (101.0 -> "101", a blank stays null).

    pandas reads a CSV column of speaker ids with one blank cell as floats; speaker 101 must still
    be "101" wherever the column is read (records, the speech recipe's held-out speakers), so it gets
    the same pseudonym and split as in a column without blanks. Only this column is rewritten, in
    memory: the rest of the dataset stays memory-mapped."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Value

    for field, column in mapping.items():
        feature = dataset.features[column]
        if field in TEXT_FIELDS and isinstance(feature, Value) and feature.dtype.startswith("float"):
            text = pc.cast(dataset.with_format("arrow")[column], pa.string())
            dataset = dataset.remove_columns(column).add_column(column, text, feature=Value("string"))
    return dataset


def check_constants(constants: dict[str, Any], name: str) -> dict[str, Any]:
    """`data.constants` without its nulls, each value checked against the export record's field, so a
    bad value is one config error before the dataset is opened, not every record quarantined."""
    from pydantic import TypeAdapter, ValidationError

    of = "" if name == "hf" else f" (source {name})"
    constants = {k: v for k, v in constants.items() if v is not None}
    unknown = sorted(set(constants) - set(FIELDS))
    if unknown:
        raise PipelineError(f"data.constants{of}: {unknown} are not canonical fields; use some of {list(FIELDS)}")
    checked = {}
    for field, value in constants.items():
        value = _as_text(value) if field in TEXT_FIELDS else value
        info = ExportRecord.model_fields[field]
        adapter = TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as err:
            problem = "; ".join(e["msg"] for e in err.errors(include_input=False, include_url=False))
            key = f"data.constants.{field}" + (" (an identifier, not shown)" if field in IDENTIFIERS else f"={value!r}")
            raise PipelineError(f"{key}{of}: {problem}") from None
        checked[field] = value
    return checked


def shown_constants(constants: dict[str, Any]) -> dict[str, Any]:
    """The constants as logged: an identifier's value is a raw id, so only that it is set shows."""
    return {k: "(set)" if k in IDENTIFIERS else v for k, v in constants.items()}


def local_error(path: Path, err: BaseException) -> str:
    """Why a local path could not be opened as a dataset. `datasets` wraps the reason (a file_name
    outside the folder, a bad line) in a generic error, so the innermost cause is what is shown."""
    if path.is_file():
        what = "the metadata file" if path.name in METADATA_FILES else "a file"
        return f"data.path={path} is {what}; pass the folder holding it and the audio files: data.path={path.parent}"
    metadata = [path / n for n in METADATA_FILES if (path / n).is_file()]
    for file in metadata:
        with open(file, "rb") as f:
            if not any(line.strip() for line in f):
                example = ('one JSON object per line, {"file_name": "audio/a.flac", "transcription": "..."}'
                           if file.suffix == ".jsonl" else "a header line file_name,transcription, then audio/a.flac,...")
                return (f"data.path={path}: {file} is empty; list each audio file in it, by its path inside the "
                        f"folder: {example}")
    cause, seen = err, {id(err)}
    while (inner := cause.__cause__ or cause.__context__) is not None and id(inner) not in seen:
        cause = inner
        seen.add(id(cause))
    text = str(cause).strip().splitlines()
    reason = f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
    if metadata:
        return f"data.path={path}: cannot read it as a Hugging Face dataset ({reason}); fix {metadata[0]}"
    return (f"data.path={path}: cannot read it as a Hugging Face dataset ({reason}); an audiofolder needs "
            "metadata.jsonl or metadata.csv with a file_name column beside the audio files")


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
