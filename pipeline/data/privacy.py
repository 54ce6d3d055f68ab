"""Keyed pseudonyms for device serials, accounts and annotators, and deletion requests.

HMAC-SHA256 with a secret key (not a plain hash) because serials and account ids are guessable:
anyone could hash candidate ids and look them up. Without the key the pseudonyms reveal nothing,
yet with the same key the same account always maps to the same pseudonym, across builds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.data.schema import json_lines
from pipeline.runtime import PipelineError, write_text_atomic

log = logging.getLogger(__name__)
DELETION_KEYS = ("utterance_id", "account_id", "device_serial")
# An export record's raw identifiers and the kind of pseudonym each becomes.
RAW_IDS = {"account_id": "acct", "device_serial": "dev", "annotator_id": "ann"}


def load_key(key_env: str | None, key_file: str | Path | None) -> bytes:
    """The key from the environment variable if set, else from the key file (made 0600 if missing)."""
    key = _read_key(key_env, key_file)
    used = f"the environment variable {key_env}" if key_env and os.environ.get(key_env) else f"the key file {key_file}"
    _KEY_SOURCES[key_id(key)] = KeySource(key_env, str(key_file) if key_file else None, used)
    return key


@dataclass(frozen=True)
class KeySource:
    """Where a loaded key came from, for the advice of a key mismatch (never the key itself)."""

    key_env: str | None
    key_file: str | None
    used: str


# key id -> where load_key found that key in this process.
_KEY_SOURCES: dict[str, KeySource] = {}
# The stores without a key id already warned about: a job checks a record several times.
_WARNED: set[str] = set()


def _read_key(key_env: str | None, key_file: str | Path | None) -> bytes:
    if key_env and os.environ.get(key_env):
        return os.environ[key_env].encode()
    if not key_file:
        raise PipelineError(f"no pseudonym key: set the environment variable {key_env} or privacy.key_file")
    path = Path(key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes().strip()
        if not key:
            raise PipelineError(f"pseudonym key file {path} is empty: delete it to make a new one") from None
        return key
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


PSEUDONYM_HEX = 16


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """`<kind>_<16 hex>`: the kind is part of the message, so equal raw values of different kinds differ."""
    # surrogatepass: a JSON `\\ud83d` escape (half an emoji) in an id still hashes, the same way each time.
    digest = hmac.new(key, f"{kind}\x00{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"{kind}_{digest[:PSEUDONYM_HEX]}"


def key_id(key: bytes) -> str:
    """Names the pseudonym key without revealing it: what a dataset or a model is a function of
    changes with the key (every pseudonym and so every split does)."""
    return pseudonym(key, "key", "fingerprint")


# ------------------------------------------------------------- which key stored pseudonyms were made with
#
# A pseudonym matches another only when both were made with the same key: after a key change (a new
# cache folder makes a new key file; the environment variable rotated) a model record's `trained_on`,
# the corpus's tombstones and erasure's ledger would match no current pseudonym, and a model trained
# on deleted data would pass every check. So each store of pseudonyms names its key (`key_id`), and
# every place that matches stored pseudonyms against current ones refuses a store made under
# another key (`check_key_id`).

# The stamp in a folder of stored pseudonyms (the retraining corpus, erasure's ledger, a run folder's
# clip list): the key id on its first line. A stamp added to a folder that already held pseudonyms
# says so on a second line (ASSUMED): that key was assumed, not known, to be theirs.
KEY_ID_FILE = "pseudonym_key_id"
ASSUMED = "assumed"


class KeyMismatch(PipelineError):
    """Stored pseudonyms were made under another key than the current one: they cannot be matched."""


def _restore_advice(key: bytes) -> str:
    source = _KEY_SOURCES.get(key_id(key))
    if source is None:
        return "Restore the key it was made with (privacy.key_env's environment variable, or privacy.key_file)"
    where = [f"set the environment variable {source.key_env} to it" if source.key_env else None,
             f"put it back in the key file {source.key_file} with {source.key_env} unset" if source.key_file else None]
    return (f"Restore the key it was made with: {', or '.join(w for w in where if w)} "
            f"(privacy.key_env, privacy.key_file; the current key comes from {source.used})")


def check_key_id(stored: str | None, key: bytes, what: str, redo: str) -> None:
    """Refuse `what` (a model record, a corpus, a ledger) when its pseudonyms were made under another key.

    `stored` None is a store written before key ids were recorded: it is treated as made with the
    current key, with a warning, rather than refused. Refusing would stop every registry and corpus
    made before that change: no promotion, no rollback, and no erasure either, which is the worse
    failure for the people whose data must go. Until the key changes (the usual case) such a store
    matches as it always did; stores written from now on carry the key id and are checked.
    `redo` says how to replace the store under the current key (retrain, re-register)."""
    current = key_id(key)
    if stored is None:
        if what in _WARNED:
            return
        _WARNED.add(what)
        log.warning("%s records no pseudonym key id (written before key ids were kept): taken as made with the "
                    "current key %s. Should the key have changed since, its pseudonyms match nothing: restore that "
                    "key, or %s", what, current, redo)
        return
    if stored != current:
        raise KeyMismatch(f"{what} was made under pseudonym key {stored}, but the current key is {current}: its "
                          f"pseudonyms cannot be matched against current ones, so deleted data in it would go "
                          f"unnoticed. {_restore_advice(key)}; or {redo}")


def folder_key_id(folder: Path) -> str | None:
    """The key id stamped in a folder of stored pseudonyms; None when it has no stamp."""
    path = Path(folder) / KEY_ID_FILE
    words = path.read_text().split() if path.is_file() else []
    return words[0] if words else None


def unstamped(folder: Path) -> bool:
    """A folder holding something but no stamp: written before key ids were kept."""
    folder = Path(folder)
    return (folder_key_id(folder) is None and folder.is_dir()
            and any(p.name != KEY_ID_FILE for p in folder.iterdir()))


def check_folder_key(folder: Path, key: bytes, what: str, redo: str) -> bool:
    """`check_key_id` for a folder's stamp; a folder without a stamp and without files has nothing to match.
    Returns whether the folder was taken as the current key's for want of a stamp (warned about)."""
    folder = Path(folder)
    stored = folder_key_id(folder)
    if stored is None and not unstamped(folder):
        return False
    check_key_id(stored, key, what, redo)
    return stored is None


