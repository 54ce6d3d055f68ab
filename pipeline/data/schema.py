"""The canonical annotation record, and turning one into dataset columns (minus audio).

Every source (our JSONL export, SLURP, NeMo, MASSIVE text) is first rewritten into this one record
shape, so validation, pseudonymisation and annotation checks happen in exactly one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.data.annotations import AnnotationError, align_to_transcript, bio_tags, parse_inline, resolve_spans
from pipeline.text import normalize_text

__all__ = ["ExportRecord", "ValidationError", "AnnotationError", "schema_problem", "annotate", "JsonLine", "json_lines",
           "utf8_json"]

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class JsonLine:
    """One line of a JSONL file (an export, a NeMo manifest, deletion requests)."""

    number: int  # 1-based
    text: str  # as stored; bytes that are not UTF-8 kept as surrogates (write back with errors="surrogateescape")
    record: dict[str, Any] | None  # the parsed object; None for a blank or bad line
    error: str | None  # why a non-blank line has no record


def utf8_json(value: Any) -> str | None:
    """`value` as JSON text (non-ASCII as written), or None where UTF-8 cannot store it: a lone UTF-16
    surrogate, which a `\\ud83d` escape (half an emoji, cut by an exporter) parses into."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _byte_lines(path: Path) -> Iterator[bytes]:
    """Lines by LF; a chunk with no LF (a file of old Mac line endings) by CR. A LF line holding bare
    CRs is split at them too when it is not JSON as a whole but a piece is (such a file with one line
    appended by a LF tool): in a record that parses a CR is whitespace, and a raw CR inside a string
    leaves one bad line, not two."""
    with open(path, "rb") as f:
        for chunk in f:
            line = chunk.rstrip(b"\r\n")
            pieces = line.split(b"\r")
            if not chunk.endswith(b"\n") or (len(pieces) > 1 and not _parses(line) and any(map(_parses, pieces))):
                yield from pieces
            else:
                yield line


def json_lines(path: Path) -> Iterator[JsonLine]:
    """Every line of a JSONL file, streamed, decoded line by line.

    A line that is not UTF-8 is reported, never repaired: a replaced character changes an account
    id, and the deletion request naming the account would then miss its clips. A UTF-8 byte-order
    mark (Excel and Windows tools write one) is not part of the first record. Lines end in LF, CRLF or
    a bare CR (old Mac tools; JSON strings cannot hold one unescaped).
    """
    for n, raw in enumerate(_byte_lines(path), 1):
        if n == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        text = raw.decode("utf-8", errors="surrogateescape")
        if not text.strip():
            yield JsonLine(n, text, None, None)
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield JsonLine(n, text, None, f"not UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1}); "
                                          "save the file as UTF-8")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            yield JsonLine(n, text, None, f"not valid JSON ({err.msg} at column {err.colno})")
            continue
        except ValueError:  # the one other refusal: an integer of more digits than Python converts
            yield JsonLine(n, text, None, "a number too long to read (over 4,300 digits); "
                                          "write it as a string or fix the exporter")
            continue
        if not isinstance(obj, dict):
            yield JsonLine(n, text, None, f"a JSON {type(obj).__name__}, not an object")
            continue
        yield JsonLine(n, text, obj, None)


