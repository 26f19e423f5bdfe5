"""HTTP as Ray Serve users write it: Starlette requests, Starlette responses, FastAPI
class-based ingress, status codes, request ids and error logs -- through real replica
processes and real sockets."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

import trioserve as serve
from trioserve._http.proxy import validate_route_prefix

from . import fastapi_app as fa
from . import http_fixtures as fx
from ._http.test_proxy import TIMEOUT_S, open_client

REPO = Path(__file__).resolve().parents[2]


async def wait_for_file(path: Path) -> str:
    """Poll (a replica process writes it) until ``path`` exists; its text."""
    async_path = trio.Path(path)
    with trio.fail_after(TIMEOUT_S):
        while True:
            if await async_path.exists():
                return await async_path.read_text()
            await trio.sleep(0.01)


# -- the request


@pytest.mark.slow
async def test_request_is_a_starlette_request() -> None:
    """``__call__`` gets a Starlette ``Request``: method, URL path, query params (repeated
    ones too), case-insensitive headers, client, body and JSON, empty path params."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Inspect.bind(), name="inspect", route_prefix="/in")
        async with open_client(instance) as http:
            response = await http.post(
                "/in/deep/path?x=1&tag=a&tag=b",
                json={"values": [1, 2]},
                headers={"X-Custom-Header": "yes"},
            )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/in/deep/path"
    assert seen["url"].endswith("/in/deep/path?x=1&tag=a&tag=b")
    assert seen["root_path"] == "/in"
    assert seen["path_params"] == {}
    assert seen["query"] == {"x": "1", "tag": "b"}
    assert seen["query_all"] == ["a", "b"]
    assert seen["custom"] == seen["custom_lower"] == "yes"
    assert json.loads(seen["body"]) == {"values": [1, 2]}
    assert seen["json"] == {"values": [1, 2]}
    assert seen["app_name"] == "inspect"
    assert seen["route"] == "/in"


@pytest.mark.slow
async def test_request_client_is_the_peer_address() -> None:
    """``request.client`` is the address the request came from."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Inspect.bind(), name="inspect", route_prefix="/in")
        async with open_client(instance) as http:
            response = await http.get("/in/x", headers={"X-Custom-Header": "1"})
    client = response.json()["client"]
    assert client is not None
    assert client[0] == "127.0.0.1"


@pytest.mark.slow
async def test_request_stream_yields_the_body() -> None:
    """``request.stream()`` yields the request body."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Inspect.bind(), name="inspect", route_prefix="/in")
        async with open_client(instance) as http:
            response = await http.post("/in/stream", content=b"raw bytes here")
    assert response.json() == {"streamed": "raw bytes here"}


@pytest.mark.slow
async def test_request_without_parameter_is_called_without_one() -> None:
    """``def __call__(self)`` is called with no request argument."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.NoRequest.bind(), name="bare", route_prefix="/bare")
        async with open_client(instance) as http:
            response = await http.get("/bare")
    assert (response.status_code, response.text) == (200, "called without a request")


# -- responses


@pytest.mark.slow
async def test_response_starlette_classes_keep_status_headers_and_cookies(
    tmp_path: Path,
) -> None:
    """JSON, plain, HTML, redirect and file responses arrive with their status codes,
    media types, headers and every cookie they set."""
    data = tmp_path / "table.csv"
    data.write_text("a,b\n1,2\n")
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Responses.bind(), name="responses", route_prefix="/r")
        async with open_client(instance) as http:
            made = await http.get("/r/json")
            plain = await http.get("/r/plain")
            html = await http.get("/r/html")
            redirect = await http.get("/r/redirect")
            file = await http.get("/r/file", params={"path": str(data)})
    assert (made.status_code, made.json(), made.headers["x-kind"]) == (201, {"made": True}, "json")
    assert made.headers["content-type"] == "application/json"
    assert dict(made.cookies) == {"session": "abc", "theme": "dark"}
    assert (plain.status_code, plain.text) == (202, "plain text")
    assert plain.headers["content-type"].startswith("text/plain")
    assert (html.text, html.headers["content-type"]) == ("<h1>hi</h1>", "text/html; charset=utf-8")
    assert (redirect.status_code, redirect.headers["location"]) == (307, "/elsewhere")
    assert (file.status_code, file.text) == (200, "a,b\n1,2\n")
    assert file.headers["content-type"].startswith("text/csv")


@pytest.mark.slow
async def test_response_streaming_arrives_while_generator_runs() -> None:
    """A ``StreamingResponse`` reaches the client chunk by chunk: the first chunk arrives
    while its generator is blocked before the second."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.Responses.bind(), name="responses", route_prefix="/r")
        async with open_client(instance) as http, http.stream("GET", "/r/streaming") as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            chunks = response.aiter_raw()
            with trio.fail_after(TIMEOUT_S):
                assert await chunks.__anext__() == b"one\n"
            assert await handle.current_state.remote() == "blocked"
            await handle.release.remote()
            rest = b"".join([chunk async for chunk in chunks])
        assert rest == b"two\n"
        assert await handle.current_state.remote() == "finished"


