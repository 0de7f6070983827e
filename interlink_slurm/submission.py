"""What a create asks the cluster besides sbatch: the images' own commands (Charliecloud),
the primary group of a job's user, the pod directory handed to that user; and whether jobs are
submitted as root. Blocking: the service runs them in worker threads."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

from interlink_slurm.config import Settings
from interlink_slurm.errors import PodRejected, SchedulerUnavailable, StorageError
from interlink_slurm.slurm.transport import CommandUnavailable, LocalTransport, Transport
from interlink_slurm.translate.images import CH_METADATA, SQUASHFS_SUFFIXES, image_command
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import (
    ANNOTATION_IMAGE_ROOT,
    ImageCommands,
    build_plan,
    resolve_image,
)
from interlink_slurm.translate.runtimes import (
    image_paths_argv,
    parse_image_paths,
    runs_image_command,
    runtime_of,
)
from interlink_slurm.translate.targets import Candidate
from interlink_slurm.wire import RetrievedPodData

log = logging.getLogger(__name__)

# ch-image's metadata holds the image's build history: a few kB, far less than this.
IMAGE_METADATA_LIMIT = 4 * 1024 * 1024


def primary_group(transport: Transport, plan: JobPlan) -> JobPlan:
    """A job run as another user (sbatch --uid) with no runAsGroup runs with that user's
    primary group, never the submitting root's group 0."""
    assert plan.owner is not None
    uid = plan.owner[0]
    try:
        result = transport.run(["id", "-g", "--", str(uid)], timeout=30)
    except (CommandUnavailable, SchedulerUnavailable) as err:
        raise SchedulerUnavailable(f"cannot look up the group of uid {uid}: {err}") from err
    gid = result.stdout.strip()
    if result.returncode != 0 or not gid.isdigit():
        raise PodRejected(
            "spec.securityContext.runAsUser",
            f"uid {uid} has no account on the cluster ({result.stderr.strip() or gid})",
        )
    return dataclasses.replace(
        plan, directives=(*plan.directives, f"--gid={gid}"), owner=(uid, int(gid))
    )


def hand_over(transport: Transport, plan: JobPlan) -> None:
    """The pod's directory to the user its job runs as (securityContext, sbatch --uid):
    the job writes its logs and state there."""
    assert plan.owner is not None
    uid, gid = plan.owner
    owner = f"{uid}:{gid}" if gid is not None else str(uid)
    try:
        result = transport.run(["chown", "-R", "--", owner, plan.pod_dir], timeout=60)
    except SchedulerUnavailable:
        # Over SSH the login node's outage (also a CommandUnavailable): 503, retried by
        # interLink, as the same outage is at any other step of a create. The directory is
        # written again by the next create.
        raise
    except CommandUnavailable as err:
        transport.remove_tree(plan.pod_dir)
        raise StorageError(f"cannot hand the pod directory to uid {owner}: {err}") from err
    if result.returncode != 0:
        transport.remove_tree(plan.pod_dir)
        raise StorageError(f"cannot hand the pod directory to uid {owner}: {result.stderr.strip()}")


def needs_image_commands(data: RetrievedPodData, settings: Settings) -> bool:
    """Whether a create must look images' commands up first: the runtime cannot run an
    image's own command and a container names none."""
    pod = data.pod
    return not runs_image_command(settings.runtime) and any(
        not c.command for c in (*pod.spec.init_containers, *pod.spec.containers)
    )


def image_commands(
    data: RetrievedPodData, settings: Settings, transports: Mapping[str, Transport]
) -> ImageCommands:
    """The ENTRYPOINT and CMD of the images of containers that set no command, for a
    runtime that cannot run them by itself (Charliecloud): read from each image's
    ch-image metadata, on the cluster(s) the pod may go to."""
    pod = data.pod
    image_root = pod.metadata.annotations.get(ANNOTATION_IMAGE_ROOT) or settings.image_root
    images = set()
    for c in (*pod.spec.init_containers, *pod.spec.containers):
        if c.command or not c.image:
            continue
        try:
            image = resolve_image(c.image, settings.runtime, settings, image_root)
        except PodRejected:
            continue  # the plan says why
        if image.startswith("/"):
            images.add(image)
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for image in sorted(images):
        for name in settings.cluster_names:
            try:
                raw = _image_metadata(transports[name], image)
            except (OSError, SchedulerUnavailable) as err:
                log.warning("cannot read the metadata of image %s: %s", image, err)
                continue
            found = image_command(raw) if raw is not None else None
            if found is not None:
                out[image] = found
                break
    return out


