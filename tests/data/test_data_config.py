"""The data group and privacy block as typed configs (pipeline/data/config.py): every shipped
conf/data/*.yaml passes as Hydra composes it, and a wrong type, a value out of range or a misspelt key
is one PipelineError naming the full key, before any record is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.config import checked
from pipeline.data.config import DataConfig, PrivacyConfig, SourceConfig
from pipeline.runtime import PipelineError
from pipeline.stages import check_config

REPO = Path(__file__).resolve().parents[2]
DATA_CONFIGS = sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml"))


def composed(*overrides: str) -> DictConfig:
    """The job's config as train.py sees it (the hydra node set, so ${hydra:runtime.cwd} resolves)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/runs/one"
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_the_shipped_data_configs_are_all_here() -> None:
    assert DATA_CONFIGS == ["demo", "demo_speech", "hf", "jsonl", "massive_text", "nemo", "slurp", "sources",
                            "speech_wake"]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_shipped_data_config_passes(name: str) -> None:
    cfg = composed(f"data={name}")
    data = checked(cfg.data, DataConfig, "data")
    checked(cfg.privacy, PrivacyConfig, "privacy")
    # massive_text has no audio: it trains the NLU alone (the asr stage is refused with it).
    check_config(cfg, ["data", "nlu", "eval"] if name == "massive_text" else list(cfg.stages))
    shares = data.shares()
    if name == "massive_text":  # MASSIVE's files fix its splits
        assert shares is None
    else:
        assert shares is not None and 0 < shares.validation < 1 and 0 < shares.test < 1
    assert data.quarantine_flags == ["sensitive"] and data.min_duration_s < data.max_duration_s
    for entry in data.sources or []:
        assert isinstance(entry, SourceConfig) and entry.source in ("speech", "demo", "lone_words")


def test_the_human_voices_recipe_trains_for_the_time_budget_unless_asr_is_chosen() -> None:
    assert composed("data=demo_speech").asr.max_steps > 10_000  # conf/asr/tiny_budget.yaml: the minutes decide
    assert composed("data=demo").asr.max_steps == 4000
    # Masking in proportion to the clip for the short human words; the demo keeps transformers' floor.
    assert composed("data=demo_speech").asr.spec_augment.mask_time_min_masks == 0
    assert "mask_time_min_masks" not in composed("data=demo").asr.spec_augment
    chosen = composed("data=demo_speech", "asr=base")  # the command line wins over the recipe's choice
    assert chosen.asr.model_name_or_path == "facebook/wav2vec2-base" and chosen.asr.augment.conditions is not None
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        assert compose("evaluate", overrides=["data=demo_speech"]).data.speech_dir  # evaluate.py composes it too


