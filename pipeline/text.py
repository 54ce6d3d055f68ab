"""The one text normaliser shared by ASR training, the NLU and evaluation.

Why one function: WER is only comparable across runs when the reference and the hypothesis went
through exactly the same normalisation as the training targets. Digits become words because the
acoustic model only ever hears words, and a transcript that says "7" must be scored as "seven".
"""

from __future__ import annotations

import re
import unicodedata

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = [(10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")]
_SYMBOLS = {"%": " percent ", "&": " and ", "@": " at ", "+": " plus ", "#": " number "}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_GROUPED = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,000" is one number; "1,2" stays two
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
# Every character normalize_text can leave besides the space: the ASR model's output alphabet.
ALPHABET = "'abcdefghijklmnopqrstuvwxyz"
# A normalised transcript as character tokens: the CTC vocabulary's (pipeline.asr.vocab) and the
# character LM's (pipeline.asr.lm), whose n-grams erasure hashes (pipeline.ops.erase.lm_grams).
WORD_DELIMITER = "|"
UNK = "<unk>"
BOS, EOS = "<s>", "</s>"
_KEEP = re.compile(f"[^{ALPHABET} ]+")


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in English words ("2024" -> "two thousand twenty four")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = number_to_words(head) + " " + name
            return words if rest == 0 else words + " " + number_to_words(rest)
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> str:
    """Spell a non-negative integer as an ordinal ("21" -> "twenty first", "40" -> "fortieth")."""
    *head, last = number_to_words(n).split()
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


# Longer digit runs are read digit by digit, as people read phone, card and order numbers (and
# Python refuses to turn a run of over 4,300 digits into an int at all).
MAX_SPOKEN_DIGITS = 12


def _one_by_one(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _whole(digits: str) -> str:
    return _one_by_one(digits) if len(digits) > MAX_SPOKEN_DIGITS else number_to_words(int(digits))


def _spell_ordinal(match: re.Match[str]) -> str:
    digits = match.group(1)
    if len(digits) > MAX_SPOKEN_DIGITS:
        return f" {_one_by_one(digits[:-1])} {ordinal_to_words(int(digits[-1]))} "
    return f" {ordinal_to_words(int(digits))} "


def _spell_number(match: re.Match[str]) -> str:
    token = match.group(0)
    if "." in token:
        whole, frac = token.split(".", 1)
        return f" {_whole(whole)} point {_one_by_one(frac)} "
    return f" {_whole(token)} "


def normalize_text(text: str) -> str:
    """Lower-case, spell numbers ("3rd" as "third"), drop punctuation (keeping in-word apostrophes), squeeze spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = text.replace("\u2019", "'")
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    text = _GROUPED.sub("", text)
    text = _ORDINAL.sub(_spell_ordinal, text)
    text = _NUMBER.sub(_spell_number, text)
    text = _KEEP.sub(" ", text)
    # An apostrophe only survives inside a word ("don't"), not as a quote mark.
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


def lm_tokens(text: str, word_delimiter: str = WORD_DELIMITER, known: set[str] | None = None) -> list[str]:
    """A transcript as the LM's tokens: its characters, spaces as the word delimiter, and characters
    outside `known` (the vocabulary) as UNK."""
    return [c if known is None or c in known else UNK for c in " ".join(text.split()).replace(" ", word_delimiter)]
