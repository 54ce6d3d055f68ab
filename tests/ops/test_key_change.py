"""A pseudonym key change (a new cache folder makes a new key file; the environment variable is
rotated) must not let stored pseudonyms pass unmatched. Model records, the corpus's tombstones,
erasure's ledger, run folders' clip lists and cached datasets' build reports name the key they were made
with; promote, rollback, affected_by, erasure, the audit and the build refuse one made under another key,
and say what to do (the audit names a cached dataset as not judged instead).

Before the fix: model records named no key, so after a key change a deletion request's pseudonym
(new key) never met the model's `trained_on` (old key): `make rollback` went back to, and `make
promote` promoted, a model trained on the deleted clip, and erasure and the audit passed it as clean.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline import run_folder
from pipeline.data.privacy import key_id, load_key
from pipeline.ops import audit, erase
from pipeline.ops.corpus import pseudonym_key, update_corpus, utterance_pseudonym
from pipeline.ops.promote import write_candidate
from pipeline.ops.registry import Registry
from pipeline.ops.retrain import EXIT_CONFIG, EXIT_OK, run_retrain
from pipeline.runtime import PipelineError
from tests.ops.test_promote_rollback import _cfg as job_cfg
from tests.ops.test_erase import KEY as ERASE_KEY
from tests.ops.test_erase import overrides as erase_overrides
from tests.ops.test_promote_rollback import _run

ENV = "TEST_ROTATED_PSEUDONYM_KEY"
KEY_ID_FILE = "pseudonym_key_id"  # the stamp in a folder of stored pseudonyms
NEW_KEY = "a-rotated-key-that-must-never-show"


def _cfg(tmp: Path, **retrain: object) -> OmegaConf:
    """The promote/rollback tests' job config, its key read from ENV when that is set."""
    return OmegaConf.merge(job_cfg(tmp, **retrain), {"privacy": {"key_env": ENV}})


def _record(key: bytes, model_id: str, run: Path, utterances: list[str]) -> dict:
    """A record as registration writes it, naming its key."""
    return {"model_id": model_id, "dataset_fingerprint": "fp-" + model_id, "metrics": {"asr/wer": 0.2},
            "run_dir": str(run), "state": "state-" + model_id, "key_id": key_id(key),
            "trained_on": sorted(utterance_pseudonym(key, u) for u in utterances)}


def _request(tmp: Path, utterance_id: str) -> None:
    (tmp / "inbox" / "deletions").mkdir(parents=True, exist_ok=True)
    (tmp / "inbox" / "deletions" / "r.jsonl").write_text(json.dumps({"utterance_id": utterance_id}) + "\n")


def _do(tmp: Path, **retrain: object) -> tuple[int, dict]:
    code = run_retrain(_cfg(tmp, **retrain))
    return code, json.loads((tmp / "job" / "decision.json").read_text())


def _old_key_registry(tmp: Path) -> tuple[Registry, bytes]:
    """Under the key file's key: m1 trained on u1, then m2 (serving); candidate c3, rejected, on u1."""
    old = pseudonym_key(_cfg(tmp).privacy)
    registry = Registry(tmp / "registry")
    registry.promote(_run(tmp, "m1"), _record(old, "m1", tmp / "runs" / "m1", ["u1", "u2"]))
    registry.log_decision({"decision": "promoted", "state": "state-m1", "candidate": {"model_id": "m1"}})
    registry.promote(_run(tmp, "m2"), _record(old, "m2", tmp / "runs" / "m2", ["u2", "u3"]))
    registry.log_decision({"decision": "promoted", "state": "state-m2", "candidate": {"model_id": "m2"}})
    run = _run(tmp, "c3")
    write_candidate(run, _record(old, "c3", run, ["u1", "u4"]))
    registry.log_decision({"decision": "rejected", "reason": "asr/wer rose", "run_dir": str(run),
                           "state": "state-c3", "candidate": {"model_id": "c3"}})
    return registry, old


