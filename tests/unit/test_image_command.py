"""An image's own ENTRYPOINT and CMD, read from ch-image's metadata (Charliecloud cannot run
them by itself), and a container without a command running them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interlink_slurm.config import load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.images import image_command
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg

IMAGE = "/images/app"
POD_DIR = "/data/ils/default/p-uid"


def metadata(*created_by: str, **keys: Any) -> bytes:
    history = [{"created": "2024-01-01T00:00:00Z", "created_by": c} for c in created_by]
    return json.dumps({"arch": "amd64", "env": {}, "history": history, **keys}).encode()


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # The classic builder's history: Go's quoting, no commas.
        (
            ['/bin/sh -c #(nop)  CMD ["python3"]'],
            ((), ("python3",)),
        ),
        (
            [
                '/bin/sh -c #(nop)  CMD ["bash"]',
                '/bin/sh -c #(nop)  ENTRYPOINT ["docker-entrypoint.sh"]',
                '/bin/sh -c #(nop)  CMD ["postgres" "-c" "a b"]',
            ],
            (("docker-entrypoint.sh",), ("postgres", "-c", "a b")),
        ),
        # BuildKit's: JSON arrays; the shell form as sh -c.
        (
            ['CMD ["python3","-m","http.server"]', "RUN /bin/sh -c echo CMD no # buildkit"],
            ((), ("python3", "-m", "http.server")),
        ),
        (['CMD ["/bin/sh","-c","echo $HOME"]'], ((), ("/bin/sh", "-c", "echo $HOME"))),
        # A later ENTRYPOINT resets an inherited CMD, as in Docker.
        (
            ['CMD ["bash"]', 'ENTRYPOINT ["/entry"]'],
            (("/entry",), ()),
        ),
    ],
)
def test_entrypoint_and_cmd_come_from_the_image_history(
    history: list[str], expected: tuple[tuple[str, ...], tuple[str, ...]]
) -> None:
    assert image_command(metadata(*history)) == expected


def test_explicit_keys_win_and_an_image_without_either_has_none() -> None:
    assert image_command(metadata('CMD ["a"]', entrypoint=["/e"], cmd=["x"])) == (("/e",), ("x",))
    assert image_command(metadata("/bin/sh -c apt-get install -y x")) is None
    assert image_command(b"not json") is None
    assert image_command(b"[]") is None


def plan_with(container: dict[str, Any], commands: dict[str, Any] | None) -> Any:
    s = load_settings(None, data_root="/data/ils", runtime="charliecloud", images={"app": IMAGE})
    the_pod = pg.pod("p", [container])
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod))
    return build_plan(data, s, POD_DIR, image_commands=commands)


def test_a_container_without_command_runs_the_image_s_entrypoint_and_cmd() -> None:
    commands = {IMAGE: (("/entry", "--x"), ("serve", "--port=80"))}
    plan = plan_with(pg.container("main", image="app"), commands)
    assert plan.runtime_argv["main"][-4:] == ("/entry", "--x", "serve", "--port=80")
    # The pod's args replace CMD, not ENTRYPOINT.
    plan = plan_with(pg.container("main", image="app", args=["check"]), commands)
    assert plan.runtime_argv["main"][-3:] == ("/entry", "--x", "check")
    # A command replaces both.
    plan = plan_with(pg.container("main", image="app", command=["true"]), commands)
    assert plan.runtime_argv["main"][-2:] == ("--", "true")


def test_an_image_without_a_command_of_its_own_is_refused_saying_so() -> None:
    with pytest.raises(PodRejected) as info:
        plan_with(pg.container("main", image="app"), {})
    assert info.value.field == "spec.containers[0].command"
    assert "ch/metadata.json" in info.value.reason and IMAGE in info.value.reason