@pytest.mark.slow
async def test_response_background_task_runs_after_the_response() -> None:
    """A response's background task runs in the replica once the response was sent."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.Responses.bind(), name="responses", route_prefix="/r")
        async with open_client(instance) as http:
            response = await http.get("/r/background")
        assert (response.status_code, response.text) == (200, "sent")
        with trio.fail_after(TIMEOUT_S):
            assert await handle.wait_background.remote() is True


@pytest.mark.slow
async def test_response_content_length_is_kept() -> None:
    """A ``content-length`` the app sets is what the client gets, with no chunking, even
    when the body was produced in pieces; a generator without one is chunked."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Responses.bind(), name="responses", route_prefix="/r")
        async with open_client(instance) as http:
            sized = await http.get("/r/sized")
            made = await http.get("/r/json")
            chunked = await http.get("/r/plain-generator")
    assert (sized.text, sized.headers["content-length"]) == ("0123456789", "10")
    assert "transfer-encoding" not in sized.headers
    assert made.headers["content-length"] == str(len(made.content))
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.text == "0123456789"


# -- status codes


@pytest.mark.slow
async def test_status_failed_constructor_is_503_until_fixed() -> None:
    """An application whose constructor failed answers 503 with the reason (not 404); once
    redeployed with a working constructor it answers 200."""
    async with serve.open_serve(http_port=0) as instance:
        with pytest.raises(serve.DeploymentFailedError):
            await instance.run(fx.Fragile.bind(False), name="fragile", route_prefix="/f")
        async with open_client(instance) as http:
            broken = await http.get("/f")
            await instance.run(fx.Fragile.bind(True), name="fragile", route_prefix="/f")
            fixed = await http.get("/f")
    assert broken.status_code == 503
    assert "failed to deploy" in broken.text
    assert "the constructor broke" in broken.text
    assert (fixed.status_code, fixed.text) == (200, "fixed")


@pytest.mark.slow
async def test_status_healthz_is_503_until_an_application_has_a_route() -> None:
    """``/-/healthz`` answers 503 before any application has a route, 200 after."""
    async with serve.open_serve(http_port=0) as instance, open_client(instance) as http:
        before = await http.get("/-/healthz")
        await instance.run(fx.NoRequest.bind(), name="bare", route_prefix="/bare")
        after = await http.get("/-/healthz")
    assert before.status_code == 503
    assert (after.status_code, after.text) == (200, "success")


@pytest.mark.slow
async def test_status_request_timeout_cuts_a_stream_and_cancels_it(tmp_path: Path) -> None:
    """``request_timeout_s`` bounds a streamed body too: the stream is cut after it and the
    replica's generator is cancelled."""
    marker = tmp_path / "cancelled.txt"
    async with serve.open_serve(http_port=0, request_timeout_s=1.0) as instance:
        await instance.run(fx.SlowStream.bind(), name="slow", route_prefix="/slow")
        async with open_client(instance) as http:

            async def read_all() -> None:
                async with http.stream("GET", "/slow", params={"path": str(marker)}) as stream:
                    chunks = stream.aiter_raw()
                    assert await chunks.__anext__() == b"first\n"
                    async for _ in chunks:
                        pass

            with pytest.raises(httpx.RemoteProtocolError):
                await read_all()
        assert await wait_for_file(marker) == "cancelled"


