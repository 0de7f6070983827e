"""Copies a container's output to its log, noting when each chunk arrived.

The batch job runs this code with the host's ``python3 -S``, between the container and
``containers/<name>.log``: the job's library (jobscript/ils.sh) carries it and hands it to
python on a file descriptor, so no pod directory holds a copy. The log stays byte for byte what
the container wrote; beside it, ``<name>.log.idx`` gets one fixed-size record per chunk read
from the pipe: (offset of the chunk in the log, time it arrived in ns since the epoch),
little-endian u64 each. A line's time is the time of the chunk holding its first byte: when it
was written, to within the pipe's latency. Fixed-size records in time order let a reader
binary-search them.

It ignores SIGTERM and SIGINT: when Slurm signals every process of the job, the container's
last words after SIGTERM must still reach the log. It ends at end of input (or SIGKILL).

Standard library only: it runs on compute nodes, outside any virtualenv.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

RECORD = struct.Struct("<QQ")
CHUNK = 65536


def copy(source: int, log_path: str) -> None:
    """Append ``source`` to ``log_path`` until end of input, a record in ``log_path.idx``
    before each chunk; a log that exists (a restart) is continued."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    log = os.open(log_path, flags, 0o600)
    idx = os.open(log_path + ".idx", flags, 0o600)
    offset = os.fstat(log).st_size
    while True:
        chunk = os.read(source, CHUNK)
        if not chunk:
            break
        # The record goes first: a reader that sees data always finds its time.
        os.write(idx, RECORD.pack(offset, time.time_ns()))
        view = memoryview(chunk)
        while view:
            view = view[os.write(log, view) :]
        offset += len(chunk)
    os.close(log)
    os.close(idx)


def main() -> None:
    """``python3 -S logpipe.py LOG``: stdin to LOG, deaf to SIGTERM and SIGINT."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    copy(sys.stdin.fileno(), sys.argv[1])


if __name__ == "__main__":
    main()
