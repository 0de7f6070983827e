"""What a create asks the cluster besides sbatch (submission.py), on a scripted transport: the
primary group of a job's user, the directory handed to that user, the images' own commands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from interlink_slurm import submission
from interlink_slurm.config import Settings, load_settings
from interlink_slurm.errors import PodRejected, SchedulerUnavailable, StorageError
from interlink_slurm.slurm.ssh import SSHUnavailable
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, LocalTransport
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.wire import RetrievedPodData
from tests import podgen, squashfs


class Scripted(LocalTransport):
    """Commands answered from a script; files read from a dict; removals recorded."""

    def __init__(self, answers: dict[str, CommandResult | Exception]) -> None:
        super().__init__()
        self.answers = answers
        self.files: dict[str, bytes] = {}
        self.removed: list[str] = []
        self.ran: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        self.ran.append(tuple(argv))
        answer = self.answers[argv[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def read_file(self, path: str, limit: int) -> bytes | None:
        return self.files.get(path)

    def remove_tree(self, path: str) -> None:
        self.removed.append(path)


def result(code: int, out: str = "", err: str = "") -> CommandResult:
    return CommandResult((), code, out, err)


def plan(owner: tuple[int, int | None]) -> JobPlan:
    return JobPlan("u", "ns", "p", "/data/ns/p-u", ("--uid=1234",), (), (), owner=owner)


def test_the_primary_group_of_the_jobs_user_is_looked_up_and_added() -> None:
    t = Scripted({"id": result(0, "4321\n")})
    got = submission.primary_group(t, plan((1234, None)))
    assert got.owner == (1234, 4321)
    assert got.directives[-1] == "--gid=4321"
    assert t.ran == [("id", "-g", "--", "1234")]


def test_a_user_with_no_account_is_a_rejection_and_no_answer_an_outage() -> None:
    with pytest.raises(PodRejected) as err:
        submission.primary_group(Scripted({"id": result(1, err="no such user")}), plan((7, None)))
    assert err.value.field == "spec.securityContext.runAsUser"
    assert "no such user" in str(err.value)
    down = Scripted({"id": CommandUnavailable("ssh: connection refused")})
    with pytest.raises(SchedulerUnavailable):
        submission.primary_group(down, plan((7, None)))


def test_the_directory_is_handed_over_or_removed_when_it_cannot_be() -> None:
    ok = Scripted({"chown": result(0)})
    submission.hand_over(ok, plan((1234, 4321)))
    assert ok.ran == [("chown", "-R", "--", "1234:4321", "/data/ns/p-u")]
    assert ok.removed == []
    refused = Scripted({"chown": result(1, err="Operation not permitted")})
    with pytest.raises(StorageError, match="Operation not permitted"):
        submission.hand_over(refused, plan((1234, None)))
    assert refused.removed == ["/data/ns/p-u"]
    # No chown where it runs: the directory cannot be handed over (507). The login node out of
    # reach: an outage (503), as at every other step of a create.
    missing = Scripted({"chown": CommandUnavailable("chown: not found")})
    with pytest.raises(StorageError, match="chown: not found"):
        submission.hand_over(missing, plan((1234, None)))
    assert missing.removed == ["/data/ns/p-u"]
    down = Scripted({"chown": SSHUnavailable("ssh: connection refused")})
    with pytest.raises(SchedulerUnavailable, match="connection refused"):
        submission.hand_over(down, plan((1234, None)))


def test_an_images_command_is_read_from_the_first_cluster_that_has_it(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_root=str(tmp_path),
        runtime="charliecloud",
        partition="cpu",
        image_roots=["/images"],
    )
    c = podgen.container("main", image="/images/tool")
    c.pop("command", None)
    data = RetrievedPodData.model_validate(podgen.retrieved(podgen.pod("img", [c])))
    t = Scripted({})
    meta = {"entrypoint": ["/bin/tool"], "cmd": ["--serve"]}
    t.files["/images/tool/ch/metadata.json"] = json.dumps(meta).encode()
    got = submission.image_commands(data, settings, {"default": t})
    assert got == {"/images/tool": (("/bin/tool",), ("--serve",))}
    # No metadata file: unsquashfs is asked (a SquashFS file by another name), and refuses.
    missing = Scripted({"unsquashfs": result(1, "", "not a SquashFS filesystem")})
    assert submission.image_commands(data, settings, {"default": missing}) == {}


def test_a_squashfs_images_command_is_read_with_unsquashfs(tmp_path: Path) -> None:
    # ch-convert's .sqfs: the metadata is inside the file, read where the images are (here a
    # real unsquashfs, as Debian's charliecloud package brings squashfs-tools).
    tree = tmp_path / "tool"
    (tree / "ch").mkdir(parents=True)
    meta = {"entrypoint": ["/bin/tool"], "cmd": ["--serve"]}
    (tree / "ch" / "metadata.json").write_text(json.dumps(meta, indent=2))
    images = tmp_path / "images"
    images.mkdir()
    packed = squashfs.pack(tree, images / "tool.sqfs")
    (images / "bare.sqfs").write_bytes(b"not a squashfs image")
    settings = load_settings(
        None,
        data_root=str(tmp_path / "pods"),
        runtime="charliecloud",
        partition="cpu",
        image_roots=[str(images)],
    )
    containers = [podgen.container(n, image=str(images / f"{n}.sqfs")) for n in ("tool", "bare")]
    for c in containers:
        c.pop("command", None)
    data = RetrievedPodData.model_validate(podgen.retrieved(podgen.pod("img", containers)))
    got = submission.image_commands(data, settings, {"default": LocalTransport()})
    assert got == {str(packed): (("/bin/tool",), ("--serve",))}


class Unsquashable(LocalTransport):
    """A cluster side whose files are read as over SFTP (a path under a file is simply not
    there) and whose unsquashfs answers as scripted."""

    def __init__(self, answer: CommandResult | Exception) -> None:
        super().__init__()
        self.answer = answer
        self.ran: list[tuple[str, ...]] = []

    def read_file(self, path: str, limit: int) -> bytes | None:
        try:
            return super().read_file(path, limit)
        except NotADirectoryError:
            return None

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        self.ran.append(tuple(argv))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def sqfs_settings(tmp_path: Path, images: Path) -> Settings:
    return load_settings(
        None,
        data_root=str(tmp_path / "pods"),
        runtime="charliecloud",
        partition="cpu",
        image_roots=[str(images)],
    )


def without_command(*images: str) -> RetrievedPodData:
    containers = [podgen.container(f"c{i}", image=image) for i, image in enumerate(images)]
    for c in containers:
        c.pop("command", None)
    return RetrievedPodData.model_validate(podgen.retrieved(podgen.pod("img", containers)))


def test_a_squashfs_image_not_named_sqfs_is_read_with_unsquashfs_too(tmp_path: Path) -> None:
    """Over SFTP a read under a file says only "no such file": an image file whatever its name
    is then asked of unsquashfs, as the job and the mount lookup find it by its content."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "dir" / "ch").mkdir(parents=True)  # a directory image with no metadata
    meta = json.dumps({"entrypoint": ["/bin/tool"], "cmd": ["--serve"]})
    (images / "tool.img").write_bytes(b"packed")
    t = Unsquashable(result(0, meta))
    data = without_command(str(images / "tool.img"))
    got = submission.image_commands(data, sqfs_settings(tmp_path, images), {"default": t})
    assert got == {str(images / "tool.img"): (("/bin/tool",), ("--serve",))}
    assert t.ran == [("unsquashfs", "-cat", str(images / "tool.img"), "ch/metadata.json")]
    # A directory image without metadata: unsquashfs refuses it, nothing is found.
    none = Unsquashable(result(1, "", "not a squashfs"))
    data = without_command(str(images / "dir"))
    assert submission.image_commands(data, sqfs_settings(tmp_path, images), {"default": none}) == {}