def _image_metadata(transport: Transport, image: str) -> bytes | None:
    """ch-image's metadata of a Charliecloud image: a file of the image directory, or of a
    SquashFS image (ch-convert's ``.sqfs``), read with ``unsquashfs -cat`` where it runs;
    None when there is none, or unsquashfs cannot be run there."""
    path = f"{image.rstrip('/')}/{CH_METADATA}"
    if not image.endswith(SQUASHFS_SUFFIXES):
        try:
            raw = transport.read_file(path, IMAGE_METADATA_LIMIT)
        except NotADirectoryError:
            raw = None
        if raw is not None:
            return raw
        # Not found: a SquashFS file by another name, which over SFTP reads as missing rather
        # than "not a directory" (unsquashfs refuses a directory, as the job's lookup does).
    try:
        result = transport.run(["unsquashfs", "-cat", image, CH_METADATA], timeout=30)
    except CommandUnavailable as err:
        log.warning("cannot read the metadata of image %s: %s", image, err)
        return None
    if result.returncode != 0 or not result.stdout:
        return None
    return result.stdout.encode()[:IMAGE_METADATA_LIMIT]


def submits_as_root(settings: Settings, transport: Transport) -> bool:
    """Whether jobs are submitted as root: sbatch run by this process as root, or over SSH as
    root. slurmrestd submits as its token's user, never another."""
    if settings.scheduler == "rest":
        return False
    if settings.transport == "ssh":
        return settings.ssh is not None and settings.ssh.user == "root"
    return isinstance(transport, LocalTransport) and os.geteuid() == 0


def bind_targets(settings: Settings, plan: JobPlan) -> list[tuple[str, str]]:
    """The (image, bind target) pairs in_images looks up; none when the runtime creates
    missing targets itself or no container binds into an image directory. Pure: a create
    with none skips the worker thread in_images would run in."""
    if not runtime_of(settings.runtime).looks_up_bind_targets:
        return []
    return list(
        dict.fromkeys(
            (c.image, b.target)
            for c in (*plan.init_containers, *plan.containers)
            if c.image.startswith("/")
            for b in c.binds
        )
    )


def in_images(
    transport: Transport,
    settings: Settings,
    data: RetrievedPodData,
    chosen: Candidate,
    plan: JobPlan,
    image_commands: ImageCommands | None = None,
    *,
    submit_as_root: bool,
) -> JobPlan:
    """Charliecloud (0.31) cannot create a bind destination in a read-only image, nor bind
    through an absolute symlink of the image: each target is looked up in its image (one
    command), followed inside the image; one the image lacks is left out, with a warning
    in the container's status, rather than let the container fail on the node."""
    pairs = bind_targets(settings, plan)
    if not pairs:
        return plan
    try:
        result = transport.run(image_paths_argv(pairs), timeout=30)
    except (CommandUnavailable, SchedulerUnavailable, OSError) as err:
        log.warning("cannot look into the images for the mount points: %s", err)
        return plan
    if result.returncode != 0:
        log.warning("cannot look into the images for the mount points: %s", result.stderr)
        return plan
    found = parse_image_paths(pairs, result.stdout)
    if all(found.get(pair, pair[1]) == pair[1] for pair in pairs):
        return plan
    return build_plan(
        data,
        settings,
        plan.pod_dir,
        chosen.target if chosen.name else None,
        chosen.name,
        mount_targets=found,
        image_commands=image_commands,
        submit_as_root=submit_as_root,
    )
