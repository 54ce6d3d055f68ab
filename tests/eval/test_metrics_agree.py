"""One metric, one computation: where two stages report the same score, they agree on the same input.

Each case feeds one input to both code paths (the NLU stage's validation/test scores and the eval
stage's `nlu/` metrics; the ASR stage's validation WER and the eval stage's `asr/wer`; the one
greedy CTC decoder) and checks them against each other and against counts worked out by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import EvalPrediction

from pipeline.asr.model import greedy_decode
from pipeline.eval import metrics as M
from pipeline.eval.run import _score_understanding
from pipeline.nlu.train import IGNORE, score_predictions, selection_metrics, training_rows

REPO = Path(__file__).resolve().parents[2]

GOLD = [
    {"transcript": "set an alarm for 7 am", "intent": "alarm_set", "entities": [{"type": "time", "value": "7 am"}]},
    {"transcript": "Play Jazz", "intent": "play_music", "entities": [{"type": "music_genre", "value": "Jazz"}]},
    {"transcript": "play rock and rock", "intent": "play_music",
     "entities": [{"type": "music_genre", "value": "rock"}, {"type": "music_genre", "value": "rock"}]},
    {"transcript": "lights off", "intent": "iot_hue_lightoff", "entities": []},
]
PREDICTED = [
    {"intent": "alarm_set", "entities": [{"type": "time", "value": "seven AM"}]},  # equal once normalised
    {"intent": "play_music", "entities": [{"type": "music_genre", "value": "jazz"}]},
    {"intent": "alarm_set", "entities": [{"type": "music_genre", "value": "rock"}, {"type": "place_name", "value": "rock"}]},
    {"intent": "iot_hue_lightoff", "entities": []},
]


def test_nlu_stage_scores_are_the_eval_stage_nlu_metrics() -> None:
    nlu = score_predictions(GOLD, PREDICTED, {"alarm_set", "play_music"}, {"time", "music_genre"})
    rows = [{"intent": g["intent"], "scoring_entities": g["entities"], "nlu_intent": p["intent"],
             "nlu_entities": p["entities"], "slu_intent": p["intent"], "slu_entities": p["entities"]}
            for g, p in zip(GOLD, PREDICTED)]
    intents, entities = _score_understanding(rows, "project")[:2]
    assert nlu["intent_accuracy"] == intents["accuracy"] == 0.75
    assert nlu["entity_f1"] == entities["f1"]
    # By hand: 3 true positives ("7 am" = "seven AM", "Jazz" = "jazz", one "rock"), 1 false positive
    # (the place_name), 1 false negative (the second "rock").
    assert (nlu["entity_precision"], nlu["entity_recall"], nlu["entity_f1"]) == (0.75, 0.75, 0.75)
    assert nlu["unseen_intents"] == {"iot_hue_lightoff": 1}


def test_nlu_stage_scores_the_clips_the_eval_stage_scores() -> None:
    """False wakes have no intent: the eval stage leaves them to the wake-word metrics, and so does the
    NLU stage's scoring, whatever `nlu.false_wake` taught the model."""
    split = Dataset.from_list([
        {"transcript": "play jazz", "words": ["play", "jazz"], "bio_tags": ["O", "B-music_genre"],
         "intent": "play_music", "entities": [{"type": "music_genre", "value": "jazz"}]},
        {"transcript": "alexander", "words": ["alexander"], "bio_tags": ["O"], "intent": None, "entities": []},
    ])
    assert [r["transcript"] for r in training_rows(split, "skip")] == ["play jazz"]


def test_nlu_epoch_selection_scores_are_the_metrics_module_scores() -> None:
    """The per-epoch `nlu/val_intent_accuracy` and `nlu/val_tag_f1` curves use the same functions as
    every other score; a gold intent unseen in training (IGNORE) is left out, not counted wrong."""
    tags = ["O", "B-time", "I-time"]
    intent_labels = np.array([0, 1, IGNORE, 1])
    intent_logits = np.eye(2)[[0, 0, 1, 1]]  # predicts 0, 0, 1, 1: 2 of the 3 scored clips right
    tag_labels = np.array([[0, 1, IGNORE], [0, 0, IGNORE], [0, 0, 0], [1, 2, 0]])
    tag_logits = np.eye(3)[np.where(tag_labels == IGNORE, 0, tag_labels)]  # every scored tag right
    pred = EvalPrediction(predictions=(intent_logits, tag_logits), label_ids=(tag_labels, intent_labels))
    scores = selection_metrics(pred, tags)
    assert scores["intent_accuracy"] == M.intent_scores([0, 1, 1], [0, 0, 1])["accuracy"] == 2 / 3
    assert scores["tag_f1"] == M.tag_f1([["O", "B-time"], ["O", "O"], ["O", "O", "O"], ["B-time", "I-time", "O"]],
                                        [["O", "B-time"], ["O", "O"], ["O", "O", "O"], ["B-time", "I-time", "O"]]) == 1.0
    assert scores["score"] == (2 / 3 + 1.0) / 2


