"""A pod as interLink sends it → the JobPlan of its Slurm job. Pure: no disk, network or clock."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from interlink_slurm import __version__
from interlink_slurm.config import Settings, id_ranges
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate import annotations as ann
from interlink_slurm.translate.images import cannot_pull, plan_pulls, pull_policy
from interlink_slurm.translate.lifecycle import lifecycle, restart_policy
from interlink_slurm.translate.plan import (
    HOSTS_FILE,
    Bind,
    ContainerPlan,
    FileSpec,
    JobPlan,
    PlannedCreate,
    PlannedPull,
)
from interlink_slurm.translate.resources import (
    Resources,
    container_gpus,
    pod_resources,
    resource_directives,
)
from interlink_slurm.translate.runtimes import (
    container_argv,
    env_entries,
    has_read_only_binds,
    host_heeded,
    launcher_heeded,
    local_images_only,
    runs_image_command,
    runtime_of,
)
from interlink_slurm.translate.script import LIBRARY, LIBRARY_FILE
from interlink_slurm.translate.site import Site, Target, partitions_of, site_for, slurm_seconds
from interlink_slurm.translate.volumes import allowed_host_path, lay_out_volumes
from interlink_slurm.wire import Container, RetrievedPodData, Secret, ValidPod

ANNOTATION_IMAGE_ROOT = ann.IMAGE_ROOT
PRE_EXEC_FILE = "pre-exec.sh"
TUNNEL_FILE = "tunnel.sh"
MESH_FILE = "mesh.sh"
JOB_COMMENT_PREFIX = "interlink-slurm:"

# What an image reference may look like once resolved: an optional scheme, then registry /
# path / tag / digest characters. Never a leading '-': the runtime would read an option.
_IMAGE = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?[A-Za-z0-9_./@:+=-]+")


def expand_refs(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion, as its scanner does it: ``$$`` is ``$``; ``$(`` reads
    up to the next ``)`` whatever is inside, and a defined name is replaced by its value;
    anything else is left as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 == n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : close]
            out.append(env[name] if name in env else text[i : close + 1])
            i = close + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _checked_image(image: str, ref: str) -> str:
    if image.startswith("-") or not _IMAGE.fullmatch(image):
        raise PodRejected("image", f"{ref!r} does not name an image the runtime can be given")
    return image


def _under_image_roots(path: str, ref: str, settings: Settings) -> str:
    """An image named by a host path (the pod's own, or under a root its annotation chose) only
    under the site's image roots: otherwise a pod could run any host directory as its root."""
    roots = [str(p) for p in settings.image_roots]
    if settings.image_root and settings.image_root.startswith("/"):
        roots.append(settings.image_root)
    if ".." in path.split("/") or not allowed_host_path(path, roots):
        raise PodRejected(
            "image",
            f"{ref!r} names a path outside the directories images may come from "
            f"({', '.join(roots) or 'none: the site lists them in image_roots'})",
        )
    return path


def _image_root(pod: ValidPod, settings: Settings) -> str | None:
    """Where the pod's image references are looked for: its annotation, else the site's."""
    return pod.metadata.annotations.get(ANNOTATION_IMAGE_ROOT) or settings.image_root


def resolve_image(ref: str, runtime: str, settings: Settings, image_root: str | None) -> str:
    """The image the runtime is given for a reference the pod names (with image_cache_dir, a
    registry reference the job pulls into the cache first)."""
    image = _resolved_image(ref, runtime, settings, image_root)
    reason = (
        cannot_pull(runtime_of(runtime), image) if settings.image_cache_dir is not None else None
    )
    if reason is not None:
        raise PodRejected("image", reason)
    return image


def _resolved_image(ref: str, runtime: str, settings: Settings, image_root: str | None) -> str:
    if ref in settings.images:
        return settings.images[ref]  # the operator's own mapping
    _checked_image(ref, ref)
    local_only = local_images_only(runtime, settings.image_cache_dir is not None)
    if ref.startswith("/"):
        return _under_image_roots(ref, ref, settings)
    if "://" in ref and not local_only:
        return ref
    if image_root:
        joined = image_root + ref if image_root.endswith(("://", "/")) else f"{image_root}/{ref}"
        image = _checked_image(joined, ref)
        return _under_image_roots(image, ref, settings) if image.startswith("/") else image
    if local_only:
        raise PodRejected(
            "image",
            f"image {ref!r} is not in the configured images map, and the {runtime} runtime "
            "can only run images staged on the cluster",
        )
    return f"docker://{ref}"


def _env(c: Container, where: str, settings: Settings) -> list[tuple[str, str]]:
    resolved: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for j, var in enumerate(c.env):
        if not settings.allow_user_shell and host_heeded(settings.runtime, var.name):
            raise PodRejected(
                f"{where}.env[{j}].name",
                f"{var.name} would also be read by the {settings.runtime} runtime on the host, "
                "outside the container, and this site does not run code of the pod's choosing "
                "there (allow_user_shell: false)",
            )
        if not settings.allow_user_shell and launcher_heeded(var.name):
            raise PodRejected(
                f"{where}.env[{j}].name",
                f"{var.name} is a variable Slurm or an MPI launcher acts on, and this site does "
                "not let a pod steer them (allow_user_shell: false)",
            )
        value = expand_refs(var.value or "", resolved)
        if "\x00" in value:
            raise PodRejected(f"{where}.env[{j}].value", "must not contain NUL characters")
        resolved[var.name] = value
        out.append((var.name, value))
    # A later definition of a name wins, as in Kubernetes; keep one entry per name.
    last = {name: value for name, value in out}
    size = sum(len(f"{name}={value}".encode()) + 1 for name, value in last.items())
    if size > settings.max_env_bytes_per_container:
        raise PodRejected(
            f"{where}.env",
            f"the variables take {size} bytes, more than the "
            f"{settings.max_env_bytes_per_container} a container may have here "
            "(max_env_bytes_per_container)",
        )
    return list(last.items())


# An image's own (ENTRYPOINT, CMD), by the image the runtime is given, for a runtime that cannot
# run it by itself (Charliecloud: images.image_command reads ch-image's metadata).
ImageCommands = Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]


