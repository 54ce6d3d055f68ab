"""The character n-gram LM (hand-worked probabilities, normalisation) and beam search with it."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.asr.lm import BeamDecoder, kneser_ney_arpa, read_lm_meta, write_char_lm
from pipeline.runtime import PipelineError

VOCAB = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate("aceilmpsuxy|")}}


def parse_arpa(text: str) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    probs, backoffs = {}, {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            gram = tuple(parts[1].split())
            probs[gram] = 10 ** float(parts[0])
            if len(parts) == 3:
                backoffs[gram] = 10 ** float(parts[2])
    return probs, backoffs


def prob(probs: dict, backoffs: dict, context: tuple[str, ...], token: str) -> float:
    """P(token | context) the way KenLM reads an ARPA file: the longest stored n-gram, else back off."""
    gram = context + (token,)
    if gram in probs:
        return probs[gram]
    return backoffs.get(context, 1.0) * prob(probs, backoffs, context[1:], token)


def test_unigram_probabilities_match_a_hand_worked_example() -> None:
    # Counts a:2 b:1 </s>:2 -> n1=1, n2=2, D = 1/(1+2*2) = 0.2; total 5, 3 types, so the lower order
    # (uniform over a, b, </s>, <unk>) gets 0.2*3/5 = 0.12: P(a) = 1.8/5 + 0.12/4 = 0.39.
    probs, _ = parse_arpa(kneser_ney_arpa([["a"], ["a", "b"]], order=1))
    assert probs[("a",)] == pytest.approx(0.39, abs=1e-5)
    assert probs[("b",)] == pytest.approx(0.19, abs=1e-5)
    assert probs[("</s>",)] == pytest.approx(0.39, abs=1e-5)
    assert probs[("<unk>",)] == pytest.approx(0.03, abs=1e-5)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_context_gives_a_distribution_that_sums_to_one(order: int) -> None:
    rng = random.Random(order)
    sentences = [[rng.choice("abc|") for _ in range(rng.randint(1, 8))] for _ in range(40)]
    probs, backoffs = parse_arpa(kneser_ney_arpa(sentences, order))
    assert_distributions(probs, backoffs, ["a", "b", "c", "|"], order)
    # Seen continuations are likelier than unseen ones: the model learned something.
    assert prob(probs, backoffs, ("<s>",), "a") > prob(probs, backoffs, ("<s>",), "</s>")


@pytest.mark.parametrize("order", [1, 3])
def test_transcripts_with_unknown_characters_give_one_unk_line_and_a_distribution(order: int) -> None:
    """Before the fix: a transcript with a character outside the vocabulary (an <unk> token) gave
    the ARPA file two <unk> unigram lines; KenLM keeps the last, so the unigrams' uniform share was
    dropped and no context's probabilities summed to one."""
    rng = random.Random(order)
    sentences = [[rng.choice(["a", "b", "|", "<unk>"]) for _ in range(rng.randint(1, 6))] for _ in range(30)]
    text = kneser_ney_arpa(sentences, order)
    unigram_lines = [line.split("\t")[1] for line in text.split("\\1-grams:")[1].split("\n\n")[0].splitlines() if line]
    assert unigram_lines.count("<unk>") == 1
    assert f"ngram 1={len(unigram_lines)}" in text
    probs, backoffs = parse_arpa(text)
    assert_distributions(probs, backoffs, ["a", "b", "|", "<unk>"], order)


def assert_distributions(probs: dict, backoffs: dict, tokens: list[str], order: int) -> None:
    """Every context of up to order - 1 tokens gives next-token probabilities that sum to one."""
    vocab = [g[0] for g in probs if len(g) == 1 and g[0] != "<s>"]
    for n in range(order):
        for context in itertools.product(["<s>", *tokens], repeat=n):
            if "<s>" in context[1:]:
                continue
            assert sum(prob(probs, backoffs, context, w) for w in vocab) == pytest.approx(1.0, abs=1e-4), context


def test_write_char_lm_maps_spaces_and_unknown_characters(tmp_path: Path) -> None:
    out = write_char_lm(tmp_path / "lm", ["alexa play music", "play é", ""], VOCAB, "|", order=3)
    assert (out / "tokens.txt").read_text().split() == list(VOCAB)
    assert read_lm_meta(tmp_path) == json.loads((out / "lm.json").read_text())
    assert read_lm_meta(tmp_path)["sentences"] == 2 and read_lm_meta(tmp_path)["order"] == 3  # the empty one is skipped
    probs, _ = parse_arpa((out / "char_lm.arpa").read_text())
    assert ("a", "|", "p") in probs and ("y", "|", "<unk>") in probs and ("é",) not in probs
    with pytest.raises(PipelineError, match="lm_order=7"):
        write_char_lm(tmp_path / "lm7", ["a"], VOCAB, "|", order=7)


def spelled(text: str, confusions: dict[int, dict[str, float]]) -> np.ndarray:
    """CTC log-probs that spell `text` one character per frame with a blank between, where frame
    (character) i may split its mass between characters as `confusions[i]` says."""
    frames = []
    for i, ch in enumerate(text.replace(" ", "|")):
        row = np.full(len(VOCAB), 1e-4)
        for c, p in confusions.get(i, {ch: 0.97}).items():
            row[VOCAB[c]] = p
        frames.append(row)
        blank = np.full(len(VOCAB), 1e-4)
        blank[0] = 0.97
        frames.append(blank)
    out = np.log(np.array(frames) / np.array(frames).sum(1, keepdims=True))
    return out.astype(np.float32)


def test_beam_search_with_the_lm_fixes_a_spelling_greedy_gets_wrong(tmp_path: Path) -> None:
    write_char_lm(tmp_path / "lm", ["alexa play music", "play music", "alexa pause"] * 5, VOCAB, "|", order=4)
    # Frame 9 ('y' of "play") looks more like 'e' to the acoustic model.
    log_probs = spelled("alexa play music", {9: {"e": 0.55, "y": 0.42}})
    greedy = "".join(k for k, _ in itertools.groupby([list(VOCAB)[i] for i in log_probs.argmax(1)]) if k != "<pad>")
    assert greedy.replace("|", " ") == "alexa plae music"
    assert BeamDecoder(tmp_path, VOCAB, lm_weight=0.0, beam_size=8).decode(log_probs) == "alexa plae music"
    assert BeamDecoder(tmp_path, VOCAB, lm_weight=1.0, beam_size=8).decode(log_probs) == "alexa play music"
    # A clear acoustic signal is not overridden by a moderate LM weight.
    assert BeamDecoder(tmp_path, VOCAB, lm_weight=1.0, beam_size=8).decode(spelled("alexa pause", {})) == "alexa pause"


def test_an_lm_from_another_vocabulary_or_none_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no character LM"):
        BeamDecoder(tmp_path, VOCAB, 1.0, 8)
    write_char_lm(tmp_path / "lm", ["alexa play"], VOCAB, "|", order=2)
    other = {**VOCAB, "z": len(VOCAB)}
    with pytest.raises(PipelineError, match="another model"):
        BeamDecoder(tmp_path, other, 1.0, 8)
