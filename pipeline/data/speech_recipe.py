"""Real human speech beside the demo (`data=demo_speech`), judged on speakers it never heard.

A `speech` source (`source: speech` in `data.sources`) is one corpus of ../shared/data/speech, an
audiofolder (or a hub id) read exactly like `source: hf`, with two things an hf source cannot do:

- **Held-out speakers per corpus.** The build's account split draws each speaker with the split
  shares, so a corpus of 4 speakers (FSDD) may have none in test. Here each corpus's speakers are
  ranked by a seeded hash of (corpus, speaker) and the first `heldout.test` share of them (at least
  one when the corpus has two or more) go to test, the next `heldout.validation` share to
  validation. The choice depends on nothing but the names and the seed, so every build (the
  training one and the wake-word one below) holds out the same people. A corpus without speakers
  (the Mycroft wake words) is split clip by clip with the same shares. Shares that add up to 1
  (`data.speech_heldout`, only for `role: wake_test`) hold out everyone: a folder of people no
  model heard, scored whole.
- **Keyword clips kept out of training.** Clips whose `keyword_column` (Mycroft's `wake_word`) is
  one of `keywords` (both normalised as transcripts are) are the test of a wake word the model hears
  only from synthetic voices (espeak-ng, and flite for `data.demo.other_wake_flite_takes`):
  `role: train` quarantines them (`held_out_keyword`, so every input row is accounted for), and
  `role: wake_test` builds the set that scores them: those clips as wake-word positives (half
  validation, to tune the threshold, half test) against the held-out other human speech
  (validation and test speakers only; training clips are quarantined as `heard_in_training`), so
  that `evaluate.py eval.wake_word=computer dataset=<that build>` scores a word never heard from a
  person.

The demo side of the recipe (pipeline.data.demo, `data.demo.other_wake_word`) speaks a share of the
demo's commands with that keyword instead of "alexa", as false wakes for the demo's own wake word,
and `data.demo.extra_takes` (pipeline.data.demo.extra_take_records) speaks every demo clip again
with voices no shipped account uses, as training audio only; `data.demo.other_wake_flite_takes`
(pipeline.data.demo.flite_take_records) speaks the keyword's clips again with flite's voices. A
`lone_words` source (pipeline.data.demo.lone_word_records, read here as a speech source whose every
clip is training audio) says the human corpora's words alone with synthetic voices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.data.background import mentions
from pipeline.data.config import ROLES, SourceConfig, holds_out_everyone
from pipeline.data.hf import HUB_ID, label_name
from pipeline.data.sources import RawRecord, Source
from pipeline.runtime import PipelineError
from pipeline.text import normalize_text


def _fraction(*parts: Any) -> float:
    """A number in [0, 1) fixed by `parts` (sha256), for seeded choices that never drift."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def heldout_speakers(speakers: list[str], corpus: str, validation: float, test: float, seed: int) -> dict[str, str]:
    """speaker -> split: the first `test` share of the ranked speakers (at least one when there are
    two or more) to test, the next `validation` share to validation, the rest to train (at least
    one, unless the shares add up to 1: a corpus of people no model heard, all held out, and a lone
    speaker in test, where the figures are read)."""
    ranked = sorted(set(speakers), key=lambda s: _fraction(seed, corpus, s))
    n = len(ranked)
    everyone = holds_out_everyone(validation, test)
    n_test = max(1 if (n >= 2 or everyone) and test > 0 else 0, round(test * n))
    n_val = n - n_test if everyone else min(round(validation * n), max(0, n - n_test - 1))
    return {s: "test" if i < n_test else "validation" if i < n_test + n_val else "train" for i, s in enumerate(ranked)}


def clip_split(clip: str, corpus: str, validation: float, test: float, seed: int) -> str:
    u = _fraction(seed, corpus, clip)
    everyone = holds_out_everyone(validation, test)
    return "test" if u < test else "validation" if everyone or u < test + validation else "train"