# A bind target as found in an image: (image, target in the container) → the same path with
# the image's symlinks followed inside the image, or None when it is not in the image.
MountTargets = Mapping[tuple[str, str], str | None]


def _in_image(
    c: Container,
    runtime: str,
    image: str,
    binds: Sequence[Bind],
    mount_targets: MountTargets,
    warnings: list[tuple[str, str]],
) -> tuple[Bind, ...]:
    """Binds whose targets are resolved inside the image (``mount_targets``): a symlink is
    followed as the container sees it, never on the host; a target the image lacks is left
    out, with a warning, when the runtime cannot create it."""
    out = []
    for b in binds:
        key = (image, b.target)
        if key not in mount_targets:
            out.append(b)
            continue
        found = mount_targets[key]
        if found is None:
            warnings.append(
                (
                    c.name,
                    f"volume mounted at {b.target} is not mounted: the path does not exist in "
                    f"image {image}, and the {runtime} runtime cannot create it in a "
                    "read-only image",
                )
            )
            continue
        out.append(dataclasses.replace(b, target=found))
    return tuple(out)


def _with_hosts(
    pod: ValidPod,
    pod_dir: str,
    binds: Mapping[str, tuple[Bind, ...]],
    aliases: Sequence[tuple[str, tuple[str, ...]]],
    warnings: list[tuple[str, str]],
) -> Mapping[str, tuple[Bind, ...]]:
    """With hostAliases, every container's binds and the pod's hosts file at /etc/hosts;
    not where the container mounts a file there already (its own, or its pod group's)."""
    if not aliases:
        return binds
    hosts = Bind(f"{pod_dir}/{HOSTS_FILE}", "/etc/hosts", read_only=True)
    out = dict(binds)
    for c in (*pod.spec.init_containers, *pod.spec.containers):
        own = binds.get(c.name, ())
        if any(b.target == "/etc/hosts" for b in own):
            warnings.append((c.name, "hostAliases are not applied: /etc/hosts is mounted"))
            continue
        out[c.name] = (*own, hosts)
    return out


def _no_own_restart_policy(c: Container, where: str) -> None:
    """A container-level restartPolicy is refused, with what to do instead."""
    if c.restart_policy is None:
        return
    if where.startswith("spec.initContainers") and c.restart_policy == "Always":
        reason = (
            "'Always' makes this init container a sidecar, which runs beside the pod's "
            "containers: not supported, because interLink's virtual kubelet takes an init "
            "container that runs for initialization still in progress (the pod would show "
            "Init:N/M and its sidecar's exit fail it). Run it as one of the pod's containers"
        )
    else:
        reason = (
            f"{c.restart_policy!r}: a container of its own restart policy is not supported; "
            "the pod's restartPolicy applies to each container"
        )
    raise PodRejected(f"{where}.restartPolicy", reason)


