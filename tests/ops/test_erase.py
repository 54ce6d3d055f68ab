"""`make erase` and `make audit-deletions` on a store of cached datasets, run folders and a registry
made without training (bench/erase.py builds it): what is removed, what is left alone, the receipt,
the audit's exit codes, bad requests, unscannable roots, `make sync` refusing erased runs, and the
online W&B deletion with W&B's API replaced at its boundary."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench.erase import KEY, VICTIM, VICTIM_SENTENCES, VOCAB, overrides  # noqa: E402
from pipeline.ops import audit, erase, sync  # noqa: E402
from pipeline.ops.config import load_config  # noqa: E402
from pipeline.ops.inventory import DO_NOT_SYNC  # noqa: E402
from pipeline.ops.registry import Registry  # noqa: E402


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _receipt(root: Path) -> dict[str, Any]:
    [path] = sorted((root / "registry" / "erasure" / "receipts").glob("*.json"))
    return json.loads(path.read_text())


def test_erase_removes_every_copy_and_the_audit_proves_it(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    affected, untouched = store["affected_runs"], [r for r in store["runs"] if r not in store["affected_runs"]]
    before = {str(r): _digest(r) for r in untouched}
    kept_dataset = root / "cache" / "datasets" / store["fingerprints"][1]
    kept_before = _digest(kept_dataset)

    assert audit.main(overrides(root)) == 3
    out = capsys.readouterr().out
    for kind in ("cached dataset", "model", "checkpoint", "language model", "registry model"):
        assert kind in out, kind
    assert "language model   transcript" in out  # the LM holds every n-gram of the victim's sentences
    assert VICTIM not in out

    assert erase.main(overrides(root)) == 0
    capsys.readouterr()
    # Every copy of the victim's data is gone: datasets, run parts, the registered model's files.
    assert not (root / "cache" / "datasets" / store["fingerprints"][0]).exists()
    for run in affected:
        assert not (run / "asr").exists() and not (run / "nlu").exists()
        assert not (run / "predictions.jsonl").exists() and not (run / "report.md").exists()
        assert (run / DO_NOT_SYNC).is_file() and (run / "metrics.json").is_file()
    registry = Registry(root / "registry")
    erased = registry.record("model-0")
    assert erased["erased_at"] and not (registry.model_dir("model-0") / "asr").exists()
    assert registry.has_weights("model-2")  # the current model held none of it
    # Nothing that held no deleted data was touched, and nothing was retrained.
    assert {str(r): _digest(r) for r in untouched} == before
    assert _digest(kept_dataset) == kept_before

    receipt = _receipt(root)
    text = json.dumps(receipt)
    assert VICTIM not in text and not any(s in text for s in VICTIM_SENTENCES)
    [request] = receipt["requests"]
    assert request["request"].startswith("acct_") and request["status"] == "erased"
    assert request["copies_found"] == 3  # the account's three clips, counted once (not again through runs' clip lists)
    assert receipt["removed_counts"]["cached dataset"] == 1 and receipt["removed_counts"]["registry model"] == 1
    assert sorted(receipt["marked_do_not_sync"]) == sorted(map(str, affected))

    assert audit.main(overrides(root)) == 0
    out = capsys.readouterr().out
    assert "audit: clean: no trace of the 1 deleted id(s) requested" in out and f"audit: scanned cache={root / 'cache'}, outputs={root / 'outputs'}" in out
    # A mistyped root is absent: "clean" then says it did not cover it.
    assert audit.main([overrides(root)[0], f"erase.multirun={root / 'multi-run'}"]) == 0
    out = capsys.readouterr().out
    assert f"absent, so not scanned: multirun={root / 'multi-run'}" in out
    assert "(1 absent, not scanned: check they are meant to be)" in out.splitlines()[-1]
    # A second erase has nothing left to do and writes no second receipt.
    assert erase.main(overrides(root)) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert len(list((root / "registry" / "erasure" / "receipts").glob("*.json"))) == 1


def _run_with_lm(root: Path, name: str, fingerprint: str, sentences: list[str], tested: Sequence[str] = ()) -> Path:
    """A run folder whose character LM is trained on `sentences` (as the ASR stage writes it) and
    whose predictions hold the `tested` references."""
    from pipeline.asr.lm import write_char_lm

    run = root / "outputs" / "2026-01-02" / name
    write_char_lm(run / "asr" / "lm", sentences, VOCAB, "|", 6)
    (run / "build_report.json").write_text(json.dumps({"fingerprint": fingerprint}))
    (run / "metrics.json").write_text(json.dumps({"asr/wer": 0.5}))
    (run / "predictions.jsonl").write_text("".join(json.dumps({"utterance_id": f"new-{i}", "reference": text,
                                                               "hypothesis": text}) + "\n" for i, text in enumerate(tested)))
    return run


def test_kept_clips_after_the_erasure_that_say_a_deleted_sentence_or_every_piece_of_one_are_not_findings(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """After the erasure a new batch (kept) holds two sentences that together hold every 6-gram of a
    deleted one, and another account saying a deleted sentence word for word; a model is trained on
    it. Its dataset, predictions and LM hold those sentences without having seen a deleted clip, and
    no erasure could change that: the audit stays clean and erase leaves them. An LM that heard the
    third deleted sentence, with words no kept clip says, is still found, and so is the deleted clip's
    audio under another id."""
    from datasets import Audio, load_from_disk

    from pipeline.ops.erase import lm_grams

    root = store["root"]
    victim_audio = load_from_disk(str(root / "cache" / "datasets" / store["fingerprints"][0]))["train"].cast_column(
        "audio", Audio(decode=False))[0]["audio"]  # row 0 is the victim's (bench/erase.py)
    assert victim_audio["bytes"]
    assert erase.main(overrides(root)) == 0
    pieces = ["please order quokka biscuits", "order quokka biscuits from zanzibar"]
    deleted = VICTIM_SENTENCES[0]  # "please order quokka biscuits from zanzibar"
    assert set(lm_grams(deleted, 6)) <= {g for p in pieces for g in lm_grams(p, 6)} and deleted not in pieces
    said = [*pieces, VICTIM_SENTENCES[1]]

    kept = load_from_disk(str(root / "cache" / "datasets" / store["fingerprints"][1]))
    new = {split: kept[split].map(lambda row, i: {"text": said[i % 3], "transcript": said[i % 3]},
                                  with_indices=True, keep_in_memory=True) for split in kept}
    fingerprint = "f" * 20
    type(kept)(new).save_to_disk(str(root / "cache" / "datasets" / fingerprint))
    run = _run_with_lm(root, "after-erasure", fingerprint, list(new["train"]["text"]), list(new["test"]["text"]))
    assert VICTIM_SENTENCES[1] in new["test"]["text"]
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out
    assert "clean" in capsys.readouterr().out
    predictions = (run / "predictions.jsonl").read_text()
    assert erase.main(overrides(root)) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert (run / "predictions.jsonl").read_text() == predictions  # the kept clip's line stays

    leaked = _run_with_lm(root, "leaked", fingerprint, [*pieces, VICTIM_SENTENCES[2]])
    assert audit.main(overrides(root)) == 3
    out = capsys.readouterr().out
    assert f"language model   transcript {leaked / 'asr' / 'lm' / 'char_lm.arpa'}" in out
    assert str(run) not in out and fingerprint not in out

    # The deleted clip itself, ingested again under another id and another account's words, is found
    # by its audio.
    again = {split: new[split].cast_column("audio", Audio(decode=False)) for split in new}
    again["train"] = again["train"].map(lambda row, i: {"audio": victim_audio} if i == 0 else {},
                                        with_indices=True, keep_in_memory=True)
    type(kept)(again).save_to_disk(str(root / "cache" / "datasets" / ("e" * 20)))
    assert audit.main(overrides(root)) == 3
    assert f"cached dataset   audio      {root / 'cache' / 'datasets' / ('e' * 20)}" in capsys.readouterr().out


def test_unmatched_request_and_malformed_line_are_recorded_and_the_rest_apply(store: dict[str, Any],
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    # Named after the account it asks about, as ticket systems often do: the name goes nowhere.
    request = root / "inbox" / "deletions" / "amzn1.account.NOBODY.jsonl"
    # An account whose clips sit only in an export (a demo synthesis no dataset was built from yet).
    export = root / "cache" / "demo" / "only-export"
    (export / "audio").mkdir(parents=True)
    (export / "audio" / "x.wav").write_bytes(b"RIFF")
    (export / "annotations.jsonl").write_text(json.dumps(
        {"utterance_id": "x1", "audio": "audio/x.wav", "transcript": "stop", "account_id": "acct-in-export-only"}) + "\n")
    request.write_text(json.dumps({"account_id": "amzn1.account.NOBODY"}) + "\n"
                       + "{not json\n" + json.dumps({"account_id": VICTIM}) + "\n" + json.dumps({"colour": "red"}) + "\n"
                       + json.dumps({"utterance_id": "no-such-utterance"}) + "\n"
                       + json.dumps({"account_id": "acct-in-export-only"}) + "\n")
    sent = "deletions/sha256:" + hashlib.sha256(request.read_bytes()).hexdigest()[:16]
    assert erase.main(overrides(root)) == 0
    receipt = _receipt(root)
    key = KEY.encode()
    statuses = {r["request"]: r["status"] for r in receipt["requests"]}
    assert statuses == {erase.pseudonym(key, "acct", "amzn1.account.NOBODY"): "matched_nothing",
                        erase.pseudonym(key, "acct", VICTIM): "erased",
                        erase.utterance_pseudonym(key, "no-such-utterance"): "matched_nothing",
                        erase.pseudonym(key, "acct", "acct-in-export-only"): "erased"}
    assert not (export / "audio" / "x.wav").exists()
    out = capsys.readouterr().out
    assert "1 source audio (1 clip)" in out  # entries, and the clips they held
    assert f"erase: quarantined {sent} line 2" in out and "NOBODY" not in out
    assert [(q["file"], q["line"]) for q in receipt["quarantined_request_lines"]] == [(sent, 2), (sent, 4)]
    assert "NOBODY" not in json.dumps(receipt) and "red" not in json.dumps(receipt["quarantined_request_lines"])
    assert b"NOBODY" not in (root / "cache" / "retrain" / "corpus" / "deletion_quarantine.jsonl").read_bytes()
    assert not (root / "cache" / "datasets" / store["fingerprints"][0]).exists()
    assert audit.main(overrides(root)) == 0


def test_a_root_that_cannot_be_scanned_is_an_error_naming_it(store: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    not_a_folder = tmp_path / "outputs-file"
    not_a_folder.write_text("")
    args = [f"erase.outputs={not_a_folder}", f"erase.multirun={store['root'] / 'multirun'}"]
    assert audit.main(args) == 2
    assert str(not_a_folder) in capsys.readouterr().err
    assert erase.main(args) == 2
    assert audit.main([*overrides(store["root"]), "erase.no_such_key=1"]) == 2
    assert erase.main([*overrides(store["root"]), "erase.no_such_key=1"]) == 2


def test_a_run_folder_outside_the_roots_is_audited_and_erased_once_the_cache_lists_it(
    store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Before the fix: erasure and the audit looked for run folders only under erase.outputs and
    erase.multirun, so a run written elsewhere (`hydra.run.dir=/scratch/...`) kept the models and
    predictions of a deleted clip, and the audit called the store clean."""
    from pipeline.runtime import configure_environment

    root = store["root"]
    first, _ = store["affected_runs"]
    elsewhere = tmp_path / "scratch" / "exp1"
    shutil.move(first, elsewhere)
    configure_environment(elsewhere, root / "cache")  # what every job does with its run folder first
    assert audit.main(overrides(root)) == 3
    out = capsys.readouterr().out
    assert f"{elsewhere}" in out and "and 1 run folder(s) outside them that the cache lists" in out
    assert erase.main(overrides(root)) == 0
    assert not (elsewhere / "asr").exists() and not (elsewhere / "nlu").exists()
    assert not (elsewhere / "predictions.jsonl").exists() and (elsewhere / DO_NOT_SYNC).is_file()
    assert str(elsewhere) in json.dumps(_receipt(root)["marked_do_not_sync"])
    assert audit.main(overrides(root)) == 0


