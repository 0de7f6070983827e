"""What interLink sends and expects, as pydantic models.

Field names are the wire's: Kubernetes camelCase for pod objects, the Go json tags of interLink's
own types (``PodUID``, ``JID``, ``projectedvolumemaps``...). Unknown fields are accepted and kept,
so a newer interLink or Kubernetes never breaks parsing. ``null`` for a list or map (Go's nil
slice) reads as empty. Names that end up in paths or scripts are validated here, once.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Printable ASCII but '=' and space (Kubernetes 1.30 allows space; a shell-safe subset here).
_ENV_NAME = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")


def _none_to_list(value: Any) -> Any:
    return [] if value is None else value


def _none_to_dict(value: Any) -> Any:
    return {} if value is None else value


def dns_label(value: str) -> str:
    """``value`` if it is a DNS label (RFC 1123, as Kubernetes names); else ValueError."""
    if not (1 <= len(value) <= 63 and _DNS_LABEL.fullmatch(value)):
        raise ValueError(
            f"{value!r} is not a DNS label (1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit)"
        )
    return value


def dns_subdomain(value: str) -> str:
    """``value`` if it is a DNS subdomain (RFC 1123); else ValueError."""
    if not (1 <= len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value)):
        raise ValueError(
            f"{value!r} is not a DNS subdomain (lowercase letters, digits, '-' and '.', "
            "at most 253 characters)"
        )
    return value


def pod_uid(value: str) -> str:
    """``value`` in lower case if it is a UUID (a pod's uid names its directory); else
    ValueError."""
    if not _UUID.fullmatch(value):
        raise ValueError(f"{value!r} is not a UUID")
    return value.lower()


NAME_MAX = 255  # bytes of one file name, on every filesystem a pod directory may be on


def relative_path(value: str) -> str:
    """A path that stays inside the directory it is joined to: relative, no '..', no NUL."""
    if not value or "\x00" in value or value.startswith("/"):
        raise ValueError(f"{value!r} must be a non-empty relative path")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{value!r} must not contain empty, '.' or '..' path elements")
    if any(len(p.encode()) > NAME_MAX for p in parts):
        raise ValueError(f"a path element is longer than the {NAME_MAX} bytes a file name may be")
    return value


List = Annotated[list[Any], BeforeValidator(_none_to_list)]


class WireModel(BaseModel):
    """Kubernetes objects: camelCase on the wire, unknown fields kept."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, alias_generator=to_camel, frozen=False
    )


# --- Kubernetes objects -------------------------------------------------------------------------


class ObjectMeta(WireModel):
    """A pod's metadata: the names and annotations the plugin reads."""

    name: str = ""
    namespace: str = "default"
    uid: str = ""
    labels: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}
    annotations: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}


class EnvVar(WireModel):
    """One variable of a container's env (value, or valueFrom resolved by interLink)."""

    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ENV_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid environment variable name")
        return v


class ResourceRequirements(WireModel):
    """A container's requests and limits (Kubernetes quantities)."""

    requests: Annotated[dict[str, str | int | float], BeforeValidator(_none_to_dict)] = {}
    limits: Annotated[dict[str, str | int | float], BeforeValidator(_none_to_dict)] = {}


class VolumeMount(WireModel):
    """Where a volume appears in a container (mountPath, subPath, readOnly)."""

    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"{v!r} must be an absolute path")
        # ':' and ',' separate fields in runtime bind options (apptainer -B src:dst:ro,...).
        if any(c in v for c in ":,\n\x00"):
            raise ValueError(f"{v!r} must not contain ':', ',', a newline or NUL")
        return v

    @field_validator("sub_path")
    @classmethod
    def _sub_path(cls, v: str) -> str:
        if v and any(c in v for c in ":,\n"):
            raise ValueError(f"{v!r} must not contain ':', ',' or a newline")
        return relative_path(v) if v else v


class ContainerPort(WireModel):
    """A port a container declares (informational: the job shares the node's network)."""

    container_port: int
    name: str = ""
    protocol: str = "TCP"


class SecurityContext(WireModel):
    """What of a pod's or container's securityContext selects the job's Unix user; the rest
    (capabilities, seccomp...) stays in model_extra."""

    run_as_user: int | None = Field(None, ge=0)
    run_as_group: int | None = Field(None, ge=0)
    run_as_non_root: bool | None = None