def _container_plan(
    c: Container,
    where: str,
    settings: Settings,
    image_root: str | None,
    binds: Mapping[str, tuple[Bind, ...]],
    mount_targets: MountTargets,
    warnings: list[tuple[str, str]],
    image_commands: ImageCommands,
) -> ContainerPlan:
    if not c.image:
        raise PodRejected(f"{where}.image", "is empty")
    _no_own_restart_policy(c, where)
    try:
        image = resolve_image(c.image, settings.runtime, settings, image_root)
    except PodRejected as err:
        raise PodRejected(f"{where}.image", err.reason) from err
    env = _env(c, where, settings)
    env_map = dict(env)
    if c.working_dir and (not c.working_dir.startswith("/") or "\x00" in c.working_dir):
        raise PodRejected(f"{where}.workingDir", f"{c.working_dir!r} must be an absolute path")
    gpus = container_gpus(c, where, settings.accelerator_names)
    command = tuple(expand_refs(a, env_map) for a in c.command)
    args = tuple(expand_refs(a, env_map) for a in c.args)
    own = image_commands.get(image)
    if not command and own is not None and not runs_image_command(settings.runtime):
        # The image's ENTRYPOINT, then the pod's args or else the image's CMD, as Kubernetes.
        entrypoint, cmd = own
        command, args = (*entrypoint, *(args or cmd)), ()
    return ContainerPlan(
        name=c.name,
        image=image,
        image_ref=c.image,
        command=command,
        args=args,
        working_dir=c.working_dir,
        env=tuple(env),
        binds=_in_image(c, settings.runtime, image, binds.get(c.name, ()), mount_targets, warnings),
        gpus=gpus,
        gpu_vendor="amd" if _asks_any(c, AMD_ACCELERATORS) else "nvidia",
    )


# Extended resources of AMD's device plugin: Apptainer binds their devices with --rocm.
AMD_ACCELERATORS = ("amd.com/gpu",)


def _asks_any(c: Container, resources: Sequence[str]) -> bool:
    return any(r in c.resources.limits or r in c.resources.requests for r in resources)


@dataclasses.dataclass(frozen=True)
class JobUser:
    """Whom the job runs as, from securityContext: sbatch options, the ids the pod directory
    is handed to, and what the pod asked that is not applied."""

    directives: tuple[str, ...] = ()
    owner: tuple[int, int | None] | None = None
    warnings: tuple[tuple[str, str], ...] = ()


def _one_id(pod: ValidPod, attr: str, field: str) -> tuple[int | None, str]:
    """The one uid (or gid) the pod's containers ask for, and where; a job has one user."""
    found: tuple[int, str] | None = None
    psc = pod.spec.security_context
    for group, containers in (
        ("initContainers", pod.spec.init_containers),
        ("containers", pod.spec.containers),
    ):
        for i, c in enumerate(containers):
            own = getattr(c.security_context, attr, None) if c.security_context else None
            where = f"spec.{group}[{i}].securityContext.{field}"
            if own is None and psc is not None:
                own, where = getattr(psc, attr), f"spec.securityContext.{field}"
            if own is None:
                continue
            if found is not None and found[0] != own:
                raise PodRejected(
                    where,
                    f"{own} differs from {found[0]} ({found[1]}): the containers of a pod run "
                    "as one Slurm job, under one Unix user and group",
                )
            found = (own, where)
    return (found[0], found[1]) if found else (None, f"spec.securityContext.{field}")


def _in_ranges(namespace: str, ranges: Mapping[str, str], value: int) -> bool:
    text = ranges.get(namespace)
    return text is not None and any(a <= value <= b for a, b in id_ranges(text))


def job_user(pod: ValidPod, settings: Settings, submit_as_root: bool) -> JobUser:
    """securityContext runAsUser/runAsGroup → sbatch --uid/--gid, only when the plugin submits
    as root and the namespace may use that id (namespace_uids, namespace_gids); otherwise the
    job runs as the plugin's user, and the status says so. runAsNonRoot with a job that would
    run as root is refused."""
    ns = pod.metadata.namespace
    uid, uid_at = _one_id(pod, "run_as_user", "runAsUser")
    gid, gid_at = _one_id(pod, "run_as_group", "runAsGroup")
    directives: list[str] = []
    warnings: list[tuple[str, str]] = []
    job_uid: int | None = 0 if submit_as_root else None  # None: not root, whoever it is
    applied_uid = False
    if uid is not None:
        if not submit_as_root:
            why = "the plugin does not submit jobs as root, so it cannot choose their user"
        elif not _in_ranges(ns, settings.namespace_uids, uid):
            why = f"namespace {ns} may not run as uid {uid} (namespace_uids)"
        else:
            why = ""
            directives.append(f"--uid={uid}")
            job_uid, applied_uid = uid, True
        if why:
            warnings.append(
                ("", f"{uid_at} {uid} is not applied: the job runs as the plugin's user ({why})")
            )
    applied_gid = False
    if gid is not None:
        if not applied_uid:
            why = "only with a runAsUser that is applied"
        elif not _in_ranges(ns, settings.namespace_gids, gid):
            why = f"namespace {ns} may not run as gid {gid} (namespace_gids)"
        else:
            why = ""
            directives.append(f"--gid={gid}")
            applied_gid = True
        if why:
            warnings.append(("", f"{gid_at} {gid} is not applied ({why})"))
    non_root = [
        f"spec.{group}[{i}].securityContext.runAsNonRoot"
        for group, containers in (
            ("initContainers", pod.spec.init_containers),
            ("containers", pod.spec.containers),
        )
        for i, c in enumerate(containers)
        if c.security_context is not None and c.security_context.run_as_non_root
    ]
    if pod.spec.security_context is not None and pod.spec.security_context.run_as_non_root:
        non_root.insert(0, "spec.securityContext.runAsNonRoot")
    if non_root and job_uid == 0:
        raise PodRejected(
            non_root[0],
            "the job would run as root"
            + ("" if applied_uid else " (the plugin's user)")
            + ": set runAsUser to a uid this namespace may use (namespace_uids)",
        )
    owner = (uid, gid if applied_gid else None) if applied_uid and uid is not None else None
    return JobUser(tuple(directives), owner, tuple(warnings))


