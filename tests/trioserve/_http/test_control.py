"""The control endpoint: token-locked REST API that applies configs to a running instance
(real replica processes, real HTTP)."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import trioserve as serve
from trioserve._runtime_file import read_runtime_file, runtime_path

APPS = "tests.trioserve.config_apps"


def _config(*apps: dict[str, Any]) -> dict[str, Any]:
    return {"applications": list(apps)}


GREETER = {"name": "greet", "route_prefix": "/greet", "import_path": f"{APPS}:greeter"}
DOUBLER = {"name": "double", "route_prefix": "/double", "import_path": f"{APPS}:doubler"}


@asynccontextmanager
async def open_controlled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[tuple[serve.ServeInstance, httpx.AsyncClient, httpx.AsyncClient]]:
    """An instance with a control endpoint, an authorized control client, an HTTP client."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    async with serve.open_serve(http_port=0, control_port=0) as instance:
        assert instance.control_url is not None
        assert instance.http_url is not None
        port = int(instance.control_url.rpartition(":")[2])
        record = read_runtime_file(port, tmp_path / "trioserve")
        assert record is not None
        headers = {"authorization": f"Bearer {record.token}"}
        async with (
            httpx.AsyncClient(base_url=instance.control_url, headers=headers, timeout=30) as ctl,
            httpx.AsyncClient(base_url=instance.http_url, timeout=30) as http,
        ):
            yield instance, ctl, http


async def _apply(ctl: httpx.AsyncClient, config: dict[str, Any]) -> dict[str, Any]:
    """PUT a config and wait until the control endpoint reports it applied."""
    answer = await ctl.put("/api/applications", json=config)
    assert answer.status_code == 202, answer.text
    generation = answer.json()["generation"]
    with trio.fail_after(60):
        while True:
            status = (await ctl.get("/api/status")).json()
            if (
                status["apply"]["generation"] == generation
                and status["apply"]["state"] != "RUNNING"
            ):
                return dict(status)
            await trio.sleep(0.05)  # the apply runs real replica processes


async def test_control_refuses_requests_without_the_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No token, a wrong token, or another scheme: 401 on every route, and nothing changes."""
    async with open_controlled(monkeypatch, tmp_path) as (instance, _ctl, _):
        url = instance.control_url
        assert url is not None
        async with httpx.AsyncClient(base_url=url, timeout=10) as anon:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic x"}):
                for method, path in [
                    ("GET", "/api/status"),
                    ("PUT", "/api/applications"),
                    ("DELETE", "/api/applications/greet"),
                    ("POST", "/api/shutdown"),
                ]:
                    answer = await anon.request(
                        method, path, headers=headers, json=_config(GREETER)
                    )
                    assert answer.status_code == 401, (method, path, headers)
        assert not instance.shutdown_requested.is_set()
        assert (await instance.status()).applications == {}


async def test_control_token_of_another_instance_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two instances have different tokens: one's token opens nothing on the other."""
    async with (
        open_controlled(monkeypatch, tmp_path) as (_, ctl, _http),
        serve.open_serve(http_port=None, control_port=0) as other,
    ):
        assert other.control_url is not None
        answer = await ctl.get(other.control_url + "/api/status")
        assert answer.status_code == 401


async def test_control_runtime_file_private_and_removed_at_exit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The runtime file is 0600 while the instance runs and gone after it stops."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    async with serve.open_serve(http_port=None, control_port=0) as instance:
        assert instance.control_url is not None
        port = int(instance.control_url.rpartition(":")[2])
        path = runtime_path(port, tmp_path / "trioserve")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()


@pytest.mark.slow
async def test_control_put_adds_updates_in_place_rolls_and_deletes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PUT is declarative: it adds applications, applies user_config in place (same
    process), rolls changed bind arguments (new process), deletes applications left out of
    the config, and applying the same config twice changes nothing."""
    async with open_controlled(monkeypatch, tmp_path) as (instance, ctl, http):
        status = await _apply(ctl, _config(GREETER, DOUBLER))
        assert status["apply"]["state"] == "DONE", status
        first = (await http.get("/greet")).json()
        assert first["greeting"] == "hello"
        assert (await http.get("/double")).status_code == 200

        same = await _apply(ctl, _config(GREETER, DOUBLER))
        assert same["apply"]["state"] == "DONE"
        assert (await http.get("/greet")).json()["pid"] == first["pid"]

        in_place = {
            **GREETER,
            "deployments": [{"name": "Greeter", "user_config": {"greeting": "hi"}}],
        }
        await _apply(ctl, _config(in_place))
        answer = (await http.get("/greet")).json()
        assert answer == {"greeting": "hi", "pid": first["pid"]}
        assert (await http.get("/double")).status_code == 404
        assert set((await instance.status()).applications) == {"greet"}

        rolled = {**GREETER, "import_path": f"{APPS}:build_greeter", "args": {"greeting": "yo"}}
        await _apply(ctl, _config(rolled))
        answer = (await http.get("/greet")).json()
        assert answer["greeting"] == "yo"
        assert answer["pid"] != first["pid"]

        config = (await ctl.get("/api/applications")).json()
        assert [a["name"] for a in config["applications"]] == ["greet"]
        assert (await ctl.delete("/api/applications/greet")).status_code == 200
        assert (await instance.status()).applications == {}


async def test_control_put_rejects_a_bad_config_with_its_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A config that does not validate is answered 400 naming the bad field; nothing runs."""
    async with open_controlled(monkeypatch, tmp_path) as (instance, ctl, _):
        bad = {**GREETER, "deployments": [{"name": "Greeter", "num_replicas": -1}]}
        answer = await ctl.put("/api/applications", json=_config(bad))
        assert answer.status_code == 400
        assert "applications[0].deployments[0].num_replicas" in answer.text
        assert (await instance.status()).applications == {}


async def test_control_failed_deploy_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An import path that cannot be imported makes the apply FAILED with the reason."""
    async with open_controlled(monkeypatch, tmp_path) as (_, ctl, _http):
        missing = {**GREETER, "import_path": f"{APPS}:no_such_app"}
        status = await _apply(ctl, _config(missing))
        assert status["apply"]["state"] == "FAILED"
        assert "no_such_app" in status["apply"]["error"]


async def test_control_shutdown_sets_the_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """POST /api/shutdown with the token asks the owner of the instance to stop."""
    async with open_controlled(monkeypatch, tmp_path) as (instance, ctl, _):
        assert (await ctl.post("/api/shutdown")).status_code == 202
        with trio.fail_after(1):
            await instance.shutdown_requested.wait()


async def test_control_refuses_before_reading_the_body(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A request without the token is answered 401 from its headers alone: a client that
    announces a 60 MiB body and never sends it is refused at once, and disconnected."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    async with serve.open_serve(http_port=None, control_port=0) as instance:
        assert instance.control_url is not None
        port = int(instance.control_url.rpartition(":")[2])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = (
            "PUT /api/applications HTTP/1.1\r\nhost: x\r\n"
            f"content-length: {60 * 2**20}\r\nauthorization: Bearer wrong\r\n\r\n"
        )
        await stream.send_all(head.encode())
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 401")
        await stream.aclose()