class Container(WireModel):
    """One container of the pod, as the job runs it."""

    name: str
    image: str = ""
    command: List = []
    args: List = []
    working_dir: str = ""
    env: Annotated[list[EnvVar], BeforeValidator(_none_to_list)] = []
    resources: ResourceRequirements = ResourceRequirements()
    volume_mounts: Annotated[list[VolumeMount], BeforeValidator(_none_to_list)] = []
    ports: Annotated[list[ContainerPort], BeforeValidator(_none_to_list)] = []
    image_pull_policy: str = ""
    security_context: SecurityContext | None = None
    # An init container's own restartPolicy (Always: a native sidecar); unset for the others.
    restart_policy: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return dns_label(v)

    @field_validator("command", "args")
    @classmethod
    def _strings(cls, v: list[Any]) -> list[str]:
        if not all(isinstance(a, str) for a in v):
            raise ValueError("every element must be a string")
        if any("\x00" in a for a in v):
            raise ValueError("must not contain NUL characters")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if any(c.isspace() or c == "\x00" for c in v):
            raise ValueError(f"{v!r} must not contain whitespace")
        return v


class KeyToPath(WireModel):
    """One key of a configMap or secret written to a path of its volume."""

    key: str
    path: str
    mode: int | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return relative_path(v)


class ConfigMapVolumeSource(WireModel):
    """A configMap volume: its files come from the configMap interLink sent."""

    name: str = ""
    items: Annotated[list[KeyToPath], BeforeValidator(_none_to_list)] = []
    default_mode: int | None = None
    optional: bool = False


class SecretVolumeSource(WireModel):
    """A secret volume: its files come from the secret interLink sent."""

    secret_name: str = ""
    items: Annotated[list[KeyToPath], BeforeValidator(_none_to_list)] = []
    default_mode: int | None = None
    optional: bool = False


class EmptyDirVolumeSource(WireModel):
    """An emptyDir volume (on disk in the pod directory, or in the node's memory)."""

    medium: str = ""
    size_limit: str | None = None


class HostPathVolumeSource(WireModel):
    """A hostPath volume: a path of the cluster's nodes, within host_path_prefixes."""

    path: str
    type: str | None = None


class PVCVolumeSource(WireModel):
    """A persistentVolumeClaim volume: a directory of the claim under pvc_root."""

    claim_name: str
    read_only: bool = False


class ProjectedVolumeSource(WireModel):
    """A projected volume (the service account's token and the like), as interLink
    sends its content."""

    sources: List = []
    default_mode: int | None = None


SUPPORTED_VOLUME_TYPES = (
    "configMap",
    "secret",
    "emptyDir",
    "projected",
    "downwardAPI",
    "hostPath",
    "persistentVolumeClaim",
)


class Volume(WireModel):
    """One volume of the pod; ``kind`` says which source it has."""

    name: str
    config_map: ConfigMapVolumeSource | None = None
    secret: SecretVolumeSource | None = None
    empty_dir: EmptyDirVolumeSource | None = None
    projected: ProjectedVolumeSource | None = None
    downward_api: dict[str, Any] | None = Field(default=None, alias="downwardAPI")
    host_path: HostPathVolumeSource | None = None
    persistent_volume_claim: PVCVolumeSource | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return dns_label(v)

    @property
    def kind(self) -> str:
        """The volume's source type as Kubernetes names it; an unknown one is returned as sent."""
        for wire_name in SUPPORTED_VOLUME_TYPES:
            field = {"downwardAPI": "downward_api"}.get(wire_name, _snake(wire_name))
            if getattr(self, field) is not None:
                return wire_name
        extras = sorted(k for k, v in (self.model_extra or {}).items() if v is not None)
        return extras[0] if extras else "(none)"


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


class HostAlias(WireModel):
    """One line the pod adds to its containers' /etc/hosts."""

    ip: str
    hostnames: Annotated[list[str], BeforeValidator(_none_to_list)] = []

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None

    @field_validator("hostnames")
    @classmethod
    def _hostnames(cls, v: list[str]) -> list[str]:
        for name in v:
            dns_subdomain(name)
        return v


class Toleration(WireModel):
    """Kept as sent: an operator Kubernetes does not know tolerates nothing (see matching.py),
    it is not a reason to refuse the pod."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None


class NodeSelectorRequirement(WireModel):
    """One node-affinity expression (key, operator, values)."""

    key: str
    operator: str
    values: Annotated[list[str], BeforeValidator(_none_to_list)] = []


class NodeSelectorTerm(WireModel):
    """Node-affinity expressions that must all hold."""

    match_expressions: Annotated[list[NodeSelectorRequirement], BeforeValidator(_none_to_list)] = []
    # On node fields (metadata.name): they concern the virtual node, not a target behind it.
    match_fields: Annotated[list[NodeSelectorRequirement], BeforeValidator(_none_to_list)] = []


class NodeSelector(WireModel):
    """Terms of which one must hold (required node affinity)."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], BeforeValidator(_none_to_list)] = []