def env_file(runtime: str, env: Sequence[tuple[str, str]]) -> bytes:
    """NUL-separated NAME=VALUE entries: any byte but NUL survives, newlines included."""
    return b"".join(e.encode() + b"\0" for e in env_entries(runtime, env))


def _any(allowed: Sequence[str] | str) -> Sequence[str] | None:
    """A configured list, or None for ``any``."""
    return None if isinstance(allowed, str) else allowed


def _user_directives(
    settings: Settings, annotations: dict[str, str], max_time: int | None
) -> list[str]:
    text = annotations.get(ann.FLAGS, "")
    if not text.strip():
        return []
    partitions = settings.user_partitions_allowed
    policy = ann.FlagPolicy(
        allowed=settings.user_flags_allowed,
        partitions=partitions if partitions is not None else partitions_of(settings),
        qos=_any(settings.user_qos_allowed),
        account=settings.allow_account_annotation,
        reservations=_any(settings.user_reservations_allowed),
        dependencies=_any(settings.user_dependencies_allowed),
        mail=_any(settings.user_mail_allowed),
    )
    flags = ann.user_flags(text, policy)
    for flag in flags:
        name, _, value = flag.partition("=")
        if name == "--time" and max_time is not None:
            try:
                seconds = slurm_seconds(value)
            except ValueError as err:
                raise PodRejected(f"metadata.annotations[{ann.FLAGS}]", f"--time: {err}") from err
            if seconds > max_time:
                raise PodRejected(
                    f"metadata.annotations[{ann.FLAGS}]",
                    f"--time={value} is longer than the {max_time} s a job may run here",
                )
    return flags


def build_plan(
    data: RetrievedPodData,
    settings: Settings,
    pod_dir: str,
    target: Target | None = None,
    target_name: str = "",
    mount_targets: MountTargets | None = None,
    image_commands: ImageCommands | None = None,
    submit_as_root: bool = False,
) -> JobPlan:
    """The job of a pod; on ``target`` (placement) when given, which then wins over the
    profile's and top-level keys. ``mount_targets``: the bind targets as found in the images
    (``mount_targets_argv``), for a runtime that cannot create a missing one."""
    pod = data.pod
    meta = pod.metadata
    annotations = meta.annotations
    _check_container_count(pod, settings.max_containers_per_pod)
    accelerators = settings.accelerator_names
    wants_gpus = pod_resources(pod.spec, 1, 1, accelerators).gpus > 0
    site = site_for(settings, annotations, meta.namespace, wants_gpus, target)
    mpi = ann.mpi(annotations, settings.mpi_flags_allowed, settings.allow_user_shell)
    res = pod_resources(pod.spec, site.default_cpus, site.default_memory_mb, accelerators)
    directives = _job_directives(pod, pod_dir, settings, site, mpi, res, target_name)
    user = job_user(pod, settings, submit_as_root)
    directives += user.directives

    shell = ann.user_shell(annotations, settings.allow_user_shell)
    ip = ann.pod_ip(annotations)
    runtime_flags = _runtime_flags(settings, annotations)

    layout = lay_out_volumes(
        pod,
        data.container,
        pod_dir,
        [str(p) for p in settings.host_path_prefixes],
        pvc_root=str(settings.pvc_root) if settings.pvc_root else None,
        memory_mb=res.memory_mb,
    )
    warnings = [*user.warnings, *layout.warnings]
    script = _job_script_to_run(data, settings.job_script)
    aliases = tuple((a.ip, tuple(a.hostnames)) for a in pod.spec.host_aliases if a.hostnames)
    if script is not None:
        # interLink's own script is the pod's work: no image of the pod is resolved or pulled.
        containers = _Containers(
            tuple(_stand_in(c) for c in pod.spec.init_containers),
            tuple(_stand_in(c) for c in pod.spec.containers),
        )
    else:
        containers = _pod_containers(
            data,
            settings,
            pod_dir,
            _with_hosts(pod, pod_dir, layout.binds, aliases, warnings),
            _ContainerInputs(ip, mpi.launcher, runtime_flags, mount_targets, image_commands),
            warnings,
        )
    init, regular = containers.init, containers.regular
    argv, files = _runs_and_env_files(settings, runtime_flags, init, regular, script)
    files += layout.files
    files += containers.pull_files
    files.append(FileSpec(LIBRARY_FILE, LIBRARY.encode(), 0o600))
    shell_files = _shell_files(shell)
    files += shell_files.files
    files.append(FileSpec("pod.json", _pod_json(pod)))
    rt = runtime_of(settings.runtime)
    prepare = {} if script is not None else {c.name: rt.prepare_argv(c) for c in (*init, *regular)}
    return JobPlan(
        uid=meta.uid,
        namespace=meta.namespace,
        name=meta.name,
        pod_dir=pod_dir,
        directives=tuple(directives),
        init_containers=init,
        containers=regular,
        files=tuple(files),
        dirs=("containers", *layout.dirs),
        runtime=settings.runtime,
        runtime_argv=argv,
        runtime_prepare={name: words for name, words in prepare.items() if words},
        header_comment=_header(pod),
        job_env=(("POD_IP", ip),) if ip is not None else (),
        pre_exec=shell_files.pre_exec,
        mesh=shell_files.mesh,
        nodes=mpi.nodes,
        image_pulls=containers.pulls,
        enroot_data_path=containers.data_path,
        enroot_creates=containers.creates,
        node_dirs=layout.node_dirs,
        scratch_dirs=layout.scratch_dirs,
        size_limits=layout.size_limits,
        host_aliases=aliases if script is None else (),
        backoff_seconds=(
            max(1, round(settings.restart_backoff_seconds)),
            max(1, round(settings.restart_backoff_max_seconds)),
        ),
        grace_seconds=(
            pod.spec.termination_grace_period_seconds
            if pod.spec.termination_grace_period_seconds is not None
            else settings.default_grace_seconds
        ),
        tunnel=shell_files.tunnel,
        warnings=tuple(warnings),
        owner=user.owner,
        read_only_dirs=layout.read_only_dirs if not has_read_only_binds(settings.runtime) else (),
    )


