"""How a refresh selects its jobs in squeue (CliScheduler.query): by id for a few, by user for
many (then by id only for those outside the user's view). Real squeue is in tests/integration."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from interlink_slurm.slurm.cli import BY_USER_FROM, CliScheduler
from interlink_slurm.slurm.transport import CommandResult


class Squeue:
    """Answers squeue as Slurm would for the jobs it holds: ``mine`` are this user's."""

    def __init__(self, mine: set[str], others: set[str], me_works: bool = True) -> None:
        self.mine, self.others, self.me_works = mine, others, me_works
        self.argvs: list[list[str]] = []

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        self.argvs.append(list(argv))
        if "--me" in argv:
            if not self.me_works:
                return CommandResult(tuple(argv), 1, "", "squeue: unrecognized option '--me'")
            shown = self.mine
        else:
            [sel] = [a for a in argv if a.startswith("--jobs=")]
            shown = set(sel.removeprefix("--jobs=").split(",")) & (self.mine | self.others)
        out = "".join(f"{j}|RUNNING|None|n1|c\n" for j in sorted(shown))
        return CommandResult(tuple(argv), 0, out, "")

    def selections(self) -> list[str]:
        return [
            next(a for a in argv if a in ("--me",) or a.startswith("--jobs="))
            for argv in self.argvs
        ]


def ids(n: int, start: int = 100) -> list[str]:
    return [str(i) for i in range(start, start + n)]


def test_a_few_jobs_are_asked_by_id() -> None:
    slurm = Squeue(set(ids(3)), set())
    jobs = asyncio.run(CliScheduler(slurm).query(ids(3)))  # type: ignore[arg-type]
    assert set(jobs) == set(ids(3))
    assert slurm.selections() == ["--jobs=100,101,102"]


def test_many_jobs_are_asked_by_user_and_only_the_rest_by_id() -> None:
    many = ids(BY_USER_FROM + 8)
    # One job left the queue; one is another user's (submitted with --uid); the user has one
    # job of their own besides the plugin's.
    slurm = Squeue(set(many[2:]) | {"999"}, {many[1]})
    jobs = asyncio.run(CliScheduler(slurm).query(many))  # type: ignore[arg-type]
    assert set(jobs) == set(many[1:])  # not the user's own other job, not the gone one
    assert slurm.selections() == ["--me", f"--jobs={many[0]},{many[1]}"]


def test_without_me_or_with_mostly_other_users_jobs_ids_are_used_from_then_on() -> None:
    many = ids(BY_USER_FROM)
    old = Squeue(set(many), set(), me_works=False)
    scheduler = CliScheduler(old)  # type: ignore[arg-type]
    assert set(asyncio.run(scheduler.query(many))) == set(many)
    asyncio.run(scheduler.query(many))
    assert old.selections() == ["--me", f"--jobs={','.join(many)}", f"--jobs={','.join(many)}"]
    as_root = Squeue(set(), set(many))
    scheduler = CliScheduler(as_root)  # type: ignore[arg-type]
    assert set(asyncio.run(scheduler.query(many))) == set(many)
    asyncio.run(scheduler.query(many))
    assert as_root.selections() == ["--me", f"--jobs={','.join(many)}", f"--jobs={','.join(many)}"]
