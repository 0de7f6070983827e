"""The service's configuration: one YAML file, overridden by ``INTERLINK_SLURM_*`` variables.

Everything is checked at start: an unknown key, a wrong type or an impossible combination stops
the service with a message naming the key (``ConfigError``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from interlink_slurm.errors import describe_validation_error
from interlink_slurm.launcher_options import DEFAULT_MPI_FLAGS_ALLOWED, LAUNCHER_OPTIONS
from interlink_slurm.slurm.remote_settings import RestSettings, SSHSettings
from interlink_slurm.translate.annotations import (
    DEFAULT_RUNTIME_OPTIONS_ALLOWED,
    DEFAULT_USER_FLAGS_ALLOWED,
    NEVER_USER_FLAGS,
    RUNTIME_OPTION_VALUES,
    SBATCH_OPTIONS,
)
from interlink_slurm.translate.quantity import mebibytes
from interlink_slurm.translate.resources import DEFAULT_ACCELERATORS
from interlink_slurm.translate.runtimes import RUNTIMES, runtime_of
from interlink_slurm.translate.site import (
    SLURM_NAME,
    Profile,
    Target,
    check_memory,
    check_time,
    slurm_name,
)
from interlink_slurm.wire import Taint

Launcher = Literal["srun", "mpirun", "mpiexec"]
_DEFAULT_MPI_FLAGS: dict[Launcher, list[str]] = {
    "srun": list(DEFAULT_MPI_FLAGS_ALLOWED["srun"]),
    "mpirun": list(DEFAULT_MPI_FLAGS_ALLOWED["mpirun"]),
    "mpiexec": list(DEFAULT_MPI_FLAGS_ALLOWED["mpiexec"]),
}
DependencyType = Literal[
    "after",
    "afterany",
    "afterburstbuffer",
    "aftercorr",
    "afternotok",
    "afterok",
    "singleton",
]


# Options every job gets from the plugin: the pod's identity, files and directory hang on them.
OWNED_SBATCH_OPTIONS = frozenset(
    {
        "--job-name",
        "-J",
        "--comment",
        "--output",
        "-o",
        "--error",
        "-e",
        "--chdir",
        "-D",
        "--open-mode",
        "--wrap",
        "--parsable",
    }
)


# A device plugin's resource name (Kubernetes' qualified name with a domain) and a gres to
# give it: "gpu", "gpu:mi250x" (the count is the pod's).
_EXTENDED_RESOURCE = re.compile(
    r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_GRES_NAME = re.compile(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?")

# The name of the Slurm reached through the top-level keys (transport, scheduler, ssh...).
DEFAULT_CLUSTER = "default"


ENV_PREFIX = "INTERLINK_SLURM_"

# What of the plugin's own environment its local Slurm commands, and so every job (sbatch
# exports its environment to the job, where Charliecloud and Enroot hand it to the container),
# get: what finds programs and sets locale, proxies and runtime configuration; never the
# plugin's configuration (INTERLINK_SLURM_*, its API token among it) or anything else an
# operator's unit happens to hold.
DEFAULT_PASS_ENVIRONMENT = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "SLURM_CONF",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "APPTAINER_*",
    "SINGULARITY_*",
    "ENROOT_*",
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is wrong."""


def _absolute_path(v: Path | None) -> Path | None:
    if v is None:
        return v
    if not v.is_absolute():
        raise ValueError(f"{str(v)!r} must be an absolute path")
    if any(c.isspace() or c in ":," for c in str(v)):
        # The path goes into #SBATCH lines, which sbatch splits on whitespace, and into
        # runtime bind options, where ':' and ',' separate fields.
        raise ValueError(f"{str(v)!r} must not contain whitespace, ':' or ','")
    return v


def id_ranges(text: str) -> list[tuple[int, int]]:
    """``"20000-20999,30000"`` → [(20000, 20999), (30000, 30000)]: Unix ids, inclusive."""
    out = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{part.strip()!r} is not an id or a range of ids (FIRST-LAST)")
        first, last = int(low), int(high) if dash else int(low)
        if first > last:
            raise ValueError(f"{part.strip()!r}: the range ends before it starts")
        out.append((first, last))
    return out


