"""The retraining corpus (inbox intake, deletions purged for good, a batch's own deletions) and the
job's exit codes and records on the paths that need no training: nothing to do, another job
running, a missing inbox, a bad deletion request."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.data.privacy import TOMBSTONES_FILE
from pipeline.ops.corpus import QUARANTINE, pending_deletions, remerge, update_corpus, utterance_pseudonym
from pipeline.ops.registry import retrain_lock
from pipeline.ops.retrain import EXIT_BUSY, EXIT_CODES, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, run_retrain
from pipeline.runtime import PipelineError

REPO = Path(__file__).resolve().parents[2]

KEY = b"corpus-key"


def _batch(inbox: Path, name: str, rows: list[tuple[str, str, str]]) -> None:
    """rows: (utterance_id, account_id, device_serial); audio files are placeholders."""
    folder = inbox / name
    (folder / "audio").mkdir(parents=True)
    lines = []
    for utt, account, device in rows:
        (folder / "audio" / f"{utt}.wav").write_bytes(b"RIFF" + utt.encode())
        lines.append(json.dumps({"utterance_id": utt, "audio": f"audio/{utt}.wav", "transcript": "alexa stop",
                                 "intent": "stop", "wake_word_present": True, "account_id": account,
                                 "device_serial": device, "annotator_id": "ann-1"}))
    lines.append("{not json")  # no record: the intake sets it aside (no request could reach it)
    (folder / "annotations.jsonl").write_text("\n".join(lines) + "\n")


def _requests(inbox: Path, name: str, requests: list[dict]) -> None:
    (inbox / "deletions").mkdir(parents=True, exist_ok=True)
    (inbox / "deletions" / name).write_text("".join(json.dumps(r) + "\n" for r in requests))


def test_intake_moves_batches_merges_and_purges_deleted_clips(tmp_path: Path) -> None:
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001"), ("u2", "amzn1.account.BOB", "G0900002")])
    first = update_corpus(inbox, corpus_dir, KEY)
    assert first.new_batches == ["b1"] and not (inbox / "b1").exists()
    merged = [json.loads(line) for line in first.annotations.read_text().splitlines() if line.startswith("{\"")]
    assert [r["audio"] for r in merged] == ["batches/b1/audio/u1.wav", "batches/b1/audio/u2.wav"]
    assert (corpus_dir / merged[0]["audio"]).is_file()
    assert "{not json" not in first.annotations.read_text() and first.unreadable == 1
    [aside] = [json.loads(x) for x in (corpus_dir / "annotation_quarantine.jsonl").read_text().splitlines()]
    assert (aside["batch"], aside["line"]) == ("b1", 3) and "not json" not in json.dumps(aside)
    state = first.state()
    assert update_corpus(inbox, corpus_dir, KEY).state() == state  # nothing new: same state

    _batch(inbox, "b2", [("u3", "amzn1.account.ALICE", "G0900003"), ("u4", "amzn1.account.CAROL", "G0900004")])
    _requests(inbox, "r1.jsonl", [{"account_id": "amzn1.account.ALICE"}, {"utterance_id": "u4"}])
    second = update_corpus(inbox, corpus_dir, KEY)
    assert second.new_batches == ["b2"] and second.new_requests == 2 and second.purged == 3
    assert second.state() != state
    assert not list((inbox / "deletions").iterdir())
    left = [json.loads(line)["utterance_id"] for line in second.annotations.read_text().splitlines()
            if line.startswith("{\"")]
    assert left == ["u2"]
    corpus_bytes = b"".join(p.read_bytes() for p in corpus_dir.rglob("*") if p.is_file())
    # Gone from the corpus itself; the requests are kept only as pseudonyms.
    assert b"ALICE" not in corpus_bytes and b'"u3"' not in corpus_bytes and b"G0900003" not in corpus_bytes
    assert sorted(p.name for p in (corpus_dir / "batches").rglob("*.wav")) == ["u2.wav"]
    tombs = set((corpus_dir / TOMBSTONES_FILE).read_text().split())
    assert tombs == {utterance_pseudonym(KEY, u) for u in ("u1", "u3", "u4")}

    # A later batch from a deleted account never enters the corpus.
    _batch(inbox, "b3", [("u5", "amzn1.account.ALICE", "G0900005")])
    third = update_corpus(inbox, corpus_dir, KEY)
    assert third.purged == 1 and utterance_pseudonym(KEY, "u5") in third.tombstones


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_batch_carries_its_own_deletions(tmp_path: Path) -> None:
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b0", [("u0", "amzn1.account.ALICE", "G0900000")])
    update_corpus(inbox, corpus_dir, KEY)
    # b1 brings a request for ALICE (in b0 and in b1) and for one of its own clips.
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001"), ("u2", "amzn1.account.BOB", "G0900002"),
                         ("u3", "amzn1.account.CAROL", "G0900003")])
    (inbox / "b1" / "deletions.jsonl").write_text(
        json.dumps({"account_id": "amzn1.account.ALICE"}) + "\n" + json.dumps({"utterance_id": "u3"}) + "\n")
    assert pending_deletions(inbox, corpus_dir, KEY) == {utterance_pseudonym(KEY, u) for u in ("u0", "u1", "u3")}
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b1"] and corpus.new_requests == 2 and corpus.purged == 3
    left = [json.loads(line)["utterance_id"] for line in corpus.annotations.read_text().splitlines()
            if line.startswith("{\"")]
    assert left == ["u2"]
    assert corpus.tombstones == {utterance_pseudonym(KEY, u) for u in ("u0", "u1", "u3")}
    # The request file is not carried into the corpus: requests are kept as pseudonyms only.
    assert not (corpus_dir / "batches" / "b1" / "deletions.jsonl").exists()
    assert b"ALICE" not in b"".join(_tree(corpus_dir).values())


def test_an_audio_path_no_file_can_have_does_not_stop_the_intake(tmp_path: Path) -> None:
    """A NUL in a record's audio path raised ValueError in the intake: every retraining job stopped
    before its build. The record is merged (the build quarantines it); its request still purges it."""
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b0", [("u0", "amzn1.account.ALICE", "G0900000"), ("u1", "amzn1.account.BOB", "G0900001")])
    annotations = inbox / "b0" / "annotations.jsonl"
    annotations.write_text(annotations.read_text().replace('"audio/u1.wav"', '"audio/u1\\u0000.wav"'))
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b0"] and corpus.purged == 0
    _requests(inbox, "r1.jsonl", [{"account_id": "amzn1.account.BOB"}])
    corpus = update_corpus(inbox, corpus_dir, KEY)
    left = [json.loads(line)["utterance_id"] for line in corpus.annotations.read_text().splitlines()
            if line.startswith("{\"")]
    assert corpus.purged == 1 and left == ["u0"]


def test_half_an_emoji_in_a_batch_line_does_not_stop_the_intake_or_erasure(tmp_path: Path) -> None:
    """A lone surrogate (`\\ud83d`) could not be written into the merged file: the batch had moved
    into the corpus, so every later intake and every erasure's remerge failed the same way."""
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b0", [("u0", "amzn1.account.ALICE", "G0900000"), ("u1", "amzn1.account.BOB", "G0900001")])
    annotations = inbox / "b0" / "annotations.jsonl"
    annotations.write_text(annotations.read_text().replace('"utterance_id": "u1"', '"utterance_id": "u1", "note": "\\ud83d"'))
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b0"]
    merged = [json.loads(line) for line in corpus.annotations.read_text().splitlines()]
    assert [r["utterance_id"] for r in merged] == ["u0", "u1"] and merged[1]["note"] == "\ud83d"
    remerge(corpus_dir, KEY)
    _requests(inbox, "r1.jsonl", [{"account_id": "amzn1.account.BOB"}])
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.purged == 1
    assert [json.loads(line)["utterance_id"] for line in corpus.annotations.read_text().splitlines()] == ["u0"]


