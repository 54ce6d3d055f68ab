"""A killed run resumes to where an uninterrupted one ends; two gloo processes train through DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from asr_testkit import ROOT, micro_cfg
from omegaconf import OmegaConf

from pipeline.asr.checkpoints import checkpoint_steps, resolve_resume
from pipeline.asr.train import run_asr_stage
from tests.recording import RecordingTracker

KIT = Path(__file__).with_name("asr_testkit.py")


@pytest.mark.slow
def test_killed_run_resumes_and_ends_where_an_uninterrupted_run_does(tiny_dataset_path: Path, tmp_path: Path) -> None:
    settings = ("asr.max_steps=12", "asr.eval_every=3", "asr.keep_last=3", "asr.augment.prob=0.5")
    reference = run_asr_stage(micro_cfg(*settings), tmp_path / "straight", tiny_dataset_path, RecordingTracker())

    run_dir = tmp_path / "killed"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(OmegaConf.to_yaml(micro_cfg(*settings)))
    proc = subprocess.Popen([sys.executable, str(KIT), str(cfg_file), str(run_dir), str(tiny_dataset_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_dir / "asr" / "checkpoints"
    deadline = time.time() + 120
    while not checkpoint_steps(ckpts) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoint_steps(ckpts)
    assert saved and max(saved) < 12, "the run should have been killed mid-way"
    assert not (run_dir / "asr" / "asr_metrics.json").exists()

    resumed = run_asr_stage(micro_cfg(*settings, "asr.resume=auto"), run_dir, tiny_dataset_path, RecordingTracker())
    assert resumed["steps"] == reference["steps"] == 12
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in reference["history"]]
    assert resumed["history"][-1]["val_loss"] == pytest.approx(reference["history"][-1]["val_loss"], rel=1e-3)
    assert resumed["audio_hours_seen"] == pytest.approx(reference["audio_hours_seen"], rel=1e-6)


@pytest.mark.slow
def test_two_cpu_processes_train_with_ddp(tiny_dataset_path: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(OmegaConf.to_yaml(micro_cfg("asr.max_steps=3", "asr.eval_every=3", "asr.grad_accum_steps=2", "trainer.device=cpu")))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(KIT), str(cfg_file), str(tmp_path / "run"), str(tiny_dataset_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "asr" / "asr_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    single = run_asr_stage(micro_cfg("asr.max_steps=3", "asr.eval_every=3", "asr.grad_accum_steps=2"), tmp_path / "one", tiny_dataset_path, RecordingTracker())
    # Each of the two processes takes its own batches, so a DDP step sees about twice the audio.
    assert metrics["audio_hours_seen"] > 1.5 * single["audio_hours_seen"]


def test_loader_workers_train_exactly_like_the_training_process(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Augmentation draws are seeded per batch, so worker processes change nothing but the speed."""
    settings = ("asr.max_steps=4", "asr.eval_every=2", "asr.augment.prob=0.5")
    inline = run_asr_stage(micro_cfg(*settings, "trainer.num_workers=0"), tmp_path / "inline", tiny_dataset_path, RecordingTracker())
    workers = run_asr_stage(micro_cfg(*settings, "trainer.num_workers=2"), tmp_path / "workers", tiny_dataset_path, RecordingTracker())
    assert [h["val_loss"] for h in workers["history"]] == pytest.approx([h["val_loss"] for h in inline["history"]], rel=1e-5)
    assert workers["audio_hours_seen"] == pytest.approx(inline["audio_hours_seen"], rel=1e-9)


