"""Apptainer, and Singularity (its older name, the same command line): ``exec``/``run`` a SIF
file or a registry reference; pulls docker://, oras:// and library:// images into SIF files."""

from __future__ import annotations

from collections.abc import Sequence

from interlink_slurm.translate.plan import CONTAINER_TMP, ContainerPlan, FileSpec
from interlink_slurm.translate.runtimes.base import Runtime, option_names

_CONTAINS = frozenset({"--contain", "-c", "--containall", "-C"})
_WORKDIR = frozenset({"--workdir", "-W"})


class Apptainer(Runtime):
    """Apptainer: runs registry images itself, pulls them into the image cache as SIF files,
    and takes slurm-job.vk.io/singularity-options and -mounts."""

    name = "apptainer"
    binary = "apptainer"
    default_flags = ("--containall",)
    env_prefix = "APPTAINERENV_"
    pull_schemes = ("docker://", "oras://", "library://")
    image_extension = "sif"
    pulls_digests = True
    runs_registry_images = True
    takes_apptainer_options = True
    # The variables through which a pull is given a registry's credentials: <prefix>USERNAME...
    credentials_prefix = "APPTAINER_DOCKER_"

    def argv(self, binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
        """``apptainer exec`` with the command, or ``run`` for the image's own."""
        argv = [binary, "exec" if c.command else "run", *self.private_tmp_flags(options, c.name)]
        argv += options
        if c.gpus:
            argv.append("--rocm" if c.gpu_vendor == "amd" else "--nv")
        for b in c.binds:
            argv += ["--bind", f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}"]
        if c.working_dir:
            argv += ["--pwd", c.working_dir]
        return [*argv, c.image, *c.command, *c.args]

    def private_tmp_flags(self, options: Sequence[str], name: str) -> tuple[str, ...]:
        """/tmp is --workdir's, with --contain (--containall, the default options, implies it;
        either also gives an empty $HOME and a minimal /dev, GPUs still come with --nv)."""
        said = option_names(options)
        contain = () if _CONTAINS & said else ("--contain",)
        workdir = () if _WORKDIR & said else ("--workdir", f"{CONTAINER_TMP}/{name}")
        return (*contain, *workdir)

    def pull_argv(self, binary: str, part: str, source: str, auth: bool) -> tuple[str, ...]:
        """``apptainer pull`` of ``source`` into ``part``."""
        return (binary, "pull", "--force", part, source)

    def pull_credentials(
        self, pod_dir: str, name: str, registry: str, user: str, password: str
    ) -> tuple[list[str], list[FileSpec]]:
        """The registry's user and password as <credentials_prefix>USERNAME and PASSWORD
        variables of the pull."""
        p = self.credentials_prefix
        return [f"{p}USERNAME={user}", f"{p}PASSWORD={password}"], []


class Singularity(Apptainer):
    """SingularityCE: Apptainer's command line under its older names."""

    name = "singularity"
    binary = "singularity"
    env_prefix = "SINGULARITYENV_"
    credentials_prefix = "SINGULARITY_DOCKER_"