@pytest.mark.parametrize(("stray", "named"), [("b1/deletion_requests.jsonl", "b1/deletion_requests.jsonl"),
                                               ("b1/deletions/r.jsonl", "b1/deletions"),
                                               ("deletions.jsonl", "deletions.jsonl"),
                                               ("deletions/r.json", "deletions/r.json"),
                                               ("deletion-requests/r.jsonl", "deletion-requests"),
                                               ("user-AFOENZ.jsonl", "user-AFOENZ.jsonl"),  # named by whom, not what
                                               ("deletions/jane.AFOENZ", "deletions/jane.AFOENZ"),  # the suffix too
                                               ("deletions/AFOENZ/r.jsonl", "deletions/AFOENZ"),
                                               ("deletions-AFOENZ/r.jsonl", "deletions-AFOENZ")])
def test_a_deletion_file_the_intake_would_not_read_refuses_the_inbox(tmp_path: Path, stray: str, named: str) -> None:
    """Named by hash and folder, never by name: an export is often named after its account, and the
    refusal reaches decision.json and the registry's log."""
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001")])
    (inbox / stray).parent.mkdir(parents=True, exist_ok=True)
    (inbox / stray).write_text(json.dumps({"account_id": "amzn1.account.ALICE"}) + "\n")
    before = _tree(inbox)
    entry = inbox / named
    if entry.is_file():  # a file by its content, as `sha256sum` prints it
        shown = f"a file with sha256:{hashlib.sha256(entry.read_bytes()).hexdigest()[:16]} in {entry.parent}:"
    else:  # a folder by its name's hash: `printf %s NAME | sha256sum`
        shown = f"a folder whose name has sha256:{hashlib.sha256(entry.name.encode()).hexdigest()[:16]} in {entry.parent}:"
    with pytest.raises(PipelineError, match=re.escape(f"would not read, 1 entry ({shown}")) as refused:
        update_corpus(inbox, corpus_dir, KEY)
    assert "AFOENZ" not in str(refused.value)
    with pytest.raises(PipelineError, match="would not read"):
        pending_deletions(inbox, corpus_dir, KEY)  # the audit does not pass over it either
    assert _tree(inbox) == before, "a refused inbox is left as it was"


