"""Every place the pipeline writes data, or anything derived from it, in one table.

Erasure (`make erase`) and the deletion audit (`make audit-deletions`) walk this table, not their
own lists, so a place cannot be erased but not audited, or audited but not erased. A module that
starts writing somewhere new adds a row here; `unclaimed()` lists every file under the roots that
no row claims, and the end-to-end erasure test fails on any, so a new place cannot go unnoticed.

Each row says which root it lives under, which files it covers (glob patterns relative to the
root, or to a run folder for RUN_PARTS), which module writes it, what traces of a clip it can
hold, and how erasure treats it:

    dataset    a cached dataset: deleted when it holds a deleted clip (the next build rebuilds it
               from the purged source, under a new fingerprint)
    source     annotations + audio (demo export, inbox, retraining corpus): the clip's line and
               audio file are purged
    run        a part of a run folder: removed when the run's dataset held a deleted clip
    staging    W&B's local artifact copies: removed with the run that logged them
    registry   a registered model: files removed, record marked erased
    lines      line files scanned line by line (predictions anywhere): matching lines removed
    keep       bookkeeping that holds pseudonyms on purpose (tombstones, receipts) or no data
"""

from __future__ import annotations

import argparse
import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from pipeline.data.label_noise import RUN_FILE as NOISE_FILE
from pipeline.data.privacy import KEY_ID_FILE, REQUESTS_FILE, TOMBSTONES_FILE
from pipeline.ops.registry import HELD_DECISION, LOCK_FILE
from pipeline.run_folder import BUILD_REPORT, DATASET_CLIPS, EVAL_CONFIG_DIR, QUARANTINE_LINES
from pipeline.runtime import RUN_FOLDERS_LIST, PipelineError, out_of_reach
from pipeline.tracking.wandb_run import RUN_ID_FILE

# What a place can hold: the clip's audio, its transcript, its pseudonymous ids, or weights fitted
# to it (which hold none of these as bytes, but are derived from them all).
AUDIO, TEXT, IDS, WEIGHTS = "audio", "transcript", "pseudonym", "weights"


@dataclass(frozen=True)
class Place:
    kind: str                  # the kind of copy, as findings and receipts count them
    root: str                  # a Roots field
    patterns: tuple[str, ...]  # fnmatch patterns relative to the root (`*` crosses folders)
    holds: tuple[str, ...]
    writer: str
    erase: str                 # dataset | source | run | staging | registry | lines | keep


@dataclass(frozen=True)
class Roots:
    """Where to look; all configurable (`erase.*` in conf/retrain.yaml)."""

    cache: Path
    outputs: Path
    multirun: Path
    registry: Path
    inbox: Path
    corpus: Path
    erasure: Path

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Roots:
        from pipeline.ops.config import erase_config, retrain_config

        try:
            erase, retrain = erase_config(cfg), retrain_config(cfg)
        except PipelineError:
            raise
        except Exception as err:  # noqa: BLE001 - any unresolvable key is the user's config to fix
            raise PipelineError(f"erase roots: {err}") from None
        return cls(cache=Path(erase.cache_root), outputs=Path(erase.outputs), multirun=Path(erase.multirun),
                   registry=Path(retrain.registry_dir), inbox=Path(retrain.inbox), corpus=Path(retrain.corpus_dir),
                   erasure=Path(erase.receipts_dir))

    def named(self) -> dict[str, Path]:
        return {name: getattr(self, name) for name in ("cache", "outputs", "multirun", "registry",
                                                        "inbox", "corpus", "erasure")}


