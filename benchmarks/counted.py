"""The plugin's own process, every transport call counted (for the benchmarks only).

    python -m benchmarks.counted serve --config config.yaml

Each method of the local and the SSH transport (a command, a file read, a stat...) counts one,
by method; SIGUSR1 writes the counts as JSON to $ILS_BENCH_COUNTS. The transports are patched
in their classes, so the plugin runs its own code paths unchanged (isinstance included). Over
SSH a file read is several SFTP requests (open, read, close): the counts are transport calls.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from interlink_slurm.slurm.ssh import SSHTransport
from interlink_slurm.slurm.transport import LocalTransport

METHODS = (
    "run",
    "make_dirs",
    "write_file",
    "write_tree",
    "read_file",
    "read_range",
    "size",
    "remove_tree",
)
COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


def _counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            COUNTS[name] = COUNTS.get(name, 0) + 1
        return method(*args, **kwargs)

    return wrapper


def _dump(signum: int, frame: FrameType | None) -> None:
    with _LOCK:
        data = json.dumps(COUNTS)
    path = Path(os.environ["ILS_BENCH_COUNTS"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    tmp.replace(path)


def main() -> None:
    for cls in (LocalTransport, SSHTransport):
        for name in METHODS:
            setattr(cls, name, _counted(name, getattr(cls, name)))
    signal.signal(signal.SIGUSR1, _dump)
    from interlink_slurm.cli import main as plugin_main

    plugin_main()


if __name__ == "__main__":
    main()