def test_a_malformed_line_in_a_batch_deletion_file_is_quarantined_the_rest_apply(tmp_path: Path) -> None:
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001"), ("u2", "amzn1.account.BOB", "G0900002")])
    (inbox / "b1" / "deletions.jsonl").write_text(
        json.dumps({"account_id": "amzn1.account.ALICE"}) + "\n{oops G0900002\n")
    sent = "b1/sha256:" + hashlib.sha256((inbox / "b1" / "deletions.jsonl").read_bytes()).hexdigest()[:16]
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b1"] and corpus.purged == 1 and corpus.quarantined == 1
    [bad] = [json.loads(line) for line in (corpus_dir / QUARANTINE).read_text().splitlines()]
    assert (bad["file"], bad["line"], bad["reason"]) == (sent, 2,
                                                       "not valid JSON (Expecting property name enclosed in double quotes at column 2)")
    assert b"G0900002" not in (corpus_dir / QUARANTINE).read_bytes(), "the bad line's content is not kept"


def _cfg(tmp: Path, **retrain: object) -> OmegaConf:
    return OmegaConf.create({
        "stages": ["data", "asr", "nlu", "eval"], "seed": 1, "run_dir": str(tmp / "run"),
        "cache_dir": str(tmp / "cache"),
        "privacy": {"key_env": "NO_SUCH_ENV_FOR_TEST", "key_file": str(tmp / "cache" / "pseudonym.key")},
        "data": {"source": "jsonl", "path": None, "deletions": None},
        "logger": {**OmegaConf.load(REPO / "conf" / "logger" / "wandb.yaml"), "name": "none"},
        "retrain": {"inbox": str(tmp / "inbox"), "corpus_dir": str(tmp / "corpus"),
                    "registry_dir": str(tmp / "registry"), "force": False, "promote": None, "rollback": False,
                    "gate": {"wer": {"metric": "asr/wer", "max_increase": 0.005}}, "gate_policy": "not_worse",
                    **retrain},
        "erase": {"cache_root": str(tmp / "cache"), "outputs": str(tmp / "outputs"), "multirun": str(tmp / "multirun"),
                  "receipts_dir": str(tmp / "registry" / "erasure"), "wandb_online": False},
    })


