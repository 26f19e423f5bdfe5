"""Runtime files: how the CLI finds a local instance's control address and token.

An instance that opens a control port writes ``<runtime dir>/control-<port>.json`` (mode
0600, in a 0700 directory of the user's: ``$XDG_RUNTIME_DIR/trioserve`` or
``~/.trioserve/run``) holding its address, token and pid, and removes it when it stops. A
file whose pid is gone was left by a killed instance: it is stale and replaced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs
import msgspec

TOKEN_ENV = "TRIOSERVE_TOKEN"


@attrs.frozen(kw_only=True)
class RuntimeRecord:
    """What a runtime file holds."""

    address: str
    token: str
    pid: int


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    address: str
    token: str
    pid: int


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user directory for runtime files (not created here)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "trioserve"
    return Path(env.get("HOME", str(Path.home()))) / ".trioserve" / "run"


def runtime_path(port: int, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"control-{port}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_runtime_file(port: int, directory: Path | None = None) -> RuntimeRecord | None:
    """The live record for a control port, or None (no file, unreadable, or stale)."""
    path = runtime_path(port, directory)
    try:
        record = msgspec.json.decode(path.read_bytes(), type=_Record)
    except (OSError, msgspec.DecodeError):
        return None
    if not _pid_alive(record.pid):
        return None
    return RuntimeRecord(address=record.address, token=record.token, pid=record.pid)


def write_runtime_file(port: int, address: str, token: str, directory: Path | None = None) -> Path:
    """Write this process's record for ``port`` (mode 0600), replacing a stale one."""
    folder = directory or runtime_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = runtime_path(port, folder)
    data = msgspec.json.encode(_Record(address=address, token=token, pid=os.getpid()))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    return path


def remove_runtime_file(path: Path) -> None:
    """Remove ``path`` if it is still this process's record."""
    try:
        record = msgspec.json.decode(path.read_bytes(), type=_Record)
    except (OSError, msgspec.DecodeError):
        return
    if record.pid == os.getpid():
        path.unlink(missing_ok=True)


class TokenNotFoundError(Exception):
    """No token for a control address: no --token-file, no TRIOSERVE_TOKEN, no runtime file."""


def find_token(
    address: str,
    *,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    directory: Path | None = None,
) -> str:
    """The token for ``address``: ``--token-file``, else ``TRIOSERVE_TOKEN``, else the
    runtime file of a local instance on that port."""
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            return Path(token_file).read_text().strip()
        except OSError as exc:
            raise TokenNotFoundError(f"cannot read token file {token_file!r}: {exc}") from None
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    port = _port_of(address)
    record = read_runtime_file(port, directory) if port is not None else None
    if record is None:
        raise TokenNotFoundError(
            f"no token for {address}: pass --token-file, set {TOKEN_ENV}, or run the "
            "command as the user that started the instance on this machine"
        )
    return record.token


def _port_of(address: str) -> int | None:
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    _, sep, port = rest.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def read_or_create_token_file(path: str, new_token: str) -> str:
    """The token in ``path``, or ``new_token`` written there (mode 0600) if it does not exist."""
    file = Path(path)
    if file.exists():
        token = file.read_text().strip()
        if not token:
            raise ValueError(f"token file {path!r} is empty")
        return token
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, new_token.encode())
    finally:
        os.close(fd)
    return new_token
