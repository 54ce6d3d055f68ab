"""Run an ops command's `main` in the test's own process, as `python -m pipeline.ops.<name>` would run
it in a child: with the child's environment and working folder, its stdout and stderr captured. The
end-to-end tests call the audit, erasure and sync this way between the training jobs, which stay
subprocesses: the commands' work is the same, without a fresh interpreter importing torch each time."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ is `env` while held (what `subprocess.run(..., env=env)` gives the child), then as before."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_main(main: Callable[[list[str]], int], argv: list[str], cwd: Path,
             env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`main(argv)` from `cwd` under `env`; its exit code (a SystemExit's too) and output, as subprocess.run's."""
    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return subprocess.CompletedProcess(argv, int(code or 0), out.getvalue(), err.getvalue())