def test_a_listed_run_folder_out_of_reach_is_named_by_erasure_and_the_audit_until_it_is_back(
    store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A run folder on a share that is not mounted: its line stays listed, erasure and the audit say
    they could not look there (so a clean audit does not read as covering it), and once the share is
    back both act on it."""
    from pipeline.runtime import configure_environment

    root = store["root"]
    first, _ = store["affected_runs"]
    share = tmp_path / "share"
    elsewhere = share / "runs" / "exp1"
    elsewhere.parent.mkdir(parents=True)
    shutil.move(first, elsewhere)
    configure_environment(elsewhere, root / "cache")
    away = tmp_path / "away"
    share.rename(away)
    share.mkdir()  # unmounted: the mount point is there, empty
    configure_environment(tmp_path / "later", root / "cache")  # the next job lists its folder: the line stays
    assert erase.main(overrides(root)) == 0
    err = capsys.readouterr().err
    assert "erase: 1 listed run folder(s) are out of reach" in err and str(elsewhere) in err
    assert audit.main(overrides(root)) == 0
    out = capsys.readouterr().out
    assert "audit: 1 run folder(s) that" in out and "are out of reach" in out and str(elsewhere) in out
    assert out.rstrip().endswith("; 1 listed run folder(s) out of reach, not scanned (above)")

    share.rmdir()
    away.rename(share)  # mounted again: the deleted clip's models there are found, then erased
    assert audit.main(overrides(root)) == 3
    assert erase.main(overrides(root)) == 0
    assert not (elsewhere / "asr").exists() and not (elsewhere / "predictions.jsonl").exists()
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0
    assert "out of reach" not in capsys.readouterr().out


def test_a_listed_run_folder_under_a_root_reached_through_a_link_counts_once(store: dict[str, Any], tmp_path: Path) -> None:
    """Every job lists its folder, resolved; erase.outputs may name the same folder through a link."""
    from pipeline.ops.inventory import Roots, run_folders
    from pipeline.runtime import configure_environment

    root = store["root"]
    (tmp_path / "outputs-link").symlink_to(root / "outputs")
    roots = Roots.from_cfg(load_config([*overrides(root), f"erase.outputs={tmp_path / 'outputs-link'}"]))
    before = run_folders(roots)
    for run in store["runs"]:
        configure_environment(run, root / "cache")
    assert run_folders(roots) == before and len(before) == len(set(before))


def test_the_audit_names_a_dataset_of_a_run_here_that_lies_in_another_cache(
    store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A job run with another PIPELINE_CACHE_DIR built its dataset there: neither erasure nor the audit
    looks in it, so "clean" says so instead of reading as covering it."""
    root = store["root"]
    fingerprint = store["fingerprints"][1]  # a dataset the deleted account is not in
    other = tmp_path / "other-cache" / "datasets" / fingerprint
    shutil.move(root / "cache" / "datasets" / fingerprint, other)
    for report in root.glob("outputs/**/build_report.json"):
        report.write_text(report.read_text().replace(str(root / "cache" / "datasets" / fingerprint), str(other)))
    assert erase.main(overrides(root)) == 0
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0
    out = capsys.readouterr().out
    assert (f"audit: 1 dataset(s) that runs here were built on lie outside erase.cache_root={root / 'cache'}, so "
            f"neither erasure nor this audit looked in them") in out and out.rstrip().endswith(
        "; 1 dataset(s) outside the cache root not scanned (above)") and str(other) in out


def test_sync_refuses_runs_marked_do_not_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("erased", "fine"):
        log = tmp_path / "outputs" / name / "wandb" / "offline-run-1-abc" / "run-abc.wandb"
        log.parent.mkdir(parents=True)
        log.write_bytes(b":W&B")
    (tmp_path / "outputs" / "erased" / DO_NOT_SYNC).write_text("{}\n")
    assert sync.unsynced_runs([tmp_path / "outputs"]) == [tmp_path / "outputs" / "fine" / "wandb" / "offline-run-1-abc"]
    assert sync.main([str(tmp_path / "outputs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"refusing {tmp_path / 'outputs' / 'erased'}" in out and "1 offline run(s) to sync" in out


class _Artifact:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def delete(self, delete_aliases: bool = False) -> None:
        self.log.append(f"artifact {self.name} aliases={delete_aliases}")


class _Run:
    def __init__(self, log: list[str], run_id: str) -> None:
        self.log, self.id = log, run_id

    def logged_artifacts(self) -> list[_Artifact]:
        return [_Artifact(self.log, f"{self.id}-asr-model"), _Artifact(self.log, f"{self.id}-evaluation")]

    def delete(self, delete_artifacts: bool = False) -> None:
        self.log.append(f"run {self.id} artifacts={delete_artifacts}")


class _Api:
    """W&B's public API (wandb.Api) at its boundary: records what erasure asked it to delete."""

    default_entity = "team"

    def __init__(self) -> None:
        self.log: list[str] = []
        self.paths: list[str] = []

    def run(self, path: str) -> _Run:
        self.paths.append(path)
        if path.endswith("never-uploaded"):
            raise ValueError(f"Could not find run {path}")
        return _Run(self.log, path.rsplit("/", 1)[1])


def test_online_runs_of_erased_runs_are_deleted_through_the_wandb_api(store: dict[str, Any]) -> None:
    root = store["root"]
    first, second = store["affected_runs"]
    (first / "wandb_run_id").write_text("abc123\n")
    (second / "wandb_run_id").write_text("never-uploaded\n")
    (store["runs"][1] / "wandb_run_id").write_text("untouched9\n")
    cfg = load_config([*overrides(root), "erase.wandb_online=true", "logger.entity=acme"])
    api = _Api()
    erase.erase(cfg, api=api)
    assert sorted(api.paths) == ["acme/voice-pipeline/abc123", "acme/voice-pipeline/never-uploaded"]
    assert api.log == ["artifact abc123-asr-model aliases=True", "artifact abc123-evaluation aliases=True",
                       "run abc123 artifacts=True"]
    online = {o["run"]: o["online"] for o in _receipt(root)["wandb_online"]}
    assert online == {"abc123": "deleted", "never-uploaded": "not found"}


class _ProjectsApi(_Api):
    """W&B holding runs in the projects they were logged to: any other path is "no such run"."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held = held

    def run(self, path: str) -> _Run:
        self.paths.append(path)
        if path not in self.held:
            from wandb.apis.public.runs import RunNotFoundError

            raise RunNotFoundError(f"Could not find run {path}")  # as wandb.apis.public.Run.load words it
        return _Run(self.log, path.rsplit("/", 1)[1])


def _log_offline(run: Path, run_id: str, project: str, entity: str | None) -> None:
    """A real offline W&B run in the run folder, as `logger=wandb logger.mode=offline` leaves one."""
    import wandb

    (run / "wandb_run_id").write_text(run_id + "\n")
    logged = wandb.init(mode="offline", project=project, entity=entity, id=run_id, dir=str(run),
                        settings=wandb.Settings(silent=True, console="off"))
    logged.log({"asr/wer": 0.5})
    logged.finish()
    synced = next((run / "wandb").glob(f"offline-run-*-{run_id}")) / f"run-{run_id}.wandb.synced"
    synced.write_text("")  # `make sync` uploaded it


def test_an_erased_runs_online_copy_is_deleted_in_the_project_it_was_logged_to(store: dict[str, Any]) -> None:
    """Before the fix: erasure looked for every erased run in today's `logger.project`. A run logged to
    another project (the setting changed since, or given on the run's command line) was "not found"
    there, dropped from the pending list, and its online copy stayed."""
    root = store["root"]
    first, second = store["affected_runs"]
    _log_offline(first, "trial42", project="asr-trials", entity="acme")
    _log_offline(second, "old7", project="voice-pipeline-2025", entity=None)  # W&B's default entity
    api = _ProjectsApi({"acme/asr-trials/trial42", "team/voice-pipeline-2025/old7"})
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=api)
    assert sorted(api.paths) == ["acme/asr-trials/trial42", "team/voice-pipeline-2025/old7"]
    assert sorted(api.log) == sorted([f"artifact {i}-{a} aliases=True" for i in ("trial42", "old7")
                                      for a in ("asr-model", "evaluation")] + ["run trial42 artifacts=True",
                                                                              "run old7 artifacts=True"])
    assert {o["run"]: o["online"] for o in _receipt(root)["wandb_online"]} == {
        "acme/asr-trials/trial42": "deleted", "voice-pipeline-2025/old7": "deleted"}
    assert job.online_pending == []


def test_a_run_pending_online_stays_pending_in_its_own_project(store: dict[str, Any]) -> None:
    """The project a run was logged to is kept with it while W&B is out of reach, and used when W&B is back."""
    root = store["root"]
    first, _ = store["affected_runs"]
    _log_offline(first, "trial42", project="asr-trials", entity="acme")
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=false"]))
    assert job.online_pending == ["acme/asr-trials/trial42"] and not (first / "wandb").exists()
    api = _ProjectsApi({"acme/asr-trials/trial42"})
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true", "logger.project=elsewhere"]), api=api)
    assert api.paths == ["acme/asr-trials/trial42"] and api.log[-1] == "run trial42 artifacts=True"
    assert job.online_pending == []


class _DownApi(_Api):
    """A W&B server that answers, then fails mid-deletion (an HTTP 502)."""

    def run(self, path: str) -> _Run:
        run = super().run(path)

        def logged_artifacts() -> list[_Artifact]:
            raise ConnectionError("502 Bad Gateway")

        run.logged_artifacts = logged_artifacts  # type: ignore[method-assign]
        return run


def test_an_uploaded_run_stays_pending_until_its_online_copy_is_deleted(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    """Before the fix: an erasure without W&B credentials removed an uploaded run's local files, and
    with them the only record of its id, so its online copy was never deleted; and a server error
    mid-deletion stopped the erasure before its ledger and receipt were written."""
    root = store["root"]
    first, _ = store["affected_runs"]
    (first / "wandb_run_id").write_text("abc123\n")
    synced = first / "wandb" / "offline-run-20261206_000000-abc123" / "run-abc123.wandb.synced"
    synced.parent.mkdir(parents=True, exist_ok=True)
    synced.write_text("")  # `make sync` uploaded it
    assert erase.main([*overrides(root), "erase.wandb_online=false"]) == 0
    assert "1 uploaded W&B run(s) of erased data are not deleted online yet (abc123)" in capsys.readouterr().err
    assert _receipt(root)["wandb_online_pending"] == ["abc123"]
    ledger = root / "registry" / "erasure" / "erased.jsonl"
    erased_lines = ledger.read_text()
    assert erased_lines
    # The server fails mid-deletion: recorded, still pending, nothing lost.
    down = _DownApi()
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=down)
    assert [(o["run"], o["online"]) for o in job.online] == [("abc123", "failed")] and "502" in job.online[0]["detail"]
    last = sorted((root / "registry" / "erasure" / "receipts").glob("*.json"))[-1]
    assert job.online_pending == ["abc123"] and json.loads(last.read_text())["wandb_online_pending"] == ["abc123"]
    assert ledger.read_text() == erased_lines  # what the first erasure recorded is kept
    # Reachable again: deleted, and no longer pending.
    api = _Api()
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=api)
    assert api.log[-1] == "run abc123 artifacts=True" and job.online_pending == []
    assert erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=_Api()).online == []


class _UnreachableApi(_Api):
    """W&B's API while the server cannot be reached: every request fails to connect."""

    def run(self, path: str) -> _Run:
        self.paths.append(path)
        raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")


def test_a_run_that_logged_online_stays_pending_when_erased_while_wandb_is_unreachable(store: dict[str, Any]) -> None:
    """Before the fix: only an offline run that `make sync` had uploaded (a `.wandb.synced` marker) was
    kept pending. A run that logged to W&B online has no marker (nothing to sync), so an erasure
    without W&B dropped its id with its `wandb_run_id` file and its online copy was never deleted; and
    with W&B set online but unreachable, the failed connection was taken for "no such run"."""
    root = store["root"]
    first, second = store["affected_runs"]
    (first / "wandb_run_id").write_text("live42\n")
    online = first / "wandb" / "run-20261206_000000-live42"  # wandb's folder of a run logged online
    online.mkdir(parents=True)
    (online / "run-live42.wandb").write_bytes(b":W&B\x00\x00\x01")
    (first / "wandb" / "latest-run").symlink_to(online.name)
    # An offline run never synced has nothing online: not pending (its `latest-run` link is no online folder).
    (second / "wandb_run_id").write_text("local7\n")
    offline = second / "wandb" / "offline-run-20261206_000000-local7"
    offline.mkdir(parents=True)
    (offline / "run-local7.wandb").write_bytes(b":W&B\x00\x00\x01")
    (second / "wandb" / "latest-run").symlink_to(offline.name)

    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=false"]))
    assert not online.exists() and not (first / "wandb_run_id").exists()
    assert job.online_pending == ["live42"] and _receipt(root)["wandb_online_pending"] == ["live42"]
    # W&B set online but unreachable: the run is not known gone, so it stays pending.
    down = _UnreachableApi()
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=down)
    assert down.paths == ["team/voice-pipeline/live42"]
    assert [(o["run"], o["online"]) for o in job.online] == [("live42", "failed")] and job.online_pending == ["live42"]
    # Reachable again: deleted, and no longer pending.
    api = _Api()
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=api)
    assert api.log[-1] == "run live42 artifacts=True" and job.online_pending == []


class _RefusingApi(_Api):
    """W&B refusing the request with a ValueError that is not "no such run"."""

    def run(self, path: str) -> _Run:
        self.paths.append(path)
        raise ValueError(f"Invalid path: {path}")


def test_only_no_such_run_lets_a_pending_run_go(store: dict[str, Any]) -> None:
    """Before the fix: any ValueError from W&B was taken for "no such run" (wandb's RunNotFoundError
    is one), so a refusal of another kind dropped the run from the pending list for good."""
    root = store["root"]
    first, _ = store["affected_runs"]
    _log_offline(first, "trial42", project="asr-trials", entity="acme")
    refusing = _RefusingApi()
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=refusing)
    assert refusing.paths == ["acme/asr-trials/trial42"]
    assert [(o["run"], o["online"]) for o in job.online] == [("acme/asr-trials/trial42", "failed")]
    assert job.online_pending == ["acme/asr-trials/trial42"] and "Invalid path" in job.online[0]["detail"]
    # W&B answers that it has no such run: nothing online, nothing pending.
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=_ProjectsApi(set()))
    assert [(o["run"], o["online"]) for o in job.online] == [("acme/asr-trials/trial42", "not found")]
    assert job.online_pending == []


def test_erased_wandb_runs_lose_their_id_files_and_stay_pending_by_id(store: dict[str, Any]) -> None:
    """Before the fix: erasure removed a run's offline W&B run (and deleted or queued its online copy)
    but left `wandb_run_id`: the next `evaluate.py run=<run>` resumed that id, so W&B started a new
    offline run under the deleted id (without the run's name), which W&B refuses to upload."""
    from pipeline.data.privacy import pseudonym

    root, kept = store["root"], store["runs"][1]
    first, _ = store["affected_runs"]
    (first / "wandb_run_id").write_text("abc123\n")
    synced = first / "wandb" / "offline-run-20261206_000000-abc123" / "run-abc123.wandb.synced"
    synced.parent.mkdir(parents=True, exist_ok=True)
    synced.write_text("")  # `make sync` uploaded it
    # A run not trained on the account whose offline W&B run logged a deleted clip: it goes whole.
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    (kept / "wandb_run_id").write_text("evalrun1\n")
    offline = kept / "wandb" / "offline-run-20261206_000000-evalrun1"
    table = offline / "files" / "media" / "table" / "predictions_3_0123456789abcdef.table.json"
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps({"columns": ["utterance_id", "speaker"], "data": [["late-1", victim]]}))
    (offline / "run-evalrun1.wandb.synced").write_text("")
    untouched = store["runs"][2]
    assert untouched not in store["affected_runs"]
    (untouched / "wandb_run_id").write_text("untouched9\n")

    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=false"]))
    assert not offline.exists() and not synced.exists()
    assert not (first / "wandb_run_id").exists() and not (kept / "wandb_run_id").exists()
    assert (untouched / "wandb_run_id").read_text() == "untouched9\n"  # its W&B run is not erased
    # The ids live on where the online deletion needs them: retried once W&B is reachable.
    assert job.online_pending == ["abc123", "evalrun1"]
    api = _Api()
    job = erase.erase(load_config([*overrides(root), "erase.wandb_online=true"]), api=api)
    assert sorted(path.rsplit("/", 1)[1] for path in api.paths) == ["abc123", "evalrun1"]
    assert job.online_pending == []


