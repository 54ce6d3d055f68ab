"""Entity annotations: the inline `[type : value]` form, character spans, and BIO word tags.

Spans are character offsets into the transcript, so that a predicted entity can always be shown
as an exact substring of what was said. Word tags are derived from spans over whitespace words,
which is what the NLU tagger is trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BRACKET = re.compile(r"\[([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")
_NO_COLON = re.compile(r"\[[^\[\]:]*\]")  # a closed bracket that `_BRACKET` passed over for want of a colon


class AnnotationError(ValueError):
    """The annotation does not agree with the transcript (reason code `bad_annotation`)."""


@dataclass(frozen=True)
class Entity:
    type: str
    value: str
    start: int
    end: int

    def as_dict(self) -> dict[str, object]:
        return {"type": self.type, "value": self.value, "start": self.start, "end": self.end}


def parse_inline(annotation: str) -> tuple[str, list[Entity]]:
    """Strip `[type : value]` brackets, returning the plain text and the entities' spans in it."""
    text_parts: list[str] = []
    entities: list[Entity] = []
    cursor = 0
    length = 0
    for match in _BRACKET.finditer(annotation):
        before = annotation[cursor : match.start()]
        _check_no_bracket(before, annotation)
        text_parts.append(before)
        length += len(before)
        etype, value = match.group(1).strip(), match.group(2).strip()
        if not etype or not value:
            raise AnnotationError(f"empty entity type or value in {match.group(0)!r}")
        if " " in etype:
            raise AnnotationError(f"entity type {etype!r} contains a space in {match.group(0)!r}")
        entities.append(Entity(etype, value, length, length + len(value)))
        text_parts.append(value)
        length += len(value)
        cursor = match.end()
    tail = annotation[cursor:]
    _check_no_bracket(tail, annotation)
    text_parts.append(tail)
    return "".join(text_parts), entities


def _check_no_bracket(text: str, annotation: str) -> None:
    """Refuse a bracket left in `text`, the annotation between its entities. A closed `[type]` is
    named for its missing colon: calling it unbalanced sent annotators looking for a missing `]`."""
    if "[" not in text and "]" not in text:
        return
    closed = _NO_COLON.search(text)
    if closed:
        raise AnnotationError(f"entity {closed.group(0)!r} has no ':' between its type and value in {annotation!r}; "
                              "write it as [type : value], or drop the brackets if it is not an entity")
    raise AnnotationError(f"unbalanced bracket near {text.strip()!r} in {annotation!r}")


def align_to_transcript(
    transcript: str, plain: str, entities: list[Entity]
) -> list[Entity]:
    """Move spans parsed from an inline annotation onto the transcript it annotates.

    Annotators sometimes keep capitals the transcript lost, or collapse spaces; both are fine.
    Any other difference means the annotation is about a different sentence, and is rejected.
    """
    if plain == transcript:
        return entities
    if _loose(plain) != _loose(transcript):
        raise AnnotationError(
            f"annotation text {plain!r} does not match the transcript {transcript!r}"
        )
    # The words correspond one to one, so each offset keeps its place in its word: the annotated
    # "ten" stays the annotated one even when the sentence says "ten" twice.
    moved = []
    for ent in entities:
        start, end = _moved_offset(ent.start, plain, transcript), _moved_offset(ent.end, plain, transcript)
        if start is None or end is None:
            raise AnnotationError(
                f"entity {ent.type!r} ({ent.value!r}) starts or ends inside a letter that the transcript "
                f"{transcript!r} writes in another case; annotate whole letters"
            )
        moved.append(Entity(ent.type, transcript[start:end], start, end))
    return moved


def _loose(text: str) -> str:
    """Text as compared between an annotation and its transcript: capitals and spacing do not count."""
    return " ".join(text.lower().split())


def _moved_offset(offset: int, plain: str, transcript: str) -> int | None:
    """`offset` into `plain` as an offset into `transcript`, whose words are the same in lower case.

    Found by the lower-cased start of its word, not by its distance from the word's start: a capital
    may lower to two characters ("İ"). None where no place in the transcript's word matches (an
    offset inside such a letter, or outside the words).
    """
    for (ps, pe), (ts, te) in zip(word_spans(plain), word_spans(transcript)):
        if ps <= offset <= pe:
            before = plain[ps:offset].lower()
            return next((j for j in range(ts, te + 1) if transcript[ts:j].lower() == before), None)
    return None