def _check_connection(transport: str, ssh: object, scheduler: str, rest: object) -> None:
    """The keys each way of reaching Slurm needs (top level and each of ``clusters``)."""
    if transport == "ssh" and ssh is None:
        raise ValueError("ssh: required with transport: ssh (host, user, key_file...)")
    if scheduler == "rest" and rest is None:
        raise ValueError("rest: required with scheduler: rest (url, api_version...)")


class ClusterSettings(BaseModel):
    """One more Slurm cluster that targets may send pods to: how it is reached (as the
    top-level keys of the same names say it for the default cluster) and where its pods'
    directories go."""

    model_config = ConfigDict(extra="forbid")

    transport: Literal["local", "ssh"] = "local"
    scheduler: Literal["cli", "rest", "pyslurm"] = "cli"
    ssh: SSHSettings | None = None
    rest: RestSettings | None = None
    slurm_conf: Path | None = None
    slurm_bin_dir: Path | None = None
    data_root: Path | None = Field(
        None, description="this cluster's shared directory of pods; default: the top-level one"
    )

    @field_validator("slurm_conf", "slurm_bin_dir", "data_root")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return _absolute_path(v)

    @model_validator(mode="after")
    def _combinations(self) -> ClusterSettings:
        _check_connection(self.transport, self.ssh, self.scheduler, self.rest)
        return self