PLACES: tuple[Place, ...] = (
    Place("cached dataset", "cache", ("datasets/*",), (AUDIO, TEXT, IDS), "pipeline.data.build", "dataset"),
    Place("demo export", "cache", ("demo/*",), (AUDIO, TEXT, IDS), "pipeline.data.demo", "source"),
    # `.tmp-*`: the merged annotations, requests or tombstones being written whole when their job was killed.
    Place("corpus", "corpus", ("batches/*", "annotations.jsonl", ".tmp-*"), (AUDIO, TEXT, IDS), "pipeline.ops.corpus",
          "source"),
    Place("inbox", "inbox", ("*",), (AUDIO, TEXT, IDS), "the annotation upload", "source"),
    Place("deletion records", "corpus", (REQUESTS_FILE, TOMBSTONES_FILE,
                                         "deletion_quarantine.jsonl"), (IDS,), "pipeline.ops.corpus", "keep"),
    # The id of the key the deletion records were made with (`key_id`, which reveals no key).
    Place("pseudonym key id", "corpus", (KEY_ID_FILE,), (), "pipeline.ops.corpus", "keep"),
    Place("W&B staging", "cache", ("wandb/data/artifacts/*",), (TEXT, IDS, WEIGHTS),
          "wandb (pipeline.tracking.wandb_run)", "staging"),
    Place("W&B cache", "cache", ("wandb/cache/artifacts/*",), (TEXT, IDS, WEIGHTS),
          "wandb (pipeline.tracking.wandb_run)", "staging"),
    Place("W&B logs", "cache", ("wandb/cache/wandb/logs/*", "wandb/config/*"), (), "wandb", "keep"),
    Place("matplotlib cache", "cache", ("matplotlib/*",), (), "matplotlib", "keep"),
    Place("HF cache", "cache", ("huggingface/*", "hf/*"), (), "datasets/transformers", "keep"),
    Place("registry model", "registry", ("models/*",), (WEIGHTS, TEXT, IDS), "pipeline.ops.registry", "registry"),
    Place("registry log", "registry", ("promoted.json", "decisions.jsonl", HELD_DECISION, LOCK_FILE, ".tmp-*"), (IDS,),
          "pipeline.ops.registry", "keep"),
    Place("erasure records", "erasure", ("*",), (IDS,), "pipeline.ops.erase", "keep"),
    Place("pseudonym key", "cache", ("pseudonym.key",), (), "pipeline.data.privacy", "keep"),
    # Synthesised from the repository's own text and word lists (data/demo, conf/data): the demo
    # background says shipped demo sentences, which are the repository's script, never a person's
    # recording, transcript or id; nothing a deletion request can take from it.
    Place("demo background", "cache", ("demo_background/*",), (), "pipeline.data.background", "keep"),
    Place("lone words", "cache", ("lone_words/*",), (), "pipeline.data.demo", "keep"),
    Place("benchmark data", "cache", ("bench/*",), (), "bench.nlu_bench (MASSIVE, public text)", "keep"),
    # Paths of run folders (the folders' names, which hydra.run.dir chose), for erasure to look in.
    Place("run folder list", "cache", (RUN_FOLDERS_LIST, RUN_FOLDERS_LIST + ".tmp"), (), "pipeline.runtime", "keep"),
)

# Inside every run folder (anything under outputs/ or multirun/ with a build_report.json).
RUN_PARTS: tuple[Place, ...] = (
    # `.asr.new`, `.asr.old`: a model folder being swapped in (pipeline.asr.checkpoints) when its job was killed.
    Place("checkpoint", "run", ("asr/checkpoints/*", "nlu/checkpoints/*", ".asr.old/checkpoints/*"), (WEIGHTS,),
          "pipeline.asr.train", "run"),
    Place("language model", "run", ("asr/lm/*", ".asr.new/lm/*", ".asr.old/lm/*"), (TEXT,), "pipeline.asr.lm", "run"),
    Place("model", "run", ("asr/*", "nlu/*", ".asr.new/*", ".asr.old/*"), (WEIGHTS,), "pipeline.asr.train, pipeline.nlu",
          "run"),
    Place("predictions", "run", ("predictions.jsonl", "incumbent/predictions.jsonl"), (TEXT, IDS),
          "pipeline.eval.run", "run"),
    # `.tmp-*`: a file being written whole (pipeline.runtime.write_text_atomic) when its job was killed.
    Place("report", "run", ("report.md", "report.html", "eval_details.json", "plots/*", "incumbent/*", ".tmp-*"),
          (TEXT, IDS), "pipeline.eval.run, pipeline.eval.report", "run"),
    Place("W&B offline run", "run", ("wandb/*",), (TEXT, IDS, WEIGHTS), "pipeline.tracking.wandb_run", "run"),
    Place("review", "run", ("review/*", NOISE_FILE), (TEXT, IDS), "pipeline.review.stage, pipeline.data.label_noise",
          "run"),
    Place("run record", "run", (BUILD_REPORT, DATASET_CLIPS, KEY_ID_FILE, QUARANTINE_LINES, "config.yaml", ".hydra/*", f"{EVAL_CONFIG_DIR}/*",
                                "metrics.json", "decision.json", "candidate.json", RUN_ID_FILE, "*.log", "DO_NOT_SYNC",
                                "multirun.yaml", ".writing"), (IDS,), "train.py, retrain.py, hydra", "keep"),
)

