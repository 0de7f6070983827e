"""The ``interlink-slurm`` command: serve, render, doctor, version."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import uvicorn
import yaml

from interlink_slurm import __version__, logsetup
from interlink_slurm.config import (
    DEFAULT_CLUSTER,
    ConfigError,
    Settings,
    load_settings,
    yaml_problem,
)
from interlink_slurm.errors import PluginError, describe_validation_error
from interlink_slurm.slurm import factory

PROG = "interlink-slurm"


class CliError(Exception):
    """What is wrong with a command's input, as ``<file or key>: <what is wrong>``."""


def _one_line(text: str) -> str:
    # A log or a pipe reads one line per error; messages from YAML or Slurm may hold several.
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _say_error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")


class _PlainErrors(typer.core.TyperGroup):
    """Errors as one plain line on stderr, exit 2, whatever the terminal: no box, no wrapping
    by ``COLUMNS``. Help stays rich."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's main, with CliError and usage errors said as one line (exit 2)."""
        kwargs["standalone_mode"] = False  # exceptions come here instead of a rich box
        kwargs.setdefault("prog_name", PROG)
        try:
            code = super().main(*args, **kwargs)
        except CliError as err:
            _say_error(str(err))
            sys.exit(2)
        except typer.TyperException as err:  # a usage error, e.g. a missing argument
            ctx = getattr(err, "ctx", None)
            where = f"{ctx.command_path.removeprefix(PROG).strip()}: " if ctx else ""
            hint = f" (see {ctx.command_path} --help)" if ctx else ""
            _say_error(f"{where.lstrip(': ')}{err.format_message()}{hint}")
            sys.exit(err.exit_code)
        except typer.Abort:
            _say_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_PlainErrors,
    add_completion=False,
    help="interLink plugin that runs Kubernetes pods as Slurm jobs.",
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="INTERLINK_SLURM_CONFIG", help="YAML configuration"),
]
# On SIGTERM, requests in progress get this long; a follow-mode log stream would wait forever.
SHUTDOWN_SECONDS = 5
SLURM_COMMANDS = factory.SLURM_COMMANDS


SOCKET_BACKLOG = 2048  # uvicorn's own default


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as err:
        raise CliError(str(err)) from err