def test_retrain_exit_codes_without_training(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    # A wrong inbox path is not an empty inbox.
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "config_error" and f"retrain.inbox={tmp_path / 'inbox'}: no such folder" in decision["reason"]

    (tmp_path / "inbox").mkdir()
    assert run_retrain(cfg) == EXIT_OK
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "nothing_to_do" and decision["exit_code"] == 0
    assert (tmp_path / "cache" / "pseudonym.key").stat().st_mode & 0o777 == 0o600

    with retrain_lock(tmp_path / "registry" / "retrain.lock"):
        assert run_retrain(cfg) == EXIT_BUSY
    assert json.loads((tmp_path / "run" / "decision.json").read_text())["decision"] == "busy"

    # A busy job given the running job's folder leaves it alone.
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "decision.json").write_text("{}\n")
    with retrain_lock(tmp_path / "registry" / "retrain.lock", holder):
        assert run_retrain(OmegaConf.merge(cfg, {"run_dir": str(holder)})) == EXIT_BUSY
    assert _tree(holder) == {"decision.json": b"{}\n"}

    # Requests where the intake does not read them refuse the job.
    (tmp_path / "inbox" / "deletions.jsonl").write_text(json.dumps({"account_id": "amzn1.account.ALICE"}) + "\n")
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    stray = tmp_path / "inbox" / "deletions.jsonl"
    shown = f"a file with sha256:{hashlib.sha256(stray.read_bytes()).hexdigest()[:16]} in {stray.parent}:"
    assert decision["decision"] == "config_error" and shown in decision["reason"] and "ALICE" not in decision["reason"]

    # Every decision is in the registry's log, in order.
    log = [json.loads(line) for line in (tmp_path / "registry" / "decisions.jsonl").read_text().splitlines()]
    assert [d["decision"] for d in log] == ["config_error", "nothing_to_do", "busy", "busy", "config_error"]
    assert [d["exit_code"] for d in log] == [2, 0, 4, 4, 2] and log[3]["run_dir"] == str(holder)


def test_a_config_value_that_does_not_resolve_is_a_config_error(tmp_path: Path, capsys) -> None:
    cfg = OmegaConf.merge(_cfg(tmp_path), {"retrain": {"registry_dir": "${oc.env:NO_SUCH_REGISTRY_ENV_FOR_TEST}"}})
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "config_error" and "NO_SUCH_REGISTRY_ENV_FOR_TEST" in decision["reason"]
    assert "not logged in decisions.jsonl" in capsys.readouterr().err


def test_an_erasure_that_fails_after_the_decision_keeps_the_decision_and_fails_the_job(tmp_path: Path, capsys) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "registry" / "erasure").mkdir(parents=True)
    (tmp_path / "registry" / "erasure" / "state.json").write_text('{"requests_seen": [')  # cut short
    assert run_retrain(_cfg(tmp_path)) == EXIT_FAILED
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "nothing_to_do" and decision["exit_code"] == EXIT_FAILED
    assert "JSONDecodeError" in decision["erasure"]["error"] and "make erase" in decision["erasure"]["fix"]
    [logged] = [json.loads(line) for line in (tmp_path / "registry" / "decisions.jsonl").read_text().splitlines()]
    assert (logged["decision"], logged["exit_code"]) == ("nothing_to_do", EXIT_FAILED) and "error" in logged["erasure"]
    assert re.search(r"^error: retrain: nothing_to_do: .*but the erasure failed: JSONDecodeError", capsys.readouterr().err, re.M)


def test_an_erase_root_that_is_not_a_folder_stops_the_job_before_the_intake(tmp_path: Path) -> None:
    """The erasure runs after training; a root it cannot walk would fail only then, a night later."""
    batch = tmp_path / "inbox" / "batch-001"
    batch.mkdir(parents=True)
    (batch / "annotations.jsonl").write_text("{}\n")
    (tmp_path / "outputs").write_text("a file where the runs' root should be\n")
    assert run_retrain(_cfg(tmp_path)) == EXIT_CONFIG
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "config_error" and f"{tmp_path / 'outputs'} is not a folder" in decision["reason"]
    assert (batch / "annotations.jsonl").read_text() == "{}\n" and not (tmp_path / "corpus").exists()


