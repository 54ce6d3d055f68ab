"""The canonical annotation record, and turning one into dataset columns (minus audio).

Every source (our JSONL export, SLURP, NeMo, MASSIVE text) is first rewritten into this one record
shape, so validation, pseudonymisation and annotation checks happen in exactly one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.data.annotations import AnnotationError, align_to_transcript, bio_tags, parse_inline, resolve_spans
from pipeline.text import normalize_text

__all__ = ["ExportRecord", "ValidationError", "AnnotationError", "schema_problem", "annotate"]


class EntityIn(BaseModel):
    """One entity of an `entities` list; offsets are optional, the value is searched when absent."""

    model_config = ConfigDict(extra="forbid", strict=True)
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
    disagrees with the transcript, or a false wake carries an intent."""
    if not record.wake_word_present and record.intent is not None:
        raise AnnotationError(f"a false wake (wake_word_present=false) has intent {record.intent!r}")
    if record.annotation is not None:
        plain, parsed = parse_inline(record.annotation)
        entities = align_to_transcript(record.transcript, plain, parsed)
    else:
        raw = [e.model_dump(exclude_none=True) for e in record.entities or []]
        entities = resolve_spans(record.transcript, raw)
    words, tags = bio_tags(record.transcript, entities)
    scenario = record.scenario
    if scenario is None and record.intent and "_" in record.intent:
        scenario = record.intent.split("_", 1)[0]
    return {
        "utterance_id": record.utterance_id,
        "transcript": record.transcript,
        "text": normalize_text(record.transcript),
        "intent": record.intent,
        "scenario": scenario,
        "entities": [e.as_dict() for e in entities],
        "words": words,
        "bio_tags": tags,
        "wake_word_present": record.wake_word_present,
        "locale": record.locale,
        "recorded_at": record.recorded_at,
    }