def test_validate_route_prefix_names_the_bad_value() -> None:
    """Route prefixes must start with '/', not end with '/', and hold no braces; the error
    shows the bad value."""
    for good in ("/", "/api", "/api/v2"):
        validate_route_prefix(good)
    cases = {
        "api": "must start with '/'",
        "/api/": "must not end with '/'",
        "/items/{id}": "must not contain '{' or '}'",
    }
    for bad, problem in cases.items():
        with pytest.raises(ValueError, match=problem) as caught:
            validate_route_prefix(bad)
        assert repr(bad) in str(caught.value)


# -- visibility


@pytest.mark.slow
async def test_request_id_round_trips() -> None:
    """A client's ``x-request-id`` is kept, returned and seen by the replica; without one
    the request gets 32 fresh random hex digits, returned and seen alike."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Inspect.bind(), name="inspect", route_prefix="/in")
        async with open_client(instance) as http:
            given = await http.get(
                "/in/x", headers={"X-Custom-Header": "1", "x-request-id": "req-42"}
            )
            fresh = await http.get("/in/x", headers={"X-Custom-Header": "1"})
            missing = await http.get("/nowhere")
    assert given.headers["x-request-id"] == given.json()["request_id"] == "req-42"
    new_id = fresh.headers["x-request-id"]
    assert fresh.json()["request_id"] == new_id
    assert len(new_id) == 32
    int(new_id, 16)
    assert missing.status_code == 404
    assert len(missing.headers["x-request-id"]) == 32


@pytest.mark.slow
async def test_error_log_names_request_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A user error that becomes a 500 is logged on the serve process with the request id,
    the route, the deployment, the replica and the replica's traceback."""
    caplog.set_level(logging.ERROR, logger="trioserve")
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        async with open_client(instance) as http:
            failed = await http.get("/api/fail", headers={"x-request-id": "broken-1"})
    assert failed.status_code == 500
    (record,) = [r for r in caplog.records if "broken-1" in r.getMessage()]
    message = record.getMessage()
    assert record.name == "trioserve"
    assert "ModelBrokeError: the model broke" in message
    assert "'/api'" in message
    assert "'Lab'" in message
    assert "Lab#" in message  # the replica id
    assert "Traceback" in message
    assert "http_fixtures.py" in message


@pytest.mark.slow
async def test_access_log_writes_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """With ``access_log`` the proxy logs method, path, status, duration and request id."""
    caplog.set_level(logging.INFO, logger="trioserve.access")
    async with serve.open_serve(http_port=0) as instance:
        assert instance.proxy is not None
        instance.proxy.access_log = True
        await instance.run(fx.NoRequest.bind(), name="bare", route_prefix="/bare")
        async with open_client(instance) as http:
            await http.get("/bare", headers={"x-request-id": "logged-1"})
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    (line,) = [line for line in lines if "logged-1" in line]
    assert line.startswith("GET /bare 200 ")
    assert "ms logged-1" in line


# -- FastAPI