class Settings(BaseSettings):
    """The whole configuration: YAML file, then INTERLINK_SLURM_* variables over it; checked at
    start, every error naming its key."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    listen: str = Field(
        "127.0.0.1:4000", description="HOST:PORT for TCP, or unix:///path/to/socket"
    )
    socket_mode: int = Field(0o660, ge=0, le=0o777, description="file mode of the unix socket")
    tls_cert_file: Path | None = Field(None, description="serve HTTPS with this certificate")
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(
        None, description="require client certificates signed by this CA (mutual TLS)"
    )
    auth_token: SecretStr | None = None
    auth_token_file: Path | None = None

    data_root: Path = Field(description="shared directory holding one directory per pod")
    state_db: Path | None = Field(None, description="SQLite file; default DATA_ROOT/state.db")

    # One of translate/runtimes' (RUNTIMES).
    runtime: str = "apptainer"
    runtime_path: str | None = None
    runtime_options: list[str] | None = None
    images: dict[str, str] = {}
    image_root: str | None = None

    partition: str | None = None
    gpu_partition: str | None = None
    gpu_type: str | None = None
    # Extended resource → Slurm gres, e.g. {"nvidia.com/gpu": "gpu:a100", "amd.com/gpu":
    # "gpu:mi250x"}. Empty: nvidia.com/gpu → gpu[:gpu_type], and no other accelerator.
    accelerators: dict[str, str] = {}
    account: str | None = None
    qos: str | None = None
    sbatch_extra: list[str] = []
    default_cpus: int = Field(1, ge=1)
    default_memory: str = "1Gi"
    host_path_prefixes: list[Path] = []

    # --- pod fidelity: annotations, site profiles, limits, volumes, restarts (issue 3) ---------
    user_flags_allowed: list[str] = Field(
        list(DEFAULT_USER_FLAGS_ALLOWED),
        description="sbatch options pods may give in slurm-job.vk.io/flags",
    )
    user_partitions_allowed: list[str] | None = Field(
        None, description="partitions pods may ask for; default: the partitions configured here"
    )
    user_qos_allowed: list[str] | Literal["any"] = Field(
        [], description="QOS pods may ask for with --qos, or any; default: none"
    )
    allow_account_annotation: bool = Field(
        False, description="whether pods may choose the Slurm account (--account in flags)"
    )
    namespace_accounts: dict[str, str] = Field(
        {}, description="Kubernetes namespace -> Slurm account (overrides account)"
    )
    namespace_uids: dict[str, str] = Field(
        {},
        description="Kubernetes namespace -> Unix uids its pods may run as with "
        "securityContext.runAsUser (sbatch --uid; a plugin running as root only), e.g. "
        '"20000-20999,30000"',
    )
    namespace_gids: dict[str, str] = Field(
        {},
        description="Kubernetes namespace -> Unix gids its pods may run as with "
        "securityContext.runAsGroup (sbatch --gid)",
    )
    job_script: Literal["run", "ignore", "refuse"] = Field(
        "run",
        description="a job script interLink built itself (RetrievedPodData.jobScript, from its "
        "JobScriptTemplate or JobScriptBuilderURL): run it as the pod's work inside the "
        "plugin's job, ignore it (the job is built from the pod), or refuse such pods (422)",
    )
    allow_user_shell: bool = Field(
        True,
        description="run pod shell code (slurm-job.vk.io/pre-exec, "
        "interlink.eu/wstunnel-client-commands) in the job; false: such pods are refused, and "
        "so are (Enroot, Charliecloud) env variables the runtime itself would act on on the host",
    )
    # --- what one pod may ask (issue 16) ------------------------------------------------------
    user_reservations_allowed: list[str] | Literal["any"] = Field(
        [], description="reservations pods may ask for with --reservation, or any; default: none"
    )
    user_dependencies_allowed: list[DependencyType] | Literal["any"] = Field(
        [],
        description="dependency types pods may give with --dependency (afterok, singleton...), "
        "or any; default: none (a dependency may name any user's job id)",
    )
    user_mail_allowed: list[str] | Literal["any"] = Field(
        [],
        description="addresses (user@site.org) or domains (@site.org) pods may give with "
        "--mail-user, or any; default: none",
    )
    mpi_flags_allowed: dict[Launcher, list[str]] = Field(
        _DEFAULT_MPI_FLAGS,
        description="options pods may give their MPI launcher in slurm-job.vk.io/mpi-flags, "
        "by launcher (srun, mpirun, mpiexec)",
    )
    image_roots: list[Path] = Field(
        [],
        description="directories under which a pod may name an image by its absolute path "
        "(image_root and the images map are the operator's own and need none)",
    )
    max_containers_per_pod: int = Field(
        64, ge=1, description="most containers (init containers included) one pod may have"
    )
    # Pod groups (interlink_slurm/groups.py): pods started together as one multi-node job.
    max_group_size: int = Field(64, ge=1, description="most pods one pod group may have")
    group_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="how long a pod group may wait for its last member; then every member fails",
    )
    group_failure_policy: Literal["fail-group", "ignore"] = Field(
        "fail-group",
        description="what a failing member of a running group does to the others: fail-group "
        "ends them (as JobSet and PyTorchJob expect), ignore leaves them running",
    )
    max_env_bytes_per_container: int = Field(
        262144, ge=1024, description="most bytes of NAME=VALUE env entries one container may have"
    )
    runtime_options_allowed: list[str] = Field(
        list(DEFAULT_RUNTIME_OPTIONS_ALLOWED),
        description="Apptainer/Singularity options pods may add "
        "(slurm-job.vk.io/singularity-options)",
    )
    gpus_per_node: int | None = Field(None, ge=1, description="GPUs of one node")
    max_cpus: int | None = Field(None, ge=1, description="most CPUs a pod may ask for")
    max_memory: str | None = Field(None, description="most memory a pod may ask for")
    default_time: str | int | None = Field(None, description="--time of a pod with no deadline")
    max_time: str | int | None = Field(None, description="longest --time a pod may ask for")
    profiles: dict[str, Profile] = Field({}, description="site profiles (flavors) by name")
    pvc_root: Path | None = Field(
        None, description="persistentVolumeClaim → <pvc_root>/<namespace>/<claimName>"
    )
    restart_backoff_seconds: float = Field(
        10.0, gt=0, description="first wait before a container is restarted (doubles each time)"
    )
    restart_backoff_max_seconds: float = Field(
        300.0, gt=0, description="longest wait between two restarts of a container"
    )
    image_cache_dir: Path | None = Field(
        None,
        description="Apptainer/Singularity/Enroot: registry images are pulled once into this "
        "shared directory (SIF or squashfs files) and reused",
    )
    enroot_create_dir: Path | None = Field(
        None,
        description="Enroot: node-local directory where Enroot unpacks each pod's images "
        "(enroot create) instead of starting them from the squashfs file (which needs "
        "squashfuse and fuse-overlayfs on the nodes)",
    )
    image_pull_on: Literal["submit_host", "compute_node"] = Field(
        "submit_host",
        description="where images missing from image_cache_dir are pulled: on the submit host "
        "(the job is held until they are there; for compute nodes without internet) or by the "
        "job itself on its first node",
    )
    image_pull_timeout_seconds: float = Field(
        3600.0, gt=0, description="longest one pull of a pod's images may take on the submit host"
    )
    image_pull_parallel: int = Field(
        2, ge=1, description="pods whose images are pulled at the same time on the submit host"
    )
    image_tag_lookup: bool = Field(
        True,
        description="Apptainer/Singularity with image_cache_dir: for imagePullPolicy Always "
        "(what the API server gives an image tagged latest or not tagged) each create asks the "
        "registry which digest the tag names now and runs that image, pulled into the cache "
        "when it is new; false: a tag is pulled once and its cached file reused",
    )
    image_lookup_timeout_seconds: float = Field(
        5.0, gt=0, description="longest a create waits for a registry to name a tag's digest"
    )
    image_registries_http: list[str] = Field(
        [], description="registries (host or host:port) asked for a tag's digest over plain HTTP"
    )

    # --- placement over several targets (issue 8) -------------------------------------------
    clusters: dict[str, ClusterSettings] = Field(
        {}, description="more Slurm clusters, by name, for targets to use"
    )
    targets: dict[str, Target] = Field(
        {},
        description="where pods may go (partitions of this or other clusters); each pod goes "
        "to the eligible one where it is expected to start soonest, ties and failed estimates "
        "in this order",
    )
    placement_estimate_seconds: float = Field(
        5.0, gt=0, description="longest the start-time estimates of one pod may take in all"
    )

    # None: the ping leaves the node's taints as the virtual kubelet's configuration sets them
    # (interLink replaces them with any list the ping carries, [] included).
    taints: list[Taint] | None = None
    max_pods: int = Field(1000, ge=1, description="the 'pods' capacity of the virtual node")
    ping_cache_seconds: float = Field(30.0, ge=0)

    status_refresh_seconds: float = Field(
        2.0, gt=0, description="how often job states are read from Slurm (one query for all)"
    )
    status_idle_refresh_seconds: float = Field(
        10.0,
        gt=0,
        description="the longest interval between two queries of Slurm's queue while no job and "
        "no pod's state files change (the state files are still read every "
        "status_refresh_seconds)",
    )
    retention_seconds: float = Field(
        3600.0, ge=0, description="how long a deleted pod's directory and logs are kept"
    )
    gc_interval_seconds: float = Field(
        60.0, gt=0, description="how often directories past their retention are removed"
    )
    default_grace_seconds: int = Field(
        30, ge=0, description="grace period of a pod that sets no terminationGracePeriodSeconds"
    )

    transport: Literal["local", "ssh"] = Field(
        "local", description="where Slurm commands run and job files are written"
    )
    scheduler: Literal["cli", "rest", "pyslurm"] = Field(
        "cli", description="how jobs are submitted and queried"
    )
    ssh: SSHSettings | None = None
    rest: RestSettings | None = None

    slurm_conf: Path | None = Field(None, description="SLURM_CONF for the Slurm commands")
    slurm_bin_dir: Path | None = None
    pass_environment: list[str] = Field(
        list(DEFAULT_PASS_ENVIRONMENT),
        description="names (shell-style patterns) of the plugin's own environment variables "
        "that Slurm commands run on this machine, and so every job, get; never INTERLINK_SLURM_*",
    )
    command_timeout: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(16 << 20, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line with request_id, pod_uid, job_id"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the file's values (init settings)."""
        # Environment first, then what load_settings read from the YAML file (passed as init).
        return (env_settings, init_settings)

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, v: object) -> object:
        # YAML reads 0660 as the decimal 660 and 0o660 as a string: modes are written in octal.
        if isinstance(v, str):
            try:
                return int(v.removeprefix("0o"), 8)
            except ValueError as err:
                raise ValueError(f"{v!r} is not an octal file mode like 0660") from err
        return v

    @field_validator(
        "data_root",
        "state_db",
        "slurm_conf",
        "slurm_bin_dir",
        "auth_token_file",
        "pvc_root",
        "image_cache_dir",
        "enroot_create_dir",
    )
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return _absolute_path(v)

    @field_validator("partition", "gpu_partition", "gpu_type", "account", "qos")
    @classmethod
    def _slurm_name(cls, v: str | None) -> str | None:
        return slurm_name(v)

    @field_validator("accelerators")
    @classmethod
    def _accelerators(cls, v: dict[str, str]) -> dict[str, str]:
        for resource, gres in v.items():
            if not _EXTENDED_RESOURCE.fullmatch(resource):
                raise ValueError(
                    f"{resource!r} is not an extended resource name (vendor-domain/name, "
                    "e.g. amd.com/gpu)"
                )
            if not _GRES_NAME.fullmatch(gres):
                raise ValueError(
                    f"{resource}: {gres!r} is not a gres without a count (name or name:type, "
                    "e.g. gpu:mi250x)"
                )
        return v

    @property
    def accelerator_names(self) -> tuple[str, ...]:
        """The extended resources a pod may ask as accelerators here."""
        return tuple(self.accelerators) or DEFAULT_ACCELERATORS

    @field_validator("sbatch_extra")
    @classmethod
    def _flags(cls, v: list[str]) -> list[str]:
        for flag in v:
            if not flag.startswith("-") or "\n" in flag:
                raise ValueError(f"{flag!r} must be one sbatch option starting with '-'")
            name = flag.split("=", 1)[0] if flag.startswith("--") else flag[:2]
            if name in OWNED_SBATCH_OPTIONS:
                raise ValueError(f"{flag!r}: {name} is set by interlink-slurm for every job")
        return v

    @field_validator("pass_environment")
    @classmethod
    def _env_names(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not re.fullmatch(r"[A-Za-z0-9_*?\[\]!]+", pattern):
                raise ValueError(
                    f"{pattern!r} must be a variable name or a shell-style pattern of one "
                    "(letters, digits, _, *, ?, [...])"
                )
        return v

    @field_validator("default_memory", "max_memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        return check_memory(v)

    @field_validator("default_time", "max_time")
    @classmethod
    def _time(cls, v: str | int | None) -> str | int | None:
        return check_time(v)

    @field_validator("user_flags_allowed")
    @classmethod
    def _user_flags_allowed(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in SBATCH_OPTIONS:
                raise ValueError(f"{name!r} is not an sbatch option (long form: --time...)")
            if name in NEVER_USER_FLAGS:
                raise ValueError(f"{name} is set by interlink-slurm and cannot be given by pods")
        return v

    @field_validator("runtime_options_allowed")
    @classmethod
    def _runtime_options_allowed(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in RUNTIME_OPTION_VALUES:
                raise ValueError(f"{name!r} is not an Apptainer option this plugin knows")
        return v

    @field_validator("user_partitions_allowed", "user_qos_allowed", "user_reservations_allowed")
    @classmethod
    def _names(cls, v: list[str] | str | None) -> list[str] | str | None:
        for name in v if isinstance(v, list) else []:
            cls._slurm_name(name)
        return v

    @field_validator("user_mail_allowed")
    @classmethod
    def _mail(cls, v: list[str] | str) -> list[str] | str:
        for entry in v if isinstance(v, list) else []:
            _, at, domain = entry.rpartition("@")
            if not at or not domain or "," in entry or any(c.isspace() for c in entry):
                raise ValueError(f"{entry!r} must be an address (user@site.org) or @site.org")
        return v

    @field_validator("image_roots")
    @classmethod
    def _image_roots(cls, v: list[Path]) -> list[Path]:
        for p in v:
            if not p.is_absolute():
                raise ValueError(f"{str(p)!r} must be an absolute path")
        return v

    @model_validator(mode="after")
    def _mpi_flags(self) -> Settings:
        for launcher, names in self.mpi_flags_allowed.items():
            table = LAUNCHER_OPTIONS[launcher]
            for name in names:
                if name not in table.options:
                    raise ValueError(
                        f"mpi_flags_allowed.{launcher}: {name!r} is not a {launcher} option "
                        "this plugin knows (long form: --bind-to...)"
                    )
                if name in table.host and not self.allow_user_shell:
                    raise ValueError(
                        f"mpi_flags_allowed.{launcher}: {name} acts on the host (runs a "
                        "program, names a file or changes the directory, environment or user "
                        "of the tasks): only with allow_user_shell: true"
                    )
        return self

    @field_validator("namespace_uids", "namespace_gids")
    @classmethod
    def _id_ranges(cls, v: dict[str, str]) -> dict[str, str]:
        for namespace, ranges in v.items():
            try:
                id_ranges(ranges)
            except ValueError as err:
                raise ValueError(f"{namespace}: {err}") from err
        return v

    @field_validator("namespace_accounts")
    @classmethod
    def _accounts(cls, v: dict[str, str]) -> dict[str, str]:
        for account in v.values():
            cls._slurm_name(account)
        return v

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(f"{v!r} is not a runtime of this plugin ({', '.join(RUNTIMES)})")
        return v

    @model_validator(mode="after")
    def _image_cache(self) -> Settings:
        if self.image_cache_dir is not None and not runtime_of(self.runtime).pull_schemes:
            runtimes = ", ".join(name for name, rt in RUNTIMES.items() if rt.pull_schemes)
            raise ValueError(
                f"image_cache_dir: only for the {runtimes} runtimes, not {self.runtime}"
            )
        if self.enroot_create_dir is not None and not runtime_of(self.runtime).unpacks_images:
            raise ValueError(f"enroot_create_dir: only for the enroot runtime, not {self.runtime}")
        return self

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v: dict[str, Profile]) -> dict[str, Profile]:
        cls._layers("profile", "", v)
        return v

    @classmethod
    def _layers(
        cls, kind: str, prefix: str, layers: dict[str, Profile] | dict[str, Target]
    ) -> None:
        """Names usable in messages and annotations, and sbatch_extra as at the top level."""
        for name, layer in layers.items():
            if not SLURM_NAME.fullmatch(name):
                raise ValueError(f"{kind} name {name!r}: letters, digits, '_', '.', '+', '-'")
            try:
                cls._flags(layer.sbatch_extra)
            except ValueError as err:
                raise ValueError(f"{prefix}{name}.sbatch_extra: {err}") from err

    @model_validator(mode="after")
    def _targets(self) -> Settings:
        if DEFAULT_CLUSTER in self.clusters:
            raise ValueError(
                f"clusters.{DEFAULT_CLUSTER}: that name is the top-level transport's; "
                "name this cluster otherwise"
            )
        for name in self.clusters:
            if not SLURM_NAME.fullmatch(name):
                raise ValueError(f"cluster name {name!r}: letters, digits, '_', '.', '+', '-'")
        self._layers("target", "targets.", self.targets)
        for name, t in self.targets.items():
            if t.cluster is not None and t.cluster not in self.clusters:
                known = ", ".join(self.clusters) or "none"
                raise ValueError(
                    f"targets.{name}.cluster: no cluster {t.cluster!r} in clusters ({known})"
                )
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("unix://"):
            if not v.removeprefix("unix://").startswith("/"):
                raise ValueError("a unix socket must be an absolute path: unix:///run/x.sock")
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} must be HOST:PORT or unix:///path")
        return v

    @field_validator("runtime_path")
    @classmethod
    def _runtime_path(cls, v: str | None) -> str | None:
        # It is placed after `env NAME=VALUE...`, where a word with '=' would read as a variable.
        if v is not None and ("=" in v or any(c.isspace() for c in v)):
            raise ValueError(f"{v!r} must not contain '=' or whitespace")
        return v

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.tls_cert_file is not None and self.listen.startswith("unix://"):
            raise ValueError("TLS is for a TCP listener; a unix socket is guarded by socket_mode")
        return self

    @model_validator(mode="after")
    def _combinations(self) -> Settings:
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ValueError("set auth_token or auth_token_file, not both")
        _check_connection(self.transport, self.ssh, self.scheduler, self.rest)
        if self.transport == "ssh" and self.state_db is None:
            raise ValueError(
                "state_db: required with transport: ssh (data_root is on the login node; the "
                "state database stays on this machine)"
            )
        return self

    # --- derived values -------------------------------------------------------------------------

    def for_cluster(self, name: str) -> Settings:
        """These settings as seen from one cluster: its transport, scheduler and data root."""
        if name == DEFAULT_CLUSTER:
            return self
        c = self.clusters[name]
        # Every key of a cluster is a top-level key of the same name and meaning.
        own = {key: getattr(c, key) for key in ClusterSettings.model_fields}
        return self.model_copy(update={**own, "data_root": c.data_root or self.data_root})

    @property
    def cluster_names(self) -> list[str]:
        """The clusters pods can go to: without targets the default one (top-level keys);
        with targets, those they use, in the order of the configuration."""
        if not self.targets:
            return [DEFAULT_CLUSTER]
        used = {t.cluster or DEFAULT_CLUSTER for t in self.targets.values()}
        return [name for name in (DEFAULT_CLUSTER, *self.clusters) if name in used]

    @property
    def state_db_path(self) -> Path:
        """The store's SQLite file (state_db, else state.db in data_root)."""
        return self.state_db or self.data_root / "state.db"

    @property
    def runtime_binary(self) -> str:
        """The runtime's command: runtime_path, else the runtime's own binary name."""
        return self.runtime_path or runtime_of(self.runtime).binary

    @property
    def runtime_flags(self) -> list[str]:
        """The runtime's options for every container: runtime_options, else its defaults."""
        if self.runtime_options is not None:
            return self.runtime_options
        # Isolation close to a Kubernetes container: no host home, /tmp, environment or PIDs.
        return list(runtime_of(self.runtime).default_flags)

    @property
    def default_memory_mb(self) -> int:
        """default_memory in MiB."""
        return mebibytes(self.default_memory)

    @property
    def listen_unix_path(self) -> str | None:
        """The socket's path when listen is unix://; None for TCP."""
        return self.listen.removeprefix("unix://") if self.listen.startswith("unix://") else None

    @property
    def listen_host_port(self) -> tuple[str, int]:
        """(host, port) of a TCP listen address."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def token(self) -> str | None:
        """The bearer token callers must present, or None when auth is off."""
        if self.auth_token is not None:
            return self.auth_token.get_secret_value()
        if self.auth_token_file is not None:
            return self.auth_token_file.read_text().strip()
        return None

    def command_env(self) -> dict[str, str]:
        """What every Slurm command gets on top of its environment (SLURM_CONF when set)."""
        return {"SLURM_CONF": str(self.slurm_conf)} if self.slurm_conf else {}

    def local_command_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The whole environment of Slurm commands run on this machine, and so of every job
        they submit: the variables of ``environ`` (the plugin's) that pass_environment names,
        never INTERLINK_SLURM_*, then command_env()."""
        kept = {
            name: value
            for name, value in environ.items()
            if not name.startswith(ENV_PREFIX)
            and any(fnmatchcase(name, p) for p in self.pass_environment)
        }
        return {**kept, **self.command_env()}

    def slurm_command(self, name: str) -> str:
        """A Slurm command's path: in slurm_bin_dir when set, else looked up in PATH."""
        return str(self.slurm_bin_dir / name) if self.slurm_bin_dir else name


# Environment variables of the command line itself, not configuration keys.
ENV_NOT_SETTINGS = frozenset({"INTERLINK_SLURM_CONFIG"})


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where, then what (PyYAML's own text spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """``INTERLINK_SLURM_*`` variables that set no key: a misspelling would otherwise be
    ignored without a word, as a misspelled YAML key is not."""
    keys = {name.upper() for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in ENV_NOT_SETTINGS
        and name.upper().removeprefix(ENV_PREFIX) not in keys
    )


def _describe_unknown_variable(name: str) -> str:
    keys = [ENV_PREFIX + key.upper() for key in Settings.model_fields]
    close = difflib.get_close_matches(name.upper(), keys, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"environment: {name}: matches no configuration key{hint}"


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate; or raise ConfigError
    whose message starts with the file (or ``environment``) and names the key."""
    unknown = unknown_environment(os.environ)
    if unknown:
        raise ConfigError(_describe_unknown_variable(unknown[0]))
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: cannot read: not UTF-8 text ({err.reason})") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must hold a mapping of keys to values")
        data = loaded
    data.update(overrides)
    where = f"{path}" if path else "configuration"
    try:
        settings = Settings(**data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {describe_validation_error(err)}") from err
    if settings.auth_token_file is not None:
        try:
            token = settings.token()
        except OSError as err:
            raise ConfigError(
                f"{where}: auth_token_file: cannot read {settings.auth_token_file}: {err.strerror}"
            ) from err
        if not token:
            raise ConfigError(f"{where}: auth_token_file: {settings.auth_token_file} is empty")
    return settings