def test_asr_validation_wer_is_the_eval_wer() -> None:
    """The ASR stage's validation WER (`evaluate_clips`) calls the eval stage's `wer`, no other."""
    refs = ["play jazz music", "set an alarm for seven am", "", "turn off the lights"]
    hyps = ["play jazz", "set an alarm for 7 am", "noise", "turn of the light"]
    # By hand, over 13 reference words: 1 deletion; "7" is "seven" once normalised; the empty
    # reference is not scored; 2 substitutions.
    assert M.wer(refs, hyps) == 3 / 13
    asr_model = ast.parse((REPO / "pipeline/asr/model.py").read_text())
    imported = {a.name for n in ast.walk(asr_model) if isinstance(n, ast.Import) for a in n.names}
    assert "jiwer" not in imported, "asr/model.py computes its own WER; call pipeline.eval.metrics.wer"


class CharTokenizer:
    """The decoding half of a Wav2Vec2CTCTokenizer over a tiny vocabulary (transformers' own)."""

    def __new__(cls) -> object:  # type: ignore[misc]
        import json
        import tempfile

        from transformers import Wav2Vec2CTCTokenizer

        vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}
        folder = Path(tempfile.mkdtemp())
        (folder / "vocab.json").write_text(json.dumps(vocab))
        return Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), pad_token="<pad>", unk_token="<unk>",
                                    word_delimiter_token="|")


def test_greedy_decoder_merges_repeats_drops_blanks_unknowns_and_padding() -> None:
    tokenizer = CharTokenizer()
    frames = [[3, 3, 0, 3, 2, 4, 1, 4, 4, 3], [4, 0, 4, 2, 3, 3, 3, 3, 3, 3]]
    scores = torch.nn.functional.one_hot(torch.tensor(frames), 5).float()
    # "a a" merge, the blank splits "a|a"; <unk> vanishes but still separates "b" from "b";
    # the second clip has 4 real frames, the rest is padding.
    assert greedy_decode(tokenizer, scores, [10, 4]) == ["aa bba", "bb"]
    assert greedy_decode(tokenizer, scores)[1] == "bb a"


def test_only_the_metrics_module_computes_scores() -> None:
    """Text, intent and entity scores come from pipeline/eval/metrics.py; the wake-word curves
    (ROC, DET) from pipeline/eval/wake.py, next to the threshold they tune."""
    homes = {"pipeline/eval/metrics.py": {"*"}, "pipeline/eval/wake.py": {"roc_auc_score", "roc_curve"}}
    offenders = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        allowed = homes.get(str(path.relative_to(REPO)), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                taken = [(a.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                taken = [(node.module or "", a.name) for a in node.names]
            else:
                continue
            for module, name in taken:
                scorer = module.split(".")[0] in ("jiwer", "seqeval") or (
                    module == "sklearn.metrics" and not name.endswith("Display"))  # displays draw, not score
                if scorer and "*" not in allowed and name not in allowed:
                    offenders.append(f"{path.relative_to(REPO)} imports {module}.{name}")
    assert not offenders, offenders


def test_only_the_asr_model_module_reads_ctc_output_as_text() -> None:
    """Greedy decoding (and the frame counts it trims by) live in pipeline/asr/model.py alone."""
    offenders = [
        f"{path.relative_to(REPO)} calls {node.attr}"
        for path in sorted((REPO / "pipeline").rglob("*.py")) if path != REPO / "pipeline/asr/model.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in ("batch_decode", "_get_feat_extract_output_lengths")
    ]
    assert not offenders, offenders


def test_the_asr_stages_validation_scores_are_the_eval_metrics_of_its_transcripts(tiny_models: Path,
                                                                                   tiny_dataset_path: Path) -> None:
    """`evaluate_clips` (which picks the best checkpoint) on real batches: its WER and CER are
    pipeline.eval.metrics' on the greedy transcripts of the same batches, not some other score."""
    from datasets import load_from_disk

    from pipeline.asr.collate import ClipDataset
    from pipeline.asr.model import evaluate_clips, load_asr, transcribe
    from pipeline.asr.sampler import eval_batches
    from pipeline.asr.train import clip_loader

    model, processor = load_asr(tiny_models / "asr")
    clips = ClipDataset(load_from_disk(str(tiny_dataset_path))["validation"])
    loader = clip_loader(clips, eval_batches(clips.durations, 6.0), processor, None, 0, 0)
    scores = evaluate_clips(model, processor, loader)
    refs, hyps = [], []
    with torch.no_grad():
        for batch in loader:
            refs += batch["texts"]
            hyps += transcribe(model, processor, batch)[0]
    assert scores["clips"] == len(refs) == 8
    assert scores["wer"] == M.wer(refs, hyps) and scores["cer"] == M.cer(refs, hyps) and scores["wer"] != scores["cer"]
