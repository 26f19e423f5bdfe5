"""User exceptions raised in replica processes reach the caller as their own type, with their
attributes and a remote traceback that names the user's file and line."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import actors
import trioserve as serve

pytestmark = pytest.mark.slow


class CodedError(Exception):
    """A user exception whose constructor takes more than the message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FieldError(Exception):
    """A user exception with a keyword-only constructor argument."""

    def __init__(self, *, field: str) -> None:
        super().__init__(f"bad field {field!r}")
        self.field = field


class LockedError(Exception):
    """A user exception holding something that cannot be pickled."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@serve.deployment
class Raiser:
    async def coded(self, code: int) -> None:
        raise CodedError(code, f"failed with code {code}")

    def field(self, name: str) -> None:  # a worker thread's error travels the same way
        raise FieldError(field=name)

    async def locked(self) -> None:
        raise LockedError(3, "holds a lock")


@serve.deployment
class Relay:
    """Calls :class:`Raiser` and lets its error pass through."""

    def __init__(self, raiser: serve.DeploymentHandle) -> None:
        self.raiser = raiser

    async def coded(self, code: int) -> None:
        await self.raiser.coded.remote(code)


def _remote_traceback(error: BaseException) -> str:
    assert any("Remote traceback" in note for note in getattr(error, "__notes__", []))
    text: str = getattr(error, "remote_traceback", "")
    assert text
    return text


async def test_remote_errors_keep_their_type_and_attributes() -> None:
    """``except CodedError`` catches a replica's ``CodedError(code, message)``, with its
    ``code``; keyword-only constructors work too; the replica lives on."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Raiser.bind(), name="raiser")
        with pytest.raises(CodedError, match=r"^failed with code 42") as coded:
            await handle.coded.remote(42)
        assert type(coded.value) is CodedError
        assert str(coded.value) == "failed with code 42"
        assert coded.value.code == 42
        assert coded.value.args == ("failed with code 42",)
        remote_tb = _remote_traceback(coded.value)
        assert "in coded" in remote_tb
        assert "CodedError: failed with code 42" in remote_tb

        with pytest.raises(FieldError, match="bad field 'size'") as field:
            await handle.field.remote("size")
        assert field.value.field == "size"
        assert "in field" in _remote_traceback(field.value)

        with pytest.raises(CodedError) as again:  # the replica still serves
            await handle.coded.remote(7)
        assert again.value.code == 7


async def test_remote_errors_keep_their_type_through_a_chain() -> None:
    """An error raised two replicas down arrives as itself at the first caller."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Relay.bind(Raiser.bind()), name="relay")
        with pytest.raises(CodedError, match="failed with code 5") as coded:
            await handle.coded.remote(5)
        assert coded.value.code == 5
        assert "in coded" in _remote_traceback(coded.value)


async def test_remote_errors_unpicklable_arrive_as_remote_error() -> None:
    """An exception that cannot be pickled arrives as ``RemoteError``, naming its type and
    carrying its message and remote traceback."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Raiser.bind(), name="raiser")
        with pytest.raises(actors.RemoteError) as remote:
            await handle.locked.remote()
        error = remote.value
        assert error.type_name == f"{__name__}.LockedError"
        assert error.message == "holds a lock"
        assert "in locked" in error.remote_traceback
        assert "in locked" in _remote_traceback(error)


SCRIPT = """\
import trio
import trioserve as serve


class CodedError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@serve.deployment
class Thrower:
    async def coded(self) -> None:
        raise CodedError(7, "coded from main")

    async def boom(self) -> None:
        raise ValueError("boom from main")


async def main() -> None:
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Thrower.bind())
        try:
            await handle.coded.remote()
        except CodedError as exc:
            print(f"caught CodedError code={exc.code}: {exc}", flush=True)
        await handle.boom.remote()


trio.run(main)
"""


def test_remote_errors_traceback_names_the_main_script(tmp_path: Path) -> None:
    """A deployment defined in the user's ``__main__`` script (shipped by value): its remote
    traceback names the script, the line of the ``raise`` and its source; its own exception
    class is caught by ``except`` there."""
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    lines = SCRIPT.splitlines()
    boom_line = lines.index('        raise ValueError("boom from main")') + 1
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert "caught CodedError code=7: coded from main" in done.stdout, done.stderr
    assert done.returncode == 1
    remote = done.stderr.rpartition("Remote traceback:")[2]
    assert f'File "{script}", line {boom_line}, in boom' in remote, done.stderr
    assert 'raise ValueError("boom from main")' in remote
    assert "<dynamic-code>" not in done.stderr