def test_a_batch_with_a_byte_order_mark_is_purged_from_its_first_line_and_a_line_not_in_utf8_set_aside(
        tmp_path: Path) -> None:
    """Read as the data stage reads it: a deleted first record behind a byte-order mark is still
    found. A line the intake cannot decode once travelled on byte for byte, raw account and all,
    where no deletion request could ever match it: it leaves the corpus, named by its hash."""
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001"), ("u2", "amzn1.account.BOB", "G0900002")])
    annotations = inbox / "b1" / "annotations.jsonl"
    cp1252 = json.dumps({"utterance_id": "u3", "audio": "audio/u3.wav", "transcript": "alexa play beyoncé",
                         "account_id": "café"}, ensure_ascii=False).encode("cp1252")
    annotations.write_bytes(b"\xef\xbb\xbf" + annotations.read_bytes() + cp1252 + b"\n")
    (inbox / "b1" / "audio" / "u3.wav").write_bytes(b"RIFF u3")  # the unreadable line's recording
    _requests(inbox, "r1.jsonl", [{"account_id": "amzn1.account.ALICE"}])
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.purged == 1 and not (corpus_dir / "batches" / "b1" / "audio" / "u1.wav").exists()
    # No request can reach the recording of a line that is no record, and no build reads it: it goes.
    assert sorted(p.name for p in (corpus_dir / "batches" / "b1" / "audio").iterdir()) == ["u2.wav"]
    assert corpus.unnamed_audio == 1
    merged = corpus.annotations.read_bytes()
    assert b"ALICE" not in merged and b"ALICE" not in (corpus_dir / "batches" / "b1" / "annotations.jsonl").read_bytes()
    assert cp1252 not in merged and b"caf" not in (corpus_dir / "batches" / "b1" / "annotations.jsonl").read_bytes()
    assert b"amzn1.account.BOB" in merged and corpus.unreadable == 2  # the cp1252 line and "{not json"


def test_an_inbox_with_exports_that_are_not_batches_says_so(tmp_path: Path, capsys) -> None:
    """Before the fix: the reason named up to five entries ("b1.jsonl, b2 in it are not batches"),
    in decision.json, decisions.jsonl and stdout; an export named after its account leaked the
    account. Now a count and each entry's SHA-256 (a file's content, as `sha256sum` prints it; a
    folder's name), which find it in the inbox named beside them."""
    inbox = tmp_path / "inbox"
    (inbox / "amzn1.account.ALICE" / "audio").mkdir(parents=True)  # a folder without annotations.jsonl
    (inbox / "export.amzn1.account.BOB").write_text("{}\n")        # an export dropped in as a file
    assert run_retrain(_cfg(tmp_path)) == EXIT_OK
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "nothing_to_do"
    content = hashlib.sha256(b"{}\n").hexdigest()[:16]
    name = hashlib.sha256(b"amzn1.account.ALICE").hexdigest()[:16]
    assert decision["reason"] == (f"no batches in {inbox} yet; 2 entries in it are not batches (a folder whose name "
                                  f"has sha256:{name}, a file with sha256:{content}): each batch is a "
                                  "folder holding annotations.jsonl (and its audio)")
    out = capsys.readouterr()
    assert "ALICE" not in out.out + out.err and "BOB" not in out.out + out.err
    assert b"ALICE" not in (tmp_path / "registry" / "decisions.jsonl").read_bytes()


def test_a_move_across_file_systems_cut_short_is_finished_by_the_next_intake(tmp_path: Path) -> None:
    """Across file systems a batch is copied, then removed from the inbox; a job killed between the two
    left both, and the next intake refused the batch's name, advising a rename that ingested it twice.
    Now the batch is set aside first: what a killed job leaves is finished by the next intake."""
    import shutil

    from pipeline.ops.corpus import TAKING

    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001")])
    _batch(inbox, "b2", [("u2", "amzn1.account.BOB", "G0900002")])
    # Killed after the copy reached the corpus: the set-aside batch goes.
    shutil.copytree(inbox / "b1", corpus_dir / "batches" / "b1")
    (inbox / "b1").rename(inbox / f"{TAKING}b1")
    # Killed before it did: the set-aside batch comes back and is taken.
    (inbox / "b2").rename(inbox / f"{TAKING}b2")
    # Killed while rewriting b1's annotations (a purge): the temp file holds the records it had.
    (corpus_dir / "batches" / "b1" / ".tmp-annotations.jsonl.4242").write_text("{}\n")
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b2"] and corpus.batches == 2
    assert not list((corpus_dir / "batches" / "b1").glob(".tmp-*"))
    assert sorted(p.name for p in inbox.iterdir()) == []
    merged = [json.loads(line)["utterance_id"] for line in (corpus_dir / "annotations.jsonl").read_text().splitlines()
              if line.startswith('{"')]
    assert sorted(merged) == ["u1", "u2"]


