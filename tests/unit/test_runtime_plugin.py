"""A runtime is one module implementing Runtime: this file adds one (a Podman-HPC-like
"podlet") and renders a pod with it, touching nothing else of the plugin."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate import runtimes
from interlink_slurm.translate.plan import CONTAINER_TMP, ContainerPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.runtimes.base import Runtime
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg
from tests.unit.golden import check_golden
from tests.unit.test_translate import GOLDEN_PODS


class Podlet(Runtime):
    name = "podlet"
    binary = "podlet-run"
    default_flags = ("--isolated",)
    env_prefix = "PODLETENV_"
    host_heeded = ("PODLET_",)
    runs_registry_images = True

    def private_tmp(self, tmp: str) -> tuple[str, ...]:
        return (f"--tmp-dir={tmp}",)

    def argv(self, binary: str, options: Sequence[str], c: ContainerPlan) -> list[str]:
        argv = [binary, *self.private_tmp_flags(options, c.name), *options]
        argv += [f"--volume={b.source}:{b.target}{':ro' if b.read_only else ''}" for b in c.binds]
        return [*argv, c.image, *c.command, *c.args]


@pytest.fixture
def podlet() -> Iterator[Runtime]:
    rt = Podlet()
    runtimes.register(rt)
    yield rt
    del runtimes.RUNTIMES[rt.name]


def plan_of(the_pod: dict[str, object]) -> RetrievedPodData:
    return RetrievedPodData.model_validate(pg.retrieved(the_pod))


def test_a_pod_renders_with_a_runtime_added_in_one_file(podlet: Runtime) -> None:
    s = load_settings(None, data_root="/data/ils", runtime="podlet", partition="cpu")
    assert s.runtime_binary == "podlet-run" and s.runtime_flags == ["--isolated"]
    the_pod, _ = GOLDEN_PODS["simple"]()
    the_pod["spec"]["containers"][0]["env"] = [{"name": "GREETING", "value": "hi"}]
    plan = build_plan(plan_of(the_pod), s, "/data/ils/pods/x")
    assert plan.runtime_argv["main"][:3] == (
        "podlet-run",
        f"--tmp-dir={CONTAINER_TMP}/main",
        "--isolated",
    )
    env = {f.path: f.content for f in plan.files}["containers/main.env"]
    assert env == b"PODLETENV_HOSTNAME=hello\0PODLETENV_GREETING=hi\0"
    check_golden("simple.podlet.sh", render_script(plan))


def test_the_added_runtime_is_asked_about_host_heeded_variables(podlet: Runtime) -> None:
    s = load_settings(None, data_root="/data/ils", runtime="podlet", allow_user_shell=False)
    the_pod = pg.pod("p", [pg.container("main", env=[{"name": "PODLET_HOOK", "value": "x"}])])
    with pytest.raises(PodRejected, match="PODLET_HOOK"):
        build_plan(plan_of(the_pod), s, "/data/ils/pods/x")


def test_an_unknown_runtime_is_refused_by_the_configuration() -> None:
    with pytest.raises(ConfigError, match="runtime"):
        load_settings(None, data_root="/data/ils", runtime="podlet")


def test_only_charliecloud_has_its_bind_targets_looked_up_in_the_image() -> None:
    # The service asks Runtime.looks_up_bind_targets (not the runtime's name) before submitting.
    looked_up = [name for name, rt in runtimes.RUNTIMES.items() if rt.looks_up_bind_targets]
    assert looked_up == ["charliecloud"]
    assert not Podlet().looks_up_bind_targets
