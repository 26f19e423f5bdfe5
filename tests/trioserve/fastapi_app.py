"""A FastAPI class-based ingress, as Ray Serve documents it, in an importable module.

Routes are methods of the deployment class: FastAPI gets ``self`` (the replica's instance)
injected, path/query parameters, a Pydantic body, a dependency, ``HTTPException``, and an
``APIRouter`` included after the class. Keep it free of relative imports (replica processes
import it by name).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel

import trioserve as serve

app = FastAPI()
router = APIRouter(prefix="/admin")


class Item(BaseModel):
    name: str
    price: float


def pagination(limit: int = 10) -> dict[str, int]:
    """A plain FastAPI dependency."""
    return {"limit": limit}


@serve.deployment
@serve.ingress(app)
class Shop:
    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting
        self.items: dict[int, Item] = {1: Item(name="apple", price=0.5)}

    @app.get("/hello")
    def hello(self, name: str) -> dict[str, str]:
        return {"message": f"{self.greeting} {name}"}

    @app.get("/items/{item_id}")
    async def get_item(self, item_id: int) -> Item:
        if item_id not in self.items:
            raise HTTPException(status_code=404, detail=f"no item {item_id}")
        return self.items[item_id]

    @app.post("/items/{item_id}", status_code=201)
    async def put_item(self, item_id: int, item: Item) -> dict[str, Any]:
        self.items[item_id] = item
        return {"stored": item_id, "count": len(self.items)}

    @app.get("/list")
    def list_items(self, page: dict[str, int] = Depends(pagination)) -> dict[str, Any]:  # noqa: B008
        return {"names": [i.name for i in self.items.values()][: page["limit"]], **page}

    @router.get("/count")
    def count(self) -> int:
        return len(self.items)

    def describe(self) -> str:
        """Reached through a handle, not over HTTP."""
        return f"a shop saying {self.greeting}"


app.include_router(router)
