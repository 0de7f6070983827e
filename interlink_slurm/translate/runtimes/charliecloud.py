"""Charliecloud (0.31): ``ch-run`` an image directory. It pulls nothing, runs no image command of
its own (the plugin reads ENTRYPOINT and CMD from ch-image's metadata), binds read-write only,
and cannot create a missing bind target: those are looked up in the image before the job is
submitted."""

from __future__ import annotations

from collections.abc import Sequence

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.images import CH_METADATA
from interlink_slurm.translate.plan import IMAGE_CWD, ContainerPlan
from interlink_slurm.translate.runtimes.base import LOADER_HEEDED, Runtime


class Charliecloud(Runtime):
    """Charliecloud (ch-run): only staged image directories; it neither runs an image's
    command nor binds read-only, and its bind targets must exist in the image."""

    name = "charliecloud"
    binary = "ch-run"
    host_heeded = (*LOADER_HEEDED, "CH_")
    tmp_placed_by = frozenset({"--private-tmp", "-t"})
    runs_image_command = False
    read_only_binds = False
    looks_up_bind_targets = True

    def private_tmp(self, tmp: str) -> tuple[str, ...]:
        """A bind of the job's directory over /tmp."""
        return ("-b", f"{tmp}:/tmp")

    def argv(self, binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
        """``ch-run`` with the binds and the command; PodRejected when the container has none
        (ch-run cannot run an image's own)."""
        command = [*c.command, *c.args]
        if not command:
            raise PodRejected(
                f"container {c.name!r} command",
                f"image {c.image} has no command of its own that Charliecloud can run (no "
                f"ENTRYPOINT or CMD in its {CH_METADATA}, as ch-image writes it): set command "
                "or args",
            )
        # The image's ENV and WORKDIR, as ils_ch_image found them (prepare_argv): first, so that
        # the site's options may override them. The file is relative to the pod's directory,
        # where every task of a launcher starts too.
        argv = [binary, f"--set-env=containers/{c.name}.image-env"]
        argv += ["-c", c.working_dir or IMAGE_CWD, *self.private_tmp_flags(options, c.name)]
        argv += options
        for b in c.binds:
            argv += ["-b", f"{b.source}:{b.target}"]
        return [*argv, c.image, "--", *command]

    def prepare_argv(self, c: ContainerPlan) -> tuple[str, ...]:
        """ch-run applies neither the image's ENV nor its WORKDIR: ils_ch_image reads them."""
        return ("ils_ch_image", c.name, c.image)


# Charliecloud (0.31) refuses a bind whose destination crosses an absolute symlink of the image
# ("symlink not relative") and cannot create a missing one in a read-only image. So each target
# is looked up in the image beforehand, as the container will see it: every symlink followed
# relative to the image's root, never the host's. A SquashFS image (ch-convert's .sqfs, which
# ch-run mounts itself) is looked into with unsquashfs -lls, one entry at a time, where the
# cluster side has it. Run as one command on the cluster side:
#   bash -c RESOLVE_IMAGE_PATHS ils-resolve IMAGE TARGET [IMAGE TARGET]...
# prints for each pair "STATUS PATH" and a NUL: 1 the path exists in the image, 0 it does not,
# ? the image cannot be looked into (neither a directory nor a SquashFS file unsquashfs reads).
RESOLVE_IMAGE_PATHS = r"""
# What each image is (d a directory, s a SquashFS file, ? neither), and each of its entries
# looked at: asked once per run, however many targets share them (an unsquashfs each).
declare -A IMAGE=() SEEN=()
# entry ROOT PATH: KIND (d, l, -... of ls; empty when there is none) and, for a link, LINK.
entry() {
  local key="$1"$'\n'"$2" mode name want
  if [ -n "${SEEN[$key]+set}" ]; then
    KIND=${SEEN[$key]%%/*} LINK=${SEEN[$key]#*/}
    return 0
  fi
  KIND="" LINK=""
  if [ "${IMAGE[$1]}" = d ]; then
    if [ -L "$1$2" ]; then KIND=l; LINK=$(readlink -- "$1$2") || return 1
    elif [ -e "$1$2" ]; then KIND=e
    fi
  else
    want="squashfs-root${2%/}"
    while read -r mode _ _ _ _ name; do
      if [ "$name" = "$want" ]; then KIND=${mode:0:1}
      elif [ "${name#"$want -> "}" != "$name" ] && [ "${mode:0:1}" = l ]; then
        KIND=l LINK=${name#"$want -> "}
      fi
    done < <(unsquashfs -no-wildcards -lls "$1" "${2#/}" 2>/dev/null)
  fi
  SEEN[$key]="$KIND/$LINK"
}
# resolve ROOT PATH: RESOLVED, PATH as the image sees it (every link followed inside it).
resolve() {
  local root=$1 rest=$2 cur="" part hops=0
  RESOLVED=""
  while [ -n "$rest" ]; do
    part=${rest%%/*}
    if [ "$part" = "$rest" ]; then rest=""; else rest=${rest#*/}; fi
    case $part in
      ''|.) continue ;;
      ..) cur=${cur%/*}; continue ;;
    esac
    entry "$root" "$cur/$part" || return 1
    if [ "$KIND" = l ]; then
      hops=$(( hops + 1 ))
      [ "$hops" -le 40 ] || return 1
      case $LINK in /*) cur="" ;; esac
      rest="$LINK/$rest"
    else
      cur="$cur/$part"
    fi
  done
  RESOLVED=${cur:-/}
}
while [ "$#" -ge 2 ]; do
  if [ -z "${IMAGE[$1]+set}" ]; then
    if [ -d "$1" ]; then IMAGE[$1]=d
    elif [ -f "$1" ] && unsquashfs -s "$1" > /dev/null 2>&1; then IMAGE[$1]=s
    else IMAGE[$1]="?"
    fi
  fi
  if [ "${IMAGE[$1]}" = "?" ]; then
    printf '? %s\0' "$2"
  elif resolve "$1" "$2" && entry "$1" "$RESOLVED" && [ -n "$KIND" ]; then
    printf '1 %s\0' "$RESOLVED"
  else
    printf '0 %s\0' "${RESOLVED:-$2}"
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