class PreferredSchedulingTerm(WireModel):
    """A preferred node-affinity term and its weight (placement's preference)."""

    weight: int
    preference: NodeSelectorTerm


class NodeAffinity(WireModel):
    """The pod's node affinity, matched against the targets' labels."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: Annotated[
        list[PreferredSchedulingTerm], BeforeValidator(_none_to_list)
    ] = []


class Affinity(WireModel):
    """Node affinity only; podAffinity and podAntiAffinity stay in model_extra."""

    node_affinity: NodeAffinity | None = None


class PodSpec(WireModel):
    """The pod's spec: containers, volumes, and what decides where and how long it runs."""

    containers: Annotated[list[Container], BeforeValidator(_none_to_list)] = []
    init_containers: Annotated[list[Container], BeforeValidator(_none_to_list)] = []
    volumes: Annotated[list[Volume], BeforeValidator(_none_to_list)] = []
    restart_policy: str = "Always"
    active_deadline_seconds: int | None = None
    termination_grace_period_seconds: int | None = None
    node_selector: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}
    tolerations: Annotated[list[Toleration], BeforeValidator(_none_to_list)] = []
    affinity: Affinity | None = None
    security_context: SecurityContext | None = None
    host_aliases: Annotated[list[HostAlias], BeforeValidator(_none_to_list)] = []


class Pod(WireModel):
    """A pod as interLink sends it in delete and status calls (only its names are needed)."""

    api_version: str = "v1"
    kind: str = "Pod"
    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec = PodSpec()
    status: dict[str, Any] | None = None

    @property
    def uid(self) -> str:
        """The pod's uid (its directory and its job's comment carry it)."""
        return self.metadata.uid

    @property
    def name(self) -> str:
        """The pod's name."""
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The pod's namespace."""
        return self.metadata.namespace


class ValidPod(Pod):
    """A pod that may become a job: identity and names checked, container names unique."""

    @model_validator(mode="after")
    def _identity(self) -> ValidPod:
        meta = self.metadata
        if not meta.uid:
            raise ValueError("metadata.uid is missing")
        for field, check, value in (
            ("metadata.uid", pod_uid, meta.uid),
            ("metadata.name", dns_subdomain, meta.name),
            ("metadata.namespace", dns_label, meta.namespace),
        ):
            if not value:
                raise ValueError(f"{field} is missing")
            try:
                check(value)
            except ValueError as err:
                raise ValueError(f"{field}: {err}") from None
        meta.uid = meta.uid.lower()
        names = [c.name for c in (*self.spec.init_containers, *self.spec.containers)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"container names must be unique, repeated: {', '.join(dupes)}")
        if not self.spec.containers:
            raise ValueError("spec.containers is empty: a pod needs at least one container")
        vols = [v.name for v in self.spec.volumes]
        vdupes = sorted({n for n in vols if vols.count(n) > 1})
        if vdupes:
            raise ValueError(f"volume names must be unique, repeated: {', '.join(vdupes)}")
        return self


class ConfigMap(WireModel):
    """A configMap interLink sent with the pod (for its volumes and env)."""

    metadata: ObjectMeta = ObjectMeta()
    data: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}
    binary_data: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}


class Secret(WireModel):
    """A secret interLink sent with the pod (data base64-encoded, or stringData)."""

    metadata: ObjectMeta = ObjectMeta()
    # Base64 on the wire, as Go marshals []byte.
    data: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}
    string_data: Annotated[dict[str, str], BeforeValidator(_none_to_dict)] = {}
    type: str = ""


# --- interLink types ----------------------------------------------------------------------------


class RetrievedContainer(WireModel):
    """What interLink retrieved for one container: its configMaps, secrets and
    projected volumes' content."""

    name: str = ""
    config_maps: Annotated[list[ConfigMap], BeforeValidator(_none_to_list)] = []
    projectedvolumemaps: Annotated[list[ConfigMap], BeforeValidator(_none_to_list)] = Field(
        default=[], alias="projectedvolumemaps"
    )
    secrets: Annotated[list[Secret], BeforeValidator(_none_to_list)] = []
    empty_dirs: Annotated[list[str], BeforeValidator(_none_to_list)] = []


class RetrievedPodData(WireModel):
    """The create call's body: the pod, what interLink retrieved for it, and an optional
    job script of interLink's own."""

    pod: ValidPod
    container: Annotated[list[RetrievedContainer], BeforeValidator(_none_to_list)] = []
    job_config: dict[str, Any] | None = None
    job_script: str | None = None