def _column_text(dataset: Any, column: str) -> list[str | None]:
    """A column's values as the records carry them: a class-label column (hub datasets store labels
    as codes with a list of names) by its names, not its codes, so a keyword label or a speaker
    compares as the text the records hold."""
    from datasets import ClassLabel

    feature = dataset.features[column]
    values = dataset[column]
    if isinstance(feature, ClassLabel):
        return [None if v is None else label_name(feature.names, v) for v in values]
    return [None if v is None else str(v) for v in values]


def speech_source(data_cfg: SourceConfig, cache_dir: Path, name: str) -> Source:
    """One corpus of human speech as a Source whose records carry their split (see the module)."""
    from pipeline.data.sources import hf_source

    # An entry may leave these out: it is trained on, keeps every clip, and holds out 10% + 10% of speakers.
    role = data_cfg.role or "train"
    path = data_cfg.path
    hub = bool(path) and not Path(str(path)).exists() and HUB_ID.match(str(path)) is not None
    if not hub and (not path or not Path(str(path)).is_dir()):
        root = Path(str(path)).parent if path else None
        otherwise = ("or leave this corpus out by giving data.sources without its entry" if role == "wake_test" else
                     "or train on the demo alone (data=demo)")
        raise PipelineError(
            f"data.sources: the {name!r} speech source reads {path}, which does not exist "
            f"({Path(str(path)).resolve() if path else 'no path given'}). data=demo_speech and data=speech_wake read "
            f"the human speech folder {root} (speech_commands/, fsdd/, mycroft_wake_words/: see the shared README.md); "
            f"put it there, point data.speech_dir=<folder> at a copy, {otherwise}"
        )
    if role not in ROLES:
        raise PipelineError(f"data.sources: {name}: role={role!r}; use one of {list(ROLES)}")
    # Compared as the transcripts are ("Hey Computer", "hey_computer" and "hey computer" are one phrase),
    # so a corpus that spells its labels otherwise does not turn its keyword clips into negatives.
    keywords = {normalize_text(str(k)) for k in data_cfg.keywords or []}
    keyword_column = data_cfg.keyword_column or "wake_word"
    heldout = data_cfg.heldout
    validation, test = (heldout.validation, heldout.test) if heldout is not None else (0.1, 0.1)
    seed = data_cfg.seed or 0

    # A hub id (owner/name) is read like `source: hf`: data.sources.<i>.config_name and .split as in load_dataset.
    try:
        inner = hf_source(data_cfg, cache_dir, name, data_cfg.config_name if hub else None)
    except PipelineError as err:
        if not hub:
            raise
        # A relative folder that is missing reads like a hub id (owner/name): say both.
        raise PipelineError(f"{err} (read as a hub id: as a folder, {Path(str(path)).resolve()} does not exist; "
                            "data=demo_speech and data=speech_wake read data.speech_dir=<folder>)") from None
    dataset = inner.hf.dataset
    if keywords and keyword_column not in dataset.column_names:
        inner.close()
        raise PipelineError(f"data.sources: {name}: keyword_column={keyword_column!r} is not a column of {path} "
                            f"(columns: {dataset.column_names}); set that entry's keyword_column to the column that "
                            "names each clip's wake phrase (e.g. transcription)")
    marks = _column_text(dataset, keyword_column) if keywords else None
    is_keyword = [m is not None and normalize_text(m) in keywords for m in marks] if marks is not None else None
    speaker_column = inner.hf.mapping.get("account_id")
    constant = inner.hf.constants.get("account_id")  # one person's corpus: held out, or trained on, whole
    speakers = (_column_text(dataset, speaker_column) if speaker_column else
                [str(constant)] if constant is not None else None)
    by_speaker = heldout_speakers([s for s in speakers if s is not None], name, validation, test, seed) if speakers else None
    rows = inner.records

    def records() -> Iterator[RawRecord]:
        for raw in rows:
            if raw.data is None or raw.row is None:
                yield raw
                continue
            record = dict(raw.data)
            excluded = None
            # A clip labelled otherwise that says the keyword ("ok computer") is a keyword clip too: never
            # trained on, and in the keyword test not a negative.
            said = next((k for k in sorted(keywords) if mentions(str(record.get("transcript") or ""), k)), None)
            if (is_keyword is not None and is_keyword[raw.row]) or said is not None:
                why = (f"{keyword_column}={marks[raw.row]!r}" if is_keyword is not None and is_keyword[raw.row]
                       else f"its transcript says {said!r}")
                if role == "train":  # never heard in training
                    excluded = ("held_out_keyword", f"{why}: a keyword clip kept out of training; data=speech_wake "
                                "scores it")
                record["wake_word_present"] = True
                split = "validation" if _fraction(seed, name, "keyword", record["utterance_id"]) < 0.5 else "test"
            else:
                split = (by_speaker[str(record["account_id"])] if by_speaker is not None
                         else clip_split(record["utterance_id"], name, validation, test, seed))
                if role == "wake_test":
                    if split == "train":  # not a fair negative
                        excluded = ("heard_in_training", "a training speaker's clip (or a training clip): "
                                    "the wake-word test scores only people the model never heard")
                    record["wake_word_present"] = False
            yield replace(raw, data=record, split=split, excluded=excluded)

    inner.records = records()
    inner.options = {**inner.options, "speech": {"role": role, "keywords": sorted(keywords), "keyword_column": keyword_column,
                                                 "heldout": [validation, test], "seed": seed}}
    inner.kind = "speech"
    return inner


