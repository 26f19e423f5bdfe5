"""Websocket framing for the common case, sans-IO: binary messages of one frame each.

wsproto implements all of RFC 6455, one event object and several generator steps per
frame. A link's traffic is, but for its first and last frames, nothing but binary messages
sent as single final frames; this module frames and parses those with a few slices.
Anything else (a control frame, a fragment, a text frame, reserved bits, a mask where none
belongs or none where one must be) is left to wsproto: :meth:`FrameReader.feed` hands back
the bytes from that frame on, and the caller gives them, and all that follows, to wsproto.
"""

from __future__ import annotations

import os

#: the first byte of a final binary frame without extensions
FIN_BINARY = 0x82
_MASK_BIT = 0x80
_KEY_POOL_SIZE = 4096

_keys = b""
_key_at = 0


def _reset_keys() -> None:
    global _keys, _key_at
    _keys, _key_at = b"", 0


os.register_at_fork(after_in_child=_reset_keys)  # a child draws masking keys of its own


def _next_key() -> bytes:
    """Four random bytes for a client frame's masking key (drawn 4 KiB at a time)."""
    global _keys, _key_at
    if _key_at + 4 > len(_keys):
        _keys, _key_at = os.urandom(_KEY_POOL_SIZE), 0
    key = _keys[_key_at : _key_at + 4]
    _key_at += 4
    return key


def apply_mask(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (masking and unmasking are the same)."""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return masked.to_bytes(n, "little")


def encode_binary(payload: bytes, *, mask: bool) -> bytes:
    """One final binary frame holding ``payload``; masked (as a client must) if ``mask``."""
    n = len(payload)
    bit = _MASK_BIT if mask else 0
    if n < 126:
        header = bytes((FIN_BINARY, bit | n))
    elif n < 0x10000:
        header = bytes((FIN_BINARY, bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((FIN_BINARY, bit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return header + payload
    key = _next_key()
    return b"".join((header, key, apply_mask(payload, key)))


class FrameReader:
    """Parses the final binary frames in what a socket delivers.

    ``masked``: whether frames must be masked (what a server reads). :meth:`feed` returns
    the payloads of the frames complete so far; a partial frame waits for more bytes. Once a
    frame of another kind appears, ``rest`` holds the bytes from it on and the reader takes
    nothing more (they are wsproto's); a frame longer than ``max_size`` sets ``too_big``.
    """

    __slots__ = ("_buffer", "masked", "max_size", "rest", "too_big")

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self.masked = masked
        self.max_size = max_size
        self._buffer = bytearray()
        self.rest: bytes | None = None
        self.too_big: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the frames ``data`` completes (see the class docstring)."""
        if self.rest is not None or self.too_big is not None:
            raise RuntimeError("the reader has handed over its bytes already")
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        messages: list[bytes] = []
        size = len(view)
        pos = 0
        masked = self.masked
        while size - pos >= 2:
            second = view[pos + 1]
            if view[pos] != FIN_BINARY or bool(second & _MASK_BIT) != masked:
                self.rest = bytes(view[pos:])
                break
            length = second & 0x7F
            at = pos + 2
            if length == 126:
                if size - at < 2:
                    break
                length = int.from_bytes(view[at : at + 2], "big")
                at += 2
            elif length == 127:
                if size - at < 8:
                    break
                length = int.from_bytes(view[at : at + 8], "big")
                if length >> 63:
                    self.rest = bytes(view[pos:])  # invalid: wsproto says so
                    break
                at += 8
            if length > self.max_size:
                self.too_big = length
                break
            if masked:
                if size - at < 4:
                    break
                key = bytes(view[at : at + 4])
                at += 4
            end = at + length
            if end > size:
                break
            if masked:
                messages.append(apply_mask(memoryview(view)[at:end], key))
            else:
                messages.append(bytes(view[at:end]))
            pos = end
        if self.rest is not None or self.too_big is not None:
            buffer.clear()
        elif buffer:
            del buffer[:pos]
        elif pos < size:
            buffer += view[pos:]
        return messages
