"""restartPolicy, probes and lifecycle hooks of a container → the words the job script's
``ils_container`` is given (see script.py). Pure.

A check is one of:
    exec RUNTIME ARGS...   the probe's command in a new instance of the container's image, with
                           its binds and environment (the runtime's own ``exec``)
    http URL [HEADER...]   an HTTP GET from the node (python3, else curl) with the probe's
                           headers ("Name: value"): 2xx/3xx is success
    tcp HOST PORT          a TCP connection from the node (bash's /dev/tcp)
    sleep SECONDS          (hooks only) wait
Containers share the node's network with every runtime supported here, so ``localhost`` is the
container's own address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import Lifecycle
from interlink_slurm.wire import Container

RESTART_POLICIES = ("Never", "OnFailure", "Always")
MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
# Kubernetes' probe defaults.
PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
HOOK_TIMEOUT_SECONDS = 30
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token


def restart_policy(value: str) -> str:
    """The pod's restartPolicy, if it is one Kubernetes knows; else PodRejected."""
    if value not in RESTART_POLICIES:
        raise PodRejected(
            "spec.restartPolicy", f"{value!r} must be one of {', '.join(RESTART_POLICIES)}"
        )
    return value


def container_restart(policy: str, is_init: bool) -> str:
    """Init containers are retried on failure unless the pod never restarts (as Kubernetes)."""
    if is_init:
        return "Never" if policy == "Never" else "OnFailure"
    return policy


def _port(value: Any, c: Container, where: str) -> str:
    if isinstance(value, int) and 0 < value < 65536:
        return str(value)
    if isinstance(value, str):
        if value.isdigit() and 0 < int(value) < 65536:
            return value
        for p in c.ports:
            if p.name == value:
                return str(p.container_port)
        raise PodRejected(f"{where}.port", f"no port named {value!r} in the container's ports")
    raise PodRejected(f"{where}.port", f"{value!r} is not a port")


def _host(value: Any, where: str) -> str:
    host = str(value or "127.0.0.1")
    if not all(ch.isalnum() or ch in ".-:" for ch in host):
        raise PodRejected(f"{where}.host", f"{host!r} is not a host name or address")
    return host


ExecCheck = Callable[[Sequence[str]], Sequence[str]]  # a command → the runtime argv running it


def _check(
    handler: Mapping[str, Any], c: Container, where: str, exec_argv: ExecCheck, hook: bool
) -> tuple[str, ...]:
    if "exec" in handler:
        command = (handler["exec"] or {}).get("command") or []
        if not command or not all(isinstance(a, str) and "\x00" not in a for a in command):
            raise PodRejected(f"{where}.exec.command", "must be a non-empty list of strings")
        return ("exec", *exec_argv(command))
    if "httpGet" in handler:
        h = handler["httpGet"] or {}
        hw = f"{where}.httpGet"
        scheme = str(h.get("scheme") or "HTTP").lower()
        if scheme not in ("http", "https"):
            raise PodRejected(f"{hw}.scheme", f"{scheme!r} must be HTTP or HTTPS")
        path = str(h.get("path") or "/")
        if not path.startswith("/") or any(ch.isspace() or ch == "\x00" for ch in path):
            raise PodRejected(f"{hw}.path", f"{path!r} must be an absolute URL path")
        host = _host(h.get("host"), hw)
        if ":" in host:
            host = f"[{host}]"
        headers = []
        for j, header in enumerate(h.get("httpHeaders") or []):
            name = str((header or {}).get("name", ""))
            value = str((header or {}).get("value", ""))
            if not _HEADER_NAME.fullmatch(name) or any(ch in value for ch in "\r\n\x00"):
                raise PodRejected(f"{hw}.httpHeaders[{j}]", f"{name!r} is not a usable header")
            headers.append(f"{name}: {value}")
        url = f"{scheme}://{host}:{_port(h.get('port'), c, hw)}{path}"
        return ("http", url, *headers)
    if "tcpSocket" in handler:
        t = handler["tcpSocket"] or {}
        tw = f"{where}.tcpSocket"
        return ("tcp", _host(t.get("host"), tw), _port(t.get("port"), c, tw))
    if hook and "sleep" in handler:
        seconds = (handler["sleep"] or {}).get("seconds")
        if not isinstance(seconds, int) or seconds < 0:
            raise PodRejected(f"{where}.sleep.seconds", "must be a whole number of seconds")
        return ("sleep", str(seconds))
    kinds = ", ".join(sorted(k for k in handler if not k[0].isupper())) or "none"
    supported = "exec, httpGet, tcpSocket" + (", sleep" if hook else "")
    raise PodRejected(where, f"handler {kinds} is not supported (supported: {supported})")


def _probe(
    kind: str, probe: Mapping[str, Any], c: Container, where: str, exec_argv: ExecCheck
) -> tuple[str, ...]:
    numbers = []
    for key, default in PROBE_DEFAULTS.items():
        value = probe.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, int) or value < 0:
            raise PodRejected(f"{where}.{key}", f"{value!r} must be a whole number")
        minimum = 0 if key == "initialDelaySeconds" else 1
        numbers.append(str(max(value, minimum)))
    return (kind, *numbers, *_check(probe, c, where, exec_argv, hook=False))


def lifecycle(
    c: Container, where: str, policy: str, is_init: bool, exec_argv: ExecCheck
) -> Lifecycle:
    """The container's probes and hooks as the job script runs them (exec ones through
    ``exec_argv``, in the container's image), and its restart policy."""
    extra = c.model_extra or {}
    out: dict[str, tuple[str, ...]] = {}
    probes = (
        ("startupProbe", "startup"),
        ("readinessProbe", "readiness"),
        ("livenessProbe", "liveness"),
    )
    for key, kind in probes:
        probe = extra.get(key)
        if probe is None:
            continue
        if is_init:
            raise PodRejected(f"{where}.{key}", "init containers cannot have probes")
        if not isinstance(probe, dict):
            raise PodRejected(f"{where}.{key}", "must be an object")
        out[kind] = _probe(kind, probe, c, f"{where}.{key}", exec_argv)
    hooks = extra.get("lifecycle") or {}
    if not isinstance(hooks, dict):
        raise PodRejected(f"{where}.lifecycle", "must be an object")
    for key, field in (("postStart", "post_start"), ("preStop", "pre_stop")):
        handler = hooks.get(key)
        if handler is None:
            continue
        if not isinstance(handler, dict):
            raise PodRejected(f"{where}.lifecycle.{key}", "must be an object")
        out[field] = _check(handler, c, f"{where}.lifecycle.{key}", exec_argv, hook=True)
    return Lifecycle(
        restart=container_restart(policy, is_init),
        messages=message_policy(extra.get("terminationMessagePolicy"), where),
        **out,
    )


def message_policy(value: Any, where: str) -> str:
    """The container's terminationMessagePolicy (File when it has none); else PodRejected."""
    if value is None or value == "":
        return "File"
    if value not in MESSAGE_POLICIES:
        raise PodRejected(
            f"{where}.terminationMessagePolicy",
            f"{value!r} must be one of {', '.join(MESSAGE_POLICIES)}",
        )
    return str(value)
