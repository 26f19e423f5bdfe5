"""The operator's CLI with config files: run, build, start, deploy, status, config,
shutdown and --reload, as real subprocesses (the way an operator runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import yaml

import trioserve as serve
from trioserve._schema import build_app, load_config

from .test_cli import CLI, REPO, announced_url, free_port

STARTUP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.slow


@attrs.define
class Running:
    process: trio.Process
    output: list[str] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    def text(self) -> str:
        return "".join(self.output)

    async def wait_for(self, needle: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        with trio.move_on_after(timeout_s):
            while needle not in self.text():
                await self.changed.wait()
        assert needle in self.text(), f"{needle!r} never printed:\n{self.text()}"

    async def wait_for_url(self, what: str, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        """The URL the CLI (given port 0) prints that ``what`` listens on, once it has."""
        with trio.move_on_after(timeout_s):
            while announced_url(self.text(), what) is None:
                await self.changed.wait()
        url = announced_url(self.text(), what)
        assert url is not None, f"no URL printed for {what}:\n{self.text()}"
        return url


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "PYTHONPATH": str(REPO)}


@asynccontextmanager
async def open_cli(tmp_path: Path, *args: str, cwd: Path = REPO) -> AsyncIterator[Running]:
    """``trioserve ARGS`` in the background, its output collected; killed if still running."""
    process = await trio.lowlevel.open_process(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=_env(tmp_path),
    )
    running = Running(process)

    async def collect() -> None:
        assert process.stdout is not None
        async for data in process.stdout:
            running.output.append(data.decode(errors="replace"))
            running.changed.set()
            running.changed = trio.Event()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            yield running
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env=_env(tmp_path),
    )


async def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: cli(tmp_path, *args))


TWO_APPS = """
applications:
  - name: greet
    route_prefix: /greet
    import_path: tests.trioserve.config_apps:greeter
    deployments:
      - name: Greeter
        num_replicas: 2
        user_config: {greeting: bonjour}
  - name: double
    route_prefix: /double
    import_path: tests.trioserve.config_apps:doubler