def test_other_runs_lose_only_the_lines_of_deleted_clips(store: dict[str, Any]) -> None:
    """A run not trained on the account (say, evaluated later on a split holding its clips) keeps
    its model; only the predictions and report lines of the deleted clips go."""
    from pipeline.data.privacy import pseudonym

    root, run = store["root"], store["runs"][1]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    predictions = run / "predictions.jsonl"
    kept_predictions = predictions.read_text()
    predictions.write_text(kept_predictions + json.dumps({"utterance_id": "late-1", "speaker": victim,
                                                          "reference": "alexa", "hypothesis": "alexa"}) + "\n"
                           + json.dumps({"utterance_id": "late-2", "speaker": "acct_0000000000000000",
                                         "reference": VICTIM_SENTENCES[1], "hypothesis": "x"}) + "\n")
    report = run / "report.md"
    kept_report = report.read_text()
    report.write_text(kept_report + f"| late-2 | {VICTIM_SENTENCES[1]} |\n")
    (run / "eval_details.json").write_text(json.dumps({"wer_by": {"speaker": {victim: {"wer": 0.5},
                                                                               "acct_0000000000000000": {"wer": 0.1}}}}))
    assert audit.main(overrides(root)) == 3
    assert erase.main(overrides(root)) == 0
    assert predictions.read_text() == kept_predictions and report.read_text() == kept_report
    assert json.loads((run / "eval_details.json").read_text()) == {"wer_by": {"speaker": {"acct_0000000000000000": {"wer": 0.1}}}}
    assert (run / "asr" / "model.safetensors").is_file() and not (run / DO_NOT_SYNC).exists()
    assert audit.main(overrides(root)) == 0
    # Its metrics say how many clips erasure took from its predictions, so compare and the gate read
    # the shorter file as trimmed, not as cut short (pipeline.ops.gate.load_clip_table).
    assert json.loads((run / "metrics.json").read_text())["eval/clips_erased"] == 2


