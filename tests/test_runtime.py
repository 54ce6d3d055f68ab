"""The cache's list of run folders, which erasure and the deletion audit read (pipeline.runtime)."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

from pipeline.runtime import RUN_FOLDERS_LIST, list_run_folder


def test_a_run_is_listed_once_and_folders_that_are_gone_are_dropped(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()  # the list holds resolved paths
    cache = tmp_path / "cache"
    cache.mkdir()
    runs = [tmp_path / name for name in ("a", "b", "c")]
    for run in runs:
        run.mkdir()
        list_run_folder(run, cache)
    list_run_folder(runs[1], cache)
    listed = cache / RUN_FOLDERS_LIST
    assert listed.read_text().splitlines() == [str(run) for run in runs]

    shutil.rmtree(runs[0])  # removed by hand, or by erasure: nothing left in it to erase
    listed.write_text(listed.read_text() + "relative/line\n")
    new = tmp_path / "d"
    new.mkdir()
    list_run_folder(new, cache)
    assert listed.read_text().splitlines() == [str(runs[1]), str(runs[2]), str(new)]
    assert not (cache / (RUN_FOLDERS_LIST + ".tmp")).exists()


def test_a_folder_whose_parent_is_gone_too_stays_listed(tmp_path: Path) -> None:
    """A run folder on a share that is not mounted looks gone, and so does its parent: its line must
    stay, or erasure would never look there again once the share is back."""
    tmp_path = tmp_path.resolve()
    cache = tmp_path / "cache"
    cache.mkdir()
    on_share = tmp_path / "mnt" / "share" / "runs" / "r1"
    on_share.mkdir(parents=True)
    list_run_folder(on_share, cache)
    shutil.rmtree(tmp_path / "mnt" / "share")  # unmounted: the mount point's contents are out of sight
    (tmp_path / "mnt" / "share").mkdir()       # ... and the empty mount point is there
    removed = tmp_path / "outputs" / "r2"
    removed.mkdir(parents=True)
    list_run_folder(removed, cache)
    shutil.rmtree(removed)  # removed by hand; outputs/ is still there
    new = tmp_path / "outputs" / "r3"
    new.mkdir()
    list_run_folder(new, cache)
    assert (cache / RUN_FOLDERS_LIST).read_text().splitlines() == [str(on_share), str(new)]

    # Mounted again: erasure and the audit read the run from the list.
    from pipeline.ops.inventory import RUN_MARKS, Roots, listed_run_folders

    on_share.mkdir(parents=True)
    (on_share / RUN_MARKS[0]).write_text("{}")
    elsewhere = tmp_path / "unused"
    roots = Roots(cache=cache, outputs=elsewhere, multirun=elsewhere, registry=elsewhere, inbox=elsewhere,
                  corpus=elsewhere, erasure=elsewhere)
    assert listed_run_folders(roots) == [on_share]


def _list(run: str, cache: str) -> None:
    Path(run).mkdir()
    list_run_folder(Path(run), Path(cache))


def test_jobs_starting_together_lose_no_line_while_gone_folders_are_dropped(tmp_path: Path) -> None:
    """Each job may rewrite the list (to drop gone folders) while others append: one lock on the
    cache folder keeps every line a job added."""
    tmp_path = tmp_path.resolve()  # the list holds resolved paths
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / RUN_FOLDERS_LIST).write_text("".join(f"{tmp_path / f'gone{i}'}\n" for i in range(200)))
    runs = [str(tmp_path / f"run{i}") for i in range(12)]
    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=_list, args=(run, str(cache))) for run in runs]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
        assert job.exitcode == 0
    assert sorted((cache / RUN_FOLDERS_LIST).read_text().splitlines()) == sorted(runs)
