"""Enroot: ``enroot start`` a squashfs file (or, with enroot_create_dir, an image unpacked on the
node); imports docker:// images into squashfs files. It is a bash script that takes the
container's environment from its own, so a pod's variables reach it on the host too."""

from __future__ import annotations

from collections.abc import Sequence

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.images import enroot_credentials, enroot_ref
from interlink_slurm.translate.plan import ContainerPlan, FileSpec
from interlink_slurm.translate.runtimes.base import LOADER_HEEDED, Runtime


def _fstab(path: str) -> str:
    """A path as an fstab field: whitespace and backslashes octal-escaped."""
    return "".join(f"\\{ord(ch):03o}" if ch in " \t\n\\" else ch for ch in path)


class Enroot(Runtime):
    """Enroot: imports registry images into the cache as squashfs files, or unpacks them once
    on each node (enroot_create_dir)."""

    name = "enroot"
    binary = "enroot"
    # Through these the host side would run code of the pod's choosing: the dynamic loader's,
    # bash's and its configuration's (enroot sources the user's configuration and hooks).
    host_heeded = (
        *LOADER_HEEDED,
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
    )
    pull_schemes = ("docker://",)
    image_extension = "sqsh"
    unpacks_images = True

    def private_tmp(self, tmp: str) -> tuple[str, ...]:
        """A bind of the job's directory over /tmp."""
        # A bind in its fstab syntax, /tmp created if the image lacks it.
        return ("--mount", f"{tmp} /tmp none x-create=dir,rbind")

    def argv(self, binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
        """``enroot start`` with the binds, the names of the variables to pass, and the command
        (or the image's own)."""
        argv = [binary, "start", *self.private_tmp_flags(options, c.name), *options]
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

    def create_argv(self, binary: str, name: str, image: str) -> tuple[str, ...]:
        """``enroot create`` of ``image`` as ``name`` on a node."""
        return (binary, "create", "--name", name, image)

    def pull_argv(self, binary: str, part: str, source: str, auth: bool) -> tuple[str, ...]:
        """``enroot import`` of ``source`` into ``part``."""
        return (binary, "import", "--output", part, enroot_ref(source, hub_registry=auth))

    def pull_credentials(
        self, pod_dir: str, name: str, registry: str, user: str, password: str
    ) -> tuple[list[str], list[FileSpec]]:
        """The registry's user and password as an enroot credentials file of the pod
        directory (ENROOT_CONFIG_PATH)."""
        # enroot reads credentials from $ENROOT_CONFIG_PATH/.credentials (netrc) only.
        netrc = enroot_credentials(registry, user, password)
        return (
            [f"ENROOT_CONFIG_PATH={pod_dir.rstrip('/')}/{name}"],
            [FileSpec(f"{name}/.credentials", netrc, 0o600)],
        )
