"""The import directions of docs/ARCHITECTURE.md, checked by reading every import in the source.

A lower layer that imports a higher one makes the higher one impossible to change or test alone
(and invites import cycles that are then hidden inside functions), so the walk includes imports
inside functions. Violations that predate the rule are listed in KNOWN and must shrink: a new
violation fails, and so does a listed one that no longer exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = ("foundation", "data", "models", "eval", "stages", "orchestration", "jobs", "entry")
# pipeline/tracking is the foundation's one package (the Tracker protocol, the W&B tracker, the offline
# reader); pipeline/review is a stage that reads the eval stage's outputs; pipeline/ops is the jobs package.
SUBPACKAGES = {"tracking": "foundation", "data": "data", "asr": "models", "nlu": "models", "eval": "eval",
               "review": "stages", "ops": "jobs"}

# (importer, imported) pairs that break the rule today; each is on the way out.
KNOWN: set[tuple[str, str]] = set()
# (importer, imported module, private name) imports across modules that exist today.
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "pipeline":
        return "entry"
    if len(parts) == 1:
        return "foundation"
    if len(parts) == 2 and parts[1] not in SUBPACKAGES:
        return "orchestration" if parts[1] == "stages" else "foundation"
    if parts[1] not in SUBPACKAGES:
        raise AssertionError(
            f"{module}: package pipeline.{parts[1]} has no layer; add it to SUBPACKAGES in "
            "tests/test_layers.py and to the table in docs/ARCHITECTURE.md"
        )
    return SUBPACKAGES[parts[1]]


# Pure scoring functions that depend on the foundation alone: the one home of every metric, which
# the models' own validation scores call too (test_shared_modules_stay_on_the_foundation keeps them pure).
SHARED_DOWNWARD = {"pipeline.eval.metrics"}


def allowed(importer: str, imported: str) -> bool:
    src, dst = layer_of(importer), layer_of(imported)
    if imported in SHARED_DOWNWARD and src == "models":
        return True
    if src == dst == "models":
        return not (importer.startswith("pipeline.asr") and imported.startswith("pipeline.nlu"))
    return LAYERS.index(dst) <= LAYERS.index(src)


def source_files() -> list[Path]:
    files = sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "bench").glob("*.py"))
    return files + [REPO / name for name in ("train.py", "evaluate.py", "retrain.py")]


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, repo: Path = REPO) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement, relative ones resolved."""
    package = module_name(path, repo).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names = [alias.name for alias in node.names]
            # `from pipeline.eval import metrics` imports the module pipeline.eval.metrics.
            folder = repo.joinpath(*module.split("."))
            submodules = [n for n in names if (folder / f"{n}.py").exists() or (folder / n).is_dir()]
            found += [(f"{module}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((module, rest))
    return found


def modules() -> set[str]:
    return {module_name(path) for path in source_files()}


def project_imports() -> list[tuple[str, str, list[str]]]:
    return [(module_name(path), imported, names)
            for path in source_files() for imported, names in imports(path)
            if imported == "pipeline" or imported.startswith("pipeline.")]


def test_layer_of_follows_the_architecture_table() -> None:
    assert [layer_of(m) for m in ("pipeline.runtime", "pipeline.tracking", "pipeline.tracking.wandb_run",
                                  "pipeline.data.build", "pipeline.nlu.model", "pipeline.eval.metrics",
                                  "pipeline.review.stage", "pipeline.stages", "pipeline.ops.compare",
                                  "pipeline.ops.retrain", "bench.data_build")] == [
        "foundation", "foundation", "foundation", "data", "models", "eval", "stages", "orchestration",
        "jobs", "jobs", "entry"]
    assert allowed("pipeline.nlu.asr_augment", "pipeline.asr.model")
    assert not allowed("pipeline.asr.train", "pipeline.nlu.model")
    assert not allowed("pipeline.data.build", "pipeline.eval.metrics")
    assert allowed("pipeline.ops.retrain", "pipeline.stages")
    assert allowed("pipeline.stages", "pipeline.tracking.wandb_run")
    assert not allowed("pipeline.stages", "pipeline.ops.compare")
    assert not allowed("pipeline.review.stage", "pipeline.stages")


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    (tmp_path / "pipeline" / "data").mkdir(parents=True)
    (tmp_path / "pipeline" / "eval").mkdir()
    (tmp_path / "pipeline" / "eval" / "metrics.py").write_text("")
    module = tmp_path / "pipeline" / "data" / "build.py"
    module.write_text("def f():\n    from pipeline.eval import metrics\n    from ..eval.metrics import wer\n")
    assert imports(module, tmp_path) == [("pipeline.eval.metrics", []), ("pipeline.eval.metrics", ["wer"])]


def test_no_module_imports_from_a_higher_layer() -> None:
    violations = {(src, dst) for src, dst, _ in project_imports() if not allowed(src, dst)}
    new = sorted(violations - KNOWN)
    assert not new, (
        "imports against the layer order of docs/ARCHITECTURE.md (importer -> imported): "
        f"{new}; move the shared piece down a layer instead"
    )
    fixed = sorted(pair for pair in KNOWN - violations if pair[0] in modules())
    assert not fixed, f"{fixed} no longer happen: remove them from KNOWN in tests/test_layers.py"


def test_shared_modules_stay_on_the_foundation() -> None:
    for module in SHARED_DOWNWARD:
        deps = {dst for src, dst, _ in project_imports() if src == module}
        assert all(layer_of(d) == "foundation" for d in deps), f"{module} imports {sorted(deps)}; keep it on the foundation"


def test_no_private_names_are_imported_across_modules() -> None:
    private = {(src, dst, name) for src, dst, names in project_imports() for name in names
               if name.startswith("_") and not name.startswith("__")}
    new = sorted(private - KNOWN_PRIVATE)
    assert not new, f"private names imported from other modules (importer, module, name): {new}; make them public"
    fixed = sorted(entry for entry in KNOWN_PRIVATE - private if entry[0] in modules())
    assert not fixed, f"{fixed} no longer happen: remove them from KNOWN_PRIVATE in tests/test_layers.py"