def test_a_batch_on_another_file_system_is_copied_in_and_leaves_the_inbox(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-file-system branch of the move, with the rename the kernel refuses (EXDEV) refused."""
    import errno
    import os

    from pipeline.ops import corpus as corpus_module

    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001")])
    rename = os.rename

    def across(src: object, dst: object) -> None:
        if Path(src).parent == inbox and Path(dst).parent == corpus_dir / "batches":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        rename(src, dst)

    monkeypatch.setattr(corpus_module.os, "rename", across)
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b1"] and list(inbox.iterdir()) == []
    assert (corpus_dir / "batches" / "b1" / "audio" / "u1.wav").read_bytes() == b"RIFFu1"


def test_batches_a_killed_job_took_are_named_by_the_next_decision(tmp_path: Path) -> None:
    """The next job found no new batch in the inbox and logged `new_batches: []`: the batches the killed
    job had taken were in no decision."""
    from pipeline.ops.registry import Registry
    from pipeline.ops.retrain import unreported_batches

    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    registry = Registry(tmp_path / "registry")
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001")])
    update_corpus(inbox, corpus_dir, KEY)
    registry.log_decision({"decision": "promoted", "new_batches": unreported_batches(registry, corpus_dir)})
    _batch(inbox, "b2", [("u2", "amzn1.account.BOB", "G0900002")])
    update_corpus(inbox, corpus_dir, KEY)  # ... and the job is killed before its decision
    assert update_corpus(inbox, corpus_dir, KEY).new_batches == []  # the next job's intake takes nothing
    assert unreported_batches(registry, corpus_dir) == ["b2"]


def test_a_line_set_aside_stays_named_when_the_intake_dies_before_the_end(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: the intake rewrote each batch without its unreadable lines and named them in
    annotation_quarantine.jsonl only after the last batch, so an intake that died in between (a full
    disk on the next batch) lost the first batch's line: in neither the corpus nor the quarantine."""
    import errno

    import pipeline.ops.corpus as corpus_module

    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "acct-1", "dev-1")])
    _batch(inbox, "b2", [("u2", "acct-2", "dev-2")])
    write = corpus_module.write_text_atomic

    def full_disk(path: Path, text: str) -> None:
        if path == corpus_dir / "batches" / "b2" / "annotations.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, text)

    monkeypatch.setattr(corpus_module, "write_text_atomic", full_disk)
    with pytest.raises(OSError):
        update_corpus(inbox, corpus_dir, KEY)
    monkeypatch.undo()
    update_corpus(inbox, corpus_dir, KEY)
    quarantine = [json.loads(line) for line in (corpus_dir / "annotation_quarantine.jsonl").read_text().splitlines()]
    digest = hashlib.sha256(b"{not json").hexdigest()[:16]
    assert {(q["batch"], q["sha256"]) for q in quarantine} == {("b1", digest), ("b2", digest)}
    for batch in ("b1", "b2"):
        assert "{not json" not in (corpus_dir / "batches" / batch / "annotations.jsonl").read_text()


def test_the_promoted_model_is_found_through_a_relative_registry_path(tmp_path: Path, monkeypatch) -> None:
    """Before the fix: with a relative retrain.registry_dir (PIPELINE_REGISTRY_DIR=registry) the
    promoted model was linked into `<run>/incumbent/` by that relative path, which a link reads from
    its own folder: the links led nowhere, the promoted model "could not be evaluated", and every
    candidate was rejected."""
    from pipeline.ops.registry import Registry
    from pipeline.ops.retrain import _evaluate_incumbent

    monkeypatch.chdir(tmp_path)
    trained = tmp_path / "trained"
    for part in ("asr", "nlu"):
        (trained / part).mkdir(parents=True)
        (trained / part / "config.json").write_text("{}")
    registry = Registry(Path("registry"))
    registry.promote(trained, {"model_id": "m1", "trained_on": []})
    run_dir = tmp_path / "outputs" / "run"
    run_dir.mkdir(parents=True)
    _evaluate_incumbent(OmegaConf.create({}), registry, "m1", run_dir, tmp_path / "dataset")
    for part in ("asr", "nlu"):
        assert (run_dir / "incumbent" / part / "config.json").is_file()