def _check_container_count(pod: ValidPod, most: int) -> None:
    count = len(pod.spec.init_containers) + len(pod.spec.containers)
    if count > most:
        # Each container is a process tree of the one job: thousands would start at once.
        raise PodRejected(
            "spec.containers",
            f"the pod has {count} containers (init containers included), more than the "
            f"{most} a pod may have here (max_containers_per_pod)",
        )


def _job_directives(
    pod: ValidPod,
    pod_dir: str,
    settings: Settings,
    site: Site,
    mpi: ann.Mpi,
    res: Resources,
    target_name: str,
) -> list[str]:
    """The job's sbatch options: its name, comment and output, its resources, the site's
    account, QOS and sbatch_extra, then the pod's own flags (the later wins)."""
    meta = pod.metadata
    # Named in the messages of what this target or flavor does not allow.
    where = ", ".join(
        f"{kind} {name}"
        for kind, name in (("target", target_name), ("flavor", site.profile))
        if name
    )
    directives = [
        f"--job-name={meta.name}",
        f"--comment={JOB_COMMENT_PREFIX}{meta.uid}",
        f"--output={pod_dir}/job.out",
        "--open-mode=append",
        f"--chdir={pod_dir}",
        *resource_directives(
            res,
            partition=site.partition,
            gpu_type=site.gpu_type,
            nodes=mpi.nodes,
            tasks_per_node=mpi.tasks_per_node,
            gpus_per_node=site.gpus_per_node,
            max_cpus=site.max_cpus,
            max_memory_mb=site.max_memory_mb,
            default_time=site.default_time,
            max_time=site.max_time,
            where=where,
            gres=settings.accelerators.get(res.accelerator),
        ),
    ]
    if site.account:
        directives.append(f"--account={site.account}")
    if site.qos:
        directives.append(f"--qos={site.qos}")
    directives = ann.merge_directives(directives, site.sbatch_extra)
    return ann.merge_directives(
        directives, _user_directives(settings, meta.annotations, site.max_time)
    )


def _job_script_to_run(data: RetrievedPodData, mode: str) -> str | None:
    """interLink's own job script, when it sent one and the site runs them (job_script: run);
    refused with job_script: refuse, left aside with ignore."""
    script = data.job_script if data.job_script and data.job_script.strip() else None
    if script is not None and mode == "refuse":
        raise PodRejected(
            "jobScript",
            "interLink sent a job script of its own (JobScriptTemplate or JobScriptBuilderURL), "
            "and this site does not run them (job_script: refuse)",
        )
    return script if mode == "run" else None


@dataclasses.dataclass(frozen=True)
class _ContainerInputs:
    """What the pod's annotations and the images say of every container."""

    ip: str | None  # the pod's POD_IP, given to the containers that set none
    launcher: tuple[str, ...]  # the MPI launcher of the main containers (empty: none)
    runtime_flags: Sequence[str]
    mount_targets: MountTargets | None
    image_commands: ImageCommands | None