def stamp_folder_key(folder: Path, key: bytes) -> None:
    """Stamp a folder the current key's pseudonyms were just written to. Never overwrites another key's
    stamp (the caller checked it first: a mismatch was refused before anything was written). A folder
    from before stamps were kept is stamped at its next write, after check_key_id's warning: it was
    taken as the current key's already, and the warning is given once rather than at every job. Its
    stamp says the key was assumed (ASSUMED), as the warning did: a stamp records, it cannot know."""
    folder = Path(folder)
    if not folder.is_dir() or folder_key_id(folder) is not None:
        return
    write_text_atomic(folder / KEY_ID_FILE,
                      key_stamp(key, "held pseudonyms before key ids were kept" if unstamped(folder) else None))


def key_stamp(key: bytes, assumed: str | None = None) -> str:
    """The text of a stamp (KEY_ID_FILE): the key id on its first line, all `folder_key_id` reads. Where
    the key was assumed rather than known, a second line says so (ASSUMED), why (`assumed`) and since
    when, so a later reader does not take the stamp for a record."""
    note = (f"{ASSUMED}: {assumed}; taken as made with this key on "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n") if assumed else ""
    return key_id(key) + "\n" + note


_UTTERANCE_PSEUDONYM = re.compile(rf"utt_[0-9a-f]{{{PSEUDONYM_HEX}}}")
# A shorter raw id (LibriSpeech's speaker 19) counts only as a whole word of the text ("19-198-0000",
# "yes_03"): inside another word it would turn every id that happens to contain it into a pseudonym.
MIN_EMBEDDED_ID = 3


def utterance_pseudonym(key: bytes, utterance_id: str) -> str:
    """How the registry, tombstones, erasure and the quarantine name an utterance. An id that is
    already its pseudonym (`dataset_utterance_id`) stays as it is, so a request for the raw id finds it."""
    if is_utterance_pseudonym(utterance_id):
        return utterance_id
    return pseudonym(key, "utt", utterance_id)


def is_utterance_pseudonym(value: str) -> bool:
    return bool(_UTTERANCE_PSEUDONYM.fullmatch(value))


_RECORDING_PSEUDONYM = re.compile(rf"rec_[0-9a-f]{{{PSEUDONYM_HEX}}}")


def recording_pseudonym(key: bytes, name: str) -> str:
    """How reports, logs, eval_details.json and W&B name a background recording. Its name as written
    (a file path, an export's `recording_id`) may carry a device serial or an account number, and a
    background export declares no account or device field that could be pseudonymised instead.
    Keyed, so two evaluations on the same recordings under the same key give the same names, which
    is what pairs their false accepts (pipeline.eval.bootstrap.paired_rate_difference)."""
    return pseudonym(key, "rec", name)


def is_recording_pseudonym(value: str) -> bool:
    """Whether a stored recording name is a pseudonym, not a name as written (an evaluation from before
    recordings were pseudonymised)."""
    return bool(_RECORDING_PSEUDONYM.fullmatch(value))


def _id_texts(value: Any) -> list[str]:
    """The strings a raw identifier field holds. Exporters write account numbers as JSON numbers, or
    wrap an id in a list or object; the record is quarantined for it, but its id must not show.
    A string without the spaces around it, as the build reads the id (schema.ExportRecord): searched
    with them, " ACCT " is not found in the utterance id "ACCT-0001" or in a transcript ending "ACCT"."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _id_texts(str(value))
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _id_texts(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _id_texts(v)]
    return []


def _spellings(value: str) -> list[str]:
    """`value` as written, and as a message quoting a path with `!r` writes it (a Windows
    `DOMAIN\\user` folder, a tab or a quote in a name), in either of Python's quote styles."""
    escaped = repr(value)[1:-1]
    return list(dict.fromkeys([value, escaped, escaped.replace("'", "\\'")]))


def _pattern(spelling: str, whole_word: bool) -> re.Pattern[str]:
    """An id as a whole word (no letter or digit on either side), or anywhere."""
    escaped = re.escape(spelling)
    return re.compile(rf"(?<![^\W_]){escaped}(?![^\W_])" if whole_word else escaped, re.IGNORECASE)


def _whole_word(value: str) -> bool:
    """A short id counts only as a whole word: account 42 is not in "1425"."""
    return len(value) < MIN_EMBEDDED_ID


# Case foldings besides re's own: re folds a dotted "İ" to "i", lower() to "i" and a combining dot,
# casefold() "ß" to "ss"; each finds case forms of an id the others miss.
_FOLDS = (str.lower, str.casefold)


def _folded(text: str, fold: Callable[[str], str]) -> str:
    """Character by character, as _sub_folded maps matches back (lower() of a whole word turns a
    final "Σ" into "ς"; re's own folding equates the sigmas)."""
    return "".join(map(fold, text))


def _found(text: str, spelling: str, whole_word: bool) -> bool:
    return bool(_pattern(spelling, whole_word).search(text)
                or any(_pattern(_folded(spelling, fold), whole_word).search(_folded(text, fold)) for fold in _FOLDS))


def _sub_folded(pattern: re.Pattern[str], name: str, text: str, fold: Callable[[str], str]) -> str:
    """`pattern` (a folded spelling) found in `fold(text)`, replaced in `text` itself: each match
    maps back to the characters it was folded from, and the rest of the text keeps its case."""
    folded_text = _folded(text, fold)
    if not pattern.search(folded_text):
        return text
    origin, first = [], []  # the character each folded one came from; where each character's form starts
    for i, char in enumerate(text):
        first.append(len(origin))
        origin.extend([i] * len(fold(char)))
    first.append(len(origin))
    out, done = [], 0
    # Each search starts at the first character no replacement touched: a match may end inside a
    # character that folds to two ("ß" -> "ss"), and the next id may begin right after it.
    while (match := pattern.search(folded_text, first[done])) is not None and match.end() > match.start():
        start, end = origin[match.start()], origin[match.end() - 1] + 1
        out += [text[done:start], name]
        done = end
    return "".join(out) + text[done:]


def _holds(text: str, value: str, whole_word: bool = False) -> bool:
    return any(_found(text, s, whole_word or _whole_word(value)) for s in _spellings(value))


def _embedded_ids(text: str, record: dict[str, Any], short: bool = True) -> list[tuple[str, str]]:
    """(kind, raw value) of each of the record's identifiers that `text` contains, in any spelling;
    `short=False` leaves out ids under MIN_EMBEDDED_ID characters."""
    return [(kind, value) for name, kind in RAW_IDS.items() for value in _id_texts(record.get(name))
            if (short or not _whole_word(value)) and _holds(text, value)]


def quoted_ids(texts: dict[str, str], record: dict[str, Any]) -> dict[str, list[str]]:
    """For each of `texts` (field -> text) that holds one of the record's raw identifiers as a whole
    word, the identifiers' field names. Only the record's own: an export's other ids are not known
    here. Words, not substrings, and no short id: annotator "tom" is not in "tomorrow", account 150
    not in "1500 seconds", and account 42 in "a timer for 42 minutes" is no leak worth a clip."""
    quoted = {field: [name for name in RAW_IDS
                      if any(_holds(text, v, whole_word=True) for v in _id_texts(record.get(name))
                             if not _whole_word(v))]
              for field, text in texts.items()}
    return {field: names for field, names in quoted.items() if names}


def redact_ids(key: bytes, text: str, record: dict[str, Any], short: bool = True) -> str:
    """`text` (a quarantine detail naming an audio file) with each raw identifier of the record in it
    replaced by its pseudonym: the file stays findable, the speaker does not show. `short=False` for
    a detail that quotes an annotation: a short id there is a number or word of the text."""
    inserted: list[str] = []  # never searched again: a pseudonym may hold another id's characters

    def outside_inserted(change: Any) -> str:
        parts = re.split("(" + "|".join(map(re.escape, inserted)) + ")", text) if inserted else [text]
        return "".join(change(part) if i % 2 == 0 else part for i, part in enumerate(parts))

    # The longest first: account 12345 inside serial 12345-01 would leave the serial's tail.
    for kind, value in sorted(_embedded_ids(text, record, short), key=lambda found: -len(found[1])):
        name = pseudonym(key, kind, value)
        inserted.append(name)
        whole_word = _whole_word(value)
        for spelling in sorted(_spellings(value), key=len, reverse=True):
            text = outside_inserted(lambda part: _pattern(spelling, whole_word).sub(name, part))
            for fold in _FOLDS:  # a case form re cannot align (a dotted "İ", "ß")
                folded = _pattern(_folded(spelling, fold), whole_word)
                text = outside_inserted(lambda part: _sub_folded(folded, name, part, fold))
    return text


def dataset_utterance_id(key: bytes, utterance_id: str, record: dict[str, Any]) -> str:
    """The utterance id a dataset, report or quarantine line shows: the raw one, or its pseudonym
    when it contains one of the record's raw identifiers. Corpora name audio files after their
    speakers (FSDD's `0_george_0`, Speech Commands' `<speaker hash>_nohash_0`), and an id derived
    from the file would carry the account past its pseudonym into every report and W&B table.
    `record` holds the identifiers the export gave; those a reader made up from the id itself (a
    clip as its own account, SLURP's takes) are left out by the caller, as they hide nothing."""
    return utterance_pseudonym(key, utterance_id) if _embedded_ids(utterance_id, record) else utterance_id


def unit_interval(key: bytes, label: str) -> float:
    """A keyed, uniform number in [0, 1) for `label`: what split assignment is a function of."""
    digest = hmac.new(key, f"split\x00{label}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Deletions:
    """Deletion requests held only as pseudonyms, so the raw ids are not kept around in memory."""

    pseudonyms: set[str] = field(default_factory=set)

    def matches(self, key: bytes, record: dict[str, Any]) -> bool:
        return bool(record_pseudonyms(key, record) & self.pseudonyms)


# The export fields a deletion request can name a record by; `copy_of` names the original a derived
# clip re-speaks, so a request for the original takes the copy with it.
RECORD_IDS = {"utterance_id": "utt", "copy_of": "utt", "account_id": "acct", "device_serial": "dev"}


def record_pseudonyms(key: bytes, record: dict[str, Any]) -> set[str]:
    """A raw export record's pseudonyms, as deletion requests name it (the build, erase, the audit).
    Accounts and devices without spaces around them, as the build reads them (schema.ExportRecord)."""
    return {pseudonym(key, kind, _id_as_read(name, value)) for name, kind in RECORD_IDS.items()
            if isinstance(value := record.get(name), str) and _id_as_read(name, value)}


def _id_as_read(field: str, value: str) -> str:
    return value.strip() if field in RAW_IDS else value


def parse_deletion_requests(path: Path, key: bytes) -> tuple[Deletions, list[dict[str, Any]]]:
    """Every good request of a file, and each bad line as {"file", "line", "reason"}.

    For the scheduled intake: one malformed line must not hold back everyone else's erasure. The
    bad line's content is not returned, since it may hold a raw account id or serial.
    """
    deletions = Deletions()
    bad: list[dict[str, Any]] = []
    kinds = {"utterance_id": "utt", "account_id": "acct", "device_serial": "dev"}
    for line in json_lines(path):
        if line.record is None:
            if line.error is not None:  # else blank
                bad.append({"file": path.name, "line": line.number, "reason": line.error})
            continue
        known = {k: v for k, v in line.record.items() if k in kinds}
        if not known or not all(isinstance(v, str) and _id_as_read(k, v) for k, v in known.items()):
            bad.append({"file": path.name, "line": line.number,
                        "reason": f"needs a non-empty string under one of {list(DELETION_KEYS)}"})
            continue
        for name, value in known.items():
            deletions.pseudonyms.add(pseudonym(key, kinds[name], _id_as_read(name, value)))
    return deletions, bad


# Where the erasure job (pipeline.ops.erase, via the retraining corpus) keeps the requests it
# applied, as pseudonyms, under the cache whose key made them: conf/retrain.yaml's `retrain.corpus_dir`.
ERASED_DIR = Path("retrain") / "corpus"
REQUESTS_FILE = "deletion_requests.txt"  # accounts, devices and utterances requested
TOMBSTONES_FILE = "deleted_utterances.txt"  # every utterance those requests took


def erased_request_files(cache_dir: Path) -> list[Path]:
    """The files of requests erasure applied under this cache: every build reads them, so data that
    `make erase` removed does not come back with the next synthesis of the demo or a fresh export."""
    return [f for f in (Path(cache_dir) / ERASED_DIR / n for n in (REQUESTS_FILE, TOMBSTONES_FILE)) if f.is_file()]


def read_pseudonyms(path: Path) -> set[str]:
    """A requests or tombstones file: one pseudonym a line (none when the file is absent)."""
    return set(path.read_text().split()) if path.is_file() else set()


def erased_requests(files: list[Path]) -> Deletions:
    return Deletions(set().union(*map(read_pseudonyms, files)))


def load_deletions(path: str | Path | None, key: bytes) -> Deletions:
    """The build's own deletion file. Unlike the scheduled intake, a bad line stops the build: the
    person running it is there to fix it, and a request we cannot read must not be trained past."""
    if path is None:
        return Deletions()
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"data.deletions={path}: file not found; fix the path or drop data.deletions")
    deletions, bad = parse_deletion_requests(path, key)
    if bad:
        more = f" ({len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
        raise PipelineError(f"{path} line {bad[0]['line']}: {bad[0]['reason']}{more}; "
                            "each line must be one request object")
    return deletions
