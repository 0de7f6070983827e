"""One function per container runtime: a container's plan → the argv that runs it.

The environment never goes on the command line (values would show in ``ps`` and need quoting):
each runtime says how the variables it is given in the process environment reach the container,
and ``env_entries`` writes them in that form to the container's env file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.images import CH_METADATA, RUNTIME_SCHEMES
from interlink_slurm.translate.plan import CONTAINER_TMP, ContainerPlan

ENV_PREFIX = {
    "apptainer": "APPTAINERENV_",
    "singularity": "SINGULARITYENV_",
    "enroot": "",
    "charliecloud": "",
}


# Enroot and Charliecloud take the container's environment from their own process environment,
# so a pod's variables reach the runtime on the host, outside the container, too. These are the
# names through which the host side would run code of the pod's choosing: the dynamic loader's,
# and for Enroot (a bash script that sources the user's configuration and hooks) bash's and
# its configuration's.
_LOADER = ("LD_", "GCONV_PATH", "GLIBC_TUNABLES")
HOST_HEEDED: dict[str, tuple[str, ...]] = {
    "enroot": (
        *_LOADER,
        "BASH_ENV",
        "ENV",
        "BASH_FUNC_",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "PATH",
        "HOME",
        "XDG_",
        "ENROOT_",
    ),
    "charliecloud": (*_LOADER, "CH_"),
}


def host_heeded(runtime: str, name: str) -> bool:
    """Whether the runtime's own process, on the host, would act on this variable."""
    for entry in HOST_HEEDED.get(runtime, ()):
        if name == entry or (entry.endswith("_") and name.startswith(entry)):
            return True
    return False


# Variables Slurm's commands and the MPI launchers act on (srun --task-prolog is
# SLURM_TASK_PROLOG, mpirun -x is OMPI_MCA_..., Hydra's launcher is HYDRA_LAUNCHER...). The job
# keeps the pod's variables from the launcher (they are set after it, for the runtime only), but
# a site that runs no code of the pod's choosing refuses them outright.
LAUNCHER_HEEDED = (
    "SLURM_",
    "SRUN_",
    "SALLOC_",
    "SBATCH_",
    "OMPI_",
    "PRTE_",
    "PMIX_",
    "PMI",
    "HYDRA_",
    "MPIEXEC_",
    "I_MPI_",
)


def launcher_heeded(name: str) -> bool:
    """Whether Slurm or an MPI launcher would act on this variable."""
    return name.startswith(LAUNCHER_HEEDED)


def env_entries(runtime: str, env: Sequence[tuple[str, str]]) -> list[str]:
    """``NAME=VALUE`` strings for the job to put in the runtime's environment."""
    prefix = ENV_PREFIX[runtime]
    return [f"{prefix}{name}={value}" for name, value in env]


# Each container gets a /tmp of its own, never the node's, and the same one for its exec
# probes and hooks, which the runtime starts as containers of their own (a postStart hook that
# writes /tmp/x, a liveness probe that reads /tmp/healthy): a directory of the job on the node,
# $ILS_TMP/<container>, is bound at /tmp. Apptainer takes it as --workdir (with --contain,
# which --containall, the default runtime_options, implies: an empty $HOME and a minimal /dev
# too, GPUs still come with --nv); Charliecloud and Enroot as a bind. Not added when the
# site's options already give /tmp a place of their own.
_CONTAINS = frozenset({"--contain", "-c", "--containall", "-C"})
_WORKDIR = frozenset({"--workdir", "-W"})
_PRIVATE_TMP = frozenset({"--private-tmp", "-t"})


def container_tmp(name: str) -> str:
    """The container's own /tmp directory, in its argv (plan.CONTAINER_TMP)."""
    return f"{CONTAINER_TMP}/{name}"


def _private_tmp(runtime: str, options: Sequence[str], name: str) -> tuple[str, ...]:
    said = {o.split("=", 1)[0] for o in options}
    tmp = container_tmp(name)
    if runtime in ("apptainer", "singularity"):
        contain = () if _CONTAINS & said else ("--contain",)
        return (*contain, *(() if _WORKDIR & said else ("--workdir", tmp)))
    if runtime == "enroot":
        return ("--mount", f"{tmp} /tmp none x-create=dir,rbind")
    return () if _PRIVATE_TMP & said else ("-b", f"{tmp}:/tmp")


