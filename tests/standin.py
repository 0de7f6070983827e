"""A stand-in for Apptainer, which cannot be installed here (no Debian package).

It does what the plugin relies on: ``pull --force OUT SOURCE`` notes SOURCE in ``pulls.log``
beside OUT, then writes OUT after ``$STANDIN_PULL_SECONDS`` (2 s by default), or fails as a
registry would for a reference containing "missing"; ``exec``/``run`` checks that its SIF file
is there, prints what it holds and runs the command on the node itself.
"""

APPTAINER = r"""#!/bin/bash
# A stand-in for apptainer: pull, exec and run, as the plugin uses them (see tests/standin.py).
set -o nounset
case $1 in
  pull)
    out=$3 src=$4
    echo "$src" >> "${out%/*}/pulls.log"
    case $src in
      *missing*) echo "FATAL: While making image from oci registry: manifest unknown: $src" >&2
                 exit 255 ;;
    esac
    sleep "${STANDIN_PULL_SECONDS:-2}"
    printf 'SIF of %s\n' "$src" > "$out" ;;
  exec|run)
    shift
    while [ $# -gt 0 ]; do
      case $1 in
        *.sif) image=$1; shift; break ;;
        --bind|--pwd|-B) shift 2 ;;
        *) shift ;;
      esac
    done
    [ -s "${image:-}" ] || { echo "stand-in: no image ${image:-}" >&2; exit 1; }
    echo "image: $(cat "$image")"
    exec "$@" ;;
  *) echo "stand-in: $1 is not supported" >&2; exit 2 ;;
esac
"""
