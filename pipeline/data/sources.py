"""Readers for each `data.source`: they rewrite their format into canonical export records.

A reader yields one `RawRecord` per *clip* (a SLURP sentence with three recordings yields three),
including lines that are not even JSON, so the build can account for every input.
`data.sources` lists several inputs for one build, each shaped like a conf/data/*.yaml file.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.data.config import SOURCES, DataConfig, SourceConfig, SplitShares
from pipeline.data.schema import json_lines
from pipeline.runtime import PipelineError

log = logging.getLogger(__name__)
# Keys that hold for the whole build; in a `data.sources` entry they are ignored (with a warning).
BUILD_KEYS = ("min_duration_s", "max_duration_s", "quarantine_flags", "split_shares", "num_proc", "allowed_roots")


@dataclass(frozen=True)
class RawRecord:
    line: int  # 1-based line of the input file
    data: dict[str, Any] | None  # canonical record fields; None when the line is not a JSON object
    error: str | None = None  # why `data` is None
    split: str | None = None  # fixed split (MASSIVE text), else assigned from the account
    row: int | None = None  # 0-based row of a Hugging Face dataset (quarantine lines name it)
    audio: dict[str, Any] | None = None  # that row's audio, {"bytes", "path"}, not decoded
    excluded: tuple[str, str] | None = None  # (reason, detail): kept out by the source's own rule, so quarantined
    file: str | None = None  # the input file's name, where a source reads several (MASSIVE's train and dev)
    # Identifier fields the reader made up from the utterance id or its file name (a clip as its own
    # account, SLURP's take): they hide nothing the id does not show (privacy.dataset_utterance_id).
    made_up: tuple[str, ...] = ()
    # Ids earlier code versions gave the record (an hf row's number, before build code version 11):
    # deletion requests and tombstones written against them keep matching what they matched then,
    # the clip at that row (if a split was added since, another clip: rows shift, which is why ids
    # no longer follow them).
    aliases: tuple[str, ...] = ()


@dataclass
class Source:
    """What the build needs to know about one input: its records, audio root and files to hash."""

    name: str
    root: Path | None  # audio paths are relative to this folder; None for text-only sources
    files: list[Path]  # every input file whose content defines the build
    records: Iterator[RawRecord] = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)  # source knobs that change the output
    kind: str = ""  # the reader (`source:`); `name` is what the `source` column holds
    hf: Any = None  # the opened pipeline.data.hf.HFSource of an `hf` source
    allowed_roots: tuple[Path, ...] = ()  # folders resolved audio paths may also lie in

    def close(self) -> None:
        if self.hf is not None:
            self.hf.close()


def open_sources(data_cfg: DictConfig, data: DataConfig, cache_dir: Path) -> tuple[list[Source], list[Path]]:
    """Every source of the build (`data.sources`, else `data.source` alone) and every deletions file;
    each deletions file applies to every source. `data` is `data_cfg` checked (pipeline.data.config);
    `data_cfg` itself is read only for the demo's own block (pipeline.data.demo checks it)."""
    if data.sources is not None and not data.sources:  # conf/data/sources.yaml as shipped
        raise PipelineError("data.sources is empty; list at least one entry, e.g. "
                            "'data.sources=[{source: jsonl, name: b7, path: /exports/b7/annotations.jsonl}]'")
    in_list = bool(data.sources)
    entries = list(zip(data_cfg.sources, data.sources)) if in_list else [(data_cfg, data)]
    allowed = tuple(Path(p) for p in (data.allowed_roots or []))
    sources: list[Source] = []
    deletions: list[Path] = []
    if in_list and data.deletions:
        deletions.append(Path(data.deletions))
    try:
        for i, (raw, entry) in enumerate(entries):
            if in_list:
                ignored = [k for k in BUILD_KEYS if getattr(entry, k) is not None and getattr(entry, k) != getattr(data, k)]
                if ignored:
                    log.warning("data.sources[%d]: %s hold for the whole build; set them on data.* instead", i, ignored)
                if isinstance(entry.split, (dict, DictConfig)):  # the shares form, as conf/data/jsonl.yaml writes it
                    log.warning("data.sources[%d].split is a share of accounts per split, which holds for the whole "
                                "build and is ignored here; set data.split_shares instead", i)
            key = f"data.sources[{i}]" if in_list else "data"
            try:
                source, dels = open_source(raw, entry, cache_dir, in_list=in_list, key=key)
            except PipelineError as err:
                # The hf and speech readers name their settings as `data.<setting>`: say which entry.
                if not in_list or str(err).startswith("data.sources"):
                    raise
                raise PipelineError(f"{key} ({entry.name or entry.source}): {err}") from None
            source.name = str(entry.name or source.kind) if in_list else source.kind
            source.allowed_roots = allowed
            sources.append(source)
            if dels is not None and dels not in deletions:
                deletions.append(dels)
    except BaseException:
        for source in sources:
            source.close()
        raise
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        for source in sources:
            source.close()
        raise PipelineError(f"data.sources: the name(s) {repeated} are used twice; give each source its own `name:`")
    return sources, deletions


