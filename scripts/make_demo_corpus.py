"""Make the shipped demo corpus (data/demo/) from MASSIVE en-US: how the subset was chosen.

Run once by a maintainer; the pipeline never runs it (the shipped files are the source):

    .venv/bin/python scripts/make_demo_corpus.py --massive-dir /work/shared/data/massive

Why these choices (the demo has to train on 2 CPU cores in minutes and still learn):
- Commands come from six short-utterance scenarios (alarm, audio, datetime, iot, play_music,
  weather), at most 7 words, spelled-out numbers only, and only words that occur in at least
  `MIN_WORD_COUNT` of the kept utterances (repeated until stable), which keeps the vocabulary to a
  few hundred words. Every command gets the wake word "alexa" in front (MASSIVE's own wake word
  "olly" is stripped first).
- False wakes (intent null, no wake word) are ~17%: hand-written sentences that start with words
  that sound like the wake word ("alexander", "election", "alex", "a lexus", "alexandra"), so the
  wake-word detector cannot get away with spotting "alex...", plus ordinary MASSIVE sentences of
  other scenarios without the wake word (speech the device overhears).
- Synthetic accounts each speak with one espeak-ng voice (accent + variant, pitch and speed, with a
  little per-clip jitter), own one or two devices, and carry raw-looking identifiers so the
  pseudonymisation and deletion paths of the build are exercised; a few clips are flagged
  sensitive and deletions.jsonl asks to delete two clips and one whole account.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.annotations import align_to_transcript, parse_inline  # noqa: E402
from pipeline.text import normalize_text  # noqa: E402

WAKE_WORD = "alexa"
COMMAND_INTENTS = (
    "alarm_set alarm_query alarm_remove audio_volume_up audio_volume_down audio_volume_mute "
    "datetime_query iot_hue_lightoff iot_hue_lighton iot_hue_lightchange iot_hue_lightdim "
    "iot_hue_lightup iot_wemo_on iot_wemo_off iot_cleaning iot_coffee play_music weather_query"
).split()
MAX_WORDS = 7  # before the wake word
MIN_WORD_COUNT = 4
N_NEAR_MISS = 150
N_BACKGROUND = 150
N_ACCOUNTS = 200
N_ANNOTATORS = 12
N_SENSITIVE = 6

# Sentences addressed to people or about things whose first word sounds like "alexa".
NEAR_MISSES = [
    "alexander is coming over for dinner tonight",
    "alexander called me this morning",
    "alexander turn off the lights please",
    "alexander what time is it",
    "alexander play some music",
    "alexander is at school today",
    "alexander set the table please",
    "alexander and i went to the park",
    "alexander the great was a king",
    "alexandra is in the kitchen",
    "alexandra can you turn it up",
    "alexandra what is the weather like",
    "alexandra is my sister",
    "alexandra wake me up at seven",
    "alexandra did you see the news",
    "alexandra likes jazz music",
    "alex turn off the lights",
    "alex is coming home at six",
    "alex what is the time",
    "alex can you play the radio",
    "alex did you make coffee",
    "alex is in the living room",
    "alex set an alarm for me",
    "alex it is raining outside",
    "election day is next tuesday",
    "election results are out tonight",
    "election news is on the radio",
    "election night is tomorrow",
    "election polls open at seven am",
    "elections are coming up soon",
    "election ads are so loud",
    "a lexus is parked outside",
    "a lexus drove past the house",
    "a lexus is a nice car",
]
# Share of near-miss clips per first word: "a lexus" is nearly "alexa" + s, so it is kept rare.
NEAR_MISS_WEIGHTS = {"alexander": 0.3, "alexandra": 0.2, "alex": 0.2, "election": 0.22, "a": 0.08}

# espeak-ng accents and voice variants (checked to give intelligible speech; whisper, croak and
# robot variants are left out). Each account speaks with one accent + variant.
ACCENTS = ["en-us", "en-us-nyc", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "Andy", "adam", "anika", "david", "edward", "john", "linda", "max", "Michael", "steph",
            "travis", "quincy", "paul"]
_CLEAN = re.compile(r"^[a-z' ]+$")


@dataclass(frozen=True)
class Account:
    account_id: str
    devices: tuple[str, ...]
    voice: str
    speed: int
    pitch: int


def load_massive(massive_dir: Path) -> list[dict]:
    rows = []
    for name in ("en-US.train.jsonl", "en-US.dev.jsonl"):
        with open(massive_dir / name, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return sorted(rows, key=lambda r: int(r["id"]))


def strip_olly(row: dict) -> tuple[str, str] | None:
    """MASSIVE's text and annotation without its wake word, or None if unusable for the demo."""
    utt, annot = row["utt"].strip(), row["annot_utt"].strip()
    if utt.startswith("olly "):
        if not annot.startswith("olly "):
            return None
        utt, annot = utt[5:].strip(), annot[5:].strip()
    words = utt.split()
    if not _CLEAN.match(utt) or "olly" in words or WAKE_WORD in utt or not 2 <= len(words) <= MAX_WORDS:
        return None
    if normalize_text(utt) != utt:
        return None
    plain, entities = parse_inline(annot)
    try:
        align_to_transcript(utt, plain, entities)
    except ValueError:
        return None
    return utt, annot


