"""Reading logs the way kubectl asks, from the end, without reading the whole file."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink_slurm import logs
from interlink_slurm.logpipe import RECORD
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.wire import LogOpts


class CountingTransport(LocalTransport):
    def __init__(self) -> None:
        super().__init__()
        self.read = 0

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        data = super().read_range(path, offset, length)
        self.read += len(data)
        return data


def read(transport: LocalTransport, path: str, opts: LogOpts) -> bytes:
    return asyncio.run(logs.read_log(transport, path, opts))


def write(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "c.log"
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize(
    ("data", "tail", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"\n\n\n", 2, b"\n\n"),
        (b"", 5, b""),
    ],
)
def test_tail_returns_exactly_the_last_lines(
    tmp_path: Path, data: bytes, tail: int, expected: bytes
) -> None:
    path = write(tmp_path, data)
    assert read(LocalTransport(), path, LogOpts(Tail=tail)) == expected


@given(
    lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    tail=st.integers(min_value=1, max_value=40),
    final_newline=st.booleans(),
)
def test_tail_matches_splitlines(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], tail: int, final_newline: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = write(tmp_path_factory.mktemp("t"), data)
    # Lines end at "\n" only (bytes.splitlines would also split at "\r").
    kept = re.findall(rb"[^\n]*\n|[^\n]+\Z", data)[-tail:]
    assert read(LocalTransport(), path, LogOpts(Tail=tail)) == b"".join(kept)


def test_bytes_limits_the_answer_from_the_start(tmp_path: Path) -> None:
    path = write(tmp_path, b"0123456789\nabc\n")
    assert read(LocalTransport(), path, LogOpts(Bytes=4)) == b"0123"
    assert read(LocalTransport(), path, LogOpts(Bytes=100)) == b"0123456789\nabc\n"


def test_tail_of_a_big_log_reads_only_its_end(tmp_path: Path) -> None:
    line = b"x" * 99 + b"\n"
    path = write(tmp_path, line * 200_000)  # 20 MB
    transport = CountingTransport()
    out = read(transport, path, LogOpts(Tail=100))
    assert out == line * 100
    assert transport.read < 2 * logs.BLOCK + len(out) + 1


def test_missing_log_is_empty(tmp_path: Path) -> None:
    assert read(LocalTransport(), str(tmp_path / "none.log"), LogOpts()) == b""


def test_follow_goes_on_into_the_next_run_when_the_log_is_rotated(tmp_path: Path) -> None:
    path = Path(write(tmp_path, b"first run line 1\nfirst run line 2\n"))
    done = {"ended": False}

    async def follow() -> bytes:
        source = logs.LogSource(str(path), lambda: done["ended"])
        chunks = []
        async for chunk in logs.stream_log(LocalTransport(), source, LogOpts(Follow=True)):
            chunks.append(chunk)
            if len(chunks) == 1:
                # The container restarts: its log is rotated and a shorter one begins.
                path.rename(path.with_suffix(".previous.log"))
                path.write_bytes(b"second\n")
                done["ended"] = True
        return b"".join(chunks)

    out = asyncio.run(asyncio.wait_for(follow(), timeout=10))
    assert out == b"first run line 1\nfirst run line 2\nsecond\n"


def test_follow_with_timestamps_stamps_lines_written_after_it_began(tmp_path: Path) -> None:
    # The virtual kubelet may follow a container that has not written its first line yet: its
    # log and its time index are still empty then, and each line that comes is stamped.
    path = tmp_path / "c.log"
    path.write_bytes(b"")
    idx = Path(str(path) + ".idx")
    idx.write_bytes(b"")
    done = {"ended": False}

    async def follow() -> bytes:
        source = logs.LogSource(str(path), lambda: done["ended"])
        opts = LogOpts(Follow=True, Timestamps=True)
        chunks = []
        async for chunk in logs.stream_log(LocalTransport(), source, opts):
            chunks.append(chunk)
        return b"".join(chunks)

    async def write_later() -> None:
        await asyncio.sleep(0.2)
        with path.open("ab") as f:
            f.write(b"tick 0\ntick 1\n")
        idx.write_bytes(RECORD.pack(0, 1_700_000_000_000_000_000))
        await asyncio.sleep(0.5)
        done["ended"] = True

    async def both() -> bytes:
        out, _ = await asyncio.gather(follow(), write_later())
        return out

    out = asyncio.run(asyncio.wait_for(both(), timeout=10))
    assert out == b"2023-11-14T22:13:20Z tick 0\n2023-11-14T22:13:20Z tick 1\n"