def open_source(raw: DictConfig, data_cfg: SourceConfig, cache_dir: Path, in_list: bool = False,
                key: str = "data") -> tuple[Source, Path | None]:
    """Return the source and the deletions file (explicit, or the one the demo ships). `data_cfg` is
    the entry checked, `raw` the entry as written (the demo reads its `demo:` block from it), `key`
    where errors say it is (`data`, or `data.sources[i]`).

    In a `data.sources` entry `name:` names the source; as the one-source shorthand `data=hf`,
    `data.name` is the dataset's configuration as in `load_dataset` (`config_name:` works in both).
    """
    name = data_cfg.source
    deletions = data_cfg.deletions
    if name == "demo":
        from pipeline.data.demo import ensure_demo_export

        annotations_path, demo_deletions = ensure_demo_export(raw, cache_dir)
        source = _jsonl_source(annotations_path, "demo")
        source.kind = "demo"
        return source, Path(deletions) if deletions else demo_deletions
    if name == "speech":  # a corpus of human speech with held-out speakers (pipeline.data.speech_recipe)
        from pipeline.data.speech_recipe import speech_source

        source = speech_source(data_cfg, cache_dir, str(data_cfg.name or "speech"))
    elif name == "lone_words":  # words said alone by synthetic voices, all training (pipeline.data.demo.lone_word_records)
        from pipeline.data.demo import lone_words_export
        from pipeline.data.speech_recipe import speech_source

        folder = lone_words_export(list(data_cfg.words or []), dict(data_cfg.voices or {}), cache_dir)
        entry = replace(data_cfg, path=str(folder), columns={"transcript": "transcription", "account_id": "speaker_id"},
                        role="train", heldout=SplitShares(validation=0.0, test=0.0), keywords=None)
        source = speech_source(entry, cache_dir, str(data_cfg.name or "lone_words"))
        source.kind = "lone_words"
    elif name == "hf":
        config_name = data_cfg.config_name or (None if in_list else data_cfg.name)
        source = hf_source(data_cfg, cache_dir, str(data_cfg.name or "hf") if in_list else "hf", config_name)
    elif name == "jsonl":
        source = _jsonl_source(_required_file(data_cfg, "path", key), "jsonl")
    elif name == "slurp":
        source = _slurp_source(data_cfg, key)
    elif name == "nemo":
        # In a list, a made-up id carries the entry's name: two manifests both hold `audio/0001.wav`.
        source = _nemo_source(data_cfg, key, f"{data_cfg.name}/" if in_list and data_cfg.name else "")
    elif name == "massive_text":
        source = _massive_source(data_cfg, key)
    else:
        raise PipelineError(f"data.source={name!r} is unknown; use one of {list(SOURCES)} (config group data=...)")
    source.kind = source.kind or str(name)
    return source, Path(deletions) if deletions else None


def _required_file(data_cfg: SourceConfig, setting: str, key: str) -> Path:
    value = getattr(data_cfg, setting)
    if not value:
        raise PipelineError(f"{key}.{setting} is not set for source {data_cfg.source}; pass {key}.{setting}=<file>")
    path = Path(value)
    if path.is_dir():
        raise PipelineError(f"{key}.{setting}={path} is a folder; give the file itself")
    if not path.is_file():
        raise PipelineError(f"{key}.{setting}={path}: file not found; check the path")
    return path


def _audio_dir(data_cfg: SourceConfig, default: Path, key: str) -> Path:
    value = data_cfg.audio_dir
    path = Path(value) if value else default
    if not path.is_dir():
        raise PipelineError(f"{key}.audio_dir={path}: folder not found; point it at the folder holding the audio")
    return path