@pytest.mark.parametrize(
    "failure",
    [
        CommandUnavailable("unsquashfs is not installed or not on PATH"),
        CommandUnavailable("unsquashfs did not answer within 30 s"),
    ],
)
def test_an_image_whose_metadata_cannot_be_read_is_refused_not_an_error(
    tmp_path: Path, failure: Exception
) -> None:
    """No unsquashfs on the cluster side: the image's command is unknown, which the plan
    refuses naming the container's command (a 422), never a failed request."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "tool.sqfs").write_bytes(b"packed")
    t = Unsquashable(failure)
    settings = sqfs_settings(tmp_path, images)
    data = without_command(str(images / "tool.sqfs"))
    commands = submission.image_commands(data, settings, {"default": t})
    assert commands == {}
    with pytest.raises(PodRejected) as refused:
        build_plan(data, settings, str(tmp_path / "pods" / "p"), image_commands=commands)
    assert refused.value.field == "spec.containers[0].command"


def _planned(tmp_path: Path, runtime: str, mounted: bool) -> tuple[Settings, JobPlan]:
    settings = load_settings(
        None, data_root=str(tmp_path), runtime=runtime, partition="cpu", image_roots=["/images"]
    )
    mounts = [{"name": "scratch", "mountPath": "/scratch"}] if mounted else []
    c = podgen.container("main", "print(1)", image="/images/tool", volumeMounts=mounts)
    volumes = [{"name": "scratch", "emptyDir": {}}]
    data = RetrievedPodData.model_validate(
        podgen.retrieved(podgen.pod("binds", [c], volumes=volumes))
    )
    return settings, build_plan(data, settings, f"{tmp_path}/default/binds-u")


def test_only_binds_into_an_image_directory_are_looked_up_and_only_for_charliecloud(
    tmp_path: Path,
) -> None:
    settings, plan = _planned(tmp_path, "charliecloud", mounted=True)
    assert ("/images/tool", "/scratch") in submission.bind_targets(settings, plan)
    # Nothing to look up: the create runs in_images in no worker thread at all.
    settings, plan = _planned(tmp_path, "charliecloud", mounted=False)
    assert submission.bind_targets(settings, plan) == []
    settings, plan = _planned(tmp_path, "apptainer", mounted=True)
    assert submission.bind_targets(settings, plan) == []