def test_promote_and_rollback_refuse_a_model_registered_under_another_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: both exited 0, bringing back a model trained on the deleted clip u1."""
    registry, old = _old_key_registry(tmp_path)
    monkeypatch.setenv(ENV, NEW_KEY)  # the key rotated; a request for u1 arrives under it
    _request(tmp_path, "u1")

    for retrain in ({"rollback": True}, {"promote": "c3"}, {"promote": "m1"}):
        code, decision = _do(tmp_path, **retrain)
        assert code == EXIT_CONFIG, (retrain, decision)
        reason = decision["reason"]
        assert f"was made under pseudonym key {key_id(old)}, but the current key is {key_id(NEW_KEY.encode())}" \
            in reason, reason
        assert "cannot be matched" in reason and f"the environment variable {ENV}" in reason
        assert str(tmp_path / "cache" / "pseudonym.key") in reason and "retrain" in reason
        assert NEW_KEY not in reason and old.decode() not in reason, "the key itself never shows"
    assert registry.current()["model_id"] == "m2" and registry.history() == ["m1", "m2"]
    assert [d["decision"] for d in registry.decisions()][-3:] == ["config_error"] * 3
    for path in (tmp_path / "job").rglob("*"):
        if path.is_file():
            assert NEW_KEY.encode() not in path.read_bytes() and old not in path.read_bytes()


def test_affected_by_refuses_a_model_registered_under_another_key(tmp_path: Path) -> None:
    """Before the fix: an empty list, the model trained on u1 passing as untouched by its deletion."""
    registry, old = _old_key_registry(tmp_path)
    new = b"another key"
    assert registry.affected_by({utterance_pseudonym(old, "u1")}, old)[0]["model_id"] == "m1"
    with pytest.raises(PipelineError, match=r"model m\d \(.*record\.json\) was made under pseudonym key .* cannot be "
                                            r"matched"):
        registry.affected_by({utterance_pseudonym(new, "u1")}, new)
    assert registry.affected_by(set(), new) == [], "no deletion: nothing to miss, whatever the key"


def test_erasure_and_the_audit_refuse_a_model_registered_under_another_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: `make erase` left m1's weights (trained on u1) and the audit found no trace."""
    registry, old = _old_key_registry(tmp_path)
    monkeypatch.setenv(ENV, NEW_KEY)
    _request(tmp_path, "u1")
    with pytest.raises(PipelineError, match=r"^model m\d .* was made under pseudonym key"):
        erase.erase(_cfg(tmp_path))
    assert registry.has_weights("m1")
    with pytest.raises(PipelineError, match=r"^model m\d .* was made under pseudonym key"):
        audit.scan(_cfg(tmp_path))

    monkeypatch.delenv(ENV)  # the key restored: u1's request is applied and m1 loses its weights
    assert load_key(ENV, tmp_path / "cache" / "pseudonym.key") == old
    erase.erase(_cfg(tmp_path))
    assert not registry.has_weights("m1") and registry.has_weights("m2")


def test_a_corpus_made_under_another_key_is_refused_and_a_stamp_is_never_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus's requests and tombstones name their key (its `pseudonym_key_id` file).
    Before the fix: under a new key they matched nothing and the deleted clip came back."""
    cfg = _cfg(tmp_path)
    old = pseudonym_key(cfg.privacy)
    _request(tmp_path, "u1")
    update_corpus(tmp_path / "inbox", tmp_path / "corpus", old)
    assert (tmp_path / "corpus" / KEY_ID_FILE).read_text().strip() == key_id(old)

    monkeypatch.setenv(ENV, NEW_KEY)
    new = pseudonym_key(cfg.privacy)
    with pytest.raises(PipelineError, match=r"^the retraining corpus .*corpus .* was made under pseudonym key") as err:
        update_corpus(tmp_path / "inbox", tmp_path / "corpus", new)
    assert "apply its deletion requests again" in str(err.value) and NEW_KEY not in str(err.value)
    with pytest.raises(PipelineError, match=r"^the retraining corpus"):
        erase.erase(cfg)
    with pytest.raises(PipelineError, match=r"^the retraining corpus"):
        audit.scan(cfg)
    assert (tmp_path / "corpus" / KEY_ID_FILE).read_text().strip() == key_id(old)


def test_a_record_from_before_key_ids_is_taken_as_the_current_keys_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A registry written before records kept `key_id` still works (refusing it would stop erasure
    too), and deleted data in it is still found under the key it was made with."""
    key = pseudonym_key(_cfg(tmp_path).privacy)
    registry = Registry(tmp_path / "registry")
    for model_id, utterances in (("m1", ["u1"]), ("m2", ["u2"]), ("m3", ["u3"])):
        record = _record(key, model_id, tmp_path / "runs" / model_id, utterances)
        del record["key_id"]
        registry.promote(_run(tmp_path, model_id), record)
        registry.log_decision({"decision": "promoted", "state": "state-" + model_id, "candidate": {"model_id": model_id}})
    _request(tmp_path, "u2")
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        code, decision = _do(tmp_path, rollback=True)
    assert (code, registry.current()["model_id"]) == (EXIT_OK, "m1"), decision
    assert "m2 (trained on data with a deletion request)" in decision["reason"]
    assert any("model m2" in r.getMessage() and "records no pseudonym key id" in r.getMessage()
               for r in caplog.records)


