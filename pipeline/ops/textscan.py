"""A file read as text in bounded pieces, for the erasure and the audit's search of deleted ids and
transcripts.

A W&B transaction log (`run-<id>.wandb`) grows with every table and summary a run logs, past any
size a search could skip: a run evaluated on hours of clips writes one of hundreds of MiB. Read
whole, such a file costs its size in memory (and its decoded text again); skipped, a deleted clip's
id in it goes unseen and `make sync` uploads it. So large files are read in chunks of `CHUNK_BYTES`.

A needle cut in two by a chunk boundary would be missed, and a piece of one could match what the
whole does not ("alexa stop" in "please alexa stop"). So each read looks `OVERLAP_BYTES` past the
chunk for a boundary that cuts no needle, and the bytes after it are read again as the next chunk's
start. The needles are pseudonymous ids (`utt_`, `acct_` or `dev_` and 16 hex digits: word
characters only) and transcripts (fragments between `|<>"`, tab and newline, as the searches split
text), so the boundary is the last newline in the look-ahead, else the last of those separators,
else the last ASCII byte that is not a word character. Any needle no longer than the look-ahead lies
whole in one chunk: a spoken command's transcript is a few hundred bytes, even JSON-escaped.

Which files are read is the caller's, by name and by `starts_as_text`: the audit reads every file
that starts as text whatever its name (a copy saved as `notes` or `eval.tsv`), erasure the W&B,
staged and half-written (`.tmp-`) files it judges (`searched`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

CHUNK_BYTES = 16 * 2**20
OVERLAP_BYTES = 64 * 2**10  # the look-ahead: longer than any needle searched for
# Files whose names say they hold text (reports, predictions, tables, configs, logs).
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".html", ".txt", ".yaml", ".csv", ".log")
# A file over this size named as none of those is read only when its first `SNIFF_BYTES` hold no NUL
# byte (git's test for binary, `starts_as_text`). A model or audio file (safetensors' 8-byte length, a
# WAV's RIFF header) has one there, and reading it would cost seconds per GiB for no text. The name cannot
# decide: W&B stages every copy under a suffixless temporary name, so a staged predictions.jsonl or
# table over the size would go unsearched, and `make sync` would upload a deleted clip's id in it.
BINARY_BYTES = 64 * 2**20
SNIFF_BYTES = 8 * 2**10

_SEPARATORS = b"|<>\"\t"
# ASCII only: a byte of a multi-byte UTF-8 character is never a boundary, so none is cut in two.
_NOT_WORD = bytes(b for b in range(128) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) == "_")))


def _boundary(buffer: bytes, start: int) -> int:
    """Where to end a chunk: just after the last newline, separator or non-word byte at or after
    `start`; `start` itself when there is none (no needle can then cross `start`)."""
    for chars in (b"\n", _SEPARATORS, _NOT_WORD):
        last = max(buffer.rfind(bytes([c]), start) for c in chars)
        if last >= 0:
            return last + 1
    return start


def text_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks of about `CHUNK_BYTES` (at most `CHUNK_BYTES + OVERLAP_BYTES`),
    cut where no needle is (the module docstring); together they are the file, in order."""
    size, overlap = CHUNK_BYTES, OVERLAP_BYTES  # read at each call: a test may make them small
    if size < 1 or overlap < 1:
        raise ValueError(f"CHUNK_BYTES={size} and OVERLAP_BYTES={overlap} must both be at least 1")
    carry = b""
    with open(path, "rb") as f:
        while True:
            buffer = carry + f.read(size + overlap - len(carry))
            if len(buffer) < size + overlap:  # the end of the file
                if buffer:
                    yield buffer
                return
            cut = _boundary(buffer, size)
            yield buffer[:cut]
            carry = buffer[cut:]


def text_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded (bad bytes replaced), read in chunks: a line longer than the
    look-ahead comes in pieces cut where no needle is."""
    for data in text_chunks(path):
        yield from data.decode("utf-8", errors="replace").splitlines()


def starts_as_text(path: Path) -> bool:
    """Whether the file's first `SNIFF_BYTES` hold no NUL byte: binary formats (safetensors, torch's
    zip, Arrow shards, NumPy arrays, PNG, WAV) put one there early, text (UTF-8 JSON lines, tables,
    logs) never does. An empty file is text: it holds nothing to find."""
    with open(path, "rb") as f:
        return b"\0" not in f.read(SNIFF_BYTES)  # read at each call: a test may make it small


def searched(path: Path) -> bool:
    """Whether the searches read this file: a W&B log or a file named as text, whatever its size;
    another up to `BINARY_BYTES`, or past it when it starts as text (the comment at `BINARY_BYTES`)."""
    limit = BINARY_BYTES  # read at each call: a test may make it small
    if path.suffix == ".wandb" or path.suffix.lower() in TEXT_SUFFIXES or path.stat().st_size <= limit:
        return True
    return starts_as_text(path)