class CreateResponse(BaseModel):
    """The create call's answer: the pod's uid and its Slurm job id."""

    PodUID: str
    PodJID: str


class ContainerStateWaiting(WireModel):
    """A container not running yet (or waiting to restart), with why."""

    reason: str = ""
    message: str = ""


class ContainerStateRunning(WireModel):
    """A running container, since when."""

    # Aware: Go's metav1.Time reads RFC 3339 only, which needs a zone.
    started_at: AwareDatetime | None = None


class ContainerStateTerminated(WireModel):
    """A container that ended: its exit code, why, and when."""

    exit_code: int
    signal: int | None = None
    reason: str = ""
    message: str = ""
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None


class ContainerState(WireModel):
    """One of waiting, running or terminated."""

    waiting: ContainerStateWaiting | None = None
    running: ContainerStateRunning | None = None
    terminated: ContainerStateTerminated | None = None


class ContainerStatus(WireModel):
    """One container's status as Kubernetes shows it."""

    name: str
    state: ContainerState
    ready: bool = False
    restart_count: int = 0
    image: str = ""
    image_id: str = Field(default="", alias="imageID")
    started: bool | None = None
    last_state: ContainerState | None = None  # the run before its last restart or requeue


class PodStatus(BaseModel):
    """interLink's PodStatus: Go json tags, not camelCase."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    UID: str
    namespace: str
    JID: str = ""
    containers: list[ContainerStatus] = []
    initContainers: list[ContainerStatus] = []
    # The Slurm node list of the pod's job, once Slurm has placed it (interLink PR #550's
    # PodStatus.NodeName, for its SSH shadow). Absent until then; older interLink ignores it.
    # The key is the Go field's name, which encoding/json uses without a tag: the PR's diff was
    # not at hand to read a tag from, so this is the one place to change if it has another.
    NodeName: str | None = None


class LogOpts(BaseModel):
    """kubectl logs' options as interLink passes them."""

    model_config = ConfigDict(extra="allow")

    Tail: int = Field(default=0, ge=0)
    Bytes: int = Field(default=0, ge=0)
    Timestamps: bool = False
    Follow: bool = False
    Previous: bool = False
    SinceSeconds: int = Field(default=0, ge=0)
    SinceTime: datetime | None = None

    @model_validator(mode="after")
    def _exclusive(self) -> LogOpts:
        if self.Tail and self.Bytes:
            raise ValueError("Opts.Tail and Opts.Bytes cannot be used together")
        if self.SinceSeconds and self.since_time is not None:
            raise ValueError("Opts.SinceSeconds and Opts.SinceTime cannot be used together")
        return self

    @property
    def since_time(self) -> datetime | None:
        """SinceTime, with Go's zero time ("0001-01-01T00:00:00Z") read as unset."""
        if self.SinceTime is None or self.SinceTime.year <= 1:
            return None
        return self.SinceTime


class LogRequest(BaseModel):
    """The getLogs call's body: which container's log, and how."""

    model_config = ConfigDict(extra="allow")

    Namespace: str
    PodUID: str
    PodName: str
    # "" (as interLink accepts it): the pod's one container.
    ContainerName: str = ""
    Opts: LogOpts = LogOpts()

    @field_validator("Namespace")
    @classmethod
    def _label(cls, v: str) -> str:
        return dns_label(v)

    @field_validator("ContainerName")
    @classmethod
    def _container(cls, v: str) -> str:
        return v and dns_label(v)

    @field_validator("PodName")
    @classmethod
    def _pod_name(cls, v: str) -> str:
        return dns_subdomain(v)

    @field_validator("PodUID")
    @classmethod
    def _uid(cls, v: str) -> str:
        return pod_uid(v)


class Accelerator(BaseModel):
    """One kind of accelerator the clusters have, for interLink's ping answer."""

    resourceType: str
    available: str


class PingResources(BaseModel):
    """What the clusters can give (CPU, memory, pods, accelerators), for the virtual node."""

    cpu: str
    memory: str
    pods: str
    accelerators: list[Accelerator] = []


class Taint(BaseModel):
    """A taint interLink may put on the virtual node."""

    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class PingResponse(BaseModel):
    """The answer to interLink's ping: the clusters' resources."""

    status: str = "ok"
    resources: PingResources
    # interLink replaces the node's taints with these whenever the key is there, even as []:
    # None (left out of the answer) leaves the taints of the virtual kubelet's configuration.
    taints: list[Taint] | None = None