def test_an_erasure_killed_after_its_first_ledger_lines_leaves_the_ledger_stamped(
        store: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Before the fix: the ledger's stamp was written after its first lines, so a job killed in between
    left a ledger without one: the next job warned that it was written before key ids were kept, and
    took it as the current key's even after a key change."""
    root = store["root"]
    ledger = root / "registry" / "erasure"

    def killed(self: erase.Ledger, entry: dict) -> None:
        raise KeyboardInterrupt  # the job killed right after the ledger's first lines were appended

    with monkeypatch.context() as patched:
        patched.setattr(erase.Ledger, "add", killed)
        with pytest.raises(KeyboardInterrupt):
            erase.main(erase_overrides(root))
    assert (ledger / erase.LEDGER).read_text().strip(), "the ledger's first lines were written"
    assert (ledger / KEY_ID_FILE).read_text().strip() == key_id(ERASE_KEY.encode())

    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        assert erase.main(erase_overrides(root)) == 0
    assert not [r for r in caplog.records if str(ledger) in r.getMessage()]
    [receipt] = sorted((ledger / "receipts").glob("*.json"))
    assert json.loads(receipt.read_text())["key_id"] == key_id(ERASE_KEY.encode())


def test_the_stamp_is_in_place_before_a_ledger_line_is_appended(tmp_path: Path) -> None:
    """A ledger that cannot be appended to (here a folder in its place) fails after the stamp is written."""
    folder = tmp_path / "erasure"
    (folder / erase.LEDGER).mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        erase.append_ledger(folder, [{"type": "dataset", "fingerprint": "f"}], b"k")
    assert (folder / KEY_ID_FILE).read_text().splitlines()[0] == key_id(b"k")


def test_a_run_folder_listed_under_another_key_is_refused_by_erasure_and_the_audit(
        store: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder's clip list (dataset_clips.txt) names its key (the run's `pseudonym_key_id`).
    Before the fix: after a key change, a run whose cached dataset was cleaned away was matched by its
    list under the new key, matched nothing, and kept the models it trained on the deleted account's clips."""
    root, affected = store["root"], store["affected_runs"]
    for run in store["runs"]:
        assert (run / KEY_ID_FILE).read_text().strip() == key_id(ERASE_KEY.encode()), "written with the list"
    shutil.rmtree(root / "cache" / "datasets" / store["fingerprints"][0])  # a cache cleaned to free disk

    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", NEW_KEY)
    capsys.readouterr()
    assert erase.main(erase_overrides(root)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert re.search(r"run folder \S+ \(its dataset_clips\.txt\) was made under pseudonym key "
                     rf"{key_id(ERASE_KEY.encode())}, but the current key is {key_id(NEW_KEY.encode())}", err), err
    assert "remove the run folder" in err and NEW_KEY not in err and ERASE_KEY not in err
    assert (root / "inbox" / "deletions" / "request.jsonl").is_file(), "refused before the intake took it"
    assert audit.main(erase_overrides(root)) == EXIT_CONFIG
    assert "(its dataset_clips.txt) was made under pseudonym key" in capsys.readouterr().err

    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", ERASE_KEY)  # the key restored
    assert erase.main(erase_overrides(root)) == 0
    for run in affected:
        assert not (run / "asr").exists() and (run / "dataset_clips.txt").is_file()


def test_a_run_folder_listed_before_runs_kept_a_key_id_is_taken_as_the_current_keys_and_stamped(
        store: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A run folder without a stamp (listed before runs kept one) is matched as the current key's, with
    a warning naming it; the erasure that warned stamps it (the key assumed), so the next is quiet."""
    from pipeline.data import privacy

    root, affected = store["root"], store["affected_runs"]
    for run in store["runs"]:
        (run / KEY_ID_FILE).unlink()
    shutil.rmtree(root / "cache" / "datasets" / store["fingerprints"][0])  # found by their lists only
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        assert erase.main(erase_overrides(root)) == 0
    warned = [r.getMessage() for r in caplog.records if "(its dataset_clips.txt) records no pseudonym key id"
              in r.getMessage()]
    assert sorted(m.split()[2] for m in warned) == sorted(map(str, store["runs"]))
    for run in affected:
        assert not (run / "asr").exists(), "its list was matched: its models went"
    for run in store["runs"]:
        lines = (run / KEY_ID_FILE).read_text().splitlines()
        assert lines[0] == key_id(ERASE_KEY.encode()) and lines[1].startswith("assumed: ")

    monkeypatch.setattr(privacy, "_WARNED", set())  # a new process
    caplog.clear()
    _request(root, "d1-u0")
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        assert erase.main(erase_overrides(root)) == 0
    assert not [r for r in caplog.records if "dataset_clips.txt" in r.getMessage()]


def test_a_run_folder_under_another_key_holding_nothing_to_erase_is_not_read(tmp_path: Path) -> None:
    """Its list cannot be matched, and nothing derived is left in it to erase (an earlier erasure took
    it): skipped. Holding a model, it is refused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "dataset_clips.txt").write_text(utterance_pseudonym(b"old", "u1") + "\n")
    (run / KEY_ID_FILE).write_text(key_id(b"old") + "\n")
    (run / "DO_NOT_SYNC").write_text("{}\n")
    assert erase.matchable_clip_list(run, b"new") is False
    assert erase.matchable_clip_list(run, b"old") is True
    (run / "asr").mkdir()
    (run / "asr" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(PipelineError, match=rf"^run folder {re.escape(str(run))} \(its dataset_clips\.txt\) was made "
                                            "under pseudonym key .* remove the run folder"):
        erase.matchable_clip_list(run, b"new")


def _clip_lists_removed(store: dict) -> dict[Path, Path]:
    """Each run folder as a build from before runs listed their clips left it (no list, no stamp); returns
    each run's dataset. The request is put aside (`root`/request.jsonl): erasure only writes the lists."""
    (store["root"] / "inbox" / "deletions" / "request.jsonl").rename(store["root"] / "request.jsonl")
    datasets = {}
    for run in store["runs"]:
        (run / "dataset_clips.txt").unlink()
        (run / KEY_ID_FILE).unlink()
        datasets[run] = Path(json.loads((run / "build_report.json").read_text())["dataset_path"])
    return datasets


def test_a_run_folder_is_given_no_clip_list_from_a_dataset_built_under_another_key(
        store: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The cached dataset's accounts and devices are pseudonyms under the key it was built with (its
    build report's `pseudonym_key_id`). Before the fix: after a key change, erasure listed them into
    the run folder stamped with the new key, so no later request for the account matched the list.
    `make erase` refuses such a cached dataset before it writes any list (the tests below): the lists
    are left unwritten either way; the warning is met where the run's dataset lies outside the cache."""
    from pipeline.ops.config import load_config
    from pipeline.ops.inventory import Roots

    root = store["root"]
    datasets = _clip_lists_removed(store)
    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", NEW_KEY)
    assert erase.main(erase_overrides(root)) == EXIT_CONFIG
    roots = Roots.from_cfg(load_config(erase_overrides(root)))
    capsys.readouterr()
    assert erase.write_missing_clip_lists(roots, NEW_KEY.encode()) == 0
    err = capsys.readouterr().err
    for run, dataset in datasets.items():
        assert not (run / "dataset_clips.txt").exists() and not (run / KEY_ID_FILE).exists()
        assert re.search(rf"no clip list written into {re.escape(str(run))}: dataset {re.escape(str(dataset))} "
                         rf"\(whose clips run folder {re.escape(str(run))} would list in its dataset_clips\.txt\) was "
                         rf"made under pseudonym key {key_id(ERASE_KEY.encode())}, but the current key is "
                         rf"{key_id(NEW_KEY.encode())}", err), err
    assert "Restore the key it was made with" in err and "remove the run folder" in err
    assert NEW_KEY not in err and ERASE_KEY not in err

    # Under the key the datasets were built with, the lists are written, stamped with it.
    assert erase.write_missing_clip_lists(roots, ERASE_KEY.encode()) == len(datasets)
    for run in datasets:
        assert (run / KEY_ID_FILE).read_text() == key_id(ERASE_KEY.encode()) + "\n"
        assert (run / "dataset_clips.txt").read_text()


def test_a_dataset_whose_build_report_names_no_key_is_listed_with_the_key_stamped_as_assumed(
        store: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A dataset built before build reports named their key: listed as the current key's, with a
    warning, and the run's stamp says the key was assumed (as privacy.stamp_folder_key's does). The
    list is matched as any other: the dataset gone, erasure and the audit still find the runs by it."""
    from pipeline.data import privacy

    root = store["root"]
    datasets = _clip_lists_removed(store)
    old = root / "cache" / "datasets" / store["fingerprints"][0]
    report = json.loads((old / "build_report.json").read_text())
    del report["pseudonym_key_id"]
    (old / "build_report.json").write_text(json.dumps(report) + "\n")
    monkeypatch.setattr(privacy, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        assert erase.main(erase_overrides(root)) == 0
    warned = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("dataset ") and "records no pseudonym key id" in r.getMessage()]
    assert sorted(m.split()[6] for m in warned) == sorted(str(run) for run in store["affected_runs"])
    assert all(m.startswith(f"dataset {old} (whose clips run folder ") for m in warned)
    current = key_id(ERASE_KEY.encode())
    for run, dataset in datasets.items():
        lines = (run / KEY_ID_FILE).read_text().splitlines()
        assert privacy.folder_key_id(run) == lines[0] == current and (run / "dataset_clips.txt").read_text()
        if dataset == old:
            assert len(lines) == 2 and lines[1].startswith("assumed: ") and old.name in lines[1], lines
        else:
            assert lines == [current]

    shutil.rmtree(old)  # a cache cleaned to free disk: the runs are found by their lists only
    (root / "request.jsonl").rename(root / "inbox" / "deletions" / "request.jsonl")
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.privacy"):
        assert audit.main(erase_overrides(root)) == 3
        out = capsys.readouterr().out
        assert all(f"{run}  (" in out for run in store["affected_runs"]), out
        assert erase.main(erase_overrides(root)) == 0
    assert not [r for r in caplog.records if "dataset_clips.txt" in r.getMessage()]  # the stamp is read
    for run in store["affected_runs"]:
        assert not (run / "asr").exists() and (run / "dataset_clips.txt").is_file()
    assert all((run / "asr").is_dir() for run in store["runs"] if run not in store["affected_runs"])


def _without_runs(store: dict) -> list[Path]:
    """The store's cached datasets, its run folders removed: the deleted account's clips are left in
    the datasets alone (run folders under another key: the tests above). Returns the datasets."""
    for run in store["runs"]:
        shutil.rmtree(run)
    return [store["root"] / "cache" / "datasets" / f for f in store["fingerprints"]]


def _dataset_under(root: Path, key: bytes, name: str) -> Path:
    """A cached dataset built under `key`, its build report naming it, holding three clips of the
    deleted account (bench/erase.py's rows, made with that key)."""
    import numpy as np
    from datasets import Dataset, DatasetDict

    from bench.erase import _rows
    from pipeline.data.features import dataset_features

    folder = root / "cache" / "datasets" / name
    rows = _rows(key, 7, 6, True, np.random.default_rng(7))
    DatasetDict({"train": Dataset.from_list(rows, features=dataset_features())}).save_to_disk(str(folder))
    (folder / "build_report.json").write_text(json.dumps({"fingerprint": name, run_folder.REPORT_KEY_ID: key_id(key)}) + "\n")
    return folder


def test_erasure_refuses_a_cached_dataset_built_under_another_key_before_the_intake(
        store: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A cached dataset's accounts and devices are pseudonyms under the key it was built with (its
    build report's `pseudonym_key_id`). Before the fix: after a key change, erasure matched them against
    the new key's, found none of the deleted account's clips, exited 0 and left them in the dataset.
    Refused, it names the dataset and what to do; the key restored, erasure goes on as before."""
    root = store["root"]
    datasets = _without_runs(store)
    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", NEW_KEY)
    capsys.readouterr()
    assert erase.main(erase_overrides(root)) == EXIT_CONFIG
    err = capsys.readouterr().err
    named = "|".join(re.escape(str(d)) for d in datasets)
    assert re.search(rf"cached dataset ({named}) \(its build_report\.json\) was made under pseudonym key "
                     rf"{key_id(ERASE_KEY.encode())}, but the current key is {key_id(NEW_KEY.encode())}", err), err
    assert "Restore the key it was made with" in err and "remove the cached dataset" in err
    assert NEW_KEY not in err and ERASE_KEY not in err
    assert (root / "inbox" / "deletions" / "request.jsonl").is_file(), "refused before the intake took it"
    assert all(d.is_dir() for d in datasets)

    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", ERASE_KEY)  # the key restored: matched as before
    assert erase.main(erase_overrides(root)) == 0
    assert not datasets[0].exists(), "the dataset holding the account's clips went"
    assert all(d.is_dir() for d in datasets[1:])


def test_erasure_matches_a_dataset_built_under_the_current_key_once_the_other_keys_are_removed(
        store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the refusal advises when the old key is lost: the old key's datasets removed (a cache),
    erasure runs under the new key and a dataset built under it goes as any did before the key changed."""
    root = store["root"]
    datasets = _without_runs(store)
    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", NEW_KEY)
    new = _dataset_under(root, NEW_KEY.encode(), "built-under-the-new-key")
    assert erase.main(erase_overrides(root)) == EXIT_CONFIG
    assert new.is_dir()
    for dataset in datasets:
        shutil.rmtree(dataset)
    assert erase.main(erase_overrides(root)) == 0
    assert not new.exists()
    [receipt] = (root / "registry" / "erasure" / "receipts").glob("*.json")
    [request] = json.loads(receipt.read_text())["requests"]
    assert (request["status"], request["copies_found"]) == ("erased", 3)


def test_the_audit_names_a_cached_dataset_built_under_another_key_as_not_judged(
        store: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the fix: matched against the new key's pseudonyms, a dataset built under the old key
    holding the deleted account's clips passed, and the audit said clean without a word of it (its
    transcripts were even taken as kept ones, so not looked for elsewhere). Now it is named as not
    judged, still looked through for copies of deleted transcripts and audio; a dataset built under
    the current key is matched as before."""
    root = store["root"]
    datasets = _without_runs(store)
    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", NEW_KEY)
    new = _dataset_under(root, NEW_KEY.encode(), "built-under-the-new-key")
    capsys.readouterr()
    assert audit.main(erase_overrides(root)) == 3
    out = capsys.readouterr().out
    assert re.search(rf"cached dataset +pseudonym +{re.escape(str(new))}  \(3 deleted clip\(s\)\)", out), out
    # Its transcripts are the deleted account's, said again in the old key's dataset: a copy found there.
    assert f"{datasets[0]}  (3 copy(ies) of deleted clips)" in out, out
    [line] = [line for line in out.splitlines() if "built under another pseudonym key" in line]
    assert line.startswith(f"audit: {len(datasets)} cached dataset(s) were built under another pseudonym key")
    assert all(str(d) in line for d in datasets) and str(new) not in line
    assert "restore that key" in line and "remove them" in line

    shutil.rmtree(new)  # nothing left that the current key can match
    assert audit.main(erase_overrides(root)) == 0
    out = capsys.readouterr().out
    assert re.search(rf"audit: clean: .*; {len(datasets)} cached dataset\(s\) not judged \(above\)", out), out
    assert all(str(d) in out for d in datasets)

    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", ERASE_KEY)  # under the key they were built with: judged
    assert audit.main(erase_overrides(root)) == 3
    out = capsys.readouterr().out
    assert "built under another pseudonym key" not in out and "not judged" not in out
    assert re.search(rf"cached dataset +pseudonym +{re.escape(str(datasets[0]))}  \(3 deleted clip\(s\)\)", out), out


def test_a_retraining_refuses_a_cached_dataset_built_under_another_key_before_the_intake(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix: the intake took the request under the new key, and the erasure after the
    decision matched nothing in the dataset, which kept the deleted clip."""
    dataset = _dataset_under(tmp_path, b"the key the dataset was built under", "fp-old")
    monkeypatch.setenv(ENV, NEW_KEY)
    _request(tmp_path, "d7-u0")
    cfg = OmegaConf.merge(_cfg(tmp_path), {"data": {"source": "jsonl", "path": None, "deletions": None}})
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "job" / "decision.json").read_text())
    assert decision["reason"].startswith(f"cached dataset {dataset} (its build_report.json) was made under "
                                         "pseudonym key "), decision["reason"]
    assert (tmp_path / "inbox" / "deletions" / "r.jsonl").is_file(), "refused before the intake took it"
    assert dataset.is_dir()


def test_promote_and_rollback_refuse_a_cached_dataset_built_under_another_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a deletion request waiting, promote and rollback look for the clips it names in the cached
    datasets (and their copies under other ids). Before the fix: a dataset built under the old key was
    matched against the new key's pseudonyms, the account's clips in it matched nothing, and both went
    ahead (exit 0). Refused, the reason names the dataset and what to do; nothing is promoted. The
    registry is the current key's, so the dataset alone is refused; once removed, rollback goes ahead."""
    from bench.erase import VICTIM

    old = pseudonym_key(_cfg(tmp_path).privacy)  # the key file's key, which built the cached dataset
    dataset = _dataset_under(tmp_path, old, "fp-old")
    monkeypatch.setenv(ENV, NEW_KEY)  # the key rotated; the registry is made under the new one
    new = NEW_KEY.encode()
    registry = Registry(tmp_path / "registry")
    for model_id, utterances in (("m1", ["u1", "u2"]), ("m2", ["u2", "u3"])):
        registry.promote(_run(tmp_path, model_id), _record(new, model_id, tmp_path / "runs" / model_id, utterances))
        registry.log_decision({"decision": "promoted", "state": "state-" + model_id, "candidate": {"model_id": model_id}})
    run = _run(tmp_path, "c3")
    write_candidate(run, _record(new, "c3", run, ["u1", "u4"]))
    registry.log_decision({"decision": "rejected", "reason": "asr/wer rose", "run_dir": str(run),
                           "state": "state-c3", "candidate": {"model_id": "c3"}})
    (tmp_path / "inbox" / "deletions").mkdir(parents=True)
    (tmp_path / "inbox" / "deletions" / "r.jsonl").write_text(json.dumps({"account_id": VICTIM}) + "\n")

    for retrain in ({"rollback": True}, {"promote": "c3"}):
        code, decision = _do(tmp_path, **retrain)
        assert code == EXIT_CONFIG, (retrain, decision)
        reason = decision["reason"]
        assert reason.startswith(f"cached dataset {dataset} (its build_report.json) was made under pseudonym key "
                                 f"{key_id(old)}, but the current key is {key_id(new)}"), reason
        assert "Restore the key it was made with" in reason and f"remove the cached dataset {dataset}" in reason
        assert NEW_KEY not in reason and old.decode() not in reason, "the key itself never shows"
    assert registry.current()["model_id"] == "m2" and registry.history() == ["m1", "m2"]
    assert [d["decision"] for d in registry.decisions()][-2:] == ["config_error"] * 2
    assert dataset.is_dir() and (tmp_path / "inbox" / "deletions" / "r.jsonl").is_file()

    shutil.rmtree(dataset)  # what the refusal advises when the old key is lost (a cache)
    code, decision = _do(tmp_path, rollback=True)
    assert (code, registry.current()["model_id"]) == (EXIT_OK, "m1"), decision


def test_a_lost_key_is_retired_by_erase_and_every_job_runs_again(
        store: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: with the old key lost, every refusal advised removing a model, a run folder or a dataset
    by hand, one at a time. `make erase ARGS="erase.retire_key=<id>"` removes everything made under
    that key as erasure removes what saw deleted data (weights, run models, predictions and reports,
    W&B runs, cached datasets), says so in the receipt, and the jobs the key blocked run again. What
    was made under the current key is matched as ever: the request erases the account's clips there."""
    root = store["root"]
    old = key_id(ERASE_KEY.encode())
    registry = Registry(root / "registry")
    weighted = [r["model_id"] for r in registry.records() if registry.holds_weights(r["model_id"])]
    for model_id in weighted:  # registered as registration does now, naming its key
        path = registry.model_dir(model_id) / "record.json"
        path.write_text(json.dumps({**registry.record(model_id), "key_id": old}) + "\n")
    old_datasets = [root / "cache" / "datasets" / f for f in store["fingerprints"]]
    monkeypatch.setenv("PIPELINE_PSEUDONYM_KEY", NEW_KEY)  # the old key is lost
    new = _dataset_under(root, NEW_KEY.encode(), "built-under-the-new-key")
    capsys.readouterr()
    assert erase.main(erase_overrides(root)) == EXIT_CONFIG
    assert f'erase.retire_key={old}' in capsys.readouterr().err, "the refusal names the command"

    current = key_id(NEW_KEY.encode())
    assert erase.main([*erase_overrides(root), f"erase.retire_key={current}"]) == EXIT_CONFIG
    assert "is the id of the current key" in capsys.readouterr().err
    assert erase.main([*erase_overrides(root), "erase.retire_key=lost"]) == EXIT_CONFIG
    assert "erase.retire_key='lost': give the id of the lost key" in capsys.readouterr().err
    assert all(registry.holds_weights(m) for m in weighted) and all(d.is_dir() for d in old_datasets)

    assert erase.main([*erase_overrides(root), f"erase.retire_key={old}"]) == 0
    serving = registry.current()["model_id"]
    assert f"the promoted model {serving} was made under the lost pseudonym key {old}" in capsys.readouterr().err
    for model_id in weighted:
        record = registry.record(model_id)
        assert not registry.holds_weights(model_id) and record["erased_at"] and record["lost_key_id"] == old
    assert not any(d.exists() for d in old_datasets)
    for run in store["runs"]:
        assert not (run / "asr").exists() and not (run / "predictions.jsonl").exists()
        assert f"made under the lost pseudonym key {old}" in (run / "DO_NOT_SYNC").read_text()
    assert not new.exists(), "the request, made under the current key, erased the account's clips built under it"
    [receipt] = [json.loads(p.read_text()) for p in (root / "registry" / "erasure" / "receipts").glob("*.json")]
    retired = [r for r in receipt["removed"] if r.get("lost_key_id") == old]
    assert {r["kind"] for r in retired} >= {"registry model", "cached dataset", "model"}
    assert sorted(r["path"] for r in retired if r["kind"] == "cached dataset") == sorted(str(d) for d in old_datasets)
    [request] = receipt["requests"]
    assert (request["status"], request["copies_found"]) == ("erased", 3)
    text = json.dumps(receipt)
    assert NEW_KEY not in text and ERASE_KEY not in text

    # The retraining does not read the setting: it says which command does.
    code = run_retrain(OmegaConf.merge(_cfg(root), {"erase": {"retire_key": old}}))
    assert code == EXIT_CONFIG
    reason = json.loads((root / "job" / "decision.json").read_text())["reason"]
    assert reason == (f"erase.retire_key={old} is read by `make erase` alone: run `make erase "
                      f"ARGS=\"erase.retire_key={old}\"` first, then retrain without it")

    # The jobs the old key blocked run again, without the setting.
    assert erase.main(erase_overrides(root)) == 0
    assert audit.main(erase_overrides(root)) == 0, capsys.readouterr().out
