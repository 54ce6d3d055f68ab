"""The `data` config group (conf/data/*.yaml) and the `privacy` block as types: what
`pipeline.config.checked` holds them to when the data stage starts.

The data files differ by source, so one schema holds them all: `SourceConfig` declares every key a
reader (`data.source`) knows, each Optional, and `check` refuses a value a reader would refuse later;
`DataConfig` adds the keys that hold for the whole build (durations, quarantine flags, split shares,
workers), which every conf/data/*.yaml gives. An entry of `data.sources` is a `SourceConfig` too, so a
misspelt key in any entry is refused with its index (`data.sources[1].colums`). A key an entry leaves
out takes its reader's default, as the one-source file conf/data/<source>.yaml spells it out.

A new data setting is declared here as well as in the conf/data/ files that use it (which keep its
default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.config import checked, choice
from pipeline.data.demo import check_ranges
from pipeline.data.label_noise import MAX_SHARE
from pipeline.runtime import PipelineError

SOURCES = ("jsonl", "demo", "slurp", "nemo", "massive_text", "hf", "speech", "lone_words")
SLURP_ACCOUNTS = ("take", "recording", "sentence")
ROLES = ("train", "wake_test")  # a speech corpus trained on, or only its held-out wake-word clips


@dataclass
class PrivacyConfig:
    """conf/config.yaml `privacy:`: where the pseudonym key comes from (the variable wins)."""

    key_env: Optional[str] = MISSING
    key_file: Optional[str] = MISSING


def configured_key(privacy: Any) -> bytes:
    """The pseudonym key a config's `privacy` block names, its keys checked first: the one key the
    data stage, the evaluation and the operations jobs pseudonymise with."""
    from pipeline.data.privacy import load_key

    checked_privacy = checked(privacy, PrivacyConfig, "privacy", defaults="conf/config.yaml")
    return load_key(checked_privacy.key_env, checked_privacy.key_file)


@dataclass
class SplitShares:
    """Shares of accounts (or, for a speech corpus' `heldout`, of speakers) in validation and test."""

    validation: float = MISSING
    test: float = MISSING


# Shares are floats, so a pair meant to add up to 1 may miss it by a rounding error: it still means "all".
_SUM_TOLERANCE = 1e-9


def holds_out_everyone(validation: float, test: float) -> bool:
    """Validation and test shares that add up to 1: nobody is left to train on."""
    return validation + test >= 1 - _SUM_TOLERANCE


def check_shares(key: str, shares: SplitShares, everyone_allowed: bool = False) -> None:
    """Shares of accounts from 0 to 1 whose sum leaves some to train on, named by the full key.
    `everyone_allowed`: a wake-word test source, which trains no one, may hold out every speaker."""
    for name in ("validation", "test"):
        value = getattr(shares, name)
        if not 0 <= value <= 1:
            raise PipelineError(f"{key}.{name}={value}: a share of accounts, from 0 to 1")
    total = shares.validation + shares.test
    if everyone_allowed and total > 1 + _SUM_TOLERANCE:
        raise PipelineError(f"{key}.validation + {key}.test = {total}: shares of speakers, at most 1 in all")
    if not everyone_allowed and holds_out_everyone(shares.validation, shares.test):
        raise PipelineError(f"{key}.validation + {key}.test = {total}: their sum must be below 1, so some accounts "
                            "are left to train on (only a `role: wake_test` speech source may hold out everyone)")


@dataclass
class DemoConfig:
    """`data.demo` (pipeline.data.demo.DemoKnobs); a key left out takes DemoKnobs' default."""

    max_utterances: Optional[int] = None
    seed: Optional[int] = None
    workers: Optional[int] = None
    voice: Optional[str] = None
    label_noise: Optional[float] = None
    other_wake_word: Optional[str] = None
    other_wake_share: Optional[float] = None
    other_wake_alone: Optional[float] = None
    other_wake_alone_speedup: Optional[float] = None
    other_wake_decoys: Optional[float] = None
    extra_takes: Optional[int] = None
    other_wake_flite_takes: Optional[int] = None
    other_wake_piper_decoys: Optional[int] = None

    def check(self, key: str) -> None:
        for name in ("max_utterances", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PipelineError(f"{key}.{name}={value}: use a positive integer or null")
        if self.label_noise is not None and not 0 <= self.label_noise <= MAX_SHARE:
            raise PipelineError(f"{key}.label_noise={self.label_noise}: use a share of clips between 0 and {MAX_SHARE} (e.g. 0.05)")
        check_ranges(vars(self), key)
        if self.voice is not None and not self.voice.strip():
            raise PipelineError(f"{key}.voice={self.voice!r}: use an espeak-ng voice such as en-us or en-gb+m3, or null")


@dataclass
class BackgroundConfig:
    """`data.background` (pipeline.data.background.BackgroundKnobs), read by `eval.background: auto`."""

    hours: Optional[float] = None
    recording_minutes: Optional[float] = None
    near_miss_share: Optional[float] = None
    command_share: Optional[float] = None
    noise_db: Optional[list[float]] = None
    seed: Optional[int] = None
    workers: Optional[int] = None

    def check(self, key: str) -> None:
        if self.hours is not None and self.hours < 0:
            raise PipelineError(f"{key}.hours={self.hours}: use hours per split, >= 0")
        if self.recording_minutes is not None and not self.recording_minutes > 0:
            raise PipelineError(f"{key}.recording_minutes={self.recording_minutes}: use minutes > 0")
        for name in ("near_miss_share", "command_share"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise PipelineError(f"{key}.{name}={value}: a share of the spoken turns, between 0 and 1")
        if self.noise_db is not None and len(self.noise_db) != 2:
            raise PipelineError(f"{key}.noise_db={self.noise_db}: give [low, high] in dBFS")


@dataclass
class SourceConfig:
    """One input: the one-source form (`data=jsonl`, `data=hf`, ...) or an entry of `data.sources`."""

    source: Optional[str] = None          # the reader: one of SOURCES
    name: Optional[str] = None            # in data.sources: the `source` column's value; hf alone: the dataset's configuration
    config_name: Optional[str] = None     # hf: the dataset's configuration, in either form
    path: Optional[str] = None            # the export, manifest, SLURP jsonl, hub id or folder
    deletions: Optional[str] = None       # a jsonl of deletion requests
    audio_dir: Optional[str] = None       # slurp, nemo: the folder audio paths are relative to
    slurp_account: Optional[str] = None   # slurp: what a SLURP account is (SLURP_ACCOUNTS)
    train_path: Optional[str] = None      # massive_text
    dev_path: Optional[str] = None        # massive_text
    split: Any = None                     # hf: the dataset's split (a string); the others: split shares
    streaming: Optional[bool] = None      # hf: read a hub dataset as a stream
    columns: Optional[dict[str, Optional[str]]] = None   # hf, speech: <canonical field>: <column>
    constants: Optional[dict[str, Any]] = None           # hf, speech: <canonical field>: <value>
    demo: Optional[DemoConfig] = None
    background: Optional[BackgroundConfig] = None
    role: Optional[str] = None            # speech: ROLES
    keywords: Optional[list[str]] = None  # speech: keyword clips kept out of training
    keyword_column: Optional[str] = None
    heldout: Optional[SplitShares] = None  # speech: held-out speakers per corpus
    words: Optional[list[str]] = None     # lone_words: the words said alone
    voices: Optional[dict[str, int]] = None  # lone_words: voices per engine (pipeline.data.demo.LONE_WORD_ENGINES)
    seed: Optional[int] = None
    # Keys that hold for the whole build (pipeline.data.sources.BUILD_KEYS); in a data.sources entry
    # they are ignored with a warning.
    min_duration_s: Optional[float] = None
    max_duration_s: Optional[float] = None
    quarantine_flags: Optional[list[str]] = None
    split_shares: Optional[SplitShares] = None
    allowed_roots: Optional[list[str]] = None
    num_proc: Optional[int] = None

    def check(self, key: str) -> None:
        """What the readers would refuse, named `<key>.<setting>` (key: `data` or `data.sources[i]`)."""
        if self.source is not None:
            choice(f"{key}.source", self.source, SOURCES)
        if self.slurp_account is not None:
            choice(f"{key}.slurp_account", self.slurp_account, SLURP_ACCOUNTS)
        if self.role is not None:
            choice(f"{key}.role", self.role, ROLES)
        if self.heldout is not None:
            check_shares(f"{key}.heldout", self.heldout, everyone_allowed=self.role == "wake_test")
        if self.demo is not None:
            self.demo.check(f"{key}.demo")
        if self.source == "lone_words":
            if not self.words or not all(isinstance(w, str) and w.strip() for w in self.words):
                raise PipelineError(f"{key}.words={self.words!r}: give the words to say alone, e.g. [yes, no, seven]")
            if not self.voices or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                          for n in self.voices.values()):
                raise PipelineError(f"{key}.voices={self.voices!r}: give voices per engine, 0 or more each, "
                                    "e.g. {espeak: 12, flite: 4, piper: 4}")
        if self.background is not None:
            self.background.check(f"{key}.background")
        if self.source == "hf" or self.source == "speech":
            if self.split is not None and not isinstance(self.split, (str, dict)):
                raise PipelineError(
                    f"{key}.split={self.split!r}: for source {self.source} it is the dataset's split as in load_dataset "
                    f"(train, test, 'train+validation') or null for all of them; the account split shares are data.split_shares"
                )
        elif self.split is not None and not isinstance(self.split, dict):
            raise PipelineError(f"{key}.split={self.split!r}: give the shares of accounts, {{validation: 0.1, test: 0.1}}")
        if isinstance(self.split, dict):
            check_shares(f"{key}.split", checked(self.split, SplitShares, f"{key}.split"))

    def shares(self) -> Optional[SplitShares]:
        """The account split shares: `split_shares`, else the shares form of `split` (jsonl, demo, ...)."""
        if self.split_shares is not None:
            return self.split_shares
        if isinstance(self.split, dict):
            return SplitShares(validation=float(self.split["validation"]), test=float(self.split["test"]))
        return None


@dataclass
class DataConfig(SourceConfig):
    """The whole `data` group: one source (`source:`) or several (`sources:`), and the build's keys."""

    # Each entry a SourceConfig: `validate` checks them one by one, so an error names its index.
    sources: Optional[list[Any]] = None
    speech_dir: Optional[str] = None      # data=demo_speech, speech_wake: the shared human speech folder
    speech_heldout: Optional[SplitShares] = None  # data=demo_speech, speech_wake: every corpus's `heldout`
    deletions: Optional[str] = MISSING
    min_duration_s: float = MISSING
    max_duration_s: float = MISSING
    quarantine_flags: list[str] = MISSING
    num_proc: Optional[int] = MISSING     # audio decoding workers; null = all cores

    def validate(self) -> None:
        self.check("data")
        if self.speech_heldout is not None:  # before the entries that take it, so the error names this key
            check_shares("data.speech_heldout", self.speech_heldout, everyone_allowed=True)
        for i, entry in enumerate(self.sources or []):
            if not isinstance(entry, dict):
                raise PipelineError(f"data.sources[{i}] is {entry!r}; each entry is a mapping like conf/data/<source>.yaml")
        if self.sources is not None:
            self.sources = [checked(entry, SourceConfig, f"data.sources[{i}]") for i, entry in enumerate(self.sources)]
        for i, entry in enumerate(self.sources or []):
            if entry.source is None:
                raise PipelineError(f"data.sources[{i}].source has no value; use one of: {', '.join(SOURCES)}")
            entry.check(f"data.sources[{i}]")
        if self.source == "massive_text" and self.shares() is not None:
            raise PipelineError("data.split_shares does not apply to massive_text: its files fix the splits (train file "
                                "-> train, dev file -> validation and test, half each by the MASSIVE id); leave it out")
        if self.split_shares is not None:
            check_shares("data.split_shares", self.split_shares)
        if self.shares() is None and self.source != "massive_text":
            raise PipelineError("data.split_shares has no value; give the shares of accounts per split, "
                                "data.split_shares={validation: 0.1, test: 0.1}")
        if self.min_duration_s < 0:
            raise PipelineError(f"data.min_duration_s={self.min_duration_s}: a clip length in seconds, >= 0")
        if self.min_duration_s >= self.max_duration_s:
            raise PipelineError(
                f"data.min_duration_s={self.min_duration_s} must be below data.max_duration_s={self.max_duration_s}"
            )
        if self.num_proc is not None and self.num_proc < 1:
            raise PipelineError(f"data.num_proc={self.num_proc}: use a positive number of workers, or null for all cores")