class EntityIn(BaseModel):
    """One entity of an `entities` list; offsets are optional, the value is searched when absent.
    Other keys (an annotation tool's `confidence`, `id`) are ignored, as in a record."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: str = Field(min_length=1)
    value: str = Field(min_length=1)
    start: int | None = None
    end: int | None = None


class ExportRecord(BaseModel):
    """One clip of an export. Unknown keys are ignored so exports may carry provenance fields."""

    model_config = ConfigDict(extra="ignore", strict=True)
    utterance_id: str = Field(min_length=1)
    audio: str | None = Field(default=None, min_length=1)  # relative to the export folder; None = text only
    transcript: str
    intent: str | None = None  # None = false wake (or no command)
    scenario: str | None = None  # derived from the intent's prefix when absent
    entities: list[EntityIn] | None = None
    annotation: str | None = None  # inline form: `play [artist_name : taylor swift]`
    wake_word_present: bool = True
    device_serial: str | None = None
    account_id: str = Field(min_length=1)
    annotator_id: str | None = None
    recorded_at: str | None = None
    flags: list[str] = Field(default_factory=list)
    locale: str = "en-US"
    # Another rendering of an earlier utterance (the demo's re-spoken commands and extra voices): a
    # deletion request naming that utterance deletes this clip too.
    copy_of: str | None = Field(default=None, min_length=1)
    # Extra training audio, not a recording to judge a model on: kept only when its account falls in
    # the training split, so validation and test hold exactly what was recorded.
    train_only: bool = False

    @field_validator("account_id", "device_serial", "annotator_id", mode="before")
    @classmethod
    def _id_without_spaces_around(cls, value: Any) -> Any:
        # An exporter's spaces around an id are not part of it: " ACCOUNT" is the account a deletion
        # request for "ACCOUNT" names, with one pseudonym and one split.
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # Exporters write `null` for a field they have no value for; for these that means the default.
        if isinstance(data, dict) and any(data.get(k, ...) is None for k in ("locale", "flags")):
            data = {k: v for k, v in data.items() if not (k in ("locale", "flags") and v is None)}
        return data

    @model_validator(mode="after")
    def _one_annotation_form(self) -> ExportRecord:
        # Annotation tools often write `"entities": []` by default beside an inline annotation:
        # an empty list says nothing, so it counts as absent.
        if self.entities == [] and self.annotation is not None:
            self.entities = None
        if self.entities is not None and self.annotation is not None:
            raise ValueError("give either `entities` or `annotation`, not both")
        return self


def schema_problem(err: ValidationError) -> str:
    """A one-line description of what is wrong, without echoing field values (they may be raw ids)."""
    parts = []
    for e in err.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(p) for p in e["loc"]) or "record"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def annotate(record: ExportRecord) -> dict[str, Any]:
    """Text columns of the dataset for one record; raises AnnotationError when the annotation
    disagrees with the transcript, a false wake carries an intent, or an intent has no words."""
    intent, scenario = record.intent, record.scenario
    if scenario is not None and not scenario.strip():
        scenario = None
    if intent is not None and not intent.strip():
        # An exporter's "" for "no intent" on a false wake; on a command it may be a label left out.
        if record.wake_word_present:
            raise AnnotationError("intent is empty; give the intent, or null for the wake word with no command after it")
        intent = None
    if not record.wake_word_present and intent is not None:
        raise AnnotationError(f"a false wake (wake_word_present=false) has intent {intent!r}")
    if intent is None and scenario is not None:
        # Else the clip trains as no command (SLURP's scenario without its action, say).
        raise AnnotationError(f"scenario {scenario!r} without an intent; give the intent (<scenario>_<action>) or drop the scenario")
    if intent is not None and not normalize_text(record.transcript):
        raise AnnotationError(f"intent {intent!r} on an empty transcript; a command has words")
    if record.annotation is not None:
        plain, parsed = parse_inline(record.annotation)
        entities = align_to_transcript(record.transcript, plain, parsed)
    else:
        raw = [e.model_dump(exclude_none=True) for e in record.entities or []]
        entities = resolve_spans(record.transcript, raw)
    words, tags = bio_tags(record.transcript, entities)
    if scenario is None and intent and "_" in intent:
        scenario = intent.split("_", 1)[0]
    return {
        "utterance_id": record.utterance_id,
        "transcript": record.transcript,
        "text": normalize_text(record.transcript),
        "intent": intent,
        "scenario": scenario,
        "entities": [e.as_dict() for e in entities],
        "words": words,
        "bio_tags": tags,
        "wake_word_present": record.wake_word_present,
        "locale": record.locale,
        "recorded_at": record.recorded_at,
    }