@dataclasses.dataclass(frozen=True)
class _Containers:
    """The pod's containers as the job runs them, and how their images reach the nodes."""

    init: tuple[ContainerPlan, ...]
    regular: tuple[ContainerPlan, ...]
    pulls: tuple[PlannedPull, ...] = ()
    pull_files: tuple[FileSpec, ...] = ()
    creates: tuple[PlannedCreate, ...] = ()
    data_path: str | None = None


def _pod_containers(
    data: RetrievedPodData,
    settings: Settings,
    pod_dir: str,
    binds: Mapping[str, tuple[Bind, ...]],
    given: _ContainerInputs,
    warnings: list[tuple[str, str]],
) -> _Containers:
    """Each container's plan (image, command, env, binds; what it runs without is added to
    ``warnings``), its POD_IP and launcher, its image staged, then its probes and hooks."""
    pod = data.pod
    image_root = _image_root(pod, settings)

    def plans(containers: Sequence[Container], group: str) -> tuple[ContainerPlan, ...]:
        return tuple(
            _container_plan(
                c,
                f"spec.{group}[{i}]",
                settings,
                image_root,
                binds,
                given.mount_targets or {},
                warnings,
                given.image_commands or {},
            )
            for i, c in enumerate(containers)
        )

    init = plans(pod.spec.init_containers, "initContainers")
    regular = plans(pod.spec.containers, "containers")
    # Kubernetes' container runtime gives every container HOSTNAME, the pod's hostname:
    # StatefulSets' pods take their ordinal from it. (The hostname itself stays the node's:
    # these runtimes make no UTS namespace.) The pod's own HOSTNAME wins.
    hostname = _pod_hostname(pod)
    init, regular = (tuple(_with_hostname(c, hostname) for c in g) for g in (init, regular))
    if given.ip is not None:
        # The pod's own POD_IP (e.g. from the downward API) wins when it has a value.
        ip = given.ip
        init, regular = (tuple(_with_env(c, "POD_IP", ip) for c in g) for g in (init, regular))
    if given.launcher:
        regular = tuple(dataclasses.replace(c, launcher=given.launcher) for c in regular)
    staged = _staged_images(data, settings, pod_dir, _Containers(init, regular))
    policy = restart_policy(pod.spec.restart_policy)
    flags = given.runtime_flags
    init = _with_lifecycle(staged.init, pod.spec.init_containers, True, policy, settings, flags)
    regular = _with_lifecycle(staged.regular, pod.spec.containers, False, policy, settings, flags)
    return dataclasses.replace(staged, init=init, regular=regular)


def _staged_images(
    data: RetrievedPodData, settings: Settings, pod_dir: str, containers: _Containers
) -> _Containers:
    """Registry images pulled into the image cache (image_cache_dir), and images unpacked on
    each node into a directory of the job's own (enroot_create_dir): the containers start
    the cached file or the unpacked name."""
    init, regular = containers.init, containers.regular
    pulls: list[PlannedPull] = []
    pull_files: list[FileSpec] = []
    if settings.image_cache_dir is not None:
        cached, pulls, pull_files = _pull_through_cache(settings, data, pod_dir, (*init, *regular))
        init, regular = (
            tuple(dataclasses.replace(c, image=cached.get(c.image, c.image)) for c in group)
            for group in (init, regular)
        )
    creates: tuple[PlannedCreate, ...] = ()
    data_path: str | None = None
    if settings.enroot_create_dir is not None:
        data_path = f"{settings.enroot_create_dir}/interlink-slurm-{data.pod.metadata.uid}"
        creates = _unpacked_images(settings, (*init, *regular))
        names = {c.image: c.name for c in creates}
        init, regular = (
            tuple(dataclasses.replace(c, image=names[c.image]) for c in group)
            for group in (init, regular)
        )
    return _Containers(init, regular, tuple(pulls), tuple(pull_files), creates, data_path)


def _runs_and_env_files(
    settings: Settings,
    runtime_flags: Sequence[str],
    init: Sequence[ContainerPlan],
    regular: Sequence[ContainerPlan],
    script: str | None,
) -> tuple[dict[str, tuple[str, ...]], list[FileSpec]]:
    """The command that runs each container, and its env file; with interLink's ``script``,
    the script runs as the first container and the env files are empty."""
    argv: dict[str, tuple[str, ...]] = {}
    files: list[FileSpec] = []
    if script is not None:
        argv = _job_script_argv(tuple(init), tuple(regular))
        files.append(FileSpec(JOB_SCRIPT_FILE, script.encode(), 0o700))
    for group, cps in (("initContainers", init), ("containers", regular)):
        for i, cp in enumerate(cps):
            if script is not None:
                files.append(FileSpec(f"containers/{cp.name}.env", b""))
                continue
            try:
                argv[cp.name] = tuple(
                    container_argv(settings.runtime, settings.runtime_binary, runtime_flags, cp)
                )
            except PodRejected as err:
                raise PodRejected(f"spec.{group}[{i}].command", err.reason) from err
            files.append(FileSpec(f"containers/{cp.name}.env", env_file(settings.runtime, cp.env)))
    return argv, files


