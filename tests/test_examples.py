"""Every script in ``examples/`` runs by itself to completion and prints its final line.

The examples are the scripts ``examples/run_all.py`` runs (the same glob); each test runs
one as a subprocess, the way a user would, so each gets a fresh serve instance.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if p.name != "run_all.py")
TIMEOUT_S = 120

#: the last line each example prints once all of its own assertions have passed
EXPECTED_LAST_LINE = {
    "asyncio_deployment": "asyncio deployment: httpx on asyncio and asyncio.gather over responses",
    "batching": "batching: 64 requests answered in batches of up to 32",
    "multiplexing": "multiplexing: 4 models over 2 replicas, each model on one replica",
    "config_file": "config file: 2 applications deployed from serve_config.yaml",
    "async_handle": "async handle: 7 requests dispatched to large and small models",
    "get_handle": "get handle: Hello Alice! / Hello Bob!",
    "handle_chain": "handle chain: well, hello Serve",
    "handle_method": "handle method: __call__, increment and describe called via both handles",
    "model_composition": "model composition: 8 texts classified through 5 deployments",
    "streaming": "streaming: streams arrive one item at a time",
    "sync_handle": "sync handle: 6 greetings received",
}


def test_examples_are_found() -> None:
    """The glob finds the examples this file knows the final lines of."""
    assert set(EXPECTED_LAST_LINE) <= {p.stem for p in EXAMPLES}


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    """The example exits with code 0 within the timeout, and the last line it prints is its
    expected one (any printed line, for an example not listed in EXPECTED_LAST_LINE)."""
    proc = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=EXAMPLES_DIR.parent,
        check=False,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}\n{report}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{path.name} printed nothing\n{report}"
    expected = EXPECTED_LAST_LINE.get(path.stem)
    if expected is not None:
        assert lines[-1] == expected, report
