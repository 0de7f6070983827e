"""What a pod becomes, as plain data: the files of its directory and the job that runs it.

Paths in a plan are relative to the pod's directory unless they say otherwise; only
``jobdir`` turns them into real paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Stands, in a container's argv, for the directory on the node that is the container's own
# /tmp ($ILS_TMP/<container> in the job), shared with its exec probes and hooks as one
# container's /tmp is in Kubernetes. NUL: never pod text.
CONTAINER_TMP = "\x00TMP"
# Stands, in a container's argv, for the working directory its image gives ($ILS_CWD, set in the
# job from the image's metadata just before the container starts: see Runtime.prepare_argv).
IMAGE_CWD = "\x00CWD"


@dataclass(frozen=True)
class FileSpec:
    """A file the plugin writes into the pod directory before submitting."""

    path: str  # relative to the pod directory
    content: bytes
    mode: int = 0o600


@dataclass(frozen=True)
class SizeLimit:
    """An emptyDir's sizeLimit, watched by the job: over it, the pod is evicted."""

    volume: str
    path: str  # absolute, on the job's first node
    kib: int
    quantity: str  # as the pod wrote it, for the message


@dataclass(frozen=True)
class PlannedPull:
    """One registry image converted into the shared cache (``image_cache_dir``) before the
    containers start: ``argv`` writes ``target + ".part"`` from ``source``; the job (or
    ``script.render_pull_script`` on the submit host) renames it to ``target`` when it succeeds."""

    target: str  # absolute path of the cached image file (.sif or .sqsh)
    source: str  # the registry reference, e.g. docker://python:3.12
    argv: tuple[str, ...]  # the command that writes target + ".part" from source
    # File relative to the pod dir: NUL-separated NAME=VALUE entries given to the pull only.
    auth: str | None = None
    # imagePullPolicy Never (every container of this image): never pulled; the pod waits
    # (ErrImageNeverPull) until the image is in the cache.
    never: bool = False


@dataclass(frozen=True)
class PlannedCreate:
    """One image Enroot unpacks on every node of the job before the containers start
    (enroot_create_dir): ``argv`` (``enroot create --name NAME IMAGE``) makes
    ``$ENROOT_DATA_PATH/NAME``, which the containers of that image then start."""

    name: str  # ils-0, ils-1...: never from the pod
    image: str  # the image file
    argv: tuple[str, ...]


# The pod's /etc/hosts with its hostAliases, in the pod directory (see JobPlan.host_aliases).
HOSTS_FILE = "hosts"


@dataclass(frozen=True)
class Bind:
    """A host path bound into a container."""

    source: str  # absolute host path
    target: str  # absolute path in the container
    read_only: bool = False


@dataclass(frozen=True)
class Lifecycle:
    """What the job does around one container (words for the script's ils_container)."""

    restart: str = "Never"  # when it ends: Never, OnFailure (non-zero exit), Always
    startup: tuple[str, ...] = ()  # startup DELAY PERIOD TIMEOUT SUCCESS FAILURE CHECK...
    readiness: tuple[str, ...] = ()  # readiness DELAY PERIOD TIMEOUT SUCCESS FAILURE CHECK...
    liveness: tuple[str, ...] = ()  # liveness DELAY PERIOD TIMEOUT SUCCESS FAILURE CHECK...
    post_start: tuple[str, ...] = ()  # CHECK...
    pre_stop: tuple[str, ...] = ()  # CHECK...
    # terminationMessagePolicy: File, or FallbackToLogsOnError (a failed run's log tail).
    messages: str = "File"


@dataclass(frozen=True)
class ContainerPlan:
    """One container as the job runs it: image, command, env, binds, launcher, lifecycle."""

    name: str
    # What the runtime is given: a path, a docker:// reference, or the name of an image Enroot
    # unpacked (JobPlan.enroot_creates).
    image: str
    image_ref: str  # what the pod asked for
    command: tuple[str, ...]  # the container's command; empty → the image's default
    args: tuple[str, ...]
    working_dir: str
    env: tuple[tuple[str, str], ...]
    binds: tuple[Bind, ...]
    gpus: int = 0
    gpu_vendor: str = "nvidia"  # "amd" for amd.com/* accelerators (Apptainer's --rocm)
    # Runs the container on every task of the job (srun / mpirun ...); empty: once, here.
    launcher: tuple[str, ...] = ()
    lifecycle: Lifecycle = Lifecycle()


@dataclass(frozen=True)
class JobPlan:
    """Everything the job script and the pod directory are made of: the pure result of the
    translation, rendered by script.py and written by jobdir.py."""

    uid: str
    namespace: str
    name: str
    pod_dir: str  # absolute
    directives: tuple[str, ...]  # sbatch options, one per #SBATCH line
    init_containers: tuple[ContainerPlan, ...]
    containers: tuple[ContainerPlan, ...]
    files: tuple[FileSpec, ...] = ()
    dirs: tuple[str, ...] = ()  # relative directories to create (emptyDirs, volumes)
    runtime: str = "apptainer"
    runtime_argv: dict[str, tuple[str, ...]] = field(default_factory=dict)  # container → argv
    # container → a library command the job runs just before it (Runtime.prepare_argv).
    runtime_prepare: dict[str, tuple[str, ...]] = field(default_factory=dict)
    header_comment: str = ""
    # Exported in the job before anything runs (POD_IP...).
    job_env: tuple[tuple[str, str], ...] = ()
    # The pod's own shell code (slurm-job.vk.io/pre-exec), a file sourced before the containers.
    pre_exec: str | None = None
    # interLink's full-mesh script (from the pre-exec's EOFMESH heredoc), a file that runs its
    # arguments inside the mesh's network namespace: the containers are started through it.
    mesh: str | None = None
    # interLink's tunnel (interlink.eu/wstunnel-client-commands), a file run in the background
    # from before the containers start until they end.
    tunnel: str | None = None
    # Absolute directories the job creates on the node when it starts (memory-backed emptyDirs,
    # claims); those in ``scratch_dirs`` are removed again when it ends.
    node_dirs: tuple[str, ...] = ()
    scratch_dirs: tuple[str, ...] = ()
    size_limits: tuple[SizeLimit, ...] = ()
    # The pod's hostAliases (IP, names): added to the node's /etc/hosts in the pod directory's
    # HOSTS_FILE, which every container gets at /etc/hosts.
    host_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Images to convert into the shared cache before the containers start (image_cache_dir).
    image_pulls: tuple[PlannedPull, ...] = ()
    # Enroot's create mode (enroot_create_dir): ENROOT_DATA_PATH, a directory of the job's own on
    # each node, where each image is unpacked before the containers start.
    enroot_data_path: str | None = None
    enroot_creates: tuple[PlannedCreate, ...] = ()
    # Restarts (restartPolicy): first wait, longest wait, in whole seconds; the grace a container
    # stopped by its liveness probe gets before it is killed.
    backoff_seconds: tuple[int, int] = (10, 300)
    nodes: int = 1
    grace_seconds: int = 30
    # Relative directories the job makes read-only by their permissions while it runs (the
    # volumes a runtime without read-only binds mounts: Charliecloud 0.31).
    read_only_dirs: tuple[str, ...] = ()
    # (uid, gid or None) the pod's directory is handed to, when the job runs as another user
    # than the plugin's (securityContext, sbatch --uid).
    owner: tuple[int, int | None] | None = None
    # (container, what the pod asked that it runs without): said in the container's status;
    # "" for every container.
    warnings: tuple[tuple[str, str], ...] = ()