@pytest.mark.slow
async def test_fastapi_class_ingress_from_an_imported_module() -> None:
    """An imported FastAPI class-based ingress: ``self`` is the replica's instance (never a
    query parameter), with path, query and body parameters, a dependency, an included
    router, ``HTTPException``, and ``/openapi.json`` and ``/docs`` under the route prefix."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fa.Shop.bind("hi"), name="shop", route_prefix="/shop")
        async with open_client(instance) as http:
            hello = await http.get("/shop/hello", params={"name": "bob"})
            item = await http.get("/shop/items/1")
            missing = await http.get("/shop/items/9")
            stored = await http.post("/shop/items/2", json={"name": "pear", "price": 1.5})
            invalid = await http.post("/shop/items/3", json={"name": "fig"})
            listed = await http.get("/shop/list", params={"limit": 1})
            count = await http.get("/shop/admin/count")
            schema = await http.get("/shop/openapi.json")
            docs = await http.get("/shop/docs")
        assert await handle.describe.remote() == "a shop saying hi"
    assert (hello.status_code, hello.json()) == (200, {"message": "hi bob"})
    assert item.json() == {"name": "apple", "price": 0.5}
    assert (missing.status_code, missing.json()) == (404, {"detail": "no item 9"})
    assert (stored.status_code, stored.json()) == (201, {"stored": 2, "count": 2})
    assert invalid.status_code == 422
    assert listed.json() == {"names": ["apple"], "limit": 1}
    assert (count.status_code, count.json()) == (200, 2)
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["servers"] == [{"url": "/shop"}]
    assert "self" not in json.dumps(spec["paths"])
    assert {"/hello", "/items/{item_id}", "/admin/count"} <= set(spec["paths"])
    assert docs.status_code == 200
    assert "/shop/openapi.json" in docs.text


FASTAPI_SCRIPT = """
from __future__ import annotations

import json

import httpx
import trio
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import trioserve as serve

app = FastAPI()


class Order(BaseModel):
    dish: str
    count: int = 1


@serve.deployment
@serve.ingress(app)
class Kitchen:
    def __init__(self, chef: str) -> None:
        self.chef = chef

    @app.get("/menu/{dish}")
    def menu(self, dish: str, spicy: bool = False) -> dict[str, object]:
        if dish == "none":
            raise HTTPException(status_code=404, detail="not on the menu")
        return {"dish": dish, "spicy": spicy, "chef": self.chef}

    @app.post("/order")
    async def order(self, order: Order) -> dict[str, object]:
        return {"cooking": order.dish, "count": order.count, "chef": self.chef}


async def main() -> None:
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(Kitchen.bind("ann"), name="kitchen", route_prefix="/k")
        async with httpx.AsyncClient(base_url=instance.http_url or "", timeout=10) as http:
            answers = [
                await http.get("/k/menu/soup", params={"spicy": "true"}),
                await http.get("/k/menu/none"),
                await http.post("/k/order", json={"dish": "rice", "count": 2}),
                await http.get("/k/openapi.json"),
            ]
        results = [[a.status_code, a.json()] for a in answers[:3]]
        results.append([answers[3].status_code, sorted(answers[3].json()["paths"])])
        print(json.dumps(results))


trio.run(main)
"""


@pytest.mark.slow
async def test_fastapi_class_ingress_defined_in_main_script(tmp_path: Path) -> None:
    """A FastAPI class-based ingress defined in a script run as ``__main__`` (shipped to the
    replica by value) answers as an imported one does."""
    script = tmp_path / "kitchen.py"
    script.write_text(textwrap.dedent(FASTAPI_SCRIPT))
    with trio.fail_after(60):
        proc = await trio.run_process(
            [sys.executable, str(script)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO,
        )
    report = f"stdout:\n{proc.stdout.decode()}\nstderr:\n{proc.stderr.decode()}"
    assert proc.returncode == 0, report
    results = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert results == [
        [200, {"dish": "soup", "spicy": True, "chef": "ann"}],
        [404, {"detail": "not on the menu"}],
        [200, {"cooking": "rice", "count": 2, "chef": "ann"}],
        [200, ["/menu/{dish}", "/order"]],
    ], report


def test_fastapi_app_pickles_by_value() -> None:
    """A FastAPI app (with its Starlette ``State``) survives cloudpickle, as a class from
    ``__main__`` carrying it must."""
    import cloudpickle
    from fastapi import FastAPI

    app = FastAPI()
    app.state.answer = 42
    copy = cloudpickle.loads(cloudpickle.dumps(app))
    assert copy.state.answer == 42