def test_a_flagged_clip_deleted_after_its_build_leaves_no_id_in_quarantine_files(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A flagged clip never reached the dataset, so the dataset and its runs stay; their quarantine
    lines named it by its id. One is requested by its account (its id known only from the export),
    one by its id."""
    from pipeline.data.privacy import pseudonym, utterance_pseudonym

    root, run = store["root"], store["runs"][1]  # a run of a dataset without the victim's clips
    kept = root / "cache" / "datasets" / store["fingerprints"][1]
    export = root / "cache" / "demo" / "k"
    export.mkdir(parents=True)
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"utterance_id": "flag-by-account", "account_id": VICTIM, "transcript": "x", "flags": ["sensitive"]},
        {"utterance_id": "flag-kept", "account_id": "amzn1.account.OTHER0001", "transcript": "y", "flags": ["sensitive"]}]))
    lines = [{"source": "demo", "utterance_id": u, "reason": "flagged", "detail": "annotator flag(s) ['sensitive']; audio not copied"}
             for u in ("flag-by-account", "flag-by-id", "flag-kept")]
    # A build names a valid record's account in its line: found with no export copy to learn the id from.
    lines.append({"source": "jsonl", "utterance_id": "flag-elsewhere", "speaker": pseudonym(KEY.encode(), "acct", VICTIM),
                  "reason": "flagged", "detail": "annotator flag(s) ['sensitive']; audio not copied"})
    for folder in (kept, run):
        (folder / "quarantine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (root / "inbox" / "deletions" / "by-id.jsonl").write_text(json.dumps({"utterance_id": "flag-by-id"}) + "\n")

    assert audit.main(overrides(root)) == 3
    assert f"id         {run / 'quarantine.jsonl'}" in capsys.readouterr().out  # the one named by id, before erasure
    assert erase.main(overrides(root)) == 0
    key = KEY.encode()
    for folder in (kept, run):
        rows = [json.loads(line) for line in (folder / "quarantine.jsonl").read_text().splitlines()]
        assert [r["utterance_id"] for r in rows] == [utterance_pseudonym(key, "flag-by-account"),
                                                     utterance_pseudonym(key, "flag-by-id"), "flag-kept",
                                                     utterance_pseudonym(key, "flag-elsewhere")]
        assert [r["reason"] for r in rows] == ["deleted", "deleted", "flagged", "deleted"] and rows[0]["source"] == "demo"
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out
    assert (run / "asr" / "model.safetensors").is_file() and kept.is_dir()
    # The clip the account request took from the export stays out of every later build.
    tombstones = (root / "cache" / "retrain" / "corpus" / "deleted_utterances.txt").read_text().split()
    assert utterance_pseudonym(key, "flag-by-account") in tombstones


def test_runs_of_a_dataset_no_longer_cached_are_erased_by_the_clips_they_list(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A cache cleaned to free disk took the dataset that tied the runs to the deleted account: the
    clips each run's build listed still do."""
    import shutil

    root = store["root"]
    shutil.rmtree(root / "cache" / "datasets" / store["fingerprints"][0])
    assert audit.main(overrides(root)) == 3
    out = capsys.readouterr().out
    for run in store["affected_runs"]:
        assert f"{run}  (" in out and "derived from an erased dataset" in out
    assert "registry model" in out
    assert erase.main(overrides(root)) == 0
    for run in store["affected_runs"]:
        assert not (run / "asr").exists() and not (run / "nlu").exists() and (run / DO_NOT_SYNC).is_file()
    assert all((run / "asr" / "model.safetensors").is_file() for run in store["runs"] if run not in store["affected_runs"])
    # The registered model trained on the account's clips: its record names clips, not accounts.
    registry = Registry(root / "registry")
    assert registry.record("model-0")["erased_at"] and not (registry.model_dir("model-0") / "asr").exists()
    assert registry.has_weights("model-2")
    [request] = _receipt(root)["requests"]  # found through the lists, not "matched nothing"
    assert request["status"] == "erased" and request["copies_found"] == 3  # dataset 0's three clips of the account
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_later_request_for_clips_an_earlier_erasure_took_the_dataset_of_is_found_in_the_runs_lists(
        store: dict[str, Any]) -> None:
    root = store["root"]
    assert erase.main(overrides(root)) == 0  # the victim's request takes dataset 0 with it
    other = "amzn1.account.B00003"  # two clips, in dataset 0 only
    (root / "inbox" / "deletions" / "later.jsonl").write_text(json.dumps({"account_id": other}) + "\n")
    assert erase.main(overrides(root)) == 0
    [first, later] = sorted((root / "registry" / "erasure" / "receipts").glob("*.json"))
    [request] = json.loads(later.read_text())["requests"]
    assert (request["status"], request["copies_found"]) == ("erased", 2)


def test_a_damaged_build_report_or_quarantine_line_does_not_stop_erasure_or_the_audit(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A run killed while its files were written: its listed clips still tie it to the deleted account."""
    import shutil

    root = store["root"]
    shutil.rmtree(root / "cache" / "datasets" / store["fingerprints"][0])
    damaged = store["affected_runs"][0]
    (damaged / "build_report.json").write_text('{"fingerprint": "')
    (store["runs"][1] / "quarantine.jsonl").write_text('{"utterance_id": "cut-sh')
    assert audit.main(overrides(root)) == 3
    assert f"{damaged}  (" in capsys.readouterr().out
    assert erase.main(overrides(root)) == 0
    assert not (damaged / "asr").exists() and (damaged / DO_NOT_SYNC).is_file()
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_runs_built_before_runs_listed_their_clips_get_their_list_while_the_dataset_is_cached(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from pipeline.data.privacy import key_id

    root = store["root"]
    built = {run: (run / "dataset_clips.txt").read_text() for run in store["runs"]}  # as the data stage lists them
    for run in store["runs"]:
        (run / "dataset_clips.txt").unlink()
        (run / "pseudonym_key_id").unlink()
    old = store["affected_runs"][0]
    lists = {}
    # An erasure with nothing to erase still writes them, while every dataset is there. Each dataset's
    # build report names the current key: the lists are the build's, stamped with that key as known.
    (root / "inbox" / "deletions" / "request.jsonl").rename(root / "request.jsonl")
    assert erase.main(overrides(root)) == 0
    for run in store["runs"]:
        lists[run] = (run / "dataset_clips.txt").read_text()
        assert lists[run] == built[run]
        assert (run / "pseudonym_key_id").read_text() == key_id(KEY.encode()) + "\n"
    assert len(lists[old].splitlines()) == 15  # a line per clip of its dataset
    # Then a cache cleaned to free disk, and a request: found by the list.
    shutil.rmtree(root / "cache" / "datasets" / store["fingerprints"][0])
    (root / "request.jsonl").rename(root / "inbox" / "deletions" / "request.jsonl")
    assert erase.main(overrides(root)) == 0
    assert not (old / "asr").exists()
    # A run with neither list nor dataset cannot be told: the audit says so (not of the runs an
    # erasure took the dataset of).
    (store["runs"][1] / "dataset_clips.txt").unlink()
    (old / "dataset_clips.txt").unlink()
    shutil.rmtree(root / "cache" / "datasets" / store["fingerprints"][1])
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0
    out = capsys.readouterr().out
    assert "1 run folder(s) list no clips" in out and f"{store['runs'][1]}" in out and f"{old}," not in out
    assert out.splitlines()[-1].endswith("; 1 run folder(s) not judged (above)")


def test_an_erasure_with_nothing_to_erase_is_not_stopped_by_a_dataset_it_cannot_list(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    (root / "inbox" / "deletions" / "request.jsonl").unlink()
    run = store["runs"][1]
    (run / "dataset_clips.txt").unlink()
    dataset = root / "cache" / "datasets" / store["fingerprints"][1]
    for arrow in dataset.rglob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    assert erase.main(overrides(root)) == 0
    assert f"no clip list written into {run}" in capsys.readouterr().err


def test_the_inventory_claims_every_file_and_names_a_new_writer(store: dict[str, Any]) -> None:
    from pipeline.ops.inventory import Roots, unclaimed

    root = store["root"]
    roots = Roots.from_cfg(load_config(overrides(root)))
    assert unclaimed(roots) == []
    # A sweep: its folder holds multirun.yaml, each job a run of its own (the innermost run claims a file).
    sweep = root / "multirun" / "2026-01-02" / "00-00-00"
    for name, content in (("multirun.yaml", "hydra: {}\n"), ("0/.hydra/config.yaml", "seed: 1\n"),
                          ("0/build_report.json", json.dumps({"fingerprint": store["fingerprints"][1]})),
                          ("0/asr/model.safetensors", "w"), ("0/train.log", "")):
        (sweep / name).parent.mkdir(parents=True, exist_ok=True)
        (sweep / name).write_text(content)
    assert unclaimed(roots) == []
    stray = [store["runs"][1] / "embeddings.npy", root / "cache" / "features" / "x.npy"]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0")
    assert unclaimed(roots) == sorted(p.resolve() for p in stray)


def test_each_place_that_can_hold_a_clip_is_one_erasure_acts_on_and_its_writer_exists() -> None:
    """The table's `holds` and `writer` columns are what a reader trusts when adding a row: a place
    that can hold a clip's audio or transcript must not be `keep`, and the module named as its
    writer must exist (a renamed module leaves the row pointing nowhere)."""
    import importlib

    from pipeline.ops.inventory import AUDIO, PLACES, RUN_PARTS, TEXT, WEIGHTS

    for place in PLACES + RUN_PARTS:
        if {AUDIO, TEXT, WEIGHTS} & set(place.holds):
            assert place.erase != "keep", place
        if not place.holds:
            assert place.erase == "keep", place
        for writer in place.writer.replace(",", " ").replace("(", " ").replace(")", " ").split():
            if writer.startswith(("pipeline.", "bench.")):
                importlib.import_module(writer)


def test_an_erased_promoted_model_still_needs_replacing(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """After a standalone erase of the promoted model, the next retraining must replace it
    (deletion beats the gate) rather than fail to compare against a model with no weights."""
    registry = Registry(store["root"] / "registry")
    current = registry.current()
    trained = current["trained_on"][:2]
    assert registry.affected_by(trained, KEY.encode())[0]["model_id"] == current["model_id"]
    registry.mark_erased(current["model_id"])
    assert not registry.has_weights(current["model_id"])
    assert [a["model_id"] for a in registry.affected_by(trained, KEY.encode())] == [current["model_id"]]
    # `make erase` says so: what serves has no weights until a retraining or a rollback.
    assert erase.main(overrides(store["root"])) == 0
    assert (f"erase: the promoted model {current['model_id']} was trained on deleted data and its weights are erased; "
            "run `make retrain`") in capsys.readouterr().err
    # The audit, clean of traces, says it too (a scheduler may read only its exit code, 0 here).
    assert audit.main(overrides(store["root"])) == 0
    assert f"audit: the promoted model {current['model_id']} has no weights (erased); run `make retrain`" \
        in capsys.readouterr().out
    # A retired model, once erased, needs nothing more.
    retired = registry.record("model-0")["trained_on"][:1]
    registry.mark_erased("model-0")
    assert registry.affected_by(retired, KEY.encode()) == []


def test_purging_an_export_also_drops_the_copies_of_a_deleted_clip(tmp_path: Path) -> None:
    """The demo's re-spoken commands and extra voices name their original in `copy_of`: erasing the
    original must take them with it, audio included."""
    key = b"copy-of-key"
    (tmp_path / "audio").mkdir()
    lines = [{"utterance_id": "u1", "audio": "audio/u1.wav"},
             {"utterance_id": "u1-computer", "audio": "audio/u1-computer.wav", "copy_of": "u1"},
             {"utterance_id": "u1-computer-take1", "audio": "audio/u1-computer-take1.wav", "copy_of": "u1"},
             {"utterance_id": "u2", "audio": "audio/u2.wav"}]
    import soundfile as sf

    for i, line in enumerate(lines):
        tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(8000) / 16000)
        sf.write(tmp_path / line["audio"], tone * (i != 2), 16000)  # the second take is silent
    (tmp_path / "annotations.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    purged, hashes = erase.purge_export(tmp_path, key, {erase.utterance_pseudonym(key, "u1")})
    # The audit looks for copies of the two that identify a recording, not of the silent one.
    assert purged == 3 and len(hashes) == 2
    kept = [json.loads(x)["utterance_id"] for x in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert kept == ["u2"] and sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["u2.wav"]


def test_purging_an_export_reads_every_line_json_reads_and_survives_an_impossible_audio_path(tmp_path: Path) -> None:
    """A request must reach a line whatever else it holds: half an emoji in its transcript (the reader
    once dropped such a line as no record, so erasure and the audit passed it by), a CR between JSON
    values; a NUL in another line's audio path stopped the erasure with a ValueError."""
    import soundfile as sf

    key = b"purge-key"
    (tmp_path / "audio").mkdir()
    for name in ("a", "b", "c"):
        sf.write(tmp_path / "audio" / f"{name}.wav", 0.2 * np.sin(np.arange(8000) / (3 + ord(name))), 16000)
    text = ('{"utterance_id": "u1", "audio": "audio/a.wav", "transcript": "play \\ud83d music", "account_id": "ACC-777"}\n'
            '{"utterance_id": "u2",\r "audio": "audio/b.wav", "transcript": "stop", "account_id": "ACC-777"}\n'
            '{"utterance_id": "u3", "audio": "audio/c\\u0000.wav", "transcript": "stop", "account_id": "ACC-1"}\n'
            '{"utterance_id": "u4", "audio": "audio/c.wav", "transcript": "go", "account_id": "ACC-1"}\n')
    (tmp_path / "annotations.jsonl").write_text(text)
    purged, _ = erase.purge_export(tmp_path, key, {erase.pseudonym(key, "acct", "ACC-777")})
    assert purged == 2
    kept = [json.loads(x)["utterance_id"] for x in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert kept == ["u3", "u4"] and sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["c.wav"]


def test_a_copy_is_erased_from_datasets_predictions_and_the_registry_with_its_original(store: dict[str, Any]) -> None:
    """A derived clip (an extra take, a re-spoken command) can sit in a cached dataset whose
    original it is not in: the original was quarantined for another reason, say. The dataset's
    `copy_of` column is what lets a deletion of the original find it there, in predictions and in
    what a registered model was trained on."""
    from datasets import Dataset, DatasetDict

    from bench.erase import _rows
    from pipeline.data.features import dataset_features
    from pipeline.ops.retrain import trained_on

    root, key = store["root"], KEY.encode()
    rows = [{**r, "source": "demo", "copy_of": None} for r in _rows(key, 9, 4, False, np.random.default_rng(1))]
    rows[0].update(utterance_id="orig-1-take1", copy_of="orig-1")
    folder = root / "cache" / "datasets" / "copies0000000000000"
    DatasetDict({"train": Dataset.from_list(rows, features=dataset_features(with_source=True))}).save_to_disk(str(folder))
    (folder / "build_report.json").write_text(json.dumps({"fingerprint": folder.name}) + "\n")
    assert erase.utterance_pseudonym(key, "orig-1") in trained_on(folder, key)
    run = store["runs"][1]  # not trained on it: only the copy's predictions line goes
    predictions = run / "predictions.jsonl"
    kept = predictions.read_text()
    predictions.write_text(kept + json.dumps({"utterance_id": "orig-1-take1", "copy_of": "orig-1", "speaker": "acct_x",
                                              "reference": "play jazz", "hypothesis": "play jazz"}) + "\n")
    with open(root / "inbox" / "deletions" / "request.jsonl", "a") as f:
        f.write(json.dumps({"utterance_id": "orig-1"}) + "\n")

    assert audit.main(overrides(root)) == 3
    assert erase.main(overrides(root)) == 0
    assert not folder.exists() and predictions.read_text() == kept
    statuses = {r["request"]: r["status"] for r in _receipt(root)["requests"]}
    assert statuses[erase.utterance_pseudonym(key, "orig-1")] == "erased"
    assert audit.main(overrides(root)) == 0


def test_a_clip_stored_under_its_pseudonym_is_erased_by_its_raw_id(store: dict[str, Any]) -> None:
    """The build stores an utterance id that contains its speaker (FSDD's `0_george_0`) as the
    utterance's pseudonym. A request that names the raw id must still find the clip in a cached
    dataset, in predictions and in what a registered model was trained on."""
    from datasets import Dataset, DatasetDict

    from bench.erase import _rows
    from pipeline.data.features import dataset_features
    from pipeline.data.privacy import dataset_utterance_id
    from pipeline.ops.retrain import trained_on

    root, key = store["root"], KEY.encode()
    raw = "fsdd/audio/0_george_0"
    stored = dataset_utterance_id(key, raw, {"account_id": "george"})
    assert "george" not in stored
    rows = [{**r, "source": "fsdd", "copy_of": None} for r in _rows(key, 9, 4, False, np.random.default_rng(2))]
    rows[0].update(utterance_id=stored)
    folder = root / "cache" / "datasets" / "speakerfile000000000"
    DatasetDict({"train": Dataset.from_list(rows, features=dataset_features(with_source=True))}).save_to_disk(str(folder))
    (folder / "build_report.json").write_text(json.dumps({"fingerprint": folder.name}) + "\n")
    assert erase.utterance_pseudonym(key, raw) in trained_on(folder, key)
    predictions = store["runs"][1] / "predictions.jsonl"
    kept = predictions.read_text()
    predictions.write_text(kept + json.dumps({"utterance_id": stored, "speaker": "acct_x", "reference": "zero",
                                              "hypothesis": "zero"}) + "\n")
    with open(root / "inbox" / "deletions" / "request.jsonl", "a") as f:
        f.write(json.dumps({"utterance_id": raw}) + "\n")

    assert audit.main(overrides(root)) == 3
    assert erase.main(overrides(root)) == 0
    assert not folder.exists() and predictions.read_text() == kept
    assert {r["request"]: r["status"] for r in _receipt(root)["requests"]}[stored] == "erased"
    assert audit.main(overrides(root)) == 0


def test_an_audit_with_no_request_to_look_for_does_not_call_the_roots_clean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A deletions file only a build read is unknown to the audit: finding no trace of nothing is no proof."""
    for name in ("inbox", "registry", "cache", "outputs", "multirun"):
        (tmp_path / name).mkdir()
    for name, value in {"PIPELINE_PSEUDONYM_KEY": KEY, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"),
                        "PIPELINE_INBOX": str(tmp_path / "inbox"), "PIPELINE_REGISTRY_DIR": str(tmp_path / "registry")}.items():
        monkeypatch.setenv(name, value)
    assert audit.main([f"erase.outputs={tmp_path / 'outputs'}", f"erase.multirun={tmp_path / 'multirun'}"]) == 0
    out = capsys.readouterr().out
    assert "audit: no deletion request known" in out and f"{tmp_path / 'inbox' / 'deletions'}/*.jsonl" in out
    assert "clean" not in out


def test_erase_waits_for_a_run_of_erased_data_that_is_still_being_written(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A training still writing into a run built on the deleted data would write its model after the
    receipt said erased: erase refuses (busy, nothing removed) until it ends. Its forked workers,
    orphaned by a kill, do not keep the run busy."""
    import os
    import signal
    import subprocess
    import sys

    root, run = store["root"], store["affected_runs"][0]
    dataset = root / "cache" / "datasets" / store["fingerprints"][0]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import multiprocessing as mp, time; from pathlib import Path; from pipeline.run_folder import writing\n"
        f"with writing(Path({str(run)!r})):\n"
        "    worker = mp.get_context('fork').Process(target=time.sleep, args=(60,)); worker.start()\n"
        "    print(worker.pid, flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        assert erase.main(overrides(root)) == 4
        assert f"run {run} is being written" in capsys.readouterr().err
        assert dataset.exists() and (run / "asr").exists()  # nothing removed
        # ... nor taken from the inbox: the intake used to run first, purging sources the job then forgot.
        assert (root / "inbox" / "deletions" / "request.jsonl").is_file()
        assert not (root / "cache" / "retrain" / "corpus" / "deletion_requests.txt").exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the orphaned worker still runs, and does not hold the run
        assert erase.main(overrides(root)) == 0
        assert not dataset.exists() and not (run / "asr").exists()
    finally:
        holder.kill()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_recording_exported_again_under_another_id_is_erased_with_the_one_requested(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The same recording can reach the corpus twice (a clip annotated again in a later batch gets a
    new id). The audit finds the other copy by its audio; erase used to keep it, so the audit failed
    after every erase and the recording stayed in training. Erase now takes every copy of a deleted
    clip's audio (its bytes, or its decoded samples in another file) from cached datasets and exports,
    and tombstones the copy's id, so no later build brings it back."""
    from datasets import Dataset, DatasetDict

    from bench.erase import _flac, _rows
    from pipeline.data.features import dataset_features
    from pipeline.data.privacy import TOMBSTONES_FILE, erased_request_files, erased_requests, read_pseudonyms

    root, key = store["root"], KEY.encode()
    rng = np.random.default_rng(3)
    rows = [{**r, "source": "demo", "copy_of": None} for r in _rows(key, 8, 4, False, rng)]
    rows[0]["utterance_id"], rows[1]["utterance_id"] = "dup-a", "dup-b"
    rows[1]["audio"] = dict(rows[0]["audio"])  # another account, another id, the same recording
    both = root / "cache" / "datasets" / "dupes00000000000000"
    later = root / "cache" / "datasets" / "laterbatch000000000"
    copy = {**rows[2], "utterance_id": "dup-c", "audio": dict(rows[0]["audio"])}
    for folder, split_rows in ((both, rows), (later, [copy, rows[3]])):
        DatasetDict({"train": Dataset.from_list(split_rows, features=dataset_features(with_source=True))}).save_to_disk(str(folder))
        (folder / "build_report.json").write_text(json.dumps({"fingerprint": folder.name}) + "\n")
    # An export holding the requested clip, its copy in a WAV file (the same samples), and a kept clip.
    export = root / "cache" / "demo" / "export0"
    (export / "audio").mkdir(parents=True)
    (export / "audio" / "a.flac").write_bytes(rows[0]["audio"]["bytes"])
    import io

    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(rows[0]["audio"]["bytes"]), dtype="int16")
    sf.write(export / "audio" / "d.wav", samples, rate, subtype="PCM_16")
    (export / "audio" / "e.flac").write_bytes(_flac(rng, 1.0))
    records = [{"utterance_id": "dup-a", "account_id": "acct-a", "audio": "audio/a.flac"},
               {"utterance_id": "dup-d", "account_id": "acct-d", "audio": "audio/d.wav"},
               {"utterance_id": "keep-e", "account_id": "acct-e", "audio": "audio/e.flac"}]
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with open(root / "inbox" / "deletions" / "request.jsonl", "a") as f:
        f.write(json.dumps({"utterance_id": "dup-a"}) + "\n")

    assert audit.main(overrides(root)) == 3
    capsys.readouterr()
    assert erase.main(overrides(root)) == 0
    assert not both.exists() and not later.exists()
    assert [json.loads(x)["utterance_id"] for x in (export / "annotations.jsonl").read_text().splitlines()] == ["keep-e"]
    assert sorted(p.name for p in (export / "audio").iterdir()) == ["e.flac"]
    copies = {erase.utterance_pseudonym(key, u) for u in ("dup-b", "dup-c", "dup-d")}
    assert copies <= read_pseudonyms(root / "cache" / "retrain" / "corpus" / TOMBSTONES_FILE)
    assert copies <= erased_requests(erased_request_files(root / "cache")).pseudonyms  # what every build reads
    receipt = _receipt(root)
    assert sorted(receipt["audio_copies"]) == sorted(copies)
    assert {r["request"]: r["status"] for r in receipt["requests"]}[erase.utterance_pseudonym(key, "dup-a")] == "erased"
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_folder_evaluate_py_wrote_is_erased_like_a_run(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`python evaluate.py asr_model=... dataset=...` writes predictions, reports and plots of the
    dataset it scores into a folder without a build report. Erase did not count it as a run, so the
    deleted account's lines stayed there and the audit failed after every erase."""
    from pipeline.data.privacy import pseudonym

    root, key = store["root"], KEY.encode()
    victim = {"utterance_id": "d0-u0", "speaker": pseudonym(key, "acct", VICTIM), "reference": VICTIM_SENTENCES[0],
              "hypothesis": VICTIM_SENTENCES[0]}
    folders = {}
    for name, fingerprint in (("of-erased", store["fingerprints"][0]), ("of-kept", store["fingerprints"][1])):
        folder = root / "outputs" / "evaluate" / name
        (folder / ".hydra-evaluate").mkdir(parents=True)
        (folder / ".hydra-evaluate" / "config.yaml").write_text(f"dataset: {root / 'cache' / 'datasets' / fingerprint}\n")
        (folder / "eval_details.json").write_text(json.dumps({"test_data": {"dataset_fingerprint": fingerprint}}))
        (folder / "metrics.json").write_text(json.dumps({"asr/wer": 0.5}))
        other = {**victim, "utterance_id": "x-1", "speaker": "acct_0000000000000000", "reference": "play jazz",
                 "hypothesis": "play jazz"}
        (folder / "predictions.jsonl").write_text(json.dumps(victim) + "\n" + json.dumps(other) + "\n")
        (folder / "report.md").write_text(f"| clip | reference |\n|---|---|\n| d0-u0 | {VICTIM_SENTENCES[0]} |\n")
        folders[name] = folder

    # `evaluate.py run=<a run of a kept dataset> dataset=<the erased one>` scored it in place.
    in_place = store["runs"][1]
    assert json.loads((in_place / "build_report.json").read_text())["fingerprint"] != store["fingerprints"][0]
    (in_place / "eval_details.json").write_text(json.dumps({"test_data": {"dataset_fingerprint": store["fingerprints"][0]}}))
    (in_place / "predictions.jsonl").write_text(json.dumps(victim) + "\n")
    # An evaluation of the erased dataset still running: nothing but its config yet, and its lock.
    running = root / "outputs" / "evaluate" / "running"
    (running / ".hydra-evaluate").mkdir(parents=True)
    (running / ".hydra-evaluate" / "config.yaml").write_text(f"dataset: {root / 'cache' / 'datasets' / store['fingerprints'][0]}\n")

    assert audit.main(overrides(root)) == 3
    assert str(folders["of-erased"] / "predictions.jsonl") in capsys.readouterr().out
    from pipeline import run_folder

    with run_folder.writing(running):
        assert erase.main(overrides(root)) == 4  # it would write the deleted clips after the receipt
    assert (folders["of-erased"] / "predictions.jsonl").is_file()  # nothing was removed
    assert erase.main(overrides(root)) == 0
    assert not (in_place / "predictions.jsonl").exists() and (in_place / DO_NOT_SYNC).is_file()
    # Scored on the erased dataset: what it derived goes, and it is never uploaded; the totals stay.
    erased = folders["of-erased"]
    assert not (erased / "predictions.jsonl").exists() and not (erased / "report.md").exists()
    assert (erased / DO_NOT_SYNC).is_file() and (erased / "metrics.json").is_file()
    # Scored on a kept dataset: only the deleted account's line goes.
    kept = folders["of-kept"]
    assert [json.loads(x)["utterance_id"] for x in (kept / "predictions.jsonl").read_text().splitlines()] == ["x-1"]
    assert not (kept / DO_NOT_SYNC).exists()
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_silence_and_empty_files_are_no_ones_copy(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Every muted microphone's clip of one length has the same bytes, and every empty file too: when a
    deleted clip is one of those, another account's identical clip is not a copy of it."""
    import io

    import soundfile as sf
    from datasets import Dataset, DatasetDict

    from bench.erase import _rows
    from pipeline.data.features import dataset_features
    from pipeline.data.privacy import TOMBSTONES_FILE, read_pseudonyms

    root, key = store["root"], KEY.encode()
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000, dtype=np.float32), 16000, format="FLAC")
    silent = {"bytes": buffer.getvalue(), "path": None}
    empty = {"text": "", "transcript": "", "words": [], "bio_tags": [], "intent": None, "wake_word_present": False}
    rng = np.random.default_rng(5)
    folders = {name: root / "cache" / "datasets" / name for name in ("mutes000000000000000", "others00000000000000")}
    for (name, folder), uid in zip(folders.items(), ("mute-a", "mute-b")):
        rows = [{**r, "source": "demo", "copy_of": None} for r in _rows(key, 5 + len(uid), 3, False, rng)]
        rows[0].update(utterance_id=uid, audio=silent, **empty)
        DatasetDict({"train": Dataset.from_list(rows, features=dataset_features(with_source=True))}).save_to_disk(str(folder))
        (folder / "build_report.json").write_text(json.dumps({"fingerprint": name}) + "\n")
    export = root / "cache" / "demo" / "mutes"
    (export / "audio").mkdir(parents=True)
    for name in ("a.wav", "c.wav"):
        sf.write(export / "audio" / name, np.zeros(16000, dtype=np.float32), 16000)
    for name in ("e.wav", "f.wav"):
        (export / "audio" / name).write_bytes(b"")
    records = [{"utterance_id": u, "account_id": f"acct-{u}", "audio": f"audio/{f}"}
               for u, f in (("mute-a", "a.wav"), ("mute-c", "c.wav"), ("empty-e", "e.wav"), ("empty-f", "f.wav"))]
    (export / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with open(root / "inbox" / "deletions" / "request.jsonl", "a") as f:
        f.write(json.dumps({"utterance_id": "mute-a"}) + "\n" + json.dumps({"utterance_id": "empty-e"}) + "\n")

    assert erase.main(overrides(root)) == 0
    assert not folders["mutes000000000000000"].exists() and folders["others00000000000000"].exists()
    assert [json.loads(x)["utterance_id"] for x in (export / "annotations.jsonl").read_text().splitlines()] == [
        "mute-c", "empty-f"]
    tombstones = read_pseudonyms(root / "cache" / "retrain" / "corpus" / TOMBSTONES_FILE)
    assert not {erase.utterance_pseudonym(key, u) for u in ("mute-b", "mute-c", "empty-f")} & tombstones
    assert _receipt(root)["audio_copies"] == []
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_copy_in_a_new_batch_is_kept_out_of_training_and_out_of_the_merged_corpus(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Retraining found copies only after training, so it promoted a model of the copy and erased it in
    the same job; and erase left the copy's record in the merged corpus export until the next intake."""
    from bench.erase import _rows
    from pipeline.data.privacy import TOMBSTONES_FILE, pseudonym, read_pseudonyms
    from pipeline.ops.corpus import remerge, update_corpus
    from pipeline.ops.inventory import Roots

    root, key = store["root"], KEY.encode()
    victim = pseudonym(key, "acct", VICTIM)
    flac = next(row["audio"] for row in erase.dataset_rows(root / "cache" / "datasets" / store["fingerprints"][0],
                                                            ("audio", "speaker")) if row["speaker"] == victim)
    batch = root / "inbox" / "b9"
    (batch / "audio").mkdir(parents=True)
    (batch / "audio" / "copy.flac").write_bytes(flac)  # the victim's recording, under another account
    (batch / "audio" / "keep.flac").write_bytes(_rows(key, 9, 1, False, np.random.default_rng(6))[0]["audio"]["bytes"])
    records = [{"utterance_id": "copy-1", "account_id": "acct-other", "audio": "audio/copy.flac", "transcript": "x"},
               {"utterance_id": "keep-1", "account_id": "acct-other", "audio": "audio/keep.flac", "transcript": "y"}]
    (batch / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    roots = Roots.from_cfg(load_config(overrides(root)))

    # What a retraining does before it trains: the requests' source audio into the ledger, the intake,
    # then copies tombstoned and purged from the corpus.
    erase.record_source_audio(roots, key)
    update_corpus(roots.inbox, roots.corpus, key)
    assert erase.tombstone_copies(roots, key) == {erase.utterance_pseudonym(key, "copy-1")}
    remerge(roots.corpus, key)
    for export in (roots.corpus / "annotations.jsonl", roots.corpus / "batches" / "b9" / "annotations.jsonl"):
        assert [json.loads(x)["utterance_id"] for x in export.read_text().splitlines()] == ["keep-1"]
    assert not (roots.corpus / "batches" / "b9" / "audio" / "copy.flac").exists()
    assert erase.utterance_pseudonym(key, "copy-1") in read_pseudonyms(roots.corpus / TOMBSTONES_FILE)

    # The erasure after the decision names the copy in its receipt; the audit is clean.
    assert erase.main(overrides(root)) == 0
    assert _receipt(root)["audio_copies"] == [erase.utterance_pseudonym(key, "copy-1")]
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_promoted_model_that_never_trained_on_the_deleted_clip_keeps_its_weights(store: dict[str, Any]) -> None:
    """The deleted account's clips in the promoted model's dataset only where it was tested: the
    retraining kept that model (its weights never saw them: `Registry.affected_by`), and the
    erasure after the decision then deleted its weights by its dataset, leaving a promoted model
    without weights that failed every later gate."""
    from datasets import load_from_disk

    from pipeline.asr.lm import write_char_lm

    root = store["root"]
    key = KEY.encode()
    victim = erase.pseudonym(key, "acct", VICTIM)
    dataset = load_from_disk(str(root / "cache" / "datasets" / store["fingerprints"][0]))
    fit = [r for s in ("train", "validation") for r in dataset[s] if r["speaker"] != victim]
    # The model as if the account's clips had all been in its test split: its LM never heard them.
    trained = root / "elsewhere" / "run"
    (trained / "asr").mkdir(parents=True)
    (trained / "nlu").mkdir()
    for part in ("asr", "nlu"):
        (trained / part / "model.safetensors").write_bytes(b"weights")
    write_char_lm(trained / "asr" / "lm", [r["text"] for r in dataset["train"] if r["speaker"] != victim], VOCAB, "|", 6)
    registry = Registry(root / "registry")
    registry.promote(trained, {"model_id": "tested-only", "dataset_fingerprint": store["fingerprints"][0], "metrics": {},
                               "trained_on": sorted(erase.utterance_pseudonym(key, r["utterance_id"]) for r in fit)})
    assert erase.main(overrides(root)) == 0
    assert registry.current()["model_id"] == "tested-only" and registry.has_weights("tested-only")
    assert not registry.has_weights("model-0")  # trained on the account's clips: erased as before
    assert audit.main(overrides(root)) == 0


def test_a_job_killed_after_the_intake_purged_a_recording_still_finds_its_copy_later(store: dict[str, Any]) -> None:
    """The intake deleted a requested clip's source file and kept its hash in memory until after the
    purge; a job killed in between lost it, and a later batch holding the same recording under
    another id was trained on. The hash is in the ledger before the file goes."""
    from bench.erase import _rows
    from pipeline.ops.corpus import update_corpus
    from pipeline.ops.inventory import Roots

    root, key = store["root"], KEY.encode()
    roots = Roots.from_cfg(load_config(overrides(root)))
    (root / "inbox" / "deletions" / "request.jsonl").unlink()  # the store's own request: not this test's
    flac = _rows(key, 7, 1, False, np.random.default_rng(7))[0]["audio"]["bytes"]

    def batch(name: str, account: str) -> None:
        (root / "inbox" / name / "audio").mkdir(parents=True)
        (root / "inbox" / name / "audio" / "a.flac").write_bytes(flac)
        (root / "inbox" / name / "annotations.jsonl").write_text(json.dumps(
            {"utterance_id": f"{name}-1", "account_id": account, "audio": "audio/a.flac", "transcript": "x"}) + "\n")

    batch("b1", "acct-gone")
    update_corpus(roots.inbox, roots.corpus, key)
    (root / "inbox" / "deletions" / "request.jsonl").write_text(json.dumps({"account_id": "acct-gone"}) + "\n")
    # Job 1: the requests' sources into the ledger, the intake purges b1's file, then the job is killed.
    erase.record_source_audio(roots, key)
    update_corpus(roots.inbox, roots.corpus, key)
    assert not (roots.corpus / "batches" / "b1" / "audio" / "a.flac").exists()
    # Job 2: the same recording arrives under another account and id.
    batch("b2", "acct-other")
    erase.record_source_audio(roots, key)
    update_corpus(roots.inbox, roots.corpus, key)
    assert erase.tombstone_copies(roots, key) == {erase.utterance_pseudonym(key, "b2-1")}


def test_a_copy_in_no_place_erasure_manages_is_marked_for_removal_by_hand(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A deleted clip's audio saved by hand under the cache: erasure removes only what it knows the
    shape of, so the audit said "run `make erase`" after every erase. It names the files to remove by hand."""
    from pipeline.data.privacy import pseudonym

    root, key = store["root"], KEY.encode()
    victim = pseudonym(key, "acct", VICTIM)
    flac = next(row["audio"] for row in erase.dataset_rows(root / "cache" / "datasets" / store["fingerprints"][0],
                                                            ("audio", "speaker")) if row["speaker"] == victim)
    assert erase.main(overrides(root)) == 0
    (root / "cache" / "exports").mkdir()
    (root / "cache" / "exports" / "x.flac").write_bytes(flac)
    capsys.readouterr()
    assert audit.main(overrides(root)) == 3
    out = capsys.readouterr().out
    assert "1 in no place erasure manages (marked *): remove those by hand" in out
    assert "*unregistered" in out and str(root / "cache" / "exports" / "x.flac") in out
    assert erase.main(overrides(root)) == 0 and (root / "cache" / "exports" / "x.flac").exists()


def test_a_transcript_an_html_report_escapes_is_still_found_and_dropped(tmp_path: Path) -> None:
    """Before the fix: report.html writes "what's" as "what&#x27;s", so neither erasure nor the audit
    matched a deleted transcript with an apostrophe there."""
    key = KEY.encode()
    said = "alexa what's the weather forecast for today"
    texts = {erase.text_hash(key, said)}
    line = "<tr><td>demo-01549</td><td>alexa what&#x27;s the weather forecast for today</td></tr>\n"
    assert erase.mentions(key, set(), texts, line)
    report = tmp_path / "report.html"
    report.write_text("<table>\n" + line + "<tr><td>kept</td><td>alexa play jazz</td></tr>\n</table>\n")
    assert erase.filter_report(report, key, set(), texts) == 1
    assert "what&#x27;s" not in report.read_text() and "alexa play jazz" in report.read_text()
    assert said in audit._texts_in(line)


def test_staged_copies_of_run_folders_removed_by_hand_are_erased_by_what_they_hold(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    """Before the fix: after `make clean` removed the run folders, W&B's staged copies of their files
    could not be tied to a run; erasure left them and the audit asked for `make erase` forever."""
    import shutil

    root = store["root"]
    staging = root / "cache" / "wandb" / "data" / "artifacts" / "staging"
    staging.mkdir(parents=True)
    (staging / "tmp8f3k2").write_text(json.dumps({"utterance_id": "x", "reference": VICTIM_SENTENCES[0],
                                                  "hypothesis": "please order"}) + "\n")
    (staging / "tmp0kept").write_text(json.dumps({"utterance_id": "y", "reference": "alexa play jazz"}) + "\n")
    for run in store["runs"]:
        shutil.rmtree(run)  # `make clean`
    assert erase.main(overrides(root)) == 0
    assert not (staging / "tmp8f3k2").exists() and (staging / "tmp0kept").exists()
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out



def test_an_erasure_killed_after_it_removed_a_dataset_still_erases_the_transcripts_it_held(
        store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the fix: erasure removed the cached datasets holding a deleted clip first and wrote what
    the audit and later erasures look for (the clips' transcript and audio hashes) to the ledger only
    at its very end. A job killed in between left the dataset gone and its clips unrecorded: the next
    erasure kept another run's report line quoting a deleted transcript, and the audit called it clean."""
    root = store["root"]
    report = store["runs"][1] / "report.md"  # a run of a dataset without the victim's clips
    kept_report = report.read_text()
    report.write_text(kept_report + f"| late-2 | {VICTIM_SENTENCES[1]} |\n")

    def killed(roots: Any, copies: set[str], key: bytes) -> set[str]:
        raise KeyboardInterrupt  # the job killed after the cached datasets went

    with monkeypatch.context() as patched:
        patched.setattr(erase, "add_tombstones", killed)
        with pytest.raises(KeyboardInterrupt):
            erase.main(overrides(root))
    assert not (root / "cache" / "datasets" / store["fingerprints"][0]).exists()

    capsys.readouterr()
    assert audit.main(overrides(root)) == 3, capsys.readouterr().out  # the job did not finish
    assert erase.main(overrides(root)) == 0
    assert report.read_text() == kept_report
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_run_that_keeps_its_model_loses_the_wandb_run_that_logged_a_deleted_clip(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Before the fix: a run not trained on the deleted account but evaluated on its clips
    (`evaluate.py run=<run> dataset=<one since cleaned from the cache>`) lost only the lines of its
    predictions and reports. The predictions table its evaluation logged to its offline W&B run kept
    the deleted clip's pseudonymous ids: `make sync` would upload them, and the audit found them after
    every erasure, which never removed them."""
    from pipeline.data.privacy import pseudonym

    root, run = store["root"], store["runs"][1]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    predictions = run / "predictions.jsonl"
    kept_predictions = predictions.read_text()
    predictions.write_text(kept_predictions + json.dumps({"utterance_id": "late-1", "speaker": victim,
                                                          "reference": "alexa", "hypothesis": "alexa"}) + "\n")
    (run / "wandb_run_id").write_text("evalrun1\n")
    offline = run / "wandb" / "offline-run-20261206_000000-evalrun1"
    table = offline / "files" / "media" / "table" / "predictions_3_0123456789abcdef.table.json"
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps({"columns": ["utterance_id", "speaker", "wer"],
                                 "data": [["late-1", victim, 0.0], ["d1-u0", "acct_0000000000000000", 0.5]]}))
    (offline / "run-evalrun1.wandb").write_bytes(b":W&B\x00\x00\x01")
    (offline / "run-evalrun1.wandb.synced").write_text("")  # `make sync` uploaded it

    capsys.readouterr()
    assert audit.main(overrides(root)) == 3
    assert str(table) in capsys.readouterr().out
    job = erase.erase(load_config(overrides(root)))
    assert predictions.read_text() == kept_predictions
    assert (run / "asr" / "model.safetensors").is_file()  # it never trained on the account
    assert not offline.exists()  # never uploaded as it was
    assert job.online_pending == ["evalrun1"]  # its uploaded copy goes when W&B is reachable
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_trimmed_run_redraws_its_wer_plot_without_the_deleted_speaker(store: dict[str, Any]) -> None:
    """Before the fix: erasure dropped a deleted speaker's entry from a kept run's eval_details.json but
    left plots/wer_slices.png, which draws each speaker's pseudonym as a bar label: the image still
    named the deleted account, where neither the audit (it reads no images) nor a later erasure looked.
    Nor did its copies: staged for W&B, and logged to the run's offline W&B run as an image."""
    from pipeline.data.privacy import pseudonym
    from pipeline.eval.report import plot_slices

    root, run = store["root"], store["runs"][1]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    kept = {"acct_0000000000000000": {"wer": 0.1, "clips": 4}}
    details = {"wer_by": {"speaker": {victim: {"wer": 0.5, "clips": 3}, **kept}}}
    (run / "eval_details.json").write_text(json.dumps(details))
    (run / "plots").mkdir(exist_ok=True)
    plot = plot_slices(details["wer_by"], run / "plots" / "wer_slices.png")
    expected = plot_slices({"speaker": kept}, root / "expected.png").read_bytes()
    assert plot.read_bytes() != expected

    # Its copies as W&B holds them: staged for the evaluation's artifact, and logged to the run as an image.
    staged = root / "cache" / "wandb" / "data" / "artifacts" / "staging" / "wer_slices.png"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(plot.read_bytes())
    logged = run / "wandb" / "offline-run-20261206_000000-plotrun1" / "files" / "media" / "images" / "wer_slices_1_ab.png"
    logged.parent.mkdir(parents=True)
    logged.write_bytes(plot.read_bytes())
    (run / "wandb_run_id").write_text("plotrun1\n")

    assert erase.main(overrides(root)) == 0
    assert json.loads((run / "eval_details.json").read_text()) == {"wer_by": {"speaker": kept}}
    assert plot.read_bytes() == expected
    assert not staged.exists() and not logged.exists()


def test_a_model_folder_caught_mid_swap_is_erased_with_its_run(store: dict[str, Any]) -> None:
    """Before the fix: a run killed while its new ASR model folder was swapped in keeps the weights
    and checkpoints under `.asr.new/` or `.asr.old/` until it trains again; erasure matched run files
    by the folders it knew (`asr/*`), so a run trained on a deleted clip kept them there."""
    root, run = store["root"], store["affected_runs"][0]
    left = [run / ".asr.old" / "checkpoints" / "step-000010" / "model.safetensors", run / ".asr.old" / "lm" / "lm.arpa",
            run / ".asr.new" / "model.safetensors"]
    for f in left:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"weights of a deleted voice")
    assert erase.main(overrides(root)) == 0
    assert not [f for f in left if f.exists()]


def _sparse_log(path: Path, needles: dict[int, bytes], size: int) -> None:
    """A `.wandb` log of `size` bytes, zeros (a sparse file: nothing written) but for each needle at
    its offset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b":W&B\x00\x00\x01")
        for offset, needle in needles.items():
            f.seek(offset)
            f.write(needle)
        f.truncate(size)


def test_a_wandb_log_over_the_binary_size_is_searched_to_its_end(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: the audit and the erasure skipped every file over 64 MiB (`BINARY_BYTES`), a
    run's `.wandb` log included, so a deleted clip's id logged past that was never found, and `make
    sync` uploaded it. Now files are read in chunks (pipeline.ops.textscan): a needle past the size,
    and one across a chunk boundary, are found, and the W&B runs holding them go. The size and the
    chunks are made small here, so the logs are a few MiB."""
    from pipeline.data.privacy import pseudonym
    from pipeline.ops import textscan

    monkeypatch.setattr(textscan, "BINARY_BYTES", 4 * 2**20)
    monkeypatch.setattr(textscan, "CHUNK_BYTES", 2**20)
    monkeypatch.setattr(textscan, "OVERLAP_BYTES", 4096)
    root, long_run, cut_run = store["root"], store["runs"][1], store["runs"][2]
    assert not {long_run, cut_run} & set(store["affected_runs"])  # neither was trained on the account
    victim = pseudonym(KEY.encode(), "acct", VICTIM).encode()
    beyond = textscan.BINARY_BYTES + 12345
    long_log = long_run / "wandb" / "offline-run-20261206_000000-long1" / "run-long1.wandb"
    _sparse_log(long_log, {beyond: b'{"speaker": "' + victim + b'"}'}, beyond + 2**20)
    sentence = f'"{VICTIM_SENTENCES[1]}"'.encode()
    straddling = 3 * 2**20 - len(sentence) // 2  # across the boundary of the third chunk
    cut_log = cut_run / "wandb" / "offline-run-20261206_000000-cut2" / "run-cut2.wandb"
    _sparse_log(cut_log, {straddling: sentence}, 5 * 2**20)
    chunks = list(textscan.text_chunks(cut_log))
    assert len(chunks) == 5 and b"".join(chunks) == cut_log.read_bytes()
    assert sum(sentence in c for c in chunks) == 1

    findings, _, _ = audit.scan(load_config(overrides(root)))
    found = {(f.path, f.trace) for f in findings}
    assert (str(long_log), "pseudonym") in found and (str(cut_log), "transcript") in found

    erase.erase(load_config(overrides(root)))
    assert not long_log.exists() and not cut_log.exists()
    assert (long_run / "asr" / "model.safetensors").is_file()  # the runs keep their models
    assert audit.main(overrides(root)) == 0


def test_a_staged_copy_over_the_binary_size_that_holds_text_is_searched(
        store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: a file over 64 MiB with no text suffix was taken for a model or audio and never
    read, but W&B stages every copy under a suffixless name, so a deleted clip's id in a large staged
    table went unseen by the audit and the erasure (and `make sync` uploaded it). The size is made
    small here; the id lies past it and past the first bytes looked at."""
    from pipeline.data.privacy import pseudonym
    from pipeline.ops import textscan

    monkeypatch.setattr(textscan, "BINARY_BYTES", 2**16)
    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    staging = root / "cache" / "wandb" / "data" / "artifacts" / "staging"
    staging.mkdir(parents=True)
    table = staging / "tmpq7w1table"
    kept = json.dumps({"utterance_id": "kept", "speaker": "someone else", "reference": "alexa play jazz"}) + "\n"
    rows = kept * (2 * 2**16 // len(kept)) + json.dumps({"utterance_id": "z", "speaker": victim}) + "\n"
    table.write_text(rows)
    assert table.stat().st_size > 2**16 and rows.index(victim) > 2**16

    findings, _, _ = audit.scan(load_config(overrides(root)))
    assert (str(table), "pseudonym") in {(f.path, f.trace) for f in findings}
    erase.erase(load_config(overrides(root)))
    assert not table.exists()
    assert audit.main(overrides(root)) == 0


def test_a_staged_model_or_recording_over_the_binary_size_is_still_not_read(
        store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights and audio are erased by what they were made from, not by their bytes: reading one
    costs seconds per GiB for no text. Their headers (safetensors' 8-byte length, a WAV's RIFF sizes)
    hold a NUL byte at once, so a suffixless staged copy over the size is still passed by, even with
    text a search would match inside it."""
    import struct

    from pipeline.data.privacy import pseudonym
    from pipeline.ops import textscan

    monkeypatch.setattr(textscan, "BINARY_BYTES", 2**16)
    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM).encode()
    staging = root / "cache" / "wandb" / "data" / "artifacts" / "staging"
    staging.mkdir(parents=True)
    header = json.dumps({"__metadata__": {"speaker": victim.decode()},
                         "w": {"dtype": "F32", "shape": [2**15], "data_offsets": [0, 2**17]}}).encode()
    weights = staging / "tmp3m9weights"
    weights.write_bytes(struct.pack("<Q", len(header)) + header + bytes(2**17))
    title = VICTIM_SENTENCES[0].encode() + b"\0"
    info = b"INFO" + b"INAM" + struct.pack("<I", len(title)) + title
    samples = np.random.default_rng(0).integers(-2**15, 2**15, 2**16, dtype=np.int16).tobytes()
    chunks = (b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
              + b"LIST" + struct.pack("<I", len(info)) + info + b"data" + struct.pack("<I", len(samples)) + samples)
    recording = staging / "tmp5r2audio"
    recording.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    for f in (weights, recording):
        assert f.stat().st_size > 2**16 and not textscan.searched(f)

    findings, _, _ = audit.scan(load_config(overrides(root)))
    assert not [f for f in findings if f.path in (str(weights), str(recording))]
    erase.erase(load_config(overrides(root)))
    assert weights.is_file() and recording.is_file()


def test_a_text_file_named_as_no_text_is_read_by_the_audit_and_left_for_removal_by_hand(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Before the fix: the audit read a file as text only when its name ended in a text suffix, so a
    copy a person made (`notes`, `eval.tsv`, `predictions.jsonl.bak`) naming a deleted clip was never
    read and the audit called the roots clean. Now a file whose first bytes hold no NUL is read as
    text; erasure rewrites only the files the pipeline writes, so these are named for removal by hand."""
    from pipeline.data.privacy import pseudonym

    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    assert erase.main(overrides(root)) == 0
    run = next(r for r in store["runs"] if r not in store["affected_runs"])
    notes = run / "notes"
    notes.write_text(f"look at {victim} again\n")
    table = run / "eval.tsv"
    table.write_text(f"id\treference\nx1\t{VICTIM_SENTENCES[0]}\nx2\talexa play jazz\n")
    backup = run / "predictions.jsonl.bak"
    backup.write_text(json.dumps({"utterance_id": "x", "speaker": victim, "reference": "alexa play jazz"}) + "\n")
    capsys.readouterr()

    assert audit.main(overrides(root)) == 3
    out = capsys.readouterr().out
    assert "3 in no place erasure manages (marked *): remove those by hand" in out
    for path, trace in ((notes, "pseudonym"), (table, "transcript"), (backup, "pseudonym")):
        [line] = [line for line in out.splitlines() if line.endswith(")") and f" {path}  (" in line]
        assert line.startswith(" *") and trace in line and "remove it by hand" in line, line
    assert erase.main(overrides(root)) == 0 and notes.exists() and table.exists() and backup.exists()
    for path in (notes, table, backup):
        path.unlink()
    capsys.readouterr()
    assert audit.main(overrides(root)) == 0, capsys.readouterr().out


def test_a_binary_file_named_as_no_text_is_not_read_by_the_audit(store: dict[str, Any]) -> None:
    """Weights, arrays and dataset shards hold a NUL byte in their first bytes (lengths, magic
    numbers): read as text they would cost their size for no finding, and stray bytes in them could
    pass for a transcript. One that holds a deleted id as bytes after its header is still not read."""
    from pipeline.data.privacy import pseudonym

    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    assert erase.main(overrides(root)) == 0
    run = next(r for r in store["runs"] if r not in store["affected_runs"])
    array = run / "embeddings.npz"
    array.write_bytes(b"\x93NUMPY\x01\x00" + bytes(64) + f"\n{victim}\n{VICTIM_SENTENCES[0]}\n".encode())
    shards = [p for p in (root / "cache" / "datasets").rglob("*.arrow")]
    assert shards  # the kept datasets' shards, read row by row elsewhere, not as text

    findings, _, _ = audit.scan(load_config(overrides(root)))
    assert not [f for f in findings if f.path == str(array) or f.path.endswith(".arrow")], findings
    assert audit.main(overrides(root)) == 0


def _ended_pid() -> str:
    """The id of a process that has ended: a writer killed before its rename."""
    import subprocess

    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_write_a_killed_job_left_in_a_run_folder_is_found_and_erased(store: dict[str, Any]) -> None:
    """A file written whole (pipeline.runtime.write_text_atomic) is first written as
    `.tmp-<name>.<pid>`; a job killed before the rename leaves it, holding what the file held. Its name
    has no text suffix, so the audit never read it. Now the audit finds it, and erasure removes it from a
    run that keeps its models, once its writer is gone."""
    from pipeline.data.privacy import pseudonym

    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    gone = _ended_pid()
    run = next(r for r in store["runs"] if r not in store["affected_runs"])
    left = run / f".tmp-predictions.jsonl.{gone}"
    left.write_text(json.dumps({"utterance_id": "x", "speaker": victim, "reference": VICTIM_SENTENCES[0]}) + "\n")
    kept = run / f".tmp-report.md.{gone}"
    kept.write_text("| kept | alexa play jazz |\n")

    findings, _, _ = audit.scan(load_config(overrides(root)))
    assert (str(left), "pseudonym") in {(f.path, f.trace) for f in findings}
    assert erase.main(overrides(root)) == 0
    assert not left.exists() and kept.exists()
    assert audit.main(overrides(root)) == 0


def test_a_write_a_killed_job_left_outside_run_folders_is_found_and_erased(store: dict[str, Any]) -> None:
    """A model's record (`trained_on` lists pseudonyms) or a cached dataset's quarantine lines are
    written whole too: a job killed before the rename leaves `.tmp-<name>.<pid>` in the registry's
    model folder or the dataset's folder. The audit finds it as erasure's to remove (no `*`), erasure
    removes it once its writer is gone, and the audit is clean after; another text file there is still
    left for removal by hand."""
    from pipeline.data.privacy import pseudonym

    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    gone = _ended_pid()
    record = Registry(root / "registry").model_dir("model-2") / f".tmp-record.json.{gone}"
    record.write_text(json.dumps({"model_id": "model-2", "trained_on": [victim]}, indent=2))
    lines = root / "cache" / "datasets" / store["fingerprints"][1] / f".tmp-quarantine.jsonl.{gone}"
    lines.write_text(json.dumps({"utterance_id": "x", "speaker": victim, "reason": "flagged"}) + "\n")
    clean = record.with_name(f".tmp-record.promoting.json.{gone}")  # names no deleted clip: left as it is
    clean.write_text(json.dumps({"model_id": "model-2", "trained_on": []}))

    findings, _, _ = audit.scan(load_config(overrides(root)))
    found = {(f.path, f.trace): f.by_hand for f in findings}
    assert found.get((str(record), "pseudonym")) is False, findings
    assert found.get((str(lines), "pseudonym")) is False, findings
    assert erase.main(overrides(root)) == 0
    assert not record.exists() and not lines.exists() and clean.exists()
    removed = {r["path"]: r for r in _receipt(root)["removed"]}
    assert removed[str(record)]["kind"] == removed[str(lines)]["kind"] == "unfinished write"
    assert (removed[str(record)]["place"], removed[str(lines)]["place"]) == ("registry model", "cached dataset")
    assert audit.main(overrides(root)) == 0

    notes = record.with_name("notes")  # not the pipeline's own file: a person removes it
    notes.write_text(f"look at {victim} again\n")
    findings, _, _ = audit.scan(load_config(overrides(root)))
    assert [f.by_hand for f in findings if f.path == str(notes)] == [True], findings


def test_a_write_whose_job_still_runs_is_left_alone(store: dict[str, Any]) -> None:
    """A `.tmp-` file whose writer still runs is renamed over its file in a moment: removing it
    under the writer would fail that job, so erasure leaves it (the next erasure or audit sees the file)."""
    import os

    from pipeline.data.privacy import pseudonym

    root = store["root"]
    victim = pseudonym(KEY.encode(), "acct", VICTIM)
    writing = Registry(root / "registry").model_dir("model-2") / f".tmp-record.json.{os.getpid()}"
    writing.write_text(json.dumps({"model_id": "model-2", "trained_on": [victim]}, indent=2))
    assert erase.main(overrides(root)) == 0
    assert writing.exists()
    assert str(writing) not in {r["path"] for r in _receipt(root)["removed"]}
