"""One Slurm cluster pods go to, as the service's parts see it."""

from __future__ import annotations

from dataclasses import dataclass

from interlink_slurm.pulls import Puller
from interlink_slurm.slurm.scheduler import Scheduler
from interlink_slurm.slurm.transport import Transport


@dataclass
class Cluster:
    """One Slurm cluster pods go to: how it is reached, and its image pulls."""

    name: str
    transport: Transport
    scheduler: Scheduler
    puller: Puller
    data_root: str