@dataclasses.dataclass(frozen=True)
class _ShellFiles:
    """The pod's own shell code (allow_user_shell), as files of the pod directory."""

    files: tuple[FileSpec, ...]
    pre_exec: str | None
    mesh: str | None
    tunnel: str | None


def _shell_files(shell: Mapping[str, str]) -> _ShellFiles:
    """The pre-exec code (less its mesh part, which runs apart) and the tunnel's."""
    pre_exec = shell.get(ann.PRE_EXEC)
    tunnel = shell.get(ann.WSTUNNEL)
    mesh = None
    if pre_exec is not None:
        mesh, pre_exec = ann.split_mesh(pre_exec)
        if not pre_exec.strip():
            pre_exec = None
    files: list[FileSpec] = []
    if mesh is not None:
        files.append(FileSpec(MESH_FILE, mesh.encode(), 0o700))
    if pre_exec is not None:
        files.append(FileSpec(PRE_EXEC_FILE, _shell_file(ann.PRE_EXEC, pre_exec), 0o600))
    if tunnel is not None:
        files.append(FileSpec(TUNNEL_FILE, _shell_file(ann.WSTUNNEL, tunnel), 0o600))
    return _ShellFiles(
        tuple(files),
        PRE_EXEC_FILE if pre_exec is not None else None,
        MESH_FILE if mesh is not None else None,
        TUNNEL_FILE if tunnel is not None else None,
    )


def _pod_json(pod: ValidPod) -> bytes:
    """The pod as interLink sent it, kept in its directory for whoever looks into it."""
    # pydantic's serialiser: json.dumps with an indent is the pure-Python encoder, 8x slower.
    return pod.model_dump_json(by_alias=True, exclude_none=True, indent=1).encode()


def _header(pod: ValidPod) -> str:
    meta = pod.metadata
    return (
        f"Pod {meta.namespace}/{meta.name} (uid {meta.uid}), "
        f"written by interlink-slurm {__version__}.\n"
        "Each container's output, exit code and times are in containers/.\n"
        "To run it again by hand: sbatch job.sh"
    )


def _stand_in(c: Container) -> ContainerPlan:
    """A container of a pod whose work is interLink's job script: a name to report under."""
    return ContainerPlan(
        name=c.name,
        image=c.image,
        image_ref=c.image,
        command=(),
        args=(),
        working_dir="",
        env=(),
        binds=(),
    )


# interLink's job script (JobScriptTemplate, JobScriptBuilderURL), run by the job as the pod's work.
JOB_SCRIPT_FILE = "job-script.sh"
# The pod's other containers end as the script does (its exit code, once it has one).
_AS_THE_SCRIPT = (
    'while [ ! -e "containers/$0.exit" ]; do sleep 1; done; exit "$(cat "containers/$0.exit")"'
)


def _job_script_argv(
    init: Sequence[ContainerPlan], regular: Sequence[ContainerPlan]
) -> dict[str, tuple[str, ...]]:
    """interLink's job script runs under the name of the pod's first container (its log,
    exit code and times are that container's); the other containers end as it does, and the
    init containers, whose work the script does too, are done at once."""
    argv: dict[str, tuple[str, ...]] = {c.name: ("true",) for c in init}
    first, *others = regular
    argv[first.name] = ("bash", f"./{JOB_SCRIPT_FILE}")
    for c in others:
        argv[c.name] = ("bash", "-c", _AS_THE_SCRIPT, first.name)
    return argv


def _runtime_flags(settings: Settings, annotations: Mapping[str, str]) -> list[str]:
    """The site's runtime options, then the pod's own (singularity-options, -mounts)."""
    flags = list(settings.runtime_flags)
    if annotations.get(ann.SINGULARITY_OPTIONS, "").strip():
        flags += ann.runtime_options(
            annotations[ann.SINGULARITY_OPTIONS], settings.runtime, settings.runtime_options_allowed
        )
    if annotations.get(ann.SINGULARITY_MOUNTS, "").strip():
        flags += ann.runtime_mounts(
            annotations[ann.SINGULARITY_MOUNTS],
            settings.runtime,
            [str(p) for p in settings.host_path_prefixes],
        )
    return flags


def _pull_through_cache(
    settings: Settings,
    data: RetrievedPodData,
    pod_dir: str,
    containers: Sequence[ContainerPlan],
) -> tuple[dict[str, str], list[PlannedPull], list[FileSpec]]:
    """Registry images → image files of the shared cache, with the pod's pull secrets."""
    assert settings.image_cache_dir is not None
    spec = data.pod.spec
    policies = {
        c.name: pull_policy(c.image, c.image_pull_policy)
        for c in (*spec.init_containers, *spec.containers)
    }
    pulled = {c.image for c in containers if policies.get(c.name) != "Never"}
    never = frozenset(c.image for c in containers if c.image not in pulled)
    return plan_pulls(
        runtime_of(settings.runtime),
        settings.runtime_binary,
        str(settings.image_cache_dir),
        pod_dir,
        [c.image for c in containers],
        pull_secrets(data),
        never,
    )


