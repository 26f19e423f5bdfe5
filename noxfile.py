"""Sessions: lint, typecheck, tests (3.11-3.13, quick tests), slow tests, the 30 s chaos
soak and the hostile soak (once each, on 3.11). `nox` runs them all; every example runs in
tests_slow (tests/test_examples.py), and ``nox -s examples`` runs them by hand. The test
sessions run pytest-xdist workers (``-n auto``), so no test may depend on another or on
running alone, and none may listen on a fixed port."""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = [
    "lint",
    "typecheck",
    "tests",
    "tests_slow",
    "soak_short",
    "soak_hostile",
]
nox.options.reuse_existing_virtualenvs = True
# uv makes each environment in ~3 s instead of ~22 s with virtualenv and pip; without uv
# (nox installed without its ``uv`` extra) nox falls back to virtualenv
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True

PYTHONS = ["3.11", "3.12", "3.13"]
# pytest-xdist: one worker per CPU. The slow tests leave a CPU idle while they wait for
# replica processes to start and answer: on 2 CPUs, two workers take tests_slow from
# ~3.7 min to ~2.2 min. ``nox -s tests_slow -- -n 0`` runs them in one process
XDIST = ["-n", "auto"]


def _find_pyenv_pythons() -> None:
    """Put pyenv's interpreters on PATH: its shims only run the versions chosen as global,
    so ``python3.12`` is "not found" for nox even when pyenv has it installed."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    for version in PYTHONS:
        candidates = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin")))
        found.extend(candidates[-1:])
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_find_pyenv_pythons()
# uv installs without compiling bytecode (pip compiles it); where PYTHONDONTWRITEBYTECODE
# is set, every replica process would then compile its dependencies from source again,
# which made the slow tests take twice as long
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("mypy>=1.11", "-e", ".[test]")
    session.run("mypy")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The quick tests on every Python (those marked ``slow`` run once, in tests_slow)."""
    session.install("-e", ".[test]")
    session.run("pytest", *XDIST, "-m", "not slow", "--ignore=tests/soak", *session.posargs)


@nox.session(python="3.11")
def tests_slow(session: nox.Session) -> None:
    """The tests marked ``slow`` (over 0.25 s: most start real replica processes), once."""
    session.install("-e", ".[test]")
    session.run("pytest", *XDIST, "-m", "slow", "--ignore=tests/soak", *session.posargs)


@nox.session(python="3.11")
def soak_short(session: nox.Session) -> None:
    """30 s of chaos under load (tests/soak): replicas killed while traffic runs."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/soak", "-m", "not hostile", *session.posargs)


@nox.session(python="3.11")
def soak_hostile(session: nox.Session) -> None:
    """The hostile soak: legitimate load beside disconnecting streamers, idle connections up
    to the bound, 1-byte uploaders and HEAD probes; asserts >= 99.9 % success and p99 under
    50 ms (about 8 ms on a 2-core machine)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/soak", "-m", "hostile", *session.posargs)


@nox.session(python="3.11")
def examples(session: nox.Session) -> None:
    session.install("-e", ".[test]")  # the HTTP examples use httpx and Starlette
    session.run("python", "examples/run_all.py")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """``nox -s bench -- [--quick] [--windows N] [--ray-venv PATH]``; the FastAPI reference
    needs uvicorn (with uvloop and httptools) and FastAPI, the wrk cases need ``wrk``."""
    session.install("-e", ".[test]", "uvicorn[standard]", "fastapi")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """Chaos under load: ``nox -s soak -- 600`` runs 600 s (default 300) of traffic while
    replica processes are killed; fails on a wrong answer, a hang or a leftover process."""
    session.install("-e", ".[test]")
    session.run("python", "tests/soak/soak.py", "--duration", *(session.posargs or ["300"]))