# The kinds of place where the pipeline writes files whole (pipeline.runtime.write_text_atomic: first
# `.tmp-<name>.<pid>` beside the file, then renamed over it). A job killed in between leaves that file,
# holding what the file held and never read again: erasure removes one that holds a deleted clip's trace
# once its writer is gone (pipeline.ops.erase.remove_killed_write), and the audit counts it as erasure's.
# Not the inbox: the annotation upload writes it, and a `.tmp-` name there may be an upload under way on
# another machine, whose process id says nothing here.
WRITTEN_WHOLE = ("report", "registry model", "registry log", "corpus", "demo export", "cached dataset")
KILLED_WRITE = ".tmp-"

RUN_MARKER = BUILD_REPORT  # what makes a folder a run of the data stage
# What makes a folder a run folder, relative to it (see run_folders): the walk of the roots and the
# check of the cache's listed folders both read this.
RUN_MARKS = (RUN_MARKER, "multirun.yaml", ".hydra/config.yaml", f"{EVAL_CONFIG_DIR}/config.yaml")
DO_NOT_SYNC = "DO_NOT_SYNC"
# Why a listed run folder is out of reach (pipeline.runtime.out_of_reach), as erasure and the audit say it.
OUT_OF_REACH = "neither they nor the folder above them exist: on a disk or share not mounted now?"


def _run_marked_by(f: Path) -> Path | None:
    """The run folder whose mark `f` is, or None."""
    for mark in RUN_MARKS:
        depth = mark.count("/") + 1
        if f.parts[-depth:] == tuple(mark.split("/")):
            return f.parents[depth - 1]
    return None


def place_of(relative: str, places: tuple[Place, ...]) -> Place | None:
    for place in places:
        if any(fnmatch.fnmatchcase(relative, p) for p in place.patterns):
            return place
    return None


def check_root(name: str, root: Path) -> bool:
    """True when the root exists and can be walked; absent is fine (nothing was written there);
    anything else is an error naming the root, so a scan never passes by skipping it."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise PipelineError(f"{name} root {root} is not a folder; fix erase.* / retrain.* in the config")
    if not os.access(root, os.R_OK | os.X_OK):
        raise PipelineError(f"{name} root {root} cannot be read (permission denied); the scan cannot prove it clean")
    return True


def searched_roots(parser: argparse.ArgumentParser, given: list[Path], defaults: Iterable[Path]) -> list[Path]:
    """The folders a command searches for runs: those named, each of which must exist (a mistyped one
    would read as "no runs" or "nothing to sync"), else the defaults, which may not exist yet."""
    missing = [str(r) for r in given if not r.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    return list(given) or list(defaults)


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under root; an unreadable folder is an error, never a silent skip."""
    def raise_error(err: OSError) -> None:
        raise PipelineError(f"cannot scan {err.filename}: {err.strerror}; fix its permissions or the erase.* roots")

    for folder, _dirs, files in os.walk(root, onerror=raise_error):
        for name in files:
            yield Path(folder) / name


def run_folders(roots: Roots) -> list[Path]:
    """Run folders under outputs/ and multirun/, and those the cache's list names wherever they are
    (`hydra.run.dir=<elsewhere>`; pipeline.runtime.RUN_FOLDERS_LIST): a folder the data stage wrote a
    build report into, one `evaluate.py` wrote (its `.hydra-evaluate/`: a model scored on a dataset,
    which holds that dataset's transcripts and ids as any run's evaluation does), one of a run that
    stopped before its data stage (only `.hydra/` and a log), and a sweep's folder (`multirun.yaml`)."""
    found: list[Path] = []
    for name, root in (("outputs", roots.outputs), ("multirun", roots.multirun)):
        if check_root(name, root):
            for p in walk_files(root):
                if "wandb" in p.parts:
                    continue
                run = _run_marked_by(p)
                if run is not None:
                    found.append(run)
    # A listed folder under a root is the one found there (compared resolved: a root may be reached by a link).
    seen = {run.resolve() for run in found}
    return sorted(set(found) | {run for run in listed_run_folders(roots) if run.resolve() not in seen})


