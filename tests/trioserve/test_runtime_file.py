"""Runtime files and token lookup: how the CLI finds a local instance's token."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trioserve._runtime_file import (
    TokenNotFoundError,
    find_token,
    read_or_create_token_file,
    read_runtime_file,
    remove_runtime_file,
    runtime_dir,
    runtime_path,
    write_runtime_file,
)


def test_runtime_dir_prefers_xdg_runtime_dir() -> None:
    """``$XDG_RUNTIME_DIR/trioserve`` when set, else ``~/.trioserve/run``."""
    assert runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/trioserve")
    assert runtime_dir({"HOME": "/home/u"}) == Path("/home/u/.trioserve/run")


def test_runtime_file_is_private_and_read_back(tmp_path: Path) -> None:
    """The file is mode 0600 in a 0700 folder, and reads back as written."""
    folder = tmp_path / "rt"
    path = write_runtime_file(8265, "http://127.0.0.1:8265", "secret", folder)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    record = read_runtime_file(8265, folder)
    assert record is not None
    assert (record.address, record.token, record.pid) == (
        "http://127.0.0.1:8265",
        "secret",
        os.getpid(),
    )
    remove_runtime_file(path)
    assert not path.exists()


def test_runtime_file_of_a_dead_process_is_stale_and_replaced(tmp_path: Path) -> None:
    """A file left by a killed instance is ignored, and a new instance replaces it."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    path = runtime_path(9000, tmp_path)
    path.write_text(f'{{"address": "http://127.0.0.1:9000", "token": "old", "pid": {pid}}}')
    assert read_runtime_file(9000, tmp_path) is None
    write_runtime_file(9000, "http://127.0.0.1:9000", "new", tmp_path)
    record = read_runtime_file(9000, tmp_path)
    assert record is not None
    assert record.token == "new"


def test_remove_runtime_file_leaves_another_process_file(tmp_path: Path) -> None:
    """An instance removes only its own record (the port may be reused by another)."""
    path = runtime_path(9001, tmp_path)
    path.write_text('{"address": "a", "token": "t", "pid": 1}')
    remove_runtime_file(path)
    assert path.exists()


def test_find_token_order_file_then_env_then_runtime_file(tmp_path: Path) -> None:
    """--token-file wins over TRIOSERVE_TOKEN, which wins over the runtime file."""
    write_runtime_file(9002, "http://127.0.0.1:9002", "from-runtime", tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    address = "http://127.0.0.1:9002"
    env = {"TRIOSERVE_TOKEN": "from-env"}
    assert find_token(address, token_file=str(token_file), environ=env, directory=tmp_path) == (
        "from-file"
    )
    assert find_token(address, environ=env, directory=tmp_path) == "from-env"
    assert find_token(address, environ={}, directory=tmp_path) == "from-runtime"
    with pytest.raises(TokenNotFoundError, match="--token-file"):
        find_token("http://127.0.0.1:9003", environ={}, directory=tmp_path)


def test_token_file_is_created_private_or_read(tmp_path: Path) -> None:
    """``--token-file`` is created (0600) with a new token, or read if it exists."""
    path = tmp_path / "token"
    assert read_or_create_token_file(str(path), "fresh") == "fresh"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_token_file(str(path), "other") == "fresh"