def resolve_spans(transcript: str, raw: list[dict[str, object]]) -> list[Entity]:
    """Check `{type, value, start?, end?}` entities against the transcript and fill missing offsets.

    Without offsets, each value is searched as whole words, in any case and spacing, on the
    transcript itself (its lower case may be longer: "İ"), so a span never starts inside a word
    ("ten" in "listen"). The search goes left to right, after the end of the previous entity, so
    repeated values ("from two to two thirty") get distinct spans.
    """
    resolved: list[Entity] = []
    search_from = 0
    for i, ent in enumerate(raw):
        etype = str(ent.get("type") or "").strip()
        value = str(ent.get("value") or "")
        if not etype or not value.strip():
            raise AnnotationError(f"entity {i} has an empty type or value")
        start, end = ent.get("start"), ent.get("end")
        if start is not None or end is not None:
            if not isinstance(start, int) or not isinstance(end, int):
                raise AnnotationError(f"entity {i} ({etype}) needs both integer start and end")
            if not (0 <= start < end <= len(transcript)):
                raise AnnotationError(
                    f"entity {i} ({etype}) offsets {start}:{end} fall outside the transcript "
                    f"of length {len(transcript)}"
                )
            if _loose(transcript[start:end]) != _loose(value):
                raise AnnotationError(
                    f"entity {i} ({etype}) offsets {start}:{end} cover "
                    f"{transcript[start:end]!r}, not the value {value!r}"
                )
        else:
            words = r"\s+".join(re.escape(word) for word in value.split())
            pattern = re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)
            found = pattern.search(transcript, search_from) or pattern.search(transcript)
            if found is None:
                raise AnnotationError(
                    f"entity {i} ({etype}) value {value!r} is not in the transcript as whole words"
                )
            start, end = found.span()
        resolved.append(Entity(etype, transcript[start:end], start, end))
        search_from = end
    ordered = sorted(resolved, key=lambda e: e.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise AnnotationError(f"entities {a.type!r} and {b.type!r} overlap")
    return ordered


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of `text`."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def bio_tags(transcript: str, entities: list[Entity]) -> tuple[list[str], list[str]]:
    """Whitespace words and their BIO tags; a word belongs to an entity if the two overlap.

    Two entities in one word ("[time : 5]-[time : 6]") are refused: its one tag would keep the
    last and drop the other, which the gold entities still hold.
    """
    spans = word_spans(transcript)
    words = [transcript[s:e] for s, e in spans]
    tags = ["O"] * len(words)
    owner: dict[int, Entity] = {}
    for ent in entities:
        inside = [i for i, (s, e) in enumerate(spans) if s < ent.end and e > ent.start]
        for rank, i in enumerate(inside):
            if i in owner:
                raise AnnotationError(
                    f"entities {owner[i].type!r} ({owner[i].value!r}) and {ent.type!r} ({ent.value!r}) "
                    f"share the word {words[i]!r}; a word is tagged with one entity, so annotate the word as one"
                )
            owner[i] = ent
            tags[i] = ("B-" if rank == 0 else "I-") + ent.type
    return words, tags


def tag_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity in word-level BIO tags.

    An `I-x` after something other than `B-x`/`I-x` starts a new entity (the lenient reading),
    so a tagger's small mistakes still yield spans.
    """
    out: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        kind, _, etype = tag.partition("-")
        if kind == "I" and out and out[-1][0] == etype and out[-1][2] == i:
            out[-1] = (etype, out[-1][1], i + 1)
        elif kind in ("B", "I") and etype:
            out.append((etype, i, i + 1))
    return out


def tags_to_entities(text: str, tags: list[str]) -> list[Entity]:
    """Turn word-level BIO tags back into entities whose values are exact substrings of `text`
    (the spans of `tag_spans`)."""
    spans = word_spans(text)
    entities = []
    for etype, first, end in tag_spans(tags[: len(spans)]):
        start, stop = spans[first][0], spans[end - 1][1]
        entities.append(Entity(etype, text[start:stop], start, stop))
    return entities