def _listen_socket(path: str, mode: int) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created with its final mode (no moment where the umask's is looser), and listening at
    # once: a client that connects while the service still starts waits in the backlog
    # instead of being refused.
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(SOCKET_BACKLOG)
    return sock


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the plugin's HTTP API."""
    from interlink_slurm.api import create_app
    from interlink_slurm.metrics import MeteredScheduler, Metrics
    from interlink_slurm.service import Service
    from interlink_slurm.store import Store

    settings = _settings(config)
    logsetup.configure(settings.log_level, settings.log_format)
    # Over SSH, data_root is on the login node: created there with the first pod's directory.
    for name in settings.cluster_names:
        own = settings.for_cluster(name)
        try:
            if own.transport == "local":
                own.data_root.mkdir(parents=True, exist_ok=True, mode=0o711)
        except OSError as err:
            raise CliError(
                f"{_source(config)}data_root: cannot create {own.data_root}: {err.strerror}"
            ) from err
    try:
        clusters = factory.build_clusters(settings)
    except (ConfigError, PluginError) as err:
        raise CliError(f"{_source(config)}{err}") from err
    logging.getLogger(__name__).info("reaching Slurm: %s", factory.describe_all(settings))
    store = Store(settings.state_db_path)
    store.open()
    metrics = Metrics()
    metered = {name: (t, MeteredScheduler(s, metrics)) for name, (t, s) in clusters.items()}
    transport, scheduler = metered.pop(DEFAULT_CLUSTER)
    service = Service(settings, scheduler, transport, store, metrics, metered)
    api = create_app(service, settings.token())
    unix_path = settings.listen_unix_path
    common: dict[str, Any] = {
        "log_level": settings.log_level,
        "log_config": None,  # logsetup has configured logging; uvicorn must not redo it
        "access_log": False,  # the API logs each request itself, with its request ID
        "timeout_graceful_shutdown": SHUTDOWN_SECONDS,
    }
    try:
        if unix_path:
            sock = _listen_socket(unix_path, settings.socket_mode)
            uvicorn.Server(uvicorn.Config(api, **common)).run(sockets=[sock])
        else:
            host, port = settings.listen_host_port
            tcp = uvicorn.Config(api, host=host, port=port, **common, **_tls_options(settings))
            uvicorn.Server(tcp).run()
    finally:
        store.close()
        for t, _ in clusters.values():
            factory.close(t)


def _source(config: Path | None) -> str:
    """The prefix naming where a setting came from, for an error about it."""
    return f"{config}: " if config is not None else ""


def _tls_options(settings: Settings) -> dict[str, Any]:
    if settings.tls_cert_file is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


# Workloads whose pod template render takes: kind → where the template is.
TEMPLATES = {
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
}


def _pod_of_workload(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The pod a Job, Deployment... would create, named after the workload."""
    kind = str(data.get("kind"))
    template: Any = data
    for key in TEMPLATES[kind]:
        template = template.get(key) if isinstance(template, dict) else None
    if not isinstance(template, dict):
        raise CliError(f"{path}: this {kind} has no {'.'.join(TEMPLATES[kind])}")
    meta = dict(template.get("metadata") or {})
    workload = data.get("metadata") or {}
    meta.setdefault("name", workload.get("name", kind.lower()))
    if "namespace" in workload:
        meta.setdefault("namespace", workload["namespace"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec")}


def _read_pod_file(path: Path) -> dict[str, Any]:
    docs = _read_pod_docs(path)
    if len(docs) != 1:
        raise CliError(f"{path}: holds {len(docs)} YAML documents: give it one pod (or workload)")
    return docs[0]


def _read_pod_docs(path: Path) -> list[dict[str, Any]]:
    """The pods of a file: one, or the members of a pod group, one YAML document each."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CliError(f"{path}: cannot read: {reason}") from err
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as err:
            raise CliError(f"{path}: neither JSON nor YAML: {yaml_problem(err)}") from err
    if not docs:
        raise CliError(f"{path}: holds 0 YAML documents: give it one pod (or workload)")
    return [_pod_data(doc, path, i if len(docs) > 1 else None) for i, doc in enumerate(docs)]


def _pod_data(data: Any, path: Path, index: int | None) -> dict[str, Any]:
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise CliError(f"{path}: holds neither a pod nor a RetrievedPodData")
    if data.get("kind") in TEMPLATES:
        data = _pod_of_workload(data, path)
    if "pod" not in data:
        # A plain v1.Pod manifest: give it what the API server would have (each member of a
        # group a uid of its own).
        meta = data.setdefault("metadata", {})
        meta.setdefault("uid", f"00000000-0000-0000-0000-{index or 0:012d}")
        meta.setdefault("namespace", "default")
        data = {"pod": data, "container": []}
    return dict(data)


@app.command()
def render(
    pod_file: Annotated[Path, typer.Argument(help="a v1.Pod or RetrievedPodData, JSON or YAML")],
    config: ConfigOption = None,
    estimate: Annotated[
        bool,
        typer.Option(
            help="with several targets, ask each one's Slurm when the pod would start there "
            "(sbatch --test-only); without, the configured order decides"
        ),
    ] = True,
) -> None:
    """Print the batch script a pod becomes (and the files beside it), without submitting;
    with several targets, also where it would go and why."""
    from pydantic import ValidationError

    from interlink_slurm.translate.script import render_script
    from interlink_slurm.wire import RetrievedPodData

    overrides: dict[str, Any] = {}
    if config is None and not os.environ.get("INTERLINK_SLURM_DATA_ROOT"):
        overrides["data_root"] = "/data/interlink"
    settings = _settings(config, **overrides)
    docs = _read_pod_docs(pod_file)
    if len(docs) > 1:
        _render_group(settings, docs, pod_file)
        return
    try:
        data = RetrievedPodData.model_validate(docs[0])
        placement = _placement(settings, data, estimate)
    except ValidationError as err:
        raise CliError(f"{pod_file}: invalid pod: {describe_validation_error(err)}") from err
    except PluginError as err:
        raise CliError(f"{pod_file}: {err}") from err
    plan = placement.chosen.plan
    assert plan is not None  # the chosen target's
    sys.stdout.write(render_script(plan))
    _echo_files(plan)
    if settings.targets:
        typer.echo("\n# Placement:")
        for line in placement.lines():
            typer.echo(f"#   {line}")


def _echo_files(plan: Any) -> None:
    typer.echo(f"\n# Files written in {plan.pod_dir}:")
    for d in plan.dirs:
        typer.echo(f"#   {d}/")
    for f in plan.files:
        typer.echo(f"#   {f.path}  ({len(f.content)} bytes, mode {f.mode:04o})")


def _render_group(settings: Settings, docs: list[dict[str, Any]], path: Path) -> None:
    """``render`` of a file of several pods, the members of one pod group: the group's job
    script, then each member's job.sh."""
    from pydantic import ValidationError

    from interlink_slurm import jobdir
    from interlink_slurm.groups import membership
    from interlink_slurm.translate.group import (
        GroupMember,
        GroupPlan,
        check_member,
        group_dir,
        member_names,
        ranked,
        render_group_script,
    )
    from interlink_slurm.translate.pod import build_plan
    from interlink_slurm.translate.script import render_script
    from interlink_slurm.wire import RetrievedPodData

    keys = ("kueue.x-k8s.io/pod-group-name", "slurm-job.vk.io/pod-group")
    for doc in docs:
        meta = doc["pod"].get("metadata") if isinstance(doc.get("pod"), dict) else None
        marks = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})} if meta else {}
        if not any(k in marks for k in keys):
            raise CliError(
                f"{path}: holds {len(docs)} YAML documents: give it one pod (or workload), or "
                "the members of one pod group"
            )
    try:
        datas = [RetrievedPodData.model_validate(d) for d in docs]
        groups = {membership(d.pod.metadata, settings.max_group_size) for d in datas}
        namespaces = {d.pod.namespace for d in datas}
        if len(groups) != 1 or None in groups or len(namespaces) != 1:
            raise CliError(
                f"{path}: holds {len(docs)} pods: give it one pod, or the members of one pod "
                "group (kueue.x-k8s.io/pod-group-name or slurm-job.vk.io/pod-group)"
            )
        (joined,) = groups
        assert joined is not None
        if joined.size != len(datas):
            raise CliError(f"{path}: group {joined.group} has {joined.size} pods, not {len(datas)}")
        root = str(settings.data_root)
        members = []
        for data in ranked(datas, joined.group):
            pod = data.pod
            plan = build_plan(
                data, settings, jobdir.pod_dir(root, pod.namespace, pod.name, pod.uid)
            )
            check_member(plan)
            members.append(GroupMember(plan, member_names(pod)))
    except ValidationError as err:
        raise CliError(f"{path}: invalid pod: {describe_validation_error(err)}") from err
    except PluginError as err:
        raise CliError(f"{path}: {err}") from err
    (namespace,) = namespaces
    gdir = group_dir(members[0].plan.pod_dir)
    group = GroupPlan(namespace, joined.group, gdir, tuple(members), settings.group_failure_policy)
    sys.stdout.write(render_group_script(group))
    typer.echo(f"\n# Files written in {gdir}: group.sh, ils.sh")
    for m in members:
        typer.echo(f"\n# ---- {m.plan.pod_dir}/job.sh ----")
        sys.stdout.write(render_script(m.plan))
        _echo_files(m.plan)