def test_a_job_that_fails_after_its_intake_still_erases_for_the_requests_it_took(tmp_path: Path) -> None:
    """Before the fix: a job whose training failed after the intake (here: every clip of the batch
    unreadable, so the build has nothing to train on) never ran the erasure, and copies of the data
    its requests delete stayed in caches and old runs until a later job trained to the end."""
    inbox = tmp_path / "inbox"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001"), ("u2", "amzn1.account.BOB", "G0900002")])
    _requests(inbox, "r1.jsonl", [{"account_id": "amzn1.account.ALICE"}])
    code = run_retrain(_cfg(tmp_path))
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] in ("config_error", "failed") and code == EXIT_CODES[decision["decision"]]
    assert decision["erasure"]["requests"] == 1 and Path(decision["erasure"]["receipt"]).is_file()
    [logged] = [json.loads(line) for line in (tmp_path / "registry" / "decisions.jsonl").read_text().splitlines()]
    assert logged["erasure"] == decision["erasure"] and "traceback" not in logged


def test_a_new_pseudonym_key_is_a_new_training_state(tmp_path: Path) -> None:
    """Before the fix: the state a job compares with the last decision's held the corpus and the
    training config only, so a job under a new pseudonym key (other pseudonyms, so other splits and
    another model) reported nothing to do."""
    from pipeline.ops.corpus import Corpus
    from pipeline.ops.retrain import training_state

    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001")])
    corpus = update_corpus(inbox, corpus_dir, KEY)
    training = {"data": {"source": "jsonl"}, "seed": 1}
    state = training_state(corpus, training, KEY)
    assert state == training_state(Corpus(corpus.annotations, corpus.requests), dict(training), KEY)
    assert state != training_state(corpus, training, b"another key of thirty-two bytes!")
    assert state != training_state(corpus, {**training, "seed": 2}, KEY)


def test_a_hidden_folder_in_the_inbox_is_not_taken_as_a_batch(tmp_path: Path) -> None:
    """Before the fix: `.b2` (an upload in progress, say) was moved into the corpus and trained on,
    while the decisions' `new_batches` skip hidden names, so no decision ever named it."""
    inbox, corpus_dir = tmp_path / "inbox", tmp_path / "corpus"
    _batch(inbox, "b1", [("u1", "amzn1.account.ALICE", "G0900001")])
    _batch(inbox, ".b2", [("u2", "amzn1.account.BOB", "G0900002")])
    corpus = update_corpus(inbox, corpus_dir, KEY)
    assert corpus.new_batches == ["b1"] and (inbox / ".b2" / "annotations.jsonl").is_file()
    assert [json.loads(line)["utterance_id"] for line in corpus.annotations.read_text().splitlines()] == ["u1"]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_gate_on_a_split_the_candidate_learnt_from_is_refused_before_the_intake(tmp_path: Path, split: str) -> None:
    """The gate compares both models on `eval.split`; on the candidate's own train or validation clips
    (the weights and the checkpoint selection, `trained_on`) it wins by having seen them.
    Before the fix: `retrain.py eval.split=train` took the batch, trained, and promoted on that comparison."""
    _batch(tmp_path / "inbox", "b1", [("u1", "acct-1", "dev-1")])
    tune = "test" if split == "validation" else "validation"
    cfg = OmegaConf.merge(_cfg(tmp_path), {"eval": {"split": split, "tune_split": tune}})
    assert run_retrain(cfg) == EXIT_CONFIG
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["decision"] == "config_error" and f"eval.split={split}" in decision["reason"], decision
    assert "eval.split=test" in decision["reason"]
    assert (tmp_path / "inbox" / "b1" / "annotations.jsonl").is_file(), "nothing was taken from the inbox"
