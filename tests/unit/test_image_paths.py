"""Mount targets looked up inside a Charliecloud image: the resolver runs as bash, as on the
cluster side, over a small image made in the test: a directory, or the same packed as a SquashFS
file (ch-convert's format, looked into with unsquashfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.translate.runtimes import image_paths_argv, parse_image_paths
from tests import squashfs

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def look_up(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    result = LocalTransport().run(image_paths_argv(pairs), timeout=10)
    assert result.returncode == 0, result.stderr
    return parse_image_paths(pairs, result.stdout)


@pytest.fixture(params=["directory", "squashfs"])
def packed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "squashfs")


def image(tmp_path: Path, packed: bool = False) -> Path:
    root = tmp_path / "img"
    (root / "run/secrets/kubernetes.io/serviceaccount").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("")
    # As debootstrap makes it: an absolute link, meant inside the image, not the host's /run.
    os.symlink("/run", root / "var/run")
    os.symlink("usr/lib", root / "lib")
    os.symlink("../../etc", root / "usr/lib/etc-up")
    os.symlink("loop", root / "loop")
    if not packed:
        return root
    return squashfs.pack(root, tmp_path / "img.sqfs")


def test_absolute_symlinks_are_followed_inside_the_image_not_on_the_host(
    tmp_path: Path, packed: bool
) -> None:
    img = str(image(tmp_path, packed))
    found = look_up([(img, SA)])
    assert found == {(img, SA): "/run/secrets/kubernetes.io/serviceaccount"}


def test_relative_symlinks_and_dot_dot_stay_inside_the_image(tmp_path: Path, packed: bool) -> None:
    img = str(image(tmp_path, packed))
    pairs = [(img, "/lib/etc-up/hosts"), (img, "/mnt/../etc/./hosts"), (img, "/etc/hosts")]
    assert look_up(pairs) == {
        (img, "/lib/etc-up/hosts"): "/etc/hosts",
        (img, "/mnt/../etc/./hosts"): "/etc/hosts",
        (img, "/etc/hosts"): "/etc/hosts",
    }


def test_a_target_the_image_lacks_is_none(tmp_path: Path, packed: bool) -> None:
    img = str(image(tmp_path, packed))
    # The host has /run/secrets... maybe, /tmp surely: the image's view is what counts.
    (tmp_path / "host-only").mkdir()
    pairs = [(img, "/var/run/absent"), (img, "/loop/x"), (img, str(tmp_path / "host-only"))]
    assert look_up(pairs) == {p: None for p in pairs}


def test_an_image_that_cannot_be_looked_into_gets_no_answer(tmp_path: Path) -> None:
    # Neither a directory nor a SquashFS file that unsquashfs reads (its magic, nothing else).
    sqfs = tmp_path / "image.sqfs"
    sqfs.write_bytes(b"hsqs")
    img = str(image(tmp_path))
    found = look_up([(str(sqfs), SA), (img, "/etc")])
    assert found == {(img, "/etc"): "/etc"}