def pull_secrets(data: RetrievedPodData) -> list[Secret]:
    """The pod's imagePullSecrets, as interLink sent them."""
    extra = data.pod.spec.model_extra or {}
    wanted = {s.get("name") for s in extra.get("imagePullSecrets") or [] if isinstance(s, dict)}
    return [s for rc in data.container for s in rc.secrets if s.metadata.name in wanted]


def tags_to_look_up(data: RetrievedPodData, settings: Settings) -> dict[str, str]:
    """The images (as the pod names them → their docker:// reference) whose tag is looked up
    in the registry at this create, as the kubelet does for imagePullPolicy Always: pulled
    into the cache by a runtime that can pull a digest, not from the site's images map and
    not pinned already."""
    if (
        settings.image_cache_dir is None
        or not settings.image_tag_lookup
        or not runtime_of(settings.runtime).pulls_digests
    ):
        return {}
    pod = data.pod
    image_root = _image_root(pod, settings)
    found: dict[str, str] = {}
    for c in (*pod.spec.init_containers, *pod.spec.containers):
        if c.image in settings.images or c.image in found:
            continue
        if pull_policy(c.image, c.image_pull_policy) != "Always":
            continue
        try:
            source = resolve_image(c.image, settings.runtime, settings, image_root)
        except PodRejected:
            continue  # refused with its reason when the pod is planned
        if source.startswith("docker://") and "@" not in source:
            found[c.image] = source
    return found


def with_images(data: RetrievedPodData, images: Mapping[str, str]) -> RetrievedPodData:
    """The pod with each container's image replaced as ``images`` (old → new) says."""
    if not images:
        return data

    def swap(containers: Sequence[Container]) -> list[Container]:
        return [
            c.model_copy(update={"image": images[c.image]}) if c.image in images else c
            for c in containers
        ]

    spec = data.pod.spec.model_copy(
        update={
            "init_containers": swap(data.pod.spec.init_containers),
            "containers": swap(data.pod.spec.containers),
        }
    )
    return data.model_copy(update={"pod": data.pod.model_copy(update={"spec": spec})})


def _unpacked_images(
    settings: Settings, containers: Sequence[ContainerPlan]
) -> tuple[PlannedCreate, ...]:
    """Each distinct image unpacked on the nodes (``enroot create``), named ils-0, ils-1... in
    order of first use."""
    rt = runtime_of(settings.runtime)
    images = list(dict.fromkeys(c.image for c in containers))
    return tuple(
        PlannedCreate(f"ils-{n}", image, rt.create_argv(settings.runtime_binary, f"ils-{n}", image))
        for n, image in enumerate(images)
    )


def _with_lifecycle(
    plans: tuple[ContainerPlan, ...],
    containers: Sequence[Container],
    is_init: bool,
    policy: str,
    settings: Settings,
    runtime_flags: Sequence[str],
) -> tuple[ContainerPlan, ...]:
    """Each container's restart policy, probes and hooks (exec ones run in its own image)."""
    group = "initContainers" if is_init else "containers"
    out = []
    for i, (cp, c) in enumerate(zip(plans, containers, strict=True)):

        def exec_argv(command: Sequence[str], cp: ContainerPlan = cp) -> list[str]:
            probe = dataclasses.replace(cp, command=tuple(command), args=())
            return container_argv(settings.runtime, settings.runtime_binary, runtime_flags, probe)

        life = lifecycle(c, f"spec.{group}[{i}]", policy, is_init, exec_argv)
        out.append(dataclasses.replace(cp, lifecycle=life))
    return tuple(out)


def _pod_hostname(pod: ValidPod) -> str:
    """The pod's hostname as the kubelet gives it: spec.hostname, else its name, cut to 63
    characters without a trailing '-' or '.'."""
    given = (pod.spec.model_extra or {}).get("hostname")
    name = given if isinstance(given, str) and given else pod.metadata.name
    return name[:63].rstrip("-.")


def _with_hostname(c: ContainerPlan, hostname: str) -> ContainerPlan:
    """HOSTNAME first in the container's variables, where the pod sets none."""
    if any(n == "HOSTNAME" for n, _ in c.env):
        return c
    return dataclasses.replace(c, env=(("HOSTNAME", hostname), *c.env))


def _with_env(c: ContainerPlan, name: str, value: str) -> ContainerPlan:
    if any(n == name and v for n, v in c.env):
        return c
    env = (*((n, v) for n, v in c.env if n != name), (name, value))
    return dataclasses.replace(c, env=env)


def _shell_file(annotation: str, code: str) -> bytes:
    return (
        f"# From the pod's annotation {annotation}, run as written (allow_user_shell: true).\n"
        f"{code}\n"
    ).encode()