def test_typed_reads_match_the_yaml() -> None:
    demo = checked(composed("data=demo").data, DataConfig, "data")
    assert (demo.source, demo.min_duration_s, demo.max_duration_s, demo.num_proc) == ("demo", 0.2, 30.0, None)
    assert (demo.shares().validation, demo.shares().test) == (0.1, 0.15)  # the demo's `split:` form
    assert demo.demo is not None and demo.demo.label_noise == 0.0 and demo.background.hours == 2.2
    hf = checked(composed("data=hf").data, DataConfig, "data")
    assert (hf.split, hf.streaming, hf.columns["audio"]) == (None, False, None)
    assert hf.shares().test == 0.1  # data.split names the dataset's split; the shares are split_shares
    speech = checked(composed("data=demo_speech").data, DataConfig, "data")
    first = speech.sources[0]
    assert (first.name, first.role, first.heldout.test, first.path) == (
        "speech_commands", "train", 0.15, "../shared/data/speech/speech_commands")  # ${data.speech_dir} resolved
    assert speech.sources[3].demo.other_wake_word == "computer"
    assert speech.sources[4].source == "lone_words" and "seven" in speech.sources[4].words and "computer" not in speech.sources[4].words
    assert checked(composed("data=slurp").data, DataConfig, "data").slurp_account == "sentence"


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.min_duration_s=abc"], "data.min_duration_s='abc' is not a valid float"),
    (["data.num_proc=many"], "data.num_proc='many' is not a valid int"),
    (["data.split.test=1.5"], r"data.split.test=1.5: a share of accounts, from 0 to 1"),
    (["data.split.validation=0.5", "data.split.test=0.5"], "data.split.validation \\+ data.split.test = 1.0"),
    (["data.split.test=x"], "data.split.test='x' is not a valid float"),
    (["data=hf", "data.split_shares.test=1.5"], r"data.split_shares.test=1.5: a share of accounts, from 0 to 1"),
    (["data=hf", "data.streaming=maybe"], "data.streaming='maybe' is not a valid bool"),
    (["data.min_duration_s=40"], "data.min_duration_s=40.0 must be below data.max_duration_s=30.0"),
    (["data.source=tsv"], "data.source='tsv' is not one of: jsonl, demo, slurp, nemo, massive_text, hf, speech, lone_words"),
    (["data=slurp", "data.slurp_account=speaker"], "data.slurp_account='speaker' is not one of: take, recording, sentence"),
    (["data.demo.max_utterances=0"], "data.demo.max_utterances=0: use a positive integer or null"),
    (["data.demo.label_noise=0.5"], "data.demo.label_noise=0.5: use a share of clips between 0 and 0.2"),
    (["data.background.recording_minutes=0"], "data.background.recording_minutes=0.0: use minutes > 0"),
    (["+data.min_duration=0.5"], "data.min_duration is not a setting of data; known: .*min_duration_s"),
    (["+data.demo.max_utterance=20"], "data.demo.max_utterance is not a setting of data.demo; known: max_utterances"),
    (["data=demo_speech", "data.sources.0.role=test"],
     "data.sources\\[0\\].role='test' is not one of: train, wake_test"),
    (["data=demo_speech", "data.speech_heldout.test=1.5"], "data.speech_heldout.test=1.5: a share"),
    (["data=demo_speech", "data.speech_heldout={validation: 0.5, test: 0.5}"],
     "data.sources\\[0\\].heldout.validation \\+ data.sources\\[0\\].heldout.test = 1.0: .*only a `role: wake_test`"),
    (["data=speech_wake", "data.speech_heldout={validation: 0.6, test: 0.5}"],
     "data.speech_heldout.validation \\+ data.speech_heldout.test = 1.1: shares of speakers, at most 1"),
    (["data=demo_speech", "data.sources.2.seed=abc"], "data.sources\\[2\\].seed='abc' is not a valid int"),
    (["data=demo_speech", "+data.sources.0.colums={transcript: text}"],
     "data.sources\\[0\\].colums is not a setting of data.sources\\[0\\]; known: .*columns"),
    (["data=demo_speech", "data.sources.4.words=[]"], "data.sources\\[4\\].words=\\[\\]: give the words to say alone"),
    (["data=demo_speech", "data.sources.4.voices.flite=-1"], "data.sources\\[4\\].voices=.*: give voices per engine"),
    (["data=sources", "data.sources=[{path: x.jsonl}]"],
     "data.sources\\[0\\].source has no value; use one of: jsonl"),
])
def test_a_bad_data_setting_names_its_key(overrides: list[str], message: str) -> None:
    cfg = composed(*overrides)
    with pytest.raises(PipelineError, match=message):
        check_config(cfg, ["data"])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("split_shares", {"validation": 0.1}, "data.split_shares.test has no value"),
    ("quarantine_flags", "sensitive", "data.quarantine_flags='sensitive' is not a valid list"),
    ("deletions", {"path": "x"}, "data.deletions="),
    ("colour", "blue", "data.colour is not a setting of data; known: source, name"),
])
def test_a_bad_key_in_a_users_own_data_yaml_names_it(tmp_path: Path, key: str, value: object, message: str) -> None:
    """A user's own conf/data/<name>.yaml is merged as written: an unknown key or a wrong shape is refused."""
    data = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "hf.yaml"))
    data[key] = value
    (tmp_path / "mine.yaml").write_text(OmegaConf.to_yaml(data))
    with pytest.raises(PipelineError, match=message):
        checked(OmegaConf.load(tmp_path / "mine.yaml"), DataConfig, "data")


def test_privacy_is_checked_when_the_data_stage_starts(tmp_path: Path) -> None:
    from pipeline.data.build import run_data_stage
    from pipeline.tracking import NullTracker

    cfg = composed(f"cache_dir={tmp_path}", "data=jsonl", f"data.path={tmp_path / 'none.jsonl'}")
    with open_dict(cfg):
        cfg.privacy.key_envv = "X"
    with pytest.raises(PipelineError, match="privacy.key_envv is not a setting of privacy; known: key_env, key_file"):
        run_data_stage(cfg, tmp_path / "run", NullTracker())
    assert not (tmp_path / "datasets").exists()  # stopped before the build swept or wrote anything


def test_the_budget_model_hears_in_30_ms_frames_with_about_the_same_weights(tmp_path: Path) -> None:
    from pipeline.asr.model import build_model, output_lengths
    from pipeline.asr.vocab import build_vocab, make_processor

    asr = composed("data=demo_speech").asr
    processor = make_processor(build_vocab(["alexa play jazz"]), tmp_path, return_attention_mask=True)
    budget, stock = build_model(asr, processor), build_model(composed("data=demo").asr, processor)
    def frames_per_9_seconds(model: object) -> int:
        one, ten = output_lengths(model, [16_000, 160_000]).tolist()
        return ten - one

    assert frames_per_9_seconds(budget) == 300 and frames_per_9_seconds(stock) == 450  # 30 ms against 20 ms
    assert sum(p.numel() for p in budget.parameters()) > 0.9 * sum(p.numel() for p in stock.parameters())