def _listed(roots: Roots) -> list[Path]:
    """The absolute folders the cache's list names, each once (a relative line names nothing)."""
    listed = roots.cache / RUN_FOLDERS_LIST
    if not listed.is_file():
        return []
    return [run for run in map(Path, dict.fromkeys(listed.read_text().splitlines())) if run.is_absolute()]


def listed_run_folders(roots: Roots) -> list[Path]:
    """The run folders the cache's list names that are still there and still runs (a folder removed
    by hand, or reused for something else, is not one)."""
    return [run for run in _listed(roots) if any((run / mark).is_file() for mark in RUN_MARKS)]


def unreachable_run_folders(roots: Roots) -> list[Path]:
    """The listed run folders out of reach now (pipeline.runtime.out_of_reach): neither erasure nor
    the audit can look in them, and both say so rather than let "clean" cover them."""
    return [run for run in _listed(roots) if out_of_reach(str(run))]


def run_folders_elsewhere(roots: Roots) -> list[Path]:
    """The listed run folders under none of the roots: those a walk of the roots does not reach (every
    job lists its folder, so most listed ones lie under outputs/ and are walked there already)."""
    inside = [root.resolve() for root in roots.named().values() if root.exists()]
    return [run for run in listed_run_folders(roots) if not any(run.resolve().is_relative_to(r) for r in inside)]


def place_under(f: Path, roots: Roots) -> Place | None:
    """The row that claims a file outside run folders: the first root holding it (in `Roots.named`'s
    order: a root inside another, the corpus inside the cache, is claimed by its own rows unless the
    outer root's claim it), so erasure and the audit name it alike."""
    for name, root in roots.named().items():
        if f.is_relative_to(root):
            place = place_of(f.relative_to(root).as_posix(), tuple(p for p in PLACES if p.root == name))
            if place:
                return place
    return None


def killed_writes(roots: Roots) -> Iterator[tuple[str, Path]]:
    """Every `.tmp-*` file outside run folders in a place of WRITTEN_WHOLE, with the place's kind, each
    once (a root inside another is walked twice). Run folders' are found with the rest of each run."""
    seen: set[Path] = set()
    for name in sorted({p.root for p in PLACES if p.kind in WRITTEN_WHOLE}):
        root = getattr(roots, name)
        if not check_root(name, root):
            continue
        for f in walk_files(root):
            if not f.name.startswith(KILLED_WRITE) or f.resolve() in seen:
                continue
            place = place_under(f, roots)
            if place is not None and place.kind in WRITTEN_WHOLE:
                seen.add(f.resolve())
                yield place.kind, f


def run_of(path: Path, runs: list[Path]) -> Path | None:
    """The run folder a file belongs to: the innermost one holding it (a sweep's job folder inside the
    sweep's folder, which holds multirun.yaml)."""
    holding = [r for r in runs if path.resolve().is_relative_to(r.resolve())]
    return max(holding, key=lambda r: len(r.resolve().parts)) if holding else None


def unclaimed(roots: Roots) -> list[Path]:
    """Files under the roots that no row of the inventory claims: a writer nobody registered."""
    out: set[Path] = set()
    runs = run_folders(roots)
    named = {name: root.resolve() for name, root in roots.named().items()}
    for name, root in named.items():
        if not check_root(name, root):
            continue
        # A root inside another (the corpus inside the cache) is claimed by its own rows.
        inner = [r for n, r in named.items() if n != name and r != root and r.is_relative_to(root)]
        places = tuple(p for p in PLACES if p.root == name)
        for f in walk_files(root):
            if any(f.is_relative_to(r) for r in inner):
                continue
            if name in ("outputs", "multirun"):
                run = run_of(f, runs)
                if run is None or place_of(f.relative_to(run.resolve()).as_posix(), RUN_PARTS) is None:
                    out.add(f)
            elif place_of(f.relative_to(root).as_posix(), places) is None:
                out.add(f)
    return sorted(out)
