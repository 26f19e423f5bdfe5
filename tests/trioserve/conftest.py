"""Fixtures shared by the trioserve tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import trioserve as serve


@pytest.fixture
def sync_serve() -> Iterator[None]:
    """A serve instance of the script API (``serve.start``) for the test, shut down after."""
    serve.start(http_port=None)
    try:
        yield
    finally:
        serve.shutdown()
