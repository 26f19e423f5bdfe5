"""A FastAPI app as a deployment's HTTP entry point, the way Ray Serve documents it.

``@serve.ingress(app)`` on a class whose methods are FastAPI routes: each route gets the
replica's instance as ``self`` (its state, its handles), and FastAPI does the rest -- path
and query parameters, Pydantic bodies, ``HTTPException``, and the OpenAPI page, served
under the application's route prefix (``/calc/docs``, ``/calc/openapi.json``). Handle
calls still reach the class's own methods.

The class is defined in this script, which runs as ``__main__``: it travels to the replica
processes by value, with its app.

Run it: ``python examples/fastapi_ingress.py``
"""

from __future__ import annotations

import httpx
import trio
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import trioserve as serve

app = FastAPI(title="calculator")


class Numbers(BaseModel):
    values: list[float]


@serve.deployment(num_replicas=2)
@serve.ingress(app)
class Calculator:
    def __init__(self, precision: int) -> None:
        self.precision = precision

    @app.get("/hello")
    def hello(self, name: str = "world") -> dict[str, str]:
        return {"greeting": f"Hello {name}!"}

    @app.get("/divide/{a}/{b}")
    def divide(self, a: float, b: float) -> dict[str, float]:
        if b == 0:
            raise HTTPException(status_code=400, detail="cannot divide by zero")
        return {"result": round(a / b, self.precision)}

    @app.post("/sum")
    async def total(self, numbers: Numbers) -> dict[str, float]:
        return {"sum": round(sum(numbers.values), self.precision)}

    def describe(self) -> str:
        return f"a calculator rounding to {self.precision} digits"


async def main() -> None:
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(Calculator.bind(3), name="calc", route_prefix="/calc")
        async with httpx.AsyncClient(base_url=f"{instance.http_url}/calc", timeout=10) as http:
            hello = await http.get("/hello", params={"name": "Alice"})
            print(f"GET /calc/hello?name=Alice -> {hello.status_code} {hello.json()}")
            assert hello.json() == {"greeting": "Hello Alice!"}

            divided = await http.get("/divide/10/3")
            print(f"GET /calc/divide/10/3 -> {divided.status_code} {divided.json()}")
            assert divided.json() == {"result": 3.333}

            by_zero = await http.get("/divide/1/0")
            print(f"GET /calc/divide/1/0 -> {by_zero.status_code} {by_zero.json()}")
            assert by_zero.status_code == 400

            total = await http.post("/sum", json={"values": [1, 2, 3.5]})
            print(f"POST /calc/sum -> {total.status_code} {total.json()}")
            assert total.json() == {"sum": 6.5}

            schema = await http.get("/openapi.json")
            paths = sorted(schema.json()["paths"])
            print(f"GET /calc/openapi.json -> {schema.status_code} paths {paths}")
            assert paths == ["/divide/{a}/{b}", "/hello", "/sum"]

        description: str = await handle.describe.remote()
        print(f"handle.describe.remote() -> {description!r}")
    print("fastapi ingress: 5 HTTP requests and 1 handle call answered")


if __name__ == "__main__":
    trio.run(main)
