"""What the plugin knows of a container runtime, in one place: the ``Runtime`` interface.

Each runtime is one module of this package (apptainer.py, enroot.py, charliecloud.py) with one
subclass; configuration, images, annotations and the job script ask it instead of keeping
tables of their own. Adding a runtime is one new module, registered in ``__init__.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from interlink_slurm.translate.plan import CONTAINER_TMP, ContainerPlan, FileSpec

# Names the dynamic loader acts on: a runtime whose own process reads the pod's variables on the
# host (see Runtime.host_heeded) would run code of the pod's choosing through them.
LOADER_HEEDED = ("LD_", "GCONV_PATH", "GLIBC_TUNABLES")


def option_names(options: Sequence[str]) -> frozenset[str]:
    """The names of the options given (``--workdir=/x`` is ``--workdir``)."""
    return frozenset(o.split("=", 1)[0] for o in options)


class Runtime:
    """One container runtime. Subclasses set the class attributes and write ``argv``."""

    name: str = ""
    # runtime_path's default and runtime_options' default.
    binary: str = ""
    default_flags: tuple[str, ...] = ()
    # How a variable of the container's env file reaches the container: NAME → PREFIX+NAME.
    env_prefix: str = ""
    # Variables the runtime's own process, on the host, would act on (an entry ending in '_' is
    # a prefix): refused in pods unless allow_user_shell.
    host_heeded: tuple[str, ...] = ()
    # Registry schemes it can convert into image_cache_dir (nothing: it cannot pull), and the
    # cache file's extension.
    pull_schemes: tuple[str, ...] = ()
    image_extension: str = ""
    # Whether it pulls a docker:// reference pinned to a digest (``name@sha256:…``): then a tag
    # whose pull policy is Always is looked up in its registry at each create.
    pulls_digests: bool = False
    # Whether it can run a registry reference itself (else: only a staged image).
    runs_registry_images: bool = False
    # Site options (runtime_options) that already give /tmp a place of the site's own: then the
    # plugin adds none.
    tmp_placed_by: frozenset[str] = frozenset()
    # Whether it runs an image's ENTRYPOINT and CMD itself when given no command.
    runs_image_command: bool = True
    # Whether it can bind a volume read-only (else the job relies on the files' permissions).
    read_only_binds: bool = True
    # Whether it takes slurm-job.vk.io/singularity-options and -mounts.
    takes_apptainer_options: bool = False
    # Whether it can unpack an image once on each node, by name (enroot_create_dir).
    unpacks_images: bool = False
    # Pre-submit check: bind targets are looked up in the image first (runtimes.image_paths_argv)
    # because the runtime can neither create a missing one nor bind through an absolute symlink.
    looks_up_bind_targets: bool = False

    def argv(self, binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
        """The command that runs the container (its environment comes from its env file)."""
        raise NotImplementedError

    def prepare_argv(self, c: ContainerPlan) -> tuple[str, ...]:
        """A command of the job's library that the job script runs once, on its first node, just
        before it starts the container (its restarts and exec probes reuse what the command
        made); () for none."""
        return ()

    def create_argv(self, binary: str, name: str, image: str) -> tuple[str, ...]:
        """The command that unpacks ``image`` on a node as ``name`` (``unpacks_images``)."""
        raise NotImplementedError

    def private_tmp(self, tmp: str) -> tuple[str, ...]:
        """Options that make ``tmp``, a directory of the job on the node, the container's /tmp."""
        return ()

    def private_tmp_flags(self, options: Sequence[str], name: str) -> tuple[str, ...]:
        """The container's own /tmp ($ILS_TMP/<name>, plan.CONTAINER_TMP), the same for its exec
        probes and hooks, as one container's /tmp is in Kubernetes: unless the site's
        ``options`` already place /tmp."""
        if self.tmp_placed_by & option_names(options):
            return ()
        return self.private_tmp(f"{CONTAINER_TMP}/{name}")

    def heeds(self, variable: str) -> bool:
        """Whether the runtime's own process, on the host, would act on this variable."""
        return any(
            variable == entry or (entry.endswith("_") and variable.startswith(entry))
            for entry in self.host_heeded
        )

    def pull_argv(self, binary: str, part: str, source: str, auth: bool) -> tuple[str, ...]:
        """The command that writes the image ``source`` into ``part`` (for a runtime with
        ``pull_schemes``)."""
        raise NotImplementedError

    def pull_credentials(
        self, pod_dir: str, name: str, registry: str, user: str, password: str
    ) -> tuple[list[str], list[FileSpec]]:
        """How a pull is given a registry's credentials: NAME=VALUE entries of its environment,
        and files of the pod directory they name (``name``: a directory of its own there)."""
        raise NotImplementedError
