"""The columns of a built dataset: the contract between the data stage and every model stage.

Audio datasets have every column; text-only sources (MASSIVE text) have all but `audio`, and a
`duration` of 0. Entity spans are character offsets into `transcript`; `words`/`bio_tags` are the
whitespace words of `transcript` and their tags. Identifiers are keyed pseudonyms, never raw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Features

SAMPLING_RATE = 16_000
# Audio files the pipeline reads: libsndfile streams the first, ffmpeg (torchcodec) decodes the rest
# (phone and browser recordings). Background folders are searched for them, the deletion audit
# hashes them.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".webm", ".wma")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS
SPLITS = ("train", "validation", "test")

SOURCE_COLUMN = "source"


def dataset_features(with_audio: bool = True, with_source: bool = False) -> Features:
    """The build always writes `source` (the name of the input a clip came from, `data.sources`) and
    `copy_of` (a derived clip's original utterance_id, so erasing the original finds the copy);
    consumers must not require them, since datasets made elsewhere (or before they existed) lack them."""
    # imported here: the constants above are read by modules (the ops commands) that need no datasets
    from datasets import Audio, Features, List, Value

    entity = {
        "type": Value("string"),
        "value": Value("string"),
        "start": Value("int32"),
        "end": Value("int32"),
    }
    columns = {
        "utterance_id": Value("string"),
        "transcript": Value("string"),      # as annotated
        "text": Value("string"),            # normalize_text(transcript): the ASR target
        "intent": Value("string"),          # None for a false wake
        "scenario": Value("string"),        # None when unknown
        "entities": List(entity),
        "words": List(Value("string")),
        "bio_tags": List(Value("string")),
        "wake_word_present": Value("bool"),
        "duration": Value("float32"),       # seconds, stored at build time for length batching
        "speaker": Value("string"),         # pseudonym of the account
        "device": Value("string"),          # pseudonym of the device serial
        "annotator": Value("string"),       # pseudonym of the annotator
        "locale": Value("string"),
        "recorded_at": Value("string"),
    }
    if with_source:
        columns[SOURCE_COLUMN] = Value("string")
        columns["copy_of"] = Value("string")  # None unless the clip re-speaks another (export field copy_of)
    if with_audio:
        columns = {"utterance_id": columns.pop("utterance_id"), "audio": Audio(sampling_rate=SAMPLING_RATE), **columns}
    return Features(columns)