def _apptainer(binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
    argv = [binary, "exec" if c.command else "run", *_private_tmp("apptainer", options, c.name)]
    argv += options
    if c.gpus:
        argv.append("--rocm" if c.gpu_vendor == "amd" else "--nv")
    for b in c.binds:
        argv += ["--bind", f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}"]
    if c.working_dir:
        argv += ["--pwd", c.working_dir]
    return [*argv, c.image, *c.command, *c.args]


def _fstab(path: str) -> str:
    """A path as an fstab field: whitespace and backslashes octal-escaped."""
    return "".join(f"\\{ord(ch):03o}" if ch in " \t\n\\" else ch for ch in path)


def _enroot(binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
    argv = [binary, "start", *_private_tmp("enroot", options, c.name), *options]
    for b in c.binds:
        flags = "x-create=auto,rbind,ro" if b.read_only else "x-create=auto,rbind"
        argv += ["--mount", f"{_fstab(b.source)} {_fstab(b.target)} none {flags}"]
    for name, _ in c.env:
        argv += ["--env", name]
    argv.append(c.image)
    command = [*c.command, *c.args]
    if c.working_dir:
        if not command:
            raise PodRejected(
                f"container {c.name!r} command",
                "with the enroot runtime a workingDir needs a command or args "
                "(enroot has no working-directory option of its own)",
            )
        # enroot has no working-directory option: change directory in the container first.
        return [*argv, "/bin/sh", "-c", 'cd -- "$0" && exec "$@"', c.working_dir, *command]
    return [*argv, *command]


def runs_image_command(runtime: str) -> bool:
    """Whether the runtime itself runs an image's ENTRYPOINT and CMD when given no command
    (Apptainer's run, Enroot's start). Charliecloud does not: the plugin reads them from the
    image's ch-image metadata (images.image_command)."""
    return runtime != "charliecloud"


def _charliecloud(binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
    command = [*c.command, *c.args]
    if not command:
        raise PodRejected(
            f"container {c.name!r} command",
            f"image {c.image} has no command of its own that Charliecloud can run (no "
            f"ENTRYPOINT or CMD in its {CH_METADATA}, as ch-image writes it): set command or args",
        )
    argv = [binary, *_private_tmp("charliecloud", options, c.name), *options]
    for b in c.binds:
        argv += ["-b", f"{b.source}:{b.target}"]
    if c.working_dir:
        argv += ["-c", c.working_dir]
    return [*argv, c.image, "--", *command]


def has_read_only_binds(runtime: str) -> bool:
    """Whether the runtime can bind a volume read-only (Charliecloud 0.31 cannot: its binds are
    read-write, and the job falls back on the files' permissions)."""
    return runtime != "charliecloud"


RUNTIMES: dict[str, Callable[[str, Sequence[str], ContainerPlan], list[str]]] = {
    "apptainer": _apptainer,
    "singularity": _apptainer,
    "enroot": _enroot,
    "charliecloud": _charliecloud,
}


def container_argv(
    runtime: str, binary: str, options: Sequence[str], c: ContainerPlan
) -> list[str]:
    return RUNTIMES[runtime](binary, options, c)


# Runtimes that take a path to a local image only (they cannot pull docker:// themselves).
LOCAL_IMAGES_ONLY = frozenset({"enroot", "charliecloud"})


def local_images_only(runtime: str, image_cache: bool) -> bool:
    """Whether the runtime can only be given an image staged on the cluster (mapped, rooted or
    an absolute path); ``image_cache``: whether image_cache_dir is set, into which the runtimes
    that can import registry images (images.RUNTIME_SCHEMES) have them pulled first."""
    return runtime in LOCAL_IMAGES_ONLY and not (image_cache and runtime in RUNTIME_SCHEMES)


# Charliecloud (0.31) refuses a bind whose destination crosses an absolute symlink of the image
# ("symlink not relative") and cannot create a missing one in a read-only image. So each target
# is looked up in the image beforehand, as the container will see it: every symlink followed
# relative to the image's root, never the host's. Run as one command on the cluster side:
#   bash -c RESOLVE_IMAGE_PATHS ils-resolve IMAGE TARGET [IMAGE TARGET]...
# prints for each pair "STATUS PATH" and a NUL: 1 the path exists in the image, 0 it does not,
# ? the image is not a directory (a SquashFS file: nothing to look into).
RESOLVE_IMAGE_PATHS = r"""
resolve() {
  local root=$1 rest=$2 cur="" part link hops=0
  while [ -n "$rest" ]; do
    part=${rest%%/*}
    if [ "$part" = "$rest" ]; then rest=""; else rest=${rest#*/}; fi
    case $part in
      ''|.) continue ;;
      ..) cur=${cur%/*}; continue ;;
    esac
    if [ -L "$root$cur/$part" ]; then
      hops=$(( hops + 1 ))
      [ "$hops" -le 40 ] || return 1
      link=$(readlink -- "$root$cur/$part") || return 1
      case $link in /*) cur="" ;; esac
      rest="$link/$rest"
    else
      cur="$cur/$part"
    fi
  done
  printf '%s' "${cur:-/}"
}
while [ "$#" -ge 2 ]; do
  if [ ! -d "$1" ]; then
    printf '? %s\0' "$2"
  elif path=$(resolve "$1" "$2") && [ -e "$1$path" ]; then
    printf '1 %s\0' "$path"
  else
    printf '0 %s\0' "${path:-$2}"
  fi
  shift 2
done
"""


def image_paths_argv(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The command that looks up (image directory, target) pairs (RESOLVE_IMAGE_PATHS)."""
    return ["bash", "-c", RESOLVE_IMAGE_PATHS, "ils-resolve", *(w for p in pairs for w in p)]


def parse_image_paths(
    pairs: Sequence[tuple[str, str]], stdout: str
) -> dict[tuple[str, str], str | None]:
    """(image, target) → the target's path in the image, None when it is not there; pairs the
    command could not look into (not a directory, no answer) are left out."""
    out: dict[tuple[str, str], str | None] = {}
    for pair, answer in zip(pairs, stdout.split("\0"), strict=False):
        status, _, path = answer.partition(" ")
        if status == "1" and path.startswith("/"):
            out[pair] = path
        elif status == "0":
            out[pair] = None
    return out
