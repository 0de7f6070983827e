"""restartPolicy, readiness/liveness probes and postStart/preStop hooks → ils_container words."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from interlink_slurm.translate.script import LIBRARY, render_script
from tests import podgen as pg
from tests.unit.test_translate import container, main, plan_of, pod_of, rejection
from tests.unit.test_translate import settings as make_settings

HTTP = {"httpGet": {"path": "/healthz", "port": 8080}}


def life(c: dict[str, Any], policy: str = "Never", **kw: Any) -> Any:
    plan = plan_of(pod_of(c, restartPolicy=policy, **kw))
    return container(plan, c["name"]).lifecycle


@pytest.mark.parametrize("policy", ["Never", "OnFailure", "Always"])
def test_restart_policy_applies_to_the_containers(policy: str) -> None:
    assert life(main(), policy).restart == policy


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("Never", "Never"), ("OnFailure", "OnFailure"), ("Always", "OnFailure")],
)
def test_init_containers_are_retried_on_failure_unless_the_pod_never_restarts(
    policy: str, expected: str
) -> None:
    plan = plan_of(pod_of(main(), init=[pg.container("setup", "pass")], restartPolicy=policy))
    assert container(plan, "setup").lifecycle.restart == expected


def test_unknown_restart_policy_is_refused() -> None:
    assert rejection(pod_of(main(), restartPolicy="Sometimes")).field == "spec.restartPolicy"


def test_restart_policy_is_an_ils_container_option_with_backoff_settings() -> None:
    plan = plan_of(
        pod_of(main(), restartPolicy="OnFailure"),
        make_settings(restart_backoff_seconds=5, restart_backoff_max_seconds=60),
    )
    script = render_script(plan)
    assert "ils_container main \\\n    -P 1 OnFailure \\\n    apptainer exec" in script
    assert "ILS_BACKOFF=5 ILS_BACKOFF_MAX=60 ILS_GRACE=30 ILS_HOOK_TIMEOUT=30" in script
    assert "ils_probe" not in script  # no probes


def test_never_adds_nothing_to_the_container_line() -> None:
    script = render_script(plan_of(pod_of(main())))
    assert "ils_container main apptainer exec" in script
    assert "ILS_BACKOFF=" not in script


@pytest.mark.parametrize(("policy", "words"), [(None, None), ("File", None), ("", None)])
def test_the_file_policy_adds_nothing_to_the_container_line(
    policy: str | None, words: None
) -> None:
    c = main() if policy is None else main() | {"terminationMessagePolicy": policy}
    assert life(c).messages == "File"
    assert "-M " not in render_script(plan_of(pod_of(c)))


def test_fallback_to_logs_is_an_ils_container_option() -> None:
    c = main() | {"terminationMessagePolicy": "FallbackToLogsOnError"}
    script = render_script(plan_of(pod_of(c)))
    assert "ils_container main \\\n    -M 1 FallbackToLogsOnError \\\n    apptainer exec" in script


@pytest.mark.parametrize("policy", ["Logs", 3, ["File"], "file"])
def test_an_unknown_termination_message_policy_is_refused_naming_it(policy: Any) -> None:
    setup = pg.container("setup", "pass") | {"terminationMessagePolicy": policy}
    refused = rejection(pod_of(main(), init=[setup]))
    assert refused.field == "spec.initContainers[0].terminationMessagePolicy"
    assert "must be one of File, FallbackToLogsOnError" in refused.reason


def test_a_native_sidecar_is_refused_saying_what_to_do_instead() -> None:
    proxy = pg.container("proxy", "pass") | {"restartPolicy": "Always"}
    refused = rejection(pod_of(main(), init=[pg.container("setup", "pass"), proxy]))
    assert refused.field == "spec.initContainers[1].restartPolicy"
    assert "makes this init container a sidecar" in refused.reason
    assert "Run it as one of the pod's containers" in refused.reason


@pytest.mark.parametrize("policy", ["Never", "OnFailure", "Always"])
def test_a_containers_own_restart_policy_is_refused(policy: str) -> None:
    refused = rejection(pod_of(main() | {"restartPolicy": policy}))
    assert refused.field == "spec.containers[0].restartPolicy"
    assert "the pod's restartPolicy applies to each container" in refused.reason


def test_http_readiness_probe_with_defaults() -> None:
    readiness = life(main(readinessProbe=HTTP)).readiness
    assert readiness == (
        "readiness",
        "0",
        "10",
        "1",
        "1",
        "3",
        "http",
        "http://127.0.0.1:8080/healthz",
    )


def test_named_port_https_and_host() -> None:
    c = main(
        ports=[{"name": "web", "containerPort": 8443}],
        livenessProbe={
            "httpGet": {"port": "web", "scheme": "HTTPS", "host": "10.0.0.5"},
            "periodSeconds": 5,
            "failureThreshold": 2,
            "initialDelaySeconds": 7,
        },
    )
    assert life(c).liveness == (
        "liveness",
        "7",
        "5",
        "1",
        "1",
        "2",
        "http",
        "https://10.0.0.5:8443/",
    )


def test_tcp_probe() -> None:
    c = main(readinessProbe={"tcpSocket": {"port": 6379}, "timeoutSeconds": 2})
    assert life(c).readiness[-3:] == ("tcp", "127.0.0.1", "6379")
    assert life(c).readiness[3] == "2"


def test_exec_probe_runs_in_the_containers_image_with_its_binds() -> None:
    c = main(
        readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}},
        volumeMounts=[{"name": "work", "mountPath": "/work"}],
    )
    plan = plan_of(pod_of(c, volumes=[{"name": "work", "emptyDir": {}}]))
    check = container(plan).lifecycle.readiness[6:]
    assert check[:3] == ("exec", "apptainer", "exec")
    assert check[-3:] == ("docker://debian-python", "cat", "/tmp/ready")
    assert "--bind" in check


def test_hooks_exec_http_and_sleep() -> None:
    c = main(
        lifecycle={
            "postStart": {"exec": {"command": ["sh", "-c", "echo hi > /tmp/x"]}},
            "preStop": {"sleep": {"seconds": 5}},
        }
    )
    got = life(c)
    assert got.post_start[0] == "exec" and got.post_start[-3:] == ("sh", "-c", "echo hi > /tmp/x")
    assert got.pre_stop == ("sleep", "5")
    got = life(main(lifecycle={"preStop": HTTP}))
    assert got.pre_stop == ("http", "http://127.0.0.1:8080/healthz")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"readinessProbe": {"grpc": {"port": 9000}}}, "spec.containers[0].readinessProbe"),
        (
            {"readinessProbe": {"httpGet": {"port": "nope"}}},
            "spec.containers[0].readinessProbe.httpGet.port",
        ),
        (
            {"livenessProbe": {"tcpSocket": {"port": 70000}}},
            "spec.containers[0].livenessProbe.tcpSocket.port",
        ),
        (
            {"livenessProbe": {"exec": {"command": []}}},
            "spec.containers[0].livenessProbe.exec.command",
        ),
        (
            {"readinessProbe": {"httpGet": {"port": 80, "path": "x y"}}},
            "spec.containers[0].readinessProbe.httpGet.path",
        ),
        (
            {"readinessProbe": {"httpGet": {"port": 80, "host": "a;b"}}},
            "spec.containers[0].readinessProbe.httpGet.host",
        ),
        (
            {"readinessProbe": {"periodSeconds": -1, **HTTP}},
            "spec.containers[0].readinessProbe.periodSeconds",
        ),
        (
            {"lifecycle": {"postStart": {"grpc": {"port": 1}}}},
            "spec.containers[0].lifecycle.postStart",
        ),
    ],
)
def test_probe_or_hook_the_job_cannot_run_is_refused_naming_it(
    fields: dict[str, Any], field: str
) -> None:
    err = rejection(pod_of(main(**fields)))
    assert err.field.startswith(field), err


def test_init_container_probe_is_refused() -> None:
    p = pod_of(main(), init=[pg.container("setup", "pass", readinessProbe=HTTP)])
    assert rejection(p).field == "spec.initContainers[0].readinessProbe"


def test_probes_and_hooks_are_options_of_the_container_line_and_valid_bash() -> None:
    c = main(
        readinessProbe=HTTP,
        livenessProbe={"tcpSocket": {"port": 8080}},
        lifecycle={
            "postStart": {"exec": {"command": ["true"]}},
            "preStop": {"sleep": {"seconds": 1}},
        },
    )
    script = render_script(
        plan_of(pod_of(c, restartPolicy="Always", terminationGracePeriodSeconds=12))
    )
    lines = script.splitlines()
    start = lines.index("ils_container main \\")
    assert lines[start + 1 : start + 4] == [
        "    -P 1 Always \\",
        "    -R 8 readiness 0 10 1 1 3 http http://127.0.0.1:8080/healthz \\",
        "    -V 9 liveness 0 10 1 1 3 tcp 127.0.0.1 8080 \\",
    ]
    assert lines[start + 4] == (
        '    -S 8 exec apptainer exec --workdir "$ILS_TMP"/main --containall'
        " docker://debian-python true \\"
    )
    assert lines[start + 5] == "    -T 2 sleep 1 \\"
    assert "ILS_GRACE=12" in script
    # Their functions are the library's, sourced by every job script.
    assert "ils_probe()" in LIBRARY and "ils_hook()" in LIBRARY
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert subprocess.run(["bash", "-n"], input=LIBRARY, text=True).returncode == 0


def test_startup_probe_is_an_option_before_the_others() -> None:
    c = main(
        startupProbe={"tcpSocket": {"port": 8080}, "failureThreshold": 30},
        readinessProbe=HTTP,
    )
    assert life(c).startup == ("startup", "0", "10", "1", "1", "30", "tcp", "127.0.0.1", "8080")
    lines = render_script(plan_of(pod_of(c))).splitlines()
    start = lines.index("ils_container main \\")
    assert lines[start + 1].startswith("    -U 9 startup ")
    assert lines[start + 2].startswith("    -R 8 readiness ")


def test_http_probe_headers_are_words_after_the_url() -> None:
    probe = {
        "httpGet": {
            "port": 80,
            "httpHeaders": [
                {"name": "Authorization", "value": "Bearer x y"},
                {"name": "X-A", "value": ""},
            ],
        }
    }
    assert life(main(readinessProbe=probe)).readiness[-3:] == (
        "http://127.0.0.1:80/",
        "Authorization: Bearer x y",
        "X-A: ",
    )


@pytest.mark.parametrize(
    "header", [{"name": "Bad Name", "value": "v"}, {"name": "X", "value": "a\nb"}]
)
def test_http_probe_header_that_cannot_be_sent_is_refused(header: dict[str, str]) -> None:
    probe = {"httpGet": {"port": 80, "httpHeaders": [header]}}
    err = rejection(pod_of(main(readinessProbe=probe)))
    assert err.field == "spec.containers[0].readinessProbe.httpGet.httpHeaders[0]"
