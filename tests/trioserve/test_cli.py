"""The ``trioserve`` command, run as a subprocess the way a user runs it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import psutil
import pytest
import trio

import trioserve as serve

from . import http_fixtures as fx

REPO = Path(__file__).resolve().parents[2]
TARGET = "tests/trioserve/http_fixtures.py:app"
CLI = [sys.executable, "-m", "trioserve._cli"]
STARTUP_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0


def free_port() -> int:
    """A port that was free a moment ago, for commands that fail or connect before anything
    listens there; a CLI that listens gets ``--port 0`` and prints its port
    (:func:`announced_url`), as tests running in parallel may take any port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def announced_url(text: str, what: str) -> str | None:
    """The ``http://host:port`` that the CLI's output ``text`` says ``what`` (``application``,
    ``HTTP`` or ``control endpoint``) listens on; None while it has not said so."""
    # the URL counts once its line is whole (output arrives in chunks)
    pattern = rf"^trioserve: {what}\b.*? at (http://[^\s/]+)[/\s]"
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1) if match else None


@attrs.define
class RunningCLI:
    process: trio.Process
    url: str
    output: list[str] = attrs.Factory(list)

    def text(self) -> str:
        return "".join(self.output)


@asynccontextmanager
async def open_cli_run(*options: str) -> AsyncIterator[RunningCLI]:
    """``trioserve run TARGET --port 0 *options`` until its application is up (at the port
    it prints); the block must stop it. Its output (stdout and stderr) is collected all
    along."""
    process = await trio.lowlevel.open_process(
        [*CLI, "run", TARGET, "--port", "0", "--control-port", "-1", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    cli = RunningCLI(process, "")
    up = trio.Event()

    async def collect() -> None:
        assert process.stdout is not None
        async for data in process.stdout:
            cli.output.append(data.decode(errors="replace"))
            url = announced_url(cli.text(), "application")
            if url is not None and not up.is_set():
                cli.url = url
                up.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            with trio.move_on_after(STARTUP_TIMEOUT_S):
                await up.wait()
            assert up.is_set(), f"trioserve run did not start:\n{cli.text()}"
            yield cli
    finally:
        if process.returncode is None:  # the test failed before stopping it
            process.kill()
            await process.wait()


def replica_processes(status: dict[str, Any]) -> list[psutil.Process]:
    """The replica processes ``/-/status`` lists (psutil checks their start time, so a
    reused PID is not mistaken for them)."""
    found: list[psutil.Process] = []
    for app in status["applications"].values():
        for dep in app["deployments"].values():
            found.extend(psutil.Process(r["pid"]) for r in dep["replicas"])
    return found


def wait_gone(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Poll (they are real processes) until none of ``processes`` runs; the ones left."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    left = processes
    while time.monotonic() < deadline:
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.05)  # polling real processes' exit, bounded by the deadline
    for p in left:  # started (indirectly) by this test: do not leave them running
        p.kill()
    return left


async def serve_then_stop(signum: signal.Signals, *options: str, prefix: str = "") -> str:
    """Start ``trioserve run``, check it answers, send ``signum``; check it exits with 0 and
    takes every replica process with it. Returns its output."""
    async with open_cli_run(*options) as cli:
        async with httpx.AsyncClient(base_url=cli.url, timeout=10) as http:
            answer = (await http.get(f"{prefix}/hello")).json()
            status = (await http.get("/-/status")).json()
        replicas = replica_processes(status)
        assert len(replicas) == 2
        assert answer == {"pid": answer["pid"], "path": f"{prefix}/hello"}
        assert answer["pid"] in {p.pid for p in replicas}
        cli.process.send_signal(signum)
        with trio.fail_after(EXIT_TIMEOUT_S):
            code = await cli.process.wait()
        assert code == 0, cli.text()
        output = cli.text()
    left = await trio.to_thread.run_sync(wait_gone, replicas)
    assert left == [], f"replica processes outlived trioserve run: {left}"
    assert f"trioserve: {signum.name}, draining" in output
    assert output.rstrip().endswith("trioserve: stopped")
    return output


@pytest.mark.slow
async def test_cli_run_serves_until_sigint() -> None:
    """``trioserve run file.py:app`` serves HTTP until Ctrl-C, then exits 0 with no replica
    process left behind."""
    output = await serve_then_stop(signal.SIGINT)
    assert "trioserve: application 'default' at http://127.0.0.1:" in output


@pytest.mark.slow
async def test_cli_run_serves_until_sigterm() -> None:
    """SIGTERM drains and exits like Ctrl-C; ``--name`` and ``--route-prefix`` apply."""
    output = await serve_then_stop(
        signal.SIGTERM, "--name", "pids", "--route-prefix", "/pids", prefix="/pids"
    )
    assert "trioserve: application 'pids' at http://127.0.0.1:" in output


@pytest.mark.slow
async def test_cli_status_prints_table() -> None:
    """``trioserve status --address URL`` prints applications, deployments and replicas."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(
            fx.Lab.options(num_replicas=2).bind("api"), name="api", route_prefix="/api"
        )
        replica_pids = [
            replica.pid
            for replica in (await instance.status()).applications["api"].deployments["Lab"].replicas
        ]
        assert instance.http_url is not None
        done = await trio.run_process(
            [*CLI, "status", "--address", instance.http_url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    lines = out.splitlines()
    assert lines[0].split() == ["application", "api", "RUNNING", "route_prefix=/api"]
    assert lines[1].split() == ["DEPLOYMENT", "STATUS", "RUNNING/TARGET", "REPLICAS"]
    assert lines[2].split()[:3] == ["Lab", "HEALTHY", "2/2"]
    assert all(f"(pid {pid})" in lines[2] for pid in replica_pids)


@pytest.mark.slow
def test_cli_status_without_instance_fails_clearly() -> None:
    """``trioserve status`` against an address nothing serves says so and exits 1."""
    done = subprocess.run(
        [*CLI, "status", "--address", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert "error: no trioserve instance answers at http://127.0.0.1:" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests/trioserve/http_fixtures.py", "expected MODULE:ATTRIBUTE or FILE.py:ATTRIBUTE"),
        ("no_such_module_for_trioserve:app", "cannot import 'no_such_module_for_trioserve'"),
        ("tests/trioserve/no_such_file.py:app", "no such file"),
        ("tests/trioserve/http_fixtures.py:nothing", "'http_fixtures' has no attribute 'nothing'"),
        ("tests/trioserve/http_fixtures.py:ModelBrokeError", "is a type, not an application"),
    ],
    ids=["no-colon", "no-module", "no-file", "no-attribute", "not-an-app"],
)
def test_cli_run_bad_target_fails_clearly(target: str, message: str) -> None:
    """A target that is not an application gives a one-line error and exit code 1, no
    traceback and no server."""
    done = subprocess.run(
        [*CLI, "run", target, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert "trioserve: application" not in done.stdout


def test_cli_run_targets_in_readme_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``trioserve run TARGET`` the README shows names an application that loads."""
    from trioserve._cli import load_target

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_target adds the file's folder
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"^trioserve run (\S+)", readme, flags=re.MULTILINE)
    assert targets, "the README shows no `trioserve run` command"
    for target in targets:
        if target.endswith((".yaml", ".yml", ".json")):
            from trioserve._schema import build_app, load_config

            sys.path.insert(0, str((REPO / target).parent))
            for app in load_config(REPO / target).applications:
                assert isinstance(build_app(app), serve.Application), (target, app.name)
            continue
        assert isinstance(load_target(target), serve.Application), target


def test_cli_load_target_by_module_and_by_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """``module:attr`` and ``file.py:attr`` name the same application; a Deployment is bound;
    a bad target is a clear error."""
    from trioserve._cli import load_target

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))
    by_module = load_target("tests.trioserve.http_fixtures:app")
    by_file = load_target(TARGET)
    assert isinstance(by_module, serve.Application)
    assert isinstance(by_file, serve.Application)
    assert isinstance(load_target("tests.trioserve.http_fixtures:Pid"), serve.Application)
    with pytest.raises(SystemExit, match="has no attribute 'nothing'"):
        load_target("tests.trioserve.http_fixtures:nothing")
    with pytest.raises(SystemExit, match="expected MODULE:ATTRIBUTE"):
        load_target("no-colon-here")
