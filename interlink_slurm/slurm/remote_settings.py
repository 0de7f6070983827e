"""Settings of the ways to reach a remote Slurm: SSH to a login node, slurmrestd.

They are nested in the main configuration as ``ssh:`` and ``rest:`` (see config.py), and checked at
start like every other key.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# 0.0.38 is Slurm 22.05's; 0.0.40 and later (Slurm 23.11+) share the data_parser shapes.
REST_VERSION = re.compile(r"^v0\.0\.(38|4[0-9])$")
DEFAULT_JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SSHSettings(BaseModel):
    """A login node reached with SSH: commands run there, job files are written there (SFTP)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, description="login node name or address")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1, description="account the jobs run as")
    key_file: Path | None = Field(
        None, description="private key; without it the SSH agent and ~/.ssh/id_* are tried"
    )
    certificate_file: Path | None = Field(None, description="OpenSSH certificate of key_file")
    known_hosts: Path = Field(
        Path("~/.ssh/known_hosts"), description="host keys the login node's key is checked against"
    )
    insecure_skip_host_key_check: bool = Field(
        False, description="accept any host key (man-in-the-middle attacks go unnoticed)"
    )
    keepalive_seconds: float = Field(30.0, ge=0, description="0 turns keepalives off")
    connect_timeout: float = Field(10.0, gt=0)
    max_channels: int = Field(
        8, ge=1, le=64, description="SSH channels open at once (sshd's MaxSessions is 10)"
    )

    @field_validator("key_file", "certificate_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.expanduser().is_absolute():
            raise ValueError(f"{str(v)!r} must be an absolute path (or start with ~)")
        return v

    @model_validator(mode="after")
    def _certificate_needs_key(self) -> SSHSettings:
        if self.certificate_file is not None and self.key_file is None:
            raise ValueError("certificate_file needs key_file (the certificate signs that key)")
        return self

    @property
    def target(self) -> str:
        """user@host:port, as messages name the login node."""
        return f"{self.user}@{self.host}:{self.port}"


class RestSettings(BaseModel):
    """slurmrestd, over TCP with a JWT or over its unix socket."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s)://host:port, or unix:///path/to/slurmrestd.sock")
    api_version: str = Field("v0.0.38", description="OpenAPI version: v0.0.38 (22.05), v0.0.40+")
    user_name: str | None = Field(None, description="sent as X-SLURM-USER-NAME")
    token_file: Path | None = Field(
        None, description="JWT sent as X-SLURM-USER-TOKEN; read again whenever the file changes"
    )
    timeout: float = Field(30.0, gt=0, description="seconds for one call to slurmrestd")
    environment: dict[str, str] = Field(
        default_factory=lambda: {"PATH": DEFAULT_JOB_PATH},
        description="environment of every job (slurmrestd does not pass its own)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v.startswith("unix://"):
            if not v.removeprefix("unix://").startswith("/"):
                raise ValueError(
                    "a unix socket must be an absolute path: unix:///run/slurmrestd.sock"
                )
            return v
        if not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", v):
            raise ValueError(f"{v!r} must be http(s)://host:port or unix:///path")
        return v.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not REST_VERSION.fullmatch(v):
            raise ValueError(
                f"{v!r} is not supported: use v0.0.38 (Slurm 22.05) or v0.0.40 and later"
            )
        return v

    @field_validator("token_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{str(v)!r} must be an absolute path")
        return v

    @model_validator(mode="after")
    def _tcp_needs_token(self) -> RestSettings:
        if self.unix_socket is None and self.token_file is None:
            raise ValueError(
                "token_file is required with a TCP url: slurmrestd authenticates TCP clients "
                "with a JWT (scontrol token); or use its unix socket, unix:///path"
            )
        return self

    @property
    def unix_socket(self) -> str | None:
        """The socket's path for a unix:// url; None for TCP."""
        return self.url.removeprefix("unix://") if self.url.startswith("unix://") else None

    @property
    def legacy(self) -> bool:
        """True for v0.0.38, whose shapes differ from the data_parser versions (v0.0.40+)."""
        return self.api_version == "v0.0.38"
