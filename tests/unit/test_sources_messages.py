"""Unit tests of stream/poll payload validation and the streaming source's bounded line reader."""
from __future__ import annotations

import json
import time
from typing import Any, List

import pytest
import requests_sse
from hypothesis import given, settings
from hypothesis import strategies as st

from shmflags.supervisor.sources._messages import (
    InvalidData, parse_all_data, parse_delete, parse_patch, parse_path, parse_put)
from shmflags.supervisor.sources.streaming import (
    MessageTooLarge, StreamClosed, _EventStream, bounded_lines)

F = {"key": "f", "version": 2, "on": True}
S = {"key": "s", "version": 1}


def j(obj: Any) -> str:
    return json.dumps(obj)


# -- put / poll body -------------------------------------------------------------------------

def test_put_ok_and_path_ignored() -> None:
    assert parse_put(j({"path": "/", "data": {"flags": {"f": F}, "segments": {"s": S}}})) == \
        ({"f": F}, {"s": S})
    assert parse_put(j({"data": {"flags": {}, "segments": {}}})) == ({}, {})


@pytest.mark.parametrize("text", [
    "{not json",
    "",
    "[]",
    j({"path": "/"}),
    j({"data": None}),
    j({"data": {"flags": {}}}),
    j({"data": {"segments": {}}}),
    j({"data": {"flags": [], "segments": {}}}),
    j({"data": {"flags": {"f": "x"}, "segments": {}}}),
    j({"data": {"flags": {"f": {"key": "f"}}, "segments": {}}}),
    j({"data": {"flags": {"f": {"key": "f", "version": "2"}}, "segments": {}}}),
    j({"data": {"flags": {"f": {"key": "f", "version": True}}, "segments": {}}}),
    j({"data": {"flags": {"f": {"key": "f", "version": 1.5}}, "segments": {}}}),
    j({"data": {"flags": {"f": {"key": "g", "version": 1}}, "segments": {}}}),
    j({"data": {"flags": {}, "segments": {"s": {"version": 1}}}}),
])
def test_put_rejects(text: str) -> None:
    with pytest.raises(InvalidData):
        parse_put(text)


def test_poll_body() -> None:
    assert parse_all_data(j({"flags": {"f": F}, "segments": {}})) == ({"f": F}, {})
    with pytest.raises(InvalidData):
        parse_all_data(j({"flags": {"f": F}}))
    with pytest.raises(InvalidData):
        parse_all_data("null")


# -- patch / delete --------------------------------------------------------------------------

def test_patch() -> None:
    assert parse_patch(j({"path": "/flags/f", "data": F})) == ("flags", F)
    assert parse_patch(j({"path": "/segments/s", "data": S})) == ("segments", S)
    assert parse_patch(j({"path": "/other/x", "data": {}})) is None
    assert parse_patch(j({"path": "/flags/", "data": F})) is None


@pytest.mark.parametrize("doc", [
    {"data": F},
    {"path": 3, "data": F},
    {"path": "/flags/f"},
    {"path": "/flags/f", "data": {"key": "f"}},
    {"path": "/flags/g", "data": F},
    [],
])
def test_patch_rejects(doc: Any) -> None:
    with pytest.raises(InvalidData):
        parse_patch(j(doc))


def test_delete() -> None:
    assert parse_delete(j({"path": "/flags/f", "version": 3})) == ("flags", "f", 3)
    assert parse_delete(j({"path": "/segments/a/b", "version": 1})) == ("segments", "a/b", 1)
    assert parse_delete(j({"path": "/nope/f", "version": 3})) is None
    for bad in ({"path": "/flags/f"}, {"path": "/flags/f", "version": "3"}, {"version": 3}):
        with pytest.raises(InvalidData):
            parse_delete(j(bad))


def test_parse_path() -> None:
    assert parse_path("/flags/a") == ("flags", "a")
    assert parse_path("/flagsx/a") is None
    with pytest.raises(InvalidData):
        parse_path(None)


# -- bounded line reader ---------------------------------------------------------------------

class Raw:
    """Stands in for urllib3's response: read1() returns the scripted chunks, then b''."""

    def __init__(self, chunks: List[bytes]) -> None:
        self.chunks = list(chunks)

    def read1(self, amt: int, decode_content: bool = True) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def lines(chunks: List[bytes], limit: int = 1000) -> List[bytes]:
    out = []
    with pytest.raises(StreamClosed):
        for line in bounded_lines(Raw(chunks), limit):
            out.append(line)
    return out


def test_lines_all_terminators_and_chunk_splits() -> None:
    assert lines([b"a\nb\r\nc\rd\n"]) == [b"a", b"b", b"c", b"d"]
    assert lines([b"a\r", b"\nb\n"]) == [b"a", b"b"]  # \r\n split across chunks: one line
    assert lines([b"a\r", b"b\n"]) == [b"a", b"b"]    # lone \r at a chunk end
    assert lines([b"ab", b"c\n\n"]) == [b"abc", b""]
    assert lines([b"tail"]) == [b"tail"]


def test_limit_counts_whole_message_not_line() -> None:
    ok = [b"data: " + b"x" * 40 + b"\n"] * 2 + [b"\n"]
    assert len(lines(ok * 3, limit=100)) == 9  # each message ~94 bytes; blank line resets
    with pytest.raises(MessageTooLarge):
        list(bounded_lines(Raw([b"data: " + b"x" * 40 + b"\n"] * 3), 100))


def test_limit_applies_to_unterminated_line() -> None:
    gen = bounded_lines(Raw([b"x" * 60, b"x" * 60]), 100)
    with pytest.raises(MessageTooLarge):
        next(gen)


def test_requests_sse_internals_we_rely_on() -> None:
    """_EventStream swaps EventSource's line reader; fail loudly if the library changes."""
    src = _EventStream("http://127.0.0.1:9/all", limit=10)
    assert hasattr(src, "_data_generator") and hasattr(src, "_response")
    assert src._max_connect_retry == 0
    assert requests_sse.__version__.split(".")[:2] >= ["0", "3"]
    # EventSource parses fields from whatever generator it holds
    src._response = object()  # type: ignore[assignment]
    src._data_generator = iter([b"event: put", b'data: {"a":', b"data: 1}", b""])
    msg = next(src)
    assert (msg.type, msg.data) == ("put", '{"a":\n1}')


def _reference_lines(data: bytes) -> List[bytes]:
    """SSE line splitting done the obvious way on the whole input."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out = text.split(b"\n")
    if out and out[-1] == b"":
        out.pop()
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b"data: x", b""]),
                     max_size=40).map(b"".join),
       cuts=st.lists(st.integers(min_value=1, max_value=7), max_size=40))
def test_lines_independent_of_chunking(data: bytes, cuts: List[int]) -> None:
    chunks, pos = [], 0
    for c in cuts:
        if pos >= len(data):
            break
        chunks.append(data[pos:pos + c])
        pos += c
    if pos < len(data):
        chunks.append(data[pos:])
    assert lines(chunks, limit=10_000) == _reference_lines(data)


def test_long_line_is_read_in_linear_time() -> None:
    size = 32 * 1024 * 1024
    body = b"data: " + b"x" * size + b"\n\n"
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    start = time.perf_counter()
    got = lines(chunks, limit=size + 100)
    elapsed = time.perf_counter() - start
    assert len(got[0]) == size + 6 and got[1] == b""
    assert elapsed < 2.0, elapsed  # quadratic joining would take minutes