def _json_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed object or None, error) for each non-blank line, streamed."""
    for line in json_lines(path):
        if line.record is not None or line.error is not None:
            yield line.number, line.record, line.error


def _jsonl_source(path: Path, name: str) -> Source:
    def records() -> Iterator[RawRecord]:
        for n, obj, err in _json_lines(path):
            yield RawRecord(n, obj, err)

    return Source(name, path.parent, [path], records())


def slurp_utterance_id(slurp_id: Any, recording: str) -> str:
    """A SLURP clip's id: its sentence and its recording (SLURP's scorer, `eval.slu_scoring=slurp`,
    reads the sentence back with `slurp_id_of`)."""
    return f"slurp-{slurp_id}-{recording}"


def slurp_id_of(utterance_id: str) -> int | None:
    """The SLURP sentence a clip came from, None for a clip of another corpus."""
    parts = utterance_id.split("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[0] == "slurp" and parts[1].isdigit() else None


def _slurp_source(data_cfg: SourceConfig, key: str = "data") -> Source:
    """SLURP: one record per sentence, one clip per recording; intent = scenario + "_" + action.

    SLURP's shared files have no speakers, so the account is derived from `data.slurp_account`:
    `sentence` (the slurp_id: a prompt's takes, by several people, stay in one split, so no test
    sentence is trained on), `take` (the recording's file name without `-headset`, so both
    microphones of one take stay in one split) or `recording` (the file name).
    """
    path = _required_file(data_cfg, "path", key)
    root = _audio_dir(data_cfg, path.parent, key)
    # conf/data/slurp.yaml gives it (checked against SLURP_ACCOUNTS); an entry of data.sources may leave
    # it out and gets that file's default.
    account_from = data_cfg.slurp_account or "sentence"

    def records() -> Iterator[RawRecord]:
        for n, obj, err in _json_lines(path):
            recordings = obj.get("recordings") if obj else None
            if obj is None or not isinstance(recordings, list) or not recordings:
                yield RawRecord(n, None, err or "a SLURP record needs a non-empty `recordings` list")
                continue
            if _id_text(obj.get("slurp_id")) is None:
                yield RawRecord(n, None, "a SLURP record needs a `slurp_id` (string or whole number)")
                continue
            for rec in recordings:
                file = rec.get("file") if isinstance(rec, dict) else None
                if not isinstance(file, str) or not file:
                    yield RawRecord(n, None, "a SLURP recording has no `file`")
                    continue
                stem = Path(file).stem
                take = stem.removesuffix("-headset")
                account = {"take": take, "recording": stem, "sentence": str(obj.get("slurp_id"))}[account_from]
                scenario, action = obj.get("scenario"), obj.get("action")
                intent = f"{scenario}_{action}" if scenario and action else obj.get("intent")
                yield RawRecord(n, {
                    "utterance_id": slurp_utterance_id(obj.get("slurp_id"), stem),
                    "audio": file,
                    "transcript": obj.get("sentence"),
                    "annotation": obj.get("sentence_annotation"),
                    "intent": intent,
                    "scenario": scenario,
                    "wake_word_present": True,
                    "account_id": account,
                    "device_serial": "headset" if stem.endswith("-headset") else "far_field",
                    "locale": "en-US",
                }, made_up=("account_id", "device_serial"))

    return Source("slurp", root, [path], records(), {"slurp_account": account_from})


def _nemo_source(data_cfg: SourceConfig, key: str = "data", prefix: str = "") -> Source:
    """NeMo manifest: `audio_filepath`, `duration`, `text`; extra canonical fields are used when present.

    Absolute `audio_filepath`s are common in NeMo; they are accepted only inside `data.audio_dir`
    (default: the manifest's folder) and rewritten relative to it, like any other path.
    A segment of a longer file (`offset` above 0) is quarantined: clips are whole files here, and
    an erased segment's file would take its neighbours with it.
    """
    path = _required_file(data_cfg, "path", key)
    root = _audio_dir(data_cfg, path.parent, key)
    resolved_root = root.resolve()

    def records() -> Iterator[RawRecord]:
        for n, obj, err in _json_lines(path):
            if obj is None:
                yield RawRecord(n, None, err)
                continue
            problem = _nemo_problem(obj)
            if problem:
                yield RawRecord(n, None, problem)
                continue
            audio = obj.get("audio_filepath")
            if isinstance(audio, str) and Path(audio).is_absolute():
                candidate = Path(audio)
                if candidate.is_relative_to(resolved_root):
                    audio = str(candidate.relative_to(resolved_root))
                elif candidate.is_relative_to(root.absolute()):
                    audio = str(candidate.relative_to(root.absolute()))
            outside = isinstance(audio, str) and Path(audio).is_absolute()
            # A file outside the audio folder is named by its name alone: its folders often carry a user's
            # name. Still a record, so a deletion request finds it first and its ids are redacted.
            stem = (Path(audio).stem if outside else Path(audio).with_suffix("").as_posix()) if isinstance(audio, str) else None
            record = {k: v for k, v in obj.items() if k not in ("audio_filepath", "duration", "text")}
            record.update({"audio": audio, "transcript": obj.get("text")})
            made = prefix + stem if prefix and stem is not None else stem
            named = "utterance_id" not in record and not _id_text(obj.get("id")) and made != stem
            record.setdefault("utterance_id", _id_text(obj.get("id")) or made)
            made_up = () if "account_id" in record or _id_text(obj.get("speaker")) else ("account_id",)
            record.setdefault("account_id", _id_text(obj.get("speaker")) or made)
            excluded = (("path_outside_root", f"audio_filepath is an absolute path outside {key}.audio_dir={root} (file "
                                              f"{Path(audio).name!r}); set {key}.audio_dir to a folder holding every clip")
                        if outside else None)
            # Before build code version 11 a listed manifest's clip was its bare stem: requests by it still match.
            yield RawRecord(n, record, made_up=made_up, excluded=excluded, aliases=(stem,) if named else ())

    return Source("nemo", root, [path], records())


def _nemo_problem(obj: dict[str, Any]) -> str | None:
    """Why a manifest line cannot be a clip, in the manifest's own field names."""
    if not isinstance(obj.get("audio_filepath"), str) or not obj["audio_filepath"]:
        return "audio_filepath: missing or not a string"
    if not isinstance(obj.get("text"), str):
        return "text: missing or not a string"
    for name in ("id", "speaker"):
        if obj.get(name) is not None and _id_text(obj[name]) is None:
            return f"{name}: a string or a whole number expected, got {type(obj[name]).__name__}"
    offset = obj.get("offset") or 0
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        return f"offset: a number of seconds expected, got {type(offset).__name__}"
    if not math.isfinite(offset) or offset < 0:  # JSON's NaN passed `offset > 0` and read the file whole
        return f"offset {offset}: seconds from the file's start expected, 0 or more"
    if offset > 0:
        return (f"offset {offset}: a segment of a longer file; the build reads whole files, so cut each segment "
                "into its own file (and drop offset)")
    return None


def _id_text(value: Any) -> str | None:
    """A NeMo id or speaker as text: speakers are often numbered (LibriSpeech's 1089)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _massive_source(data_cfg: SourceConfig, key: str = "data") -> Source:
    """MASSIVE text (no audio): train file -> train; dev file -> validation or test, half each,
    chosen by a hash of the MASSIVE id so the halves never change.

    MASSIVE's own release keeps a locale's train, dev and test partitions in one file, each record
    naming its `partition`: a record whose partition is not its file's (a test utterance in the file
    read as training data) is quarantined as `other_partition`, never trained or validated on."""
    train = _required_file(data_cfg, "train_path", key)
    dev = _required_file(data_cfg, "dev_path", key)

    def convert(n: int, obj: dict[str, Any], split: str, path: Path, partition: str, setting: str) -> RawRecord:
        mid = _id_text(obj.get("id"))
        if mid is None:
            return RawRecord(n, None, f"{path.name}: a MASSIVE record needs an `id` (string or whole number)", split=split,
                             file=path.name)
        intent, scenario = obj.get("intent"), obj.get("scenario")
        # MASSIVE names every utterance's intent <scenario>_<action>; one without is a label lost in an
        # edit, which the NLU would otherwise learn as "no command".
        bad = (None if isinstance(intent, str) and intent and (not scenario or intent.startswith(f"{scenario}_"))
               else f"{path.name}: intent {intent!r} is not an intent of scenario {scenario!r} (<scenario>_<action>)")
        excluded = ("bad_annotation", bad) if bad else None
        if obj.get("partition", partition) != partition:
            excluded = ("other_partition", f"{path.name}: partition {obj.get('partition')!r} in the file given as "
                        f"{key}.{setting} (MASSIVE's {partition} partition); give each partition's records in its own file")
        return RawRecord(n, {
            "utterance_id": f"massive-{mid}",
            "transcript": obj.get("utt"),
            "annotation": obj.get("annot_utt"),
            "intent": intent,
            "scenario": scenario,
            "wake_word_present": True,
            # MASSIVE has no speakers; its worker_id is who wrote the utterance, i.e. the annotator.
            "account_id": f"massive-{mid}",
            "annotator_id": str(obj["worker_id"]) if obj.get("worker_id") is not None else None,
            "locale": obj.get("locale", "en-US"),
        }, split=split, file=path.name, excluded=excluded, made_up=("account_id",))

    def records() -> Iterator[RawRecord]:
        for path, split, setting in ((train, "train", "train_path"), (dev, None, "dev_path")):
            lines = 0
            for n, obj, err in _json_lines(path):
                lines += 1
                if obj is None:
                    yield RawRecord(n, None, f"{path.name}: {err}", split=split or "validation", file=path.name)
                    continue
                if split is None:
                    half = hashlib.sha256(f"massive-dev\x00{obj.get('id')}".encode()).digest()[0] % 2
                    yield convert(n, obj, ("validation", "test")[half], path, "dev", setting)
                else:
                    yield convert(n, obj, split, path, "train", setting)
            if not lines:  # one file's split would be empty, found only by the NLU stage
                raise PipelineError(f"{key}.{setting}={path}: the file holds no records; point it at MASSIVE's "
                                    f"{'train' if split else 'dev'} file (e.g. en-US.{'train' if split else 'dev'}.jsonl)")

    return Source("massive_text", None, [train, dev], records())


def hf_source(data_cfg: SourceConfig, cache_dir: Path, name: str, config_name: str | None) -> Source:
    """Any Hugging Face audio dataset (pipeline.data.hf); one record per row, the row index kept.

    Without a mapped utterance_id, a clip is `<source name>/<file path without extension>` for an
    audiofolder, else `<source name>/sha256:<16 hex>` of its audio bytes (or of its stored path, where
    the dataset keeps only that). Never the row number: a new split or batch shifts the rows, and with
    them the ids, the splits and what a deletion request names. Not the file name the dataset stored
    with the bytes either: `datasets` keeps only its last part, which repeats across a corpus's
    folders and splits, and often names the speaker. The source name keeps two sources' clips apart;
    the row's old id stays an alias for deletions (RawRecord.aliases)."""
    from pipeline.data.hf import HFSource

    hf = HFSource(data_cfg, name, config_name, cache_dir)
    def records() -> Iterator[RawRecord]:
        for row, record, audio in hf.records():
            blank = [f for f, column in hf.mapping.items() if f in record and record[f] is None]
            if blank:  # a required field's cell is empty (pipeline.data.hf.QUARANTINED_WHEN_BLANK)
                yield RawRecord(row + 1, None, "; ".join(f"{f}: the cell of column {hf.mapping[f]!r} is empty"
                                                         for f in blank), row=row, audio=audio)
                continue
            aliases: tuple[str, ...] = ()
            if "utterance_id" not in record:
                local = audio.get("path") if isinstance(audio, dict) and audio.get("bytes") is None else None
                content = audio.get("bytes") or str(audio.get("path") or "").encode() if isinstance(audio, dict) else b""
                if local and hf.root is not None and Path(local).is_relative_to(hf.root):
                    record["utterance_id"] = f"{name}/{Path(local).relative_to(hf.root).with_suffix('').as_posix()}"
                elif content:
                    record["utterance_id"] = f"{name}/sha256:{hashlib.sha256(content).hexdigest()[:16]}"
                    aliases = (f"{name}/{row}",)
                else:
                    record["utterance_id"] = f"{name}/{row}"  # no audio to name it by: quarantined as such
            made_up = () if "account_id" in record else ("account_id",)
            if made_up:
                record["account_id"] = record["utterance_id"]
            yield RawRecord(row + 1, record, row=row, audio=audio, made_up=made_up, aliases=aliases)

    options = {"path": hf.path if not hf.local else "(local)", "config_name": config_name,
               "split": data_cfg.split, "columns": hf.mapping, "kind": hf.kind,
               "constants": {k: repr(v) for k, v in sorted(hf.constants.items())}}
    return Source(name, hf.root if hf.kind == "audiofolder" else None, [], records(), options, kind="hf", hf=hf)
