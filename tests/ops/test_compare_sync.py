"""`make compare` and `make sync` read run folders only: no W&B server involved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.ops import sync
from pipeline.ops.inventory import DO_NOT_SYNC
from pipeline.ops.sync import unsynced_runs

REPO = Path(__file__).resolve().parents[2]


def _run_folder(root: Path, name: str, lr: float, wer: float | None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": 1, "run_dir": str(run), "asr": {"learning_rate": lr, "layers": 4}, "nlu": {"epochs": 3}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if wer is not None:
        (run / "metrics.json").write_text(json.dumps({"asr/wer": wer, "slu/slu_f1": 0.5}))
    return run


def test_compare_shows_config_differences_and_headline_metrics(tmp_path: Path) -> None:
    _run_folder(tmp_path / "outputs", "2026-01-01/10-00-00", 1e-4, 0.31)
    _run_folder(tmp_path / "outputs", "2026-01-01/11-00-00", 3e-4, 0.22)
    _run_folder(tmp_path / "outputs", "2026-01-01/12-00-00", 3e-4, None)  # still training
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--last", "5"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    table, paired = result.stdout.split("\n\n")
    header, _rule, *rows = table.splitlines()
    # Evaluated before per-clip results existed: the paired section says which run lacks them.
    for run in ("outputs/2026-01-01/10-00-00", "outputs/2026-01-01/11-00-00"):
        assert f"{run} has no per-clip results (predictions.jsonl does not exist)" in paired
    assert header.split()[:2] == ["run", "asr.learning_rate"]  # only what differs
    assert "asr.layers" not in header and "run_dir" not in header
    assert "asr/wer" in header and "slu/slu_f1" in header
    assert len(rows) == 3
    assert rows[0].split()[:4] == ["outputs/2026-01-01/10-00-00", "0.0001", "0.3100", "-"]
    assert rows[2].split()[2] == "-"


def test_compare_beside_an_evaluation_folder_shows_only_the_settings_both_have(tmp_path: Path) -> None:
    """A training run next to an evaluate.py folder: each entry point has settings the other lacks,
    and the evaluation's config is Hydra's unresolved one; neither makes a column."""
    train = _run_folder(tmp_path / "outputs", "2026-01-01/10-00-00", 1e-4, 0.31)
    config = yaml.safe_load((train / "config.yaml").read_text())
    config.update(cache_dir=str(tmp_path / ".cache"), eval={"decoder": "auto"})
    (train / "config.yaml").write_text(yaml.safe_dump(config))
    evaluation = tmp_path / "outputs" / "evaluate" / "2026-01-02" / "09-00-00"
    (evaluation / ".hydra-evaluate").mkdir(parents=True)
    (evaluation / ".hydra-evaluate" / "config.yaml").write_text(yaml.safe_dump(
        {"asr_model": "outputs/2026-01-01/10-00-00/asr", "seed": 1, "cache_dir": "${paths.cache_dir}",
         "eval": {"decoder": "greedy"}, "asr": {"learning_rate": 5e-3, "layers": 4}}))  # asr: evaluate.yaml's placeholder
    (evaluation / "metrics.json").write_text(json.dumps({"asr/wer": 0.35}))
    # An evaluate.py call that stopped on a wrong path left a folder with its config and log only.
    failed = tmp_path / "outputs" / "evaluate" / "2026-01-02" / "09-05-00"
    (failed / ".hydra-evaluate").mkdir(parents=True)
    (failed / ".hydra-evaluate" / "config.yaml").write_text(yaml.safe_dump({"asr_model": "nope", "seed": 1}))
    (failed / "evaluate.log").write_text("error: asr_model=nope: no such folder\n")
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--metrics", "asr/wer"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "09-05-00" not in result.stdout
    header = result.stdout.splitlines()[0].split()
    # Not asr.* (the evaluation's are placeholders it never reads), nlu.*, asr_model, nor cache_dir.
    assert header == ["run", "eval.decoder", "asr/wer"]
    assert "only settings both have are shown; 6 set by one only" in result.stdout
    # Two training runs: a setting one of them lacks is still a difference worth a column.
    _run_folder(tmp_path / "two", "a", 1e-4, 0.3)
    newer = _run_folder(tmp_path / "two", "b", 1e-4, 0.3)
    config = yaml.safe_load((newer / "config.yaml").read_text())
    config["asr"]["splice"] = 0.3
    (newer / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "two", "--metrics", "asr/wer"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.stdout.splitlines()[0].split() == ["run", "asr.splice", "asr/wer"]
    assert "set by one only" not in result.stdout


def test_sync_lists_only_offline_runs_not_yet_uploaded(tmp_path: Path) -> None:
    done = tmp_path / "outputs" / "a" / "wandb" / "offline-run-20260101_000000-aaa"
    todo = tmp_path / "multirun" / "x" / "0" / "wandb" / "offline-run-20260102_000000-bbb"
    for folder, rid in ((done, "aaa"), (todo, "bbb")):
        folder.mkdir(parents=True)
        (folder / f"run-{rid}.wandb").write_bytes(b":W&B")
    (done / "run-aaa.wandb.synced").write_text("")
    assert unsynced_runs([tmp_path / "outputs", tmp_path / "multirun"]) == [todo]
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.sync", "outputs", "multirun", "--dry-run"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "1 offline run(s) to sync" in result.stdout and "bbb" in result.stdout


def test_slurm_launcher_config_composes_with_the_submitit_plugin() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)


def test_a_mistyped_folder_or_metric_is_named_not_read_as_nothing(tmp_path: Path) -> None:
    _run_folder(tmp_path / "outputs", "2026-01-01/10-00-00", 1e-4, 0.31)
    for module in ("pipeline.ops.compare", "pipeline.ops.sync"):
        result = subprocess.run([sys.executable, "-m", module, "outputs", "outptus"], cwd=tmp_path,
                                capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 2 and result.stderr.strip().endswith("error: no such folder: outptus"), module
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "--metrics", "asr/wer,asr/wre"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "0.3100" in result.stdout
    assert result.stderr.startswith("note: asr/wre in none of these runs' metrics.json")


def test_compare_refuses_arguments_that_would_mislead_and_leaves_out_a_half_written_run(tmp_path: Path) -> None:
    _run_folder(tmp_path / "outputs", "2026-01-01/10-00-00", 1e-4, 0.31)
    broken = _run_folder(tmp_path / "outputs", "2026-01-01/11-00-00", 3e-4, 0.29)
    (broken / "metrics.json").write_text('{"asr/wer": 0.29, ')  # killed while writing
    compare = [sys.executable, "-m", "pipeline.ops.compare"]
    for args, error in ((["--last", "0"], "--last 0: give how many runs to list, 1 or more"),
                        (["--samples", "1"], "--samples 1: give 100 or more"),
                        (["--metrics", " , "], "--metrics ' , ': name at least one metric")):
        result = subprocess.run([*compare, *args], cwd=tmp_path, capture_output=True, text=True,
                                env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 2 and error in result.stderr, (args, result.stderr)
    result = subprocess.run([*compare, "--metrics", "asr/wer, slu/slu_f1"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "0.3100" in result.stdout and "slu/slu_f1" in result.stdout
    shown = broken.relative_to(tmp_path)  # as found under the default root, outputs/
    assert f"note: {shown} left out: {shown / 'metrics.json'} is unreadable (JSONDecodeError" in result.stderr
    assert "in none of these runs" not in result.stderr  # " slu/slu_f1" is slu/slu_f1
    # Cut shorter, a file can still parse, as a YAML string or a JSON number: left out the same way.
    for name, content, kind in (("config.yaml", "stag", "str"), ("metrics.json", "0.5", "float"),
                                ("eval_details.json", "[]", "list")):
        cut = _run_folder(tmp_path / "outputs", f"2026-01-02/0{len(name) % 10}-00-00", 1e-4, 0.33)
        (cut / name).write_text(content)
        result = subprocess.run([*compare, "--metrics", "asr/wer"], cwd=tmp_path, capture_output=True, text=True,
                                env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 0 and "0.3100" in result.stdout, (name, result.stderr)
        shown = cut.relative_to(tmp_path)
        assert f"note: {shown} left out: {shown / name} is unreadable (a {kind}, not a mapping)" in result.stderr
        shutil.rmtree(cut)


def test_sync_with_no_offline_run_says_there_is_none(tmp_path: Path) -> None:
    _run_folder(tmp_path / "outputs", "2026-01-01/10-00-00", 1e-4, 0.31)  # logger=none: no wandb/ folder
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.sync", "outputs"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "nothing to sync: no offline W&B run under outputs" in result.stdout


def test_sync_says_when_the_server_cannot_be_reached(tmp_path: Path) -> None:
    """`wandb sync` waited on an unreachable server without a word (stopped by hand after 150 s)."""
    todo = tmp_path / "outputs" / "a" / "wandb" / "offline-run-20260101_000000-aaa"
    todo.mkdir(parents=True)
    (todo / "run-aaa.wandb").write_bytes(b":W&B")
    env = {"PYTHONPATH": str(REPO), "HOME": str(tmp_path), "WANDB_API_KEY": "0" * 40,
           "WANDB_BASE_URL": "http://127.0.0.1:9"}  # the discard port: nothing listens there
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.sync", "outputs"], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "error: the W&B server http://127.0.0.1:9 cannot be reached (127.0.0.1:9: " in result.stderr


def test_sync_passes_the_options_after_a_double_dash_to_wandb_sync(tmp_path: Path, monkeypatch) -> None:
    """`python -m pipeline.ops.sync [ROOT ...] [-- extra wandb sync options]`, as its usage says.
    Before the fix: argparse read everything after `--` as roots, and refused `--project` as no such folder."""
    from pipeline.ops import sync

    todo = tmp_path / "outputs" / "a" / "wandb" / "offline-run-20260101_000000-aaa"
    todo.mkdir(parents=True)
    (todo / "run-aaa.wandb").write_bytes(b":W&B")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(sync, "unreachable_server", lambda url: None)
    commands = []
    monkeypatch.setattr(sync.subprocess, "run", lambda command: commands.append(command) or subprocess.CompletedProcess(command, 0))
    for argv in (["outputs", "--", "--project", "voice"], ["--", "--project", "voice"]):
        assert sync.main(argv) == 0
        command = commands.pop()
        assert command[1:] == ["sync", "--yes", "--project", "voice", str(Path("outputs") / "a" / "wandb" / todo.name)]


def test_sync_given_a_folder_inside_a_do_not_sync_run_says_it_is_marked(tmp_path: Path, monkeypatch, capsys) -> None:
    """Given the wandb/ folder of a run `make erase` marked, the run's offline run is refused and
    said to be marked, not "already uploaded"; given `.` from inside it, it is not uploaded either."""
    run = tmp_path / "outputs" / "erased"
    log = run / "wandb" / "offline-run-20260101_000000-aaa" / "run-aaa.wandb"
    log.parent.mkdir(parents=True)
    log.write_bytes(b":W&B")
    (run / DO_NOT_SYNC).write_text("{}\n")
    assert sync.main([str(run / "wandb"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"refusing {run}: marked {DO_NOT_SYNC}" in out, out
    assert "already uploaded" not in out and f"in a run marked {DO_NOT_SYNC} by `make erase`" in out, out
    monkeypatch.chdir(run / "wandb")
    assert unsynced_runs([Path(".")]) == []
    assert sync.main([".", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "to sync" not in out.replace("nothing to sync", "") and f"in a run marked {DO_NOT_SYNC}" in out, out

