"""``interlink-slurm doctor``: check the configured way to Slurm end to end, say how to fix it.

Each check is one question with a yes or a no, a detail, and for a no what to do about it.
Checks that need the transport are skipped when it cannot be reached (their answer would only
repeat that).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shlex
import time
from dataclasses import dataclass

from interlink_slurm.config import DEFAULT_CLUSTER, Settings
from interlink_slurm.errors import PluginError, SubmitRejected
from interlink_slurm.slurm.factory import SLURM_COMMANDS
from interlink_slurm.slurm.scheduler import ClusterResources, Scheduler
from interlink_slurm.slurm.transport import CommandUnavailable, Transport, TreeItem
from interlink_slurm.translate.images import SQUASHFS_SUFFIXES
from interlink_slurm.translate.site import Profile

PROBE_DATA = b"interlink-slurm doctor\n"


@dataclass(frozen=True)
class Check:
    """One question's answer; ``fix`` (what to do) only when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # not asked: what it needs is already reported as failing
    warning: bool = False  # ok, but something pods may ask cannot run

    @property
    def label(self) -> str:
        """The word printed before it: ok, warn, skip or FAIL."""
        if self.skipped:
            return "skip"
        return ("warn" if self.warning else "ok") if self.ok else "FAIL"


class Doctor:
    """The checks of one cluster, run in order; each appends its answers to ``checks``."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        scheduler: Scheduler,
        cluster: str = DEFAULT_CLUSTER,
    ) -> None:
        """``settings`` as seen from ``cluster`` (Settings.for_cluster)."""
        self.settings = settings
        self.transport = transport
        self.scheduler = scheduler
        self.cluster = cluster
        self.checks: list[Check] = []
        # What check_partitions found, by partition (None: Slurm's default); text: an error.
        self.partitions: dict[str | None, ClusterResources | str] = {}

    def _add(self, name: str, ok: bool, detail: str, fix: str = "") -> bool:
        self.checks.append(Check(name, ok, detail, "" if ok else fix))
        return ok

    def _warn(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail, warning=True))

    def _skip(self, names: str, because: str) -> None:
        self.checks.append(Check(names, False, f"not checked: {because}", skipped=True))

    async def run(self) -> list[Check]:
        """Every check, skipping those whose way in already failed; returns ``checks``."""
        reachable = await self.check_transport()
        # The CLI scheduler runs its commands through the transport; slurmrestd does not.
        if reachable or self.settings.scheduler != "cli":
            controller = await self.check_scheduler()
        else:
            controller = False
            self._skip("scheduler", "the Slurm commands run through the transport")
        if reachable:
            await self.check_data_root()
            await self.check_commands()
            await self.check_images()
            await self.check_image_cache()
        else:
            self._skip("data root etc.", "the transport is not reachable")
        if controller:
            await self.check_partitions()
            await self.check_multinode()
        else:
            self._skip("partitions", "the Slurm controller is not reachable")
        return self.checks

    # --- checks ---------------------------------------------------------------------------------

    async def check_transport(self) -> bool:
        """Whether a command ('true') runs through the transport: locally or over SSH."""
        s = self.settings
        where = f"ssh {s.ssh.target}" if s.transport == "ssh" and s.ssh else "this machine"
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(
                self.transport.run, ["true"], timeout=s.command_timeout
            )
        except CommandUnavailable as err:
            fix = (
                "check the ssh: settings (host, port, user, key_file, known_hosts) and that sshd "
                "runs on the login node"
                if s.transport == "ssh"
                else "check that this machine can run commands"
            )
            return self._add("transport", False, str(err), fix)
        if result.returncode != 0:
            return self._add(
                "transport",
                False,
                f"'true' exited {result.returncode} on {where}: {result.stderr.strip()}",
                "check the login shell of the account",
            )
        return self._add(
            "transport", True, f"{where}: commands run ({time.monotonic() - started:.2f} s)"
        )

    async def check_scheduler(self) -> bool:
        """Whether the Slurm controller answers a ping through the configured scheduler."""
        s = self.settings
        try:
            await self.scheduler.ping()
        except PluginError as err:
            if s.scheduler == "rest" and s.rest is not None:
                fix = (
                    f"start slurmrestd at {s.rest.url} with -s openapi/{s.rest.api_version}, "
                    "check rest.token_file, and that slurmctld runs"
                )
            else:
                fix = "check that slurmctld runs and that slurm_conf (SLURM_CONF) names its config"
            return self._add("scheduler", False, str(err), fix)
        return self._add("scheduler", True, f"{s.scheduler}: the Slurm controller answers")

    async def check_data_root(self) -> bool:
        """Whether a file can be written, read back and removed under data_root."""
        root = str(self.settings.data_root)
        fix = (
            f"create {root} on the filesystem the compute nodes share, writable by the account "
            "the jobs run as, or set data_root"
        )
        return await self._writable("data root", root, 0o711, fix)

    async def check_image_cache(self) -> None:
        """image_cache_dir writable (when set), and with pulls on the submit host the commands
        they run there."""
        s = self.settings
        if s.image_cache_dir is None:
            return
        cache = str(s.image_cache_dir)
        await self._writable(
            "image cache",
            cache,
            0o755,
            f"create {cache} on a filesystem the submit host and the compute nodes share, "
            "writable by the account the jobs run as, or set image_cache_dir",
        )
        if s.image_pull_on != "submit_host":
            return
        # What the pulls on the submit host run besides the runtime (checked with it).
        await self._need_commands(
            "image pulls",
            ["bash", "flock", "setsid", "timeout"],
            "install them there (util-linux, coreutils), or set image_pull_on: compute_node",
        )

    async def _need_commands(self, name: str, commands: list[str], fix: str) -> None:
        missing = await self._missing(commands)
        where = "the login node" if self.settings.transport == "ssh" else "this machine"
        if missing:
            listed = " ".join(shlex.quote(m) for m in missing)
            self._add(name, False, f"not found on {where}: {listed}", fix)
        elif missing is not None:
            self._add(name, True, f"{', '.join(commands)} found on {where}")

    async def _writable(self, name: str, root: str, mode: int, fix: str) -> bool:
        """A file written into ``root``, read back and removed, through the transport."""
        probe_dir = posixpath.join(root, f".interlink-slurm-doctor-{os.getpid()}")
        probe = posixpath.join(probe_dir, "probe")
        # Written as a create writes a pod's directory (over SSH: one tar on the login node).
        tree = [
            TreeItem(posixpath.basename(probe_dir), 0o700),
            TreeItem(posixpath.relpath(probe, root), 0o600, PROBE_DATA),
        ]
        try:
            await asyncio.to_thread(self.transport.write_tree, root, mode, tree)
            back = await asyncio.to_thread(self.transport.read_file, probe, 1024)
        except (OSError, PluginError) as err:
            detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            return self._add(name, False, f"{root}: {detail}", fix)
        finally:
            await asyncio.to_thread(self.transport.remove_tree, probe_dir)
        if back != PROBE_DATA:
            return self._add(name, False, f"{root}: a file read back differs", fix)
        return self._add(name, True, f"{root}: a file was written, read back and removed")

    async def _missing(self, names: list[str]) -> list[str] | None:
        """Commands of ``names`` not found on the submit host; None when that cannot be told."""
        script = 'for c in "$@"; do command -v -- "$c" >/dev/null || echo "$c"; done'
        try:
            result = await asyncio.to_thread(
                self.transport.run,
                ["sh", "-c", script, "sh", *names],
                timeout=self.settings.command_timeout,
            )
        except CommandUnavailable:
            return None
        return result.stdout.split()

    async def check_commands(self) -> None:
        """The container runtime, and with the CLI scheduler the Slurm commands, found where
        jobs are submitted."""
        s = self.settings
        runtime = s.runtime_binary
        missing = await self._missing([runtime])
        where = "the login node" if s.transport == "ssh" else "this machine"
        if missing is None:
            self._add("runtime", False, "could not run sh to look for it")
        elif missing:
            self._add(
                "runtime",
                False,
                f"{runtime} ({s.runtime}) is not found on {where}, where jobs are submitted",
                f"install {s.runtime} there (and on the compute nodes) or set runtime_path",
            )
        else:
            self._add("runtime", True, f"{runtime} found on {where}")
        if s.transport == "ssh":
            await self._need_commands(
                "login node tools",
                ["bash", "date", "find", "sort", "xargs", "awk", "tar"],
                "install them there (bash, coreutils, findutils, awk, tar): they read the "
                "pods' state files and unpack each new pod's directory",
            )
        if s.runtime == "charliecloud" and any(
            path.endswith(SQUASHFS_SUFFIXES) for path in s.images.values()
        ):
            await self._need_commands(
                "squashfs tools",
                ["unsquashfs"],
                "install squashfs-tools there and on the compute nodes: the plugin and the job "
                "read a SquashFS image's command, ENV, WORKDIR and mount points with unsquashfs",
            )
        if s.scheduler != "cli":
            return
        await self._need_commands(
            "slurm commands",
            [s.slurm_command(c) for c in SLURM_COMMANDS if c != "sacct"],
            "install the Slurm client commands there or set slurm_bin_dir",
        )

    async def check_images(self) -> None:
        """Every file of the images: map exists where jobs are submitted."""
        for ref, path in sorted(self.settings.images.items()):
            try:
                size = await asyncio.to_thread(self.transport.size, path)
            except (OSError, PluginError) as err:
                size = None
                reason = str(err)
            else:
                reason = "it does not exist"
            if size is None:
                self._add(
                    "image",
                    False,
                    f"{ref} → {path}: {reason}",
                    "build or copy the image there, or fix the images: map",
                )
            else:
                self._add("image", True, f"{ref} → {path}")

    async def _resources(self, partition: str | None) -> ClusterResources | str:
        try:
            return await self.scheduler.resources([partition] if partition else [])
        except PluginError as err:
            return str(err)

    def _named_partitions(
        self,
    ) -> tuple[list[tuple[str, str | None]], list[tuple[str, str, str | None]]]:
        """The partitions (key, partition) and GPU types (key, type, its partition) the
        configuration names for this cluster."""
        s = self.settings
        partitions: list[tuple[str, str | None]] = []
        gpu_types: list[tuple[str, str, str | None]] = []
        # The top level and the profiles apply on the default cluster; each target on its own.
        layers: list[tuple[str, Profile]] = []
        if self.cluster == DEFAULT_CLUSTER:
            partitions.append(("partition", s.partition))
            if s.gpu_partition is not None:
                partitions.append(("gpu_partition", s.gpu_partition))
            if s.gpu_type:
                gpu_types.append(("gpu_type", s.gpu_type, s.gpu_partition or s.partition))
            layers += [(f"profiles.{n}", p) for n, p in sorted(s.profiles.items())]
        layers += [
            (f"targets.{n}", t)
            for n, t in s.targets.items()
            if (t.cluster or DEFAULT_CLUSTER) == self.cluster
        ]
        for prefix, layer in layers:
            if layer.partition is not None:
                partitions.append((f"{prefix}.partition", layer.partition))
            if layer.gpu_type:
                where = layer.partition or s.gpu_partition or s.partition
                gpu_types.append((f"{prefix}.gpu_type", layer.gpu_type, where))
        return partitions, gpu_types

    async def check_partitions(self) -> None:
        """Every partition and GPU type the configuration names for this cluster: on the
        default one the top-level keys' and the site profiles', and each target's on its own."""
        seen = self.partitions

        async def resources(partition: str | None) -> ClusterResources | str:
            if partition not in seen:
                seen[partition] = await self._resources(partition)
            return seen[partition]

        partitions, gpu_types = self._named_partitions()
        for key, partition in partitions:
            res = await resources(partition)
            name = partition or "(Slurm's default)"
            if isinstance(res, str):
                self._add(key, False, f"{name}: {res}")
            elif res.nodes == 0:
                self._add(
                    key,
                    False,
                    f"{name}: no usable node (the partition does not exist, or all its nodes "
                    "are down or drained)",
                    f"set {key} to a partition that exists (sinfo -s lists them)",
                )
            else:
                self._add(
                    key,
                    True,
                    f"{name}: {res.nodes} node(s), {res.cpus} CPUs, {res.memory_mb} MiB",
                )
        for key, gpu_type, partition in gpu_types:
            res = await resources(partition)
            if isinstance(res, str):
                continue  # already said under the partition
            types = ", ".join(sorted(t or "(untyped)" for t in res.gpus)) or "none"
            if gpu_type in res.gpus:
                self._add(
                    key,
                    True,
                    f"gpu:{gpu_type} x{res.gpus[gpu_type]} in {partition or 'the default'}",
                )
            else:
                self._add(
                    key,
                    False,
                    f"no GRES gpu:{gpu_type} in partition {partition or '(default)'} "
                    f"(GPU types there: {types})",
                    f"set {key} to one of those types, or the partition to where the GPUs are",
                )

    async def _refusal(self, partition: str | None, nodes: int) -> str | None:
        """Slurm's words if it would refuse a job of ``nodes`` nodes (one task each) in
        ``partition``, None if it would take it (sbatch --test-only)."""
        where = [f"--partition={partition}"] if partition else []
        try:
            await self.scheduler.estimate(
                [*where, f"--nodes={nodes}", "--ntasks-per-node=1"], self.settings.command_timeout
            )
        except SubmitRejected as err:
            return f"sbatch --test-only --nodes={nodes}: {err}"
        return None

    async def check_multinode(self) -> None:
        """The largest multi-node job each partition of check_partitions takes: all its usable
        nodes if Slurm would take such a job (limits like MaxNodes may not), else two."""
        for partition, res in self.partitions.items():
            if isinstance(res, str) or res.nodes == 0:
                continue  # said under the partition
            name = partition or "(Slurm's default)"
            if res.nodes == 1:
                self._warn(
                    "multi-node",
                    f"{name}: 1 usable node: pods over several nodes (interlink-slurm/nodes, "
                    "--nodes) cannot run here",
                )
                continue
            try:
                refused = await self._refusal(partition, res.nodes)
                two = await self._refusal(partition, 2) if refused and res.nodes > 2 else refused
            except PluginError as err:
                self._add("multi-node", False, f"{name}: no answer from Slurm: {err}")
                continue
            if refused is None:
                self._add(
                    "multi-node",
                    True,
                    f"{name}: jobs of up to {res.nodes} nodes "
                    f"(sbatch --test-only --nodes={res.nodes} accepted)",
                )
            elif two is None:
                self._warn("multi-node", f"{name}: jobs of 2 nodes, not of {res.nodes} ({refused})")
            else:
                self._warn("multi-node", f"{name}: no multi-node job is accepted ({two})")


async def diagnose(
    settings: Settings, transport: Transport, scheduler: Scheduler, cluster: str = DEFAULT_CLUSTER
) -> list[Check]:
    """Every check of one cluster (Doctor.run), for the doctor command."""
    return await Doctor(settings, transport, scheduler, cluster).run()