def other_wake_records(records: list[dict[str, Any]], word: str, share: float, seed: int,
                       alone: float = 0.0, decoys: float = 0.0) -> list[dict[str, Any]]:
    """A seeded `share` of the demo's commands spoken again with `word` in place of "alexa": false
    wakes for the demo's own wake word, and the only voices training hears the keyword from.

    `alone`: the share of those clips that say the keyword by itself, "hey" + keyword for half of
    them, as people say a wake word and as wake-word corpora record it. Without such clips the
    keyword only ever opens a command, so a clip that ends on it is a shape training never showed.

    `decoys`: the share of those alone clips that say the command's longest word (five letters or
    more) alone instead. With the keyword as the only word synthetic voices ever say alone, the model
    heard any lone three-syllable word from a wake-word corpus as the keyword ("athena" as
    "computer"). Alone clips carry `said_alone` (not exported) for faster_alone_clips."""
    out = []
    for r in records:
        transcript = str(r.get("transcript") or "")
        if not r.get("wake_word_present") or not transcript.startswith("alexa ") or _fraction(seed, word, r["utterance_id"]) >= share:
            continue
        said = word + transcript[len("alexa"):]
        lone = _fraction(seed, word, "alone", r["utterance_id"]) < alone
        if lone:
            spoken = word
            if _fraction(seed, word, "decoy", r["utterance_id"]) < decoys:
                spoken = max((w for w in transcript.split()[1:] if len(w) >= 5 and w != word), key=len, default=word)
            said = f"hey {spoken}" if _fraction(seed, word, "hey", r["utterance_id"]) < 0.5 else spoken
        uid = f"{r['utterance_id']}-{word.replace(' ', '_')}"
        out.append({**r, "utterance_id": uid, "audio": f"audio/{uid}.wav", "transcript": said, "annotation": said,
                    "intent": None, "wake_word_present": False, "kind": "other_wake", "copy_of": r["utterance_id"],
                    "said_alone": lone})
    return out


def faster_alone_clips(records: list[dict[str, Any]], word: str, speedup: float, seed: int) -> list[dict[str, Any]]:
    """The clips said alone (other_wake_records' keyword or decoy, and every take of them), spoken
    faster: each at a seeded rate between its own and `speedup` times it.

    Why: people say a wake word in ~420 ms (Mycroft's "computer" clips); espeak-ng takes 510-710 ms
    at the demo's rates. Decoys are sped up too, so that a fast lone word does not by itself mean the
    keyword. Applied after the extra takes, so the rates they draw within the corpus's own range
    stay as they were for every other clip."""
    return [{**r, "speed": round(int(r["speed"]) * (1 + (speedup - 1) * _fraction(seed, word, "speed", r["utterance_id"])))}
            if r.get("said_alone") else r for r in records]