"""


async def test_cli_run_config_with_two_applications_and_overrides(tmp_path: Path) -> None:
    """``trioserve run config.yaml`` serves both applications with the overrides applied
    (user_config through reconfigure, num_replicas), then drains on SIGTERM."""
    config = tmp_path / "serve.yaml"
    config.write_text(TWO_APPS)
    async with open_cli(
        tmp_path, "run", str(config), "--port", "0", "--control-port", "-1"
    ) as running:
        await running.wait_for("application 'double'")
        url = await running.wait_for_url("application")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            pids = {(await http.get("/greet")).json()["pid"] for _ in range(20)}
            assert (await http.get("/greet")).json()["greeting"] == "bonjour"
            assert (await http.get("/double")).status_code == 200
        assert len(pids) == 2
        running.process.terminate()
        with trio.fail_after(30):
            assert await running.process.wait() == 0


async def test_cli_run_builder_with_key_value_arguments(tmp_path: Path) -> None:
    """``trioserve run module:builder key=value`` calls the builder with the arguments."""
    async with open_cli(
        tmp_path,
        "run",
        "tests.trioserve.config_apps:build_greeter",
        "greeting=hej",
        "--port",
        "0",
        "--control-port",
        "-1",
    ) as running:
        url = await running.wait_for_url("application")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/")).json()["greeting"] == "hej"
        running.process.terminate()
        with trio.fail_after(30):
            assert await running.process.wait() == 0


def test_cli_run_bad_config_names_the_field(tmp_path: Path) -> None:
    """A config with a bad value fails in one line naming the field's path, exit 1."""
    config = tmp_path / "bad.yaml"
    config.write_text(TWO_APPS.replace("num_replicas: 2", "num_replicas: -1"))
    done = cli(tmp_path, "run", str(config), "--port", str(free_port()), "--control-port", "-1")
    assert done.returncode == 1
    assert "applications[0].deployments[0].num_replicas" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_cli_build_start_deploy_status_config_shutdown(tmp_path: Path) -> None:
    """The operator's workflow: ``build`` writes a config that ``deploy`` applies unchanged
    to a ``trioserve start`` instance (found through the runtime file, no token given);
    deploying it again changes nothing; a config without one application deletes it;
    ``status`` and ``config`` show what runs; ``shutdown`` stops the instance."""
    built = tmp_path / "built.yaml"
    done = await run_cli(
        tmp_path,
        "build",
        "tests.trioserve.config_apps:greeter",
        "tests.trioserve.config_apps:build_greeter",
        "greeting=hi",
        "-o",
        str(built),
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(built.read_text())
    assert [a["name"] for a in config["applications"]] == ["greeter", "build_greeter"]
    assert config["applications"][1]["args"] == {"greeting": "hi"}
    # what ``run`` does with it: load, build every application (no server needed here)
    for app in load_config(built).applications:
        assert isinstance(build_app(app), serve.Application)

    async with open_cli(tmp_path, "start", "--port", "0", "--control-port", "0") as running:
        address = await running.wait_for_url("control endpoint")
        url = await running.wait_for_url("HTTP")
        done = await run_cli(tmp_path, "deploy", str(built), "--address", address)
        assert done.returncode == 0, done.stderr
        assert "deployed greeter, build_greeter" in done.stdout
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            first = (await http.get("/")).json()
            assert (await http.get("/build_greeter")).json()["greeting"] == "hi"
            again = await run_cli(tmp_path, "deploy", str(built), "--address", address)
            assert again.returncode == 0, again.stderr
            assert (await http.get("/")).json()["pid"] == first["pid"]

            config["applications"] = config["applications"][:1]
            smaller = tmp_path / "smaller.yaml"
            smaller.write_text(yaml.safe_dump(config))
            done = await run_cli(tmp_path, "deploy", str(smaller), "--address", address)
            assert done.returncode == 0, done.stderr
            # the path now falls to the "/" application
            assert (await http.get("/build_greeter")).json()["greeting"] == "hello"

        status = await run_cli(tmp_path, "status", "--address", address, "-o", "yaml")
        assert status.returncode == 0, status.stderr
        assert set(yaml.safe_load(status.stdout)["applications"]) == {"greeter"}
        shown = await run_cli(tmp_path, "config", "--address", address)
        assert [a["name"] for a in yaml.safe_load(shown.stdout)["applications"]] == ["greeter"]

        control = int(address.rpartition(":")[2])
        runtime_file = tmp_path / "xdg" / "trioserve" / f"control-{control}.json"
        assert runtime_file.exists()
        done = await run_cli(tmp_path, "shutdown", "--address", address)
        assert done.returncode == 0, done.stderr
        with trio.fail_after(30):
            assert await running.process.wait() == 0
        assert not runtime_file.exists()


def test_cli_deploy_without_token_is_refused(tmp_path: Path) -> None:
    """With no token to be found, ``deploy`` fails in one line and changes nothing."""
    config = tmp_path / "serve.yaml"
    config.write_text(TWO_APPS)
    done = cli(tmp_path, "deploy", str(config), "--address", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.startswith("error: no token for")


def test_cli_schema_prints_json_schema(tmp_path: Path) -> None:
    """``trioserve schema`` prints the config's JSON Schema, for editors."""
    done = cli(tmp_path, "schema")
    assert done.returncode == 0
    assert '"$defs"' in done.stdout
    assert "ApplicationSchema" in done.stdout


def test_cli_version_and_help_on_every_option(tmp_path: Path) -> None:
    """``--version`` prints the version; every option of every command has help text."""
    done = cli(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.startswith("trioserve ")
    sys.path.insert(0, str(REPO))
    from trioserve._cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():  # type: ignore[union-attr]
            for option in sub._actions:
                assert option.help, f"{name} {option.option_strings or option.dest} has no help"


APP_V1 = """
import trioserve as serve


@serve.deployment
class Version:
    async def __call__(self, request: object) -> str:
        return "v1"


app = Version.bind()
"""


async def test_cli_run_reload_rolls_edited_code_and_survives_a_syntax_error(
    tmp_path: Path,
) -> None:
    """``--reload`` redeploys an edited file as a rolling update while requests keep being
    answered; a syntax error is printed and the previous version keeps serving."""
    project = tmp_path / "project"
    project.mkdir()
    source = project / "reloadable.py"
    source.write_text(APP_V1)
    async with open_cli(
        tmp_path,
        "run",
        "reloadable.py:app",
        "--port",
        "0",
        "--control-port",
        "-1",
        "--reload",
        cwd=project,
    ) as running:
        await running.wait_for("watching")
        url = await running.wait_for_url("application")
        failures: list[str] = []
        answers: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/")).text == "v1"

            async def load() -> None:
                while True:
                    answer = await http.get("/")
                    if answer.status_code != 200:
                        failures.append(answer.text)
                    answers.append(answer.text)
                    await trio.sleep(0.01)  # a steady trickle of client requests

            async with trio.open_nursery() as nursery:
                nursery.start_soon(load)
                source.write_text(APP_V1.replace('"v1"', '"v2"'))
                await running.wait_for("trioserve: reloaded")
                assert (await http.get("/")).text == "v2"
                source.write_text(APP_V1.replace("class Version:", "class Version(:"))
                await running.wait_for("reload failed")
                assert (await http.get("/")).text == "v2"
                nursery.cancel_scope.cancel()
        assert failures == []
        assert "v1" in answers
        assert "v2" in answers
        running.process.terminate()
        with trio.fail_after(30):
            assert await running.process.wait() == 0