def _placement(settings: Settings, data: Any, estimate: bool) -> Any:
    """Where ``render`` puts the pod: as ``create`` would, asking each target's Slurm for an
    estimate unless told not to."""
    import asyncio

    from interlink_slurm import jobdir
    from interlink_slurm.placement import place
    from interlink_slurm.translate.targets import candidates

    pod = data.pod

    def pod_dir(cluster: str) -> str:
        root = str(settings.for_cluster(cluster).data_root)
        return jobdir.pod_dir(root, pod.namespace, pod.name, pod.uid)

    cands = candidates(data, settings, pod_dir)
    # Without targets there is one candidate: nothing to ask.
    clusters = factory.build_clusters(settings) if estimate and settings.targets else {}

    async def run() -> Any:
        schedulers = {name: s for name, (_, s) in clusters.items()}
        try:
            return await place(
                cands, schedulers, settings.placement_estimate_seconds, estimate=estimate
            )
        finally:
            for _, s in clusters.values():
                await factory.aclose(s)

    try:
        return asyncio.run(run())
    finally:
        for t, _ in clusters.values():
            factory.close(t)


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check the way to Slurm end to end (connection, controller, data root, runtime,
    partitions, GPU type) and say how to fix what is wrong; exit 1 when something is."""
    from interlink_slurm.slurm.doctor import Check

    settings = _settings(config)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # its errors are reported below
    checks: list[Check] = []
    for name in settings.cluster_names:
        own = settings.for_cluster(name)
        where = f"cluster {name}: " if settings.cluster_names != [DEFAULT_CLUSTER] else ""
        typer.echo(f"interlink-slurm doctor: {where}{factory.describe(own)}")
        found = _diagnose(own, name)
        for check in found:
            typer.echo(f"  {check.label:<4}  {check.name:<15} {check.detail}")
            if check.fix:
                typer.echo(f"  {'':<4}  {'':<15} fix: {check.fix}")
        checks += found
    failed = sum(not c.ok and not c.skipped for c in checks)
    if failed:
        typer.echo(f"{failed} problem(s) found")
        raise typer.Exit(1)
    typer.echo("all checks passed")


def _diagnose(settings: Settings, cluster: str) -> list[Any]:
    """doctor's checks of one cluster (``settings`` as seen from it)."""
    import asyncio

    from interlink_slurm.slurm.doctor import diagnose

    try:
        transport, scheduler = factory.build(settings)
    except (ConfigError, PluginError) as err:
        typer.echo(f"  FAIL  {'configuration':<15} {_one_line(str(err))}")
        raise typer.Exit(1) from err

    async def run() -> list[Any]:
        try:
            return await diagnose(settings, transport, scheduler, cluster)
        finally:
            await factory.aclose(scheduler)

    try:
        return asyncio.run(run())
    finally:
        factory.close(transport)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _options(
    ctx: typer.Context,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """interLink plugin that runs Kubernetes pods as Slurm jobs."""
    if ctx.invoked_subcommand is None:  # no command: say which there are
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


def main() -> None:
    """The interlink-slurm command."""
    app(prog_name=PROG)