def test_a_resume_with_other_batches_starts_its_epoch_over(
    tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    # Stopped two steps into an epoch with batches of 12 s; resumed with 6 s batches (as `auto` may
    # choose on another GPU), the saved position would index another list of batches.
    first = ("asr.max_steps=2", "asr.eval_every=2", "asr.max_batch_seconds=12", "asr.lm_order=null")
    stopped = run_asr_stage(micro_cfg(*first), tmp_path, tiny_dataset_path, RecordingTracker())
    capsys.readouterr()
    resumed = ("asr.max_steps=4", "asr.eval_every=2", "asr.max_batch_seconds=6", "asr.lm_order=null", "asr.resume=auto")
    after = run_asr_stage(micro_cfg(*resumed), tmp_path, tiny_dataset_path, RecordingTracker())
    out = capsys.readouterr().out
    assert "resuming with other batches than the checkpoint's (asr.max_batch_seconds 12 -> 6): epoch 0 starts over" in out
    # Steps 3-4 trained on the first two 6 s batches of epoch 0, as a fresh 6 s run's steps 1-2 do.
    fresh = run_asr_stage(micro_cfg("asr.max_steps=2", "asr.eval_every=2", "asr.max_batch_seconds=6", "asr.lm_order=null"),
                          tmp_path / "fresh", tiny_dataset_path, RecordingTracker())
    assert after["audio_hours_seen"] - stopped["audio_hours_seen"] == pytest.approx(fresh["audio_hours_seen"], rel=1e-9)
    # The same batches again: no warning.
    again = ("asr.max_steps=6", "asr.eval_every=2", "asr.max_batch_seconds=6", "asr.lm_order=null", "asr.resume=auto")
    run_asr_stage(micro_cfg(*again), tmp_path, tiny_dataset_path, RecordingTracker())
    assert "other batches" not in capsys.readouterr().out
    # `auto` (here the CPU's fallback, 20 s) keeps the checkpoint's 6 s, which still fits: a memory
    # probe rarely measures the same float twice, and every resume would start its epoch over.
    auto = ("asr.max_steps=8", "asr.eval_every=2", "asr.max_batch_seconds=auto", "asr.lm_order=null", "asr.resume=auto")
    resumed = run_asr_stage(micro_cfg(*auto), tmp_path, tiny_dataset_path, RecordingTracker())
    assert "other batches" not in capsys.readouterr().out and resumed["max_batch_seconds"] == 6


def test_a_run_resumed_from_another_run_folder_saves_a_model(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: the resumed state names the other run's best step; when this run never beat it,
    the model folder was written without config.json or model.safetensors, yet reported that step."""
    from pipeline.asr.model import load_asr

    first = run_asr_stage(micro_cfg("asr.max_steps=4", "asr.eval_every=2", "asr.lm_order=null"), tmp_path / "a",
                          tiny_dataset_path, RecordingTracker())
    # A learning rate too small to move the weights: no later validation beats the first run's best.
    resumed = run_asr_stage(micro_cfg("asr.max_steps=6", "asr.eval_every=2", "asr.lm_order=null", "asr.learning_rate=1e-12",
                                      f"asr.resume={tmp_path / 'a'}"), tmp_path / "b", tiny_dataset_path, RecordingTracker())
    assert resumed["best_step"] == first["best_step"] <= 4 and resumed["steps"] == 6
    best = f"step-{first['best_step']:06d}"
    assert (tmp_path / "b" / "asr" / "checkpoints" / best / "model.safetensors").is_file()  # this run's copy
    assert (tmp_path / "b" / "asr" / "model.safetensors").read_bytes() == \
        (tmp_path / "a" / "asr" / "checkpoints" / best / "model.safetensors").read_bytes()
    load_asr(tmp_path / "b" / "asr")  # a model folder that loads


def test_a_tie_in_validation_wer_goes_to_the_lower_loss_and_an_old_lm_is_removed(
    tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """Before the fix: early validations sit at WER 1.0, and a strict < kept the first checkpoint
    however much worse its loss; and a retrain with asr.lm_order=null left the earlier LM beside the
    new model, where eval.decoder=auto would still use it."""
    metrics = run_asr_stage(micro_cfg("asr.max_steps=12", "asr.eval_every=3", "asr.learning_rate=1e-2"),
                            tmp_path / "run", tiny_dataset_path, RecordingTracker())
    history = metrics["history"]
    best = min(history, key=lambda h: (h["val_wer"], h["val_loss"]))
    assert metrics["best_step"] == best["step"]
    tied = [h for h in history if h["val_wer"] == best["val_wer"]]
    assert len(tied) > 1, "the micro model should tie at some WER for this test to check the tie"
    assert (tmp_path / "run" / "asr" / "lm").is_dir()
    run_asr_stage(micro_cfg("asr.max_steps=2", "asr.eval_every=2", "asr.lm_order=null"), tmp_path / "run",
                  tiny_dataset_path, RecordingTracker())
    assert not (tmp_path / "run" / "asr" / "lm").exists()


def test_a_validation_split_without_transcripts_keeps_the_step_with_the_lowest_loss(
    tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """Before the fix: a validation split whose transcripts are all empty (false wakes, or a corpus
    that labels only) has no WER (NaN), and NaN compares equal to nothing, so the first validated
    step stayed the best and was saved as the model however much lower the later losses were."""
    from datasets import load_from_disk

    splits = load_from_disk(str(tiny_dataset_path))
    splits["validation"] = splits["validation"].map(lambda _: {"text": ""})
    splits.save_to_disk(str(tmp_path / "data"))
    metrics = run_asr_stage(micro_cfg("asr.max_steps=6", "asr.eval_every=2", "asr.lm_order=null"), tmp_path / "run",
                            tmp_path / "data", RecordingTracker())
    history = metrics["history"]
    assert all(h["val_wer"] != h["val_wer"] for h in history)  # NaN: nothing to score a WER against
    assert metrics["best_step"] == min(history, key=lambda h: h["val_loss"])["step"] != history[0]["step"]


def test_a_run_killed_while_copying_another_runs_best_checkpoint_leaves_no_checkpoint_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the fix: the other run's best checkpoint was copied straight to `step-N`; killed mid-copy,
    the folder held the state file beside partial weights, `asr.resume=auto` took it as this run's
    latest checkpoint, and the copy was never made again (the folder existed)."""
    from pipeline.asr import checkpoints
    from pipeline.asr.checkpoints import adopt_best_checkpoint

    source = tmp_path / "a" / "asr" / "checkpoints" / "step-000004"
    source.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", checkpoints.STATE_FILE):
        (source / name).write_bytes(name.encode() * 1000)
    root = tmp_path / "b" / "asr" / "checkpoints"

    class Killed(BaseException):
        pass

    real_copytree, files = shutil.copytree, len(list(source.iterdir()))

    def killed_on_the_last_file(src: Path, dst: Path, **kwargs: object) -> object:
        copied = []

        def copy(s: str, d: str) -> str:
            copied.append(s)
            if len(copied) == files:  # half of the last file written, then the process dies
                Path(d).write_bytes(Path(s).read_bytes()[:100])
                raise Killed
            return shutil.copy2(s, d)

        return real_copytree(src, dst, copy_function=copy, **kwargs)

    monkeypatch.setattr(checkpoints.shutil, "copytree", killed_on_the_last_file)
    with pytest.raises(Killed):
        adopt_best_checkpoint(source, 4, root)
    assert checkpoint_steps(root) == {}
    assert resolve_resume(OmegaConf.create({"resume": "auto"}), root) is None
    monkeypatch.setattr(checkpoints.shutil, "copytree", real_copytree)
    adopt_best_checkpoint(source, 4, root)  # the run started again copies it whole
    assert {p.name: p.read_bytes() for p in (root / source.name).iterdir()} == {p.name: p.read_bytes() for p in source.iterdir()}


def test_a_run_resumed_after_its_time_budget_ended_trains_no_further(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """Before the fix: resumed from the checkpoint its time budget ended at (the run killed while it
    wrote the model folder), a run trained one more step past asr.max_train_minutes, validated it and
    could keep it as the best, so the model differed from the one the uninterrupted run saved."""
    settings = ("asr.max_steps=50", "asr.eval_every=100", "asr.lm_order=null", "asr.max_train_minutes=0.002")
    first = run_asr_stage(micro_cfg(*settings), tmp_path, tiny_dataset_path, RecordingTracker())
    assert first["stopped_by"] == "max_train_minutes" and first["steps"] < 50
    (tmp_path / "asr" / "asr_metrics.json").unlink()  # killed before the model folder was complete
    resumed = run_asr_stage(micro_cfg(*settings, "asr.resume=auto"), tmp_path, tiny_dataset_path, RecordingTracker())
    assert resumed["stopped_by"] == "max_train_minutes"
    assert resumed["steps"] == first["steps"] and resumed["best_step"] == first["best_step"]
    assert [(h["step"], h["val_loss"]) for h in resumed["history"]] == [(h["step"], h["val_loss"]) for h in first["history"]]
    assert max(checkpoint_steps(tmp_path / "asr" / "checkpoints")) == first["steps"]


def test_every_checkpoint_keeps_the_validation_seconds_of_each_step_it_validated(tiny_dataset_path: Path, tmp_path: Path) -> None:
    """The throughput benchmark subtracts each history entry's `eval_seconds` from the training time.
    Before the fix the entry got it only after the checkpoint was saved, so a run resumed from a
    checkpoint had none for that step and counted its validation as training."""
    from pipeline.asr.checkpoints import STATE_FILE

    run_asr_stage(micro_cfg("asr.max_steps=6", "asr.eval_every=3", "asr.lm_order=null", "asr.keep_last=3"), tmp_path,
                  tiny_dataset_path, RecordingTracker())
    saved = checkpoint_steps(tmp_path / "asr" / "checkpoints")
    assert sorted(saved) == [3, 6]
    for step, path in saved.items():
        history = torch.load(path / STATE_FILE, weights_only=False)["history"]
        assert [h["step"] for h in history] == [s for s in (3, 6) if s <= step]
        assert all(h["eval_seconds"] > 0 for h in history), (step, history)


def test_a_resumed_run_counts_the_validation_and_save_of_its_checkpoint_against_the_budget(
    tiny_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asr.max_train_minutes counts wall time, validation and checkpoint writes included; a resumed run
    starts its clock from the time its checkpoint saved. Before the fix that time was read before the
    checkpoint's validation and write, so each resume gave the run their time again: here a budget
    that the first part had spent (0.9 s less than its 1.2 s of slowed validation and write) left
    the resumed run training on."""
    from transformers import Wav2Vec2Processor

    from pipeline.asr import train
    from pipeline.asr.checkpoints import STATE_FILE

    evaluate_clips, save_processor = train.evaluate_clips, Wav2Vec2Processor.save_pretrained

    def slow_validation(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.6)
        return evaluate_clips(*args, **kwargs)

    def slow_write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.6)
        return save_processor(self, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate_clips", slow_validation)
    monkeypatch.setattr(Wav2Vec2Processor, "save_pretrained", slow_write)
    run_asr_stage(micro_cfg("asr.max_steps=2", "asr.eval_every=2", "asr.lm_order=null"), tmp_path, tiny_dataset_path,
                  RecordingTracker())
    state = torch.load(checkpoint_steps(tmp_path / "asr" / "checkpoints")[2] / STATE_FILE, weights_only=False)
    before_validation = state["history"][-1]["train_seconds"]  # what throughput reads: training alone
    assert state["train_seconds"] >= before_validation + 1.2
    budget_minutes = (before_validation + 0.9) / 60
    resumed = run_asr_stage(micro_cfg("asr.max_steps=4", "asr.eval_every=2", "asr.lm_order=null", "asr.resume=auto",
                                      f"asr.max_train_minutes={budget_minutes}"), tmp_path, tiny_dataset_path, RecordingTracker())
    assert resumed["stopped_by"] == "max_train_minutes" and resumed["steps"] == 2


def test_a_run_continued_from_an_earlier_checkpoint_of_its_own_drops_the_later_ones(
    tiny_dataset_path: Path, tmp_path: Path,
) -> None:
    """Before the fix: continued from an earlier step-N of its own folder (asr.resume=<that folder>), a
    run left the later checkpoints of the continuation it abandoned in place; pruning by step number
    then deleted the new checkpoints and kept those, and `resume=auto` (after a kill, or to train
    on) continued the abandoned run."""
    settings = ("asr.eval_every=2", "asr.keep_last=5", "asr.lm_order=null")
    run_asr_stage(micro_cfg("asr.max_steps=8", *settings), tmp_path, tiny_dataset_path, RecordingTracker())
    ckpts = tmp_path / "asr" / "checkpoints"
    assert sorted(checkpoint_steps(ckpts)) == [2, 4, 6, 8]
    resumed = run_asr_stage(micro_cfg("asr.max_steps=6", *settings, f"asr.resume={ckpts / 'step-000004'}"), tmp_path,
                            tiny_dataset_path, RecordingTracker())
    assert resumed["steps"] == 6
    assert sorted(checkpoint_steps(ckpts)) == [2, 4, 6]
    assert resolve_resume(OmegaConf.create({"resume": "auto"}), ckpts) == ckpts / "step-000006"


def test_a_run_killed_while_writing_its_model_folder_leaves_the_earlier_model_whole(
    tiny_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the fix: the model folder was written file by file over the earlier model; a run killed
    part-way left the new weights beside the earlier run's processor, metrics and card, and a file
    the new model does not write (a stale `generation_config.json`) stayed in the folder for good."""
    from pipeline.asr import train

    settings = ("asr.eval_every=2", "asr.keep_last=5", "asr.lm_order=null")
    run_asr_stage(micro_cfg("asr.max_steps=2", *settings), tmp_path, tiny_dataset_path, RecordingTracker())
    model_dir = tmp_path / "asr"
    (model_dir / "generation_config.json").write_text("{}")  # an earlier model's, which this one does not have
    earlier = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}

    class Killed(BaseException):
        pass

    def killed(*args: object, **kwargs: object) -> None:  # the last file of the model folder: the run dies there
        raise Killed

    real_card = train.write_model_card
    monkeypatch.setattr(train, "write_model_card", killed)
    with pytest.raises(Killed):
        run_asr_stage(micro_cfg("asr.max_steps=4", *settings, "asr.resume=auto"), tmp_path, tiny_dataset_path, RecordingTracker())
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == earlier
    assert sorted(checkpoint_steps(model_dir / "checkpoints")) == [2, 4]

    monkeypatch.setattr(train, "write_model_card", real_card)
    metrics = run_asr_stage(micro_cfg("asr.max_steps=4", *settings, "asr.resume=auto"), tmp_path, tiny_dataset_path,
                            RecordingTracker())
    assert not (model_dir / "generation_config.json").exists()
    best = model_dir / "checkpoints" / f"step-{metrics['best_step']:06d}"
    assert (model_dir / "model.safetensors").read_bytes() == (best / "model.safetensors").read_bytes()
    assert sorted(checkpoint_steps(model_dir / "checkpoints")) == [2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asr"]  # no temporary folder left beside it

    # Killed between the renames that swap the new folder in: the earlier one comes back whole.
    from pipeline.asr.checkpoints import recover_model_folder

    os.replace(model_dir, tmp_path / ".asr.old")
    (tmp_path / ".asr.new").mkdir()
    recover_model_folder(model_dir)
    assert sorted(checkpoint_steps(model_dir / "checkpoints")) == [2, 4] and (model_dir / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asr"]


@pytest.mark.parametrize("change, said", [
    ("asr.augment.prob=0", "asr.augment.prob 0.5 -> 0"),
    ("asr.bucket_batches=1", "asr.bucket_batches 50 -> 1"),
])
def test_a_resume_with_other_epoch_settings_starts_its_epoch_over(
    tiny_dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change: str, said: str,
) -> None:
    """Before the fix: only a change in the process count or the batch seconds restarted the epoch.
    Resumed with other augmentation speeds, source weights, splicing or batch grouping, the epoch's
    list of batches was another one, and the saved position in it played some clips twice and
    skipped others, without a word."""
    settings = ("asr.eval_every=2", "asr.lm_order=null")
    stopped = run_asr_stage(micro_cfg("asr.max_steps=2", *settings), tmp_path, tiny_dataset_path, RecordingTracker())
    capsys.readouterr()
    after = run_asr_stage(micro_cfg("asr.max_steps=4", *settings, change, "asr.resume=auto"), tmp_path, tiny_dataset_path,
                          RecordingTracker())
    out = capsys.readouterr().out
    assert f"resuming with other batches than the checkpoint's ({said}" in out and "epoch 0 starts over" in out
    # Steps 3-4 trained on the first two batches of epoch 0 as the new settings make them.
    fresh = run_asr_stage(micro_cfg("asr.max_steps=2", *settings, change), tmp_path / "fresh", tiny_dataset_path,
                          RecordingTracker())
    assert after["audio_hours_seen"] - stopped["audio_hours_seen"] == pytest.approx(fresh["audio_hours_seen"], rel=1e-9)
    run_asr_stage(micro_cfg("asr.max_steps=6", *settings, change, "asr.resume=auto"), tmp_path, tiny_dataset_path,
                  RecordingTracker())
    assert "other batches" not in capsys.readouterr().out  # the same settings again: no restart