def small_vocabulary(pool: list[tuple[dict, str, str]]) -> list[tuple[dict, str, str]]:
    """Keep utterances whose every word is frequent in the kept set, until nothing changes."""
    while True:
        counts = Counter(w for _, utt, _ in pool for w in set(utt.split()))
        kept = [p for p in pool if all(counts[w] >= MIN_WORD_COUNT for w in p[1].split())]
        if len(kept) == len(pool):
            return kept
        pool = kept


def make_accounts(rng: random.Random) -> list[Account]:
    accounts = []
    for _ in range(N_ACCOUNTS):
        account_id = "amzn1.account.AF" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=26))
        devices = tuple(
            "G090" + "".join(rng.choices(string.ascii_uppercase, k=2)) + "".join(rng.choices(string.digits, k=7))
            for _ in range(rng.choice((1, 1, 2)))
        )
        variant = rng.choice(VARIANTS)
        voice = rng.choice(ACCENTS) + (f"+{variant}" if variant else "")
        accounts.append(Account(account_id, devices, voice, rng.randint(145, 185), rng.randint(35, 70)))
    return accounts


def build(massive_dir: Path, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    rows = load_massive(massive_dir)
    usable = [(r, *c) for r in rows if (c := strip_olly(r)) is not None]

    commands = small_vocabulary([u for u in usable if u[0]["intent"] in COMMAND_INTENTS])
    vocab = {w for _, utt, _ in commands for w in utt.split()} | {w for s in NEAR_MISSES for w in s.split()}
    command_scenarios = {r["scenario"] for r, _, _ in commands}
    background = [
        u for u in usable
        if u[0]["scenario"] not in command_scenarios and all(w in vocab for w in u[1].split())
    ]
    background = rng.sample(background, min(N_BACKGROUND, len(background)))

    by_head: dict[str, list[str]] = {}
    for sentence in NEAR_MISSES:
        by_head.setdefault(sentence.split()[0].rstrip("s"), []).append(sentence)
    near = []
    for head, share in NEAR_MISS_WEIGHTS.items():
        sentences = by_head[head]
        near += [sentences[i % len(sentences)] for i in range(round(N_NEAR_MISS * share))]

    items: list[dict] = []
    for row, utt, annot in commands:
        items.append({"kind": "command", "transcript": f"{WAKE_WORD} {utt}", "annotation": f"{WAKE_WORD} {annot}",
                      "intent": row["intent"], "wake_word_present": True, "massive_id": row["id"]})
    for row, utt, _ in background:
        items.append({"kind": "background", "transcript": utt, "annotation": utt, "intent": None,
                      "wake_word_present": False, "massive_id": row["id"]})
    for sentence in near:
        items.append({"kind": "near_miss", "transcript": sentence, "annotation": sentence, "intent": None,
                      "wake_word_present": False, "massive_id": None})
    rng.shuffle(items)

    accounts = make_accounts(rng)
    weights = [rng.uniform(0.3, 1.7) for _ in accounts]  # some households talk more than others
    start = datetime(2025, 6, 1, tzinfo=timezone.utc)
    records = []
    for i, item in enumerate(items):
        account = rng.choices(accounts, weights)[0]
        recorded = start + timedelta(seconds=rng.randrange(365 * 24 * 3600))
        records.append({
            "utterance_id": f"demo-{i:05d}",
            "audio": f"audio/demo-{i:05d}.wav",
            "transcript": item["transcript"],
            "intent": item["intent"],
            "annotation": item["annotation"],
            "wake_word_present": item["wake_word_present"],
            "device_serial": rng.choice(account.devices),
            "account_id": account.account_id,
            "annotator_id": f"ann-{rng.randrange(1, N_ANNOTATORS + 1):03d}",
            "recorded_at": recorded.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "flags": [],
            "locale": "en-US",
            "voice": account.voice,
            "speed": account.speed + rng.randint(-8, 8),
            "pitch": max(0, min(99, account.pitch + rng.randint(-5, 5))),
            "kind": item["kind"],
            "massive_id": item["massive_id"],
        })
    command_records = [r for r in records if r["kind"] == "command"]
    for r in rng.sample(command_records, N_SENSITIVE):
        r["flags"] = ["sensitive"]
    unflagged = [r for r in command_records if not r["flags"]]
    deletions = [{"utterance_id": r["utterance_id"]} for r in rng.sample(unflagged, 2)]
    deletions.append({"account_id": rng.choice(unflagged)["account_id"]})
    return records, deletions


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--massive-dir", type=Path, default=Path("/work/shared/data/massive"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "demo")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    records, deletions = build(args.massive_dir, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "utterances.jsonl", records)
    write_jsonl(args.out / "deletions.jsonl", deletions)
    kinds = Counter(r["kind"] for r in records)
    words = {w for r in records for w in r["transcript"].split()}
    print(f"{len(records)} utterances {dict(kinds)}; {len(words)} distinct words; "
          f"{len({r['account_id'] for r in records})} accounts -> {args.out}")


if __name__ == "__main__":
    main()
