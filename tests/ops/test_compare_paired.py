"""`make compare`'s paired section: differences against the first run on the same test clips, and
what it says for runs on other test data or without per-clip results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M

REPO = Path(__file__).resolve().parents[2]
REFS = [f"turn the kitchen light {w}" for w in ("on", "off", "up", "down")] * 6
SPEAKERS = [f"acct_{i // 3:02d}" for i in range(len(REFS))]  # 8 speakers of 1 or 2 "kitten" clips each


def _run(root: Path, name: str, hyps: list[str], fingerprint: str, order: int, per_clip: bool = True,
         evaluation: bool = False) -> None:
    """A run folder as the eval stage leaves it, or with `evaluation` as `evaluate.py asr_model=...
    dataset=...` leaves its own folder (the config only in .hydra-evaluate/); every figure is
    computed from the transcripts."""
    run = root / name
    config = run / ".hydra-evaluate" / "config.yaml" if evaluation else run / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"seed": order, "run_dir": str(run)}))
    rows = []
    for i, (ref, hyp, spk) in enumerate(zip(REFS, hyps, SPEAKERS)):
        row = {"utterance_id": f"utt-{i:02d}", "speaker": spk, "edit": M.edit_counts(ref, hyp)}
        row["counts"] = B.clip_counts(row, threshold=None)
        rows.append(row)
    table = B.clip_table(rows)
    metrics = {"asr/wer": M.wer(REFS, hyps), "asr/cer": M.cer(REFS, hyps)}
    metrics.update(B.interval_metrics(table, metrics, 200, 0))
    (run / "metrics.json").write_text(json.dumps(metrics))
    details = {"test_data": {"dataset_fingerprint": fingerprint, "split": "test", "clips": len(rows)}}
    (run / "eval_details.json").write_text(json.dumps(details))
    if per_clip:
        (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(config, (1_000_000 + order, 1_000_000 + order))  # the listing order


def _compare(root: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--metrics", "asr/wer",
                             "--samples", "300"], cwd=root, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compare_pairs_runs_on_the_same_clips_and_says_why_not_otherwise(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    noisy = [r.replace("kitchen", "kitten") if i % 2 else r for i, r in enumerate(REFS)]  # 12 errors / 120 words
    _run(out, "a-first", noisy, "fp1", 0)
    _run(out, "b-better", list(REFS), "fp1", 1)
    _run(out, "c-same", list(noisy), "fp1", 2)
    _run(out, "d-other-data", [noisy[1]] + list(REFS[1:]), "fp2", 3)  # one speaker's clip misheard
    _run(out, "e-no-clips", list(REFS), "fp1", 4, per_clip=False)
    _run(out / "evaluate", "f-evaluation", list(REFS), "fp1", 5, evaluation=True)
    _run(out, "g-erased", list(REFS), "fp1", 6, per_clip=False)
    (out / "g-erased" / "DO_NOT_SYNC").write_text("{}\n")  # as `make erase` leaves a run trained on deleted data
    text = _compare(tmp_path).split("\n\n", 1)[1]
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("outputs/")}
    better = lines["outputs/b-better"].split()
    # WER 0.1 -> 0: the difference is below 0 on every resample of speakers.
    assert better[1:5] == ["asr/wer", "0.1000", "0.0000", "-0.1000"] and better[-1] == "better"
    # Every resample gives 0: no interval, as for a single run whose resamples are all alike (a
    # zero-width [+0.0000, +0.0000] and "no detectable difference" were expected here before).
    assert lines["outputs/c-same"].endswith(
        "+0.0000 (no interval: every resampled set of speakers gives the same difference)  no interval")
    assert lines["outputs/b-better:"] == "outputs/b-better: 24 shared test clips of 8 speakers drawn"
    assert "not comparable clip for clip" in lines["outputs/d-other-data:"]
    own = json.loads((out / "d-other-data" / "metrics.json").read_text())
    assert f"outputs/d-other-data: asr/wer {own['asr/wer']:.3f} [{own['asr/wer_ci_low']:.3f}, {own['asr/wer_ci_high']:.3f}]" in text
    first = json.loads((out / "a-first" / "metrics.json").read_text())
    assert f"outputs/a-first: asr/wer 0.100 [{first['asr/wer_ci_low']:.3f}, {first['asr/wer_ci_high']:.3f}]" in text
    assert "outputs/e-no-clips: no paired comparison: outputs/e-no-clips has no per-clip results" in text
    assert lines["outputs/g-erased:"].startswith("outputs/g-erased: no paired comparison: outputs/g-erased lost "
                                                 "per-clip results and models to erasure")
    assert "python evaluate.py" not in lines["outputs/g-erased:"]
    # An evaluation folder is a run of its own (not its .hydra-evaluate/), paired like any other.
    evaluation = lines["outputs/evaluate/f-evaluation"].split()
    assert evaluation[1:5] == ["asr/wer", "0.1000", "0.0000", "-0.1000"] and evaluation[-1] == "better"
    assert ".hydra-evaluate" not in text
    # Another baseline, named: the others are paired against it, whatever their age.
    chosen = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--metrics", "asr/wer",
                             "--samples", "300", "--baseline", "outputs/b-better"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO)})
    assert chosen.returncode == 0, chosen.stderr
    paired = chosen.stdout.split("\n\n", 1)[1]
    assert paired.startswith("Paired against the baseline, outputs/b-better")
    rows = {line.split()[0]: line.split() for line in paired.splitlines() if line.startswith("outputs/") and "asr/wer" in line}
    assert rows["outputs/a-first"][1:5] == ["asr/wer", "0.0000", "0.1000", "+0.1000"] and rows["outputs/a-first"][-1] == "worse"


def test_compare_pairs_false_accepts_over_the_background_recordings(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    for name, order, false_accepts in (("a-first", 0, [0] * 12), ("b-lower", 1, [1, 0, 2] * 4), ("c-old", 2, None)):
        _run(out, name, list(REFS), "fp1", order)
        details = json.loads((out / name / "eval_details.json").read_text())
        metrics = json.loads((out / name / "metrics.json").read_text())
        if false_accepts is None:  # evaluated before per-recording counts were written
            metrics["wake/fa_per_hour"] = 0.5
        else:
            details["wake_background"] = {"per_recording": [
                {"recording": f"rec_{i:016x}", "seconds": 600.0, "false_accepts": n, "digest": f"d{i}"}
                for i, n in enumerate(false_accepts)]}
            metrics["wake/fa_per_hour"] = sum(false_accepts) / 2.0  # 12 x 10 minutes
        (out / name / "eval_details.json").write_text(json.dumps(details))
        (out / name / "metrics.json").write_text(json.dumps(metrics))
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--samples", "300"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "wake/fa_per_hour" in result.stdout.splitlines()[0]  # a default column, beside wake/frr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("outputs/b-lower ")]
    [fa] = [r for r in rows if r[1] == "wake/fa_per_hour"]
    # Recordings that each gain 0, 1 or 2 false accepts: an interval above 0 (with one false accept
    # more in every recording, each resample gave +6 and the interval was a zero-width [+6, +6]).
    assert fa[2:5] == ["0.0000", "6.0000", "+6.0000"] and fa[7] == "(12" and fa[-1] == "worse"
    assert 0 < float(fa[5].strip("[,")) < 6 < float(fa[6].strip("]"))
    assert ("outputs/c-old: wake/fa_per_hour: outputs/c-old has no per-recording background counts" in result.stdout)


def test_a_run_compare_cannot_pair_is_named_with_the_reason(tmp_path: Path) -> None:
    """Found by a user: a predictions.jsonl cut short was paired on the clips it kept, a damaged one
    said only "no per-clip results", a baseline without metrics.json was silently replaced by the
    next run, a run without it was a row of dashes, and a named run folder without config.yaml
    vanished from the listing."""
    out = tmp_path / "outputs"
    noisy = [r.replace("kitchen", "kitten") if i % 2 else r for i, r in enumerate(REFS)]
    for order, name in enumerate(["a-base", "b-cut", "c-damaged", "d-unevaluated", "e-no-config"]):
        _run(out, name, noisy if order else list(REFS), "fp1", order)
        metrics = json.loads((out / name / "metrics.json").read_text())
        (out / name / "metrics.json").write_text(json.dumps({**metrics, "eval/num_clips": len(REFS)}))
    cut = out / "b-cut" / "predictions.jsonl"
    cut.write_text("".join(cut.read_text().splitlines(keepends=True)[:10]))
    damaged = out / "c-damaged" / "predictions.jsonl"
    damaged.write_text(damaged.read_text()[:-40] + "\n")
    (out / "d-unevaluated" / "metrics.json").write_text("{}")
    (out / "e-no-config" / "config.yaml").unlink()

    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "outputs/e-no-config",
                             "--metrics", "asr/wer", "--samples", "300"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    text = result.stdout.split("\n\n", 1)[1]
    assert ("outputs/b-cut: no paired comparison: outputs/b-cut/predictions.jsonl holds 10 clips where metrics.json "
            "counts 24: the file is cut short or from another evaluation") in text
    assert "predictions.jsonl line 24 is not valid JSON" in text and "outputs/c-damaged: no paired comparison" in text
    assert "outputs/d-unevaluated: left out: not evaluated (no test metrics in metrics.json)" in text
    assert "note: outputs/e-no-config left out: it has metrics.json but no config.yaml" in result.stderr
    refused = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--metrics", "asr/wer",
                              "--baseline", "outputs/d-unevaluated"], cwd=tmp_path, capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO)})
    assert refused.returncode == 2 and not refused.stdout, refused.stdout
    assert "--baseline outputs/d-unevaluated: not evaluated (no test metrics in metrics.json)" in refused.stderr


def test_runs_whose_details_do_not_say_which_clips_they_scored_are_not_paired(tmp_path: Path) -> None:
    # eval_details.json with a split but neither a build fingerprint nor a clips digest: nothing says
    # the two scored the same clips, so they are not paired on whatever ids they happen to share.
    out = tmp_path / "outputs"
    _run(out, "a-first", list(REFS), "", 0)
    _run(out, "b-second", list(REFS), "", 1)
    report = _compare(tmp_path)
    assert "b-second: no paired comparison:" in report and "no record of its test data" in report
    assert "shared test clips" not in report


def test_a_run_erasure_emptied_is_not_the_default_baseline(tmp_path: Path) -> None:
    # After a deletion touched the oldest run, every other run said "no paired comparison" against it.
    out = tmp_path / "outputs"
    noisy = [r.replace("kitchen", "kitten") if i % 2 else r for i, r in enumerate(REFS)]
    _run(out, "a-erased", list(REFS), "fp1", 0, per_clip=False)
    (out / "a-erased" / "DO_NOT_SYNC").write_text("{}\n")
    _run(out, "b-first-kept", noisy, "fp1", 1)
    _run(out, "c-better", list(REFS), "fp1", 2)
    report = _compare(tmp_path)
    assert "Paired against the baseline, outputs/b-first-kept" in report
    assert "older outputs/a-erased: per-clip results erased after a deletion request, so not the baseline" in report
    assert "outputs/c-better: 24 shared test clips" in report


def test_compare_counts_the_background_recordings_only_one_run_streamed(tmp_path: Path) -> None:
    """Before the fix: the pairing of false accepts per hour dropped the 3 recordings only the
    baseline streamed without a word, and the row said "(9 background recordings"."""
    out = tmp_path / "outputs"
    for name, order, false_accepts in (("a-first", 0, [0] * 12), ("b-fewer", 1, [1, 0, 2] * 3)):
        _run(out, name, list(REFS), "fp1", order)
        details = json.loads((out / name / "eval_details.json").read_text())
        details["wake_background"] = {"per_recording": [
            {"recording": f"rec_{i:016x}", "seconds": 600.0, "false_accepts": n, "digest": f"d{i}"}
            for i, n in enumerate(false_accepts)]}
        (out / name / "eval_details.json").write_text(json.dumps(details))
        metrics = json.loads((out / name / "metrics.json").read_text())
        metrics["wake/fa_per_hour"] = sum(false_accepts) / (len(false_accepts) / 6.0)  # 10-minute recordings
        (out / name / "metrics.json").write_text(json.dumps(metrics))
    result = subprocess.run([sys.executable, "-m", "pipeline.ops.compare", "outputs", "--metrics", "wake/fa_per_hour",
                             "--samples", "300"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    paired = result.stdout.split("\n\n", 1)[1]
    [row] = [line for line in paired.splitlines() if line.startswith("outputs/b-fewer ")]
    assert "(9 background recordings; left out: 3 only the baseline streamed, 0 only the other run)" in row, row


def test_a_run_whose_per_clip_results_repeat_an_utterance_id_is_named(tmp_path: Path) -> None:
    """Before the fix: the run's predictions.jsonl held utt-03 twice (and no utt-05); compare paired
    23 of the 24 clips, the baseline's utt-03 against the repeated id's last row, without a word."""
    out = tmp_path / "outputs"
    _run(out, "a-first", list(REFS), "fp1", 0)
    _run(out, "b-repeats", list(REFS), "fp1", 1)
    file = out / "b-repeats" / "predictions.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines()]
    rows[5] = {**rows[3], "utterance_id": "utt-03"}
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = _compare(tmp_path).split("\n\n", 1)[1]
    [line] = [line for line in text.splitlines() if line.startswith("outputs/b-repeats:")]
    assert line.startswith("outputs/b-repeats: no paired comparison: outputs/b-repeats/predictions.jsonl: utterance "
                           "id utt-03 appears 2 times (rows 4 and 6)"), line
    assert "python evaluate.py run=" in line, line


def test_re_evaluating_an_old_run_does_not_move_the_default_baseline(tmp_path: Path) -> None:
    """Before the fix: runs were ordered by config.yaml's modification time, which `evaluate.py run=`
    rewrites, so re-evaluating the oldest run made it the newest and another run the baseline. Now by
    the `<date>/<time>` the folder is named by, or for a folder named otherwise, Hydra's record of the
    job that made it (.hydra/hydra.yaml, which evaluation leaves alone)."""
    out = tmp_path / "outputs"
    noisy = [r.replace("kitchen", "kitten") if i % 2 else r for i, r in enumerate(REFS)]
    _run(out, "2026-01-01/23-00-00", noisy, "fp1", 2)  # re-evaluated since: the latest config.yaml
    _run(out, "2026-01-02/08-00-00", list(REFS), "fp1", 0)
    assert "Paired against the baseline, outputs/2026-01-01/23-00-00" in _compare(tmp_path)

    out = tmp_path / "named" / "outputs"
    for name, hyps, order in (("old-run", noisy, 2), ("new-run", list(REFS), 0)):
        _run(out, name, hyps, "fp1", order)
        made = out / name / ".hydra" / "hydra.yaml"
        made.parent.mkdir()
        made.write_text("hydra: {}\n")
        os.utime(made, (1_000_000 + (0 if name == "old-run" else 5),) * 2)
    assert "Paired against the baseline, outputs/old-run" in _compare(tmp_path / "named")
