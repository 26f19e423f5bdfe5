"""A port that is already taken gives one clear line naming it, from Python and the CLI."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import trioserve as serve

from .test_cli import CLI, REPO, TARGET


@contextmanager
def taken_port() -> Iterator[int]:
    """A port some other socket listens on, for the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_port_in_use_open_serve_names_host_and_port() -> None:
    """open_serve on a taken HTTP port raises PortInUseError naming host:port and the fix."""
    with taken_port() as port, pytest.raises(serve.PortInUseError) as info:
        async with serve.open_serve(http_port=port):
            pass
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "already in use" in message
    assert "http_port" in message
    assert "\n" not in message


@pytest.mark.slow
def test_port_in_use_cli_prints_one_line() -> None:
    """``trioserve run`` on a taken port prints one error line and exits 1."""
    with taken_port() as port:
        done = subprocess.run(
            [*CLI, "run", TARGET, "--port", str(port), "--control-port", "-1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert len(done.stderr.strip().splitlines()) == 1
