"""Sample configurations load with the service's own loader, and the pieces that name each other
(plugin config, interLink's config, systemd unit, env file) agree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from interlink_slurm.config import Settings, load_settings
from tests.deploy.helpers import DEPLOY, LEONARDO, LOCAL, REPO, rel

SAMPLE_CONFIGS = sorted((DEPLOY / "config").glob("*.yaml"))
SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "interlink-slurm.service"
ENV_FILE = SYSTEMD / "interlink-slurm.env"
INTERLINK = DEPLOY / "interlink"

# interLink 0.6 API server configuration keys (pkg/interlink/config.go, type Config).
INTERLINK_API_KEYS = {
    "InterlinkAddress",
    "InterlinkPort",
    "SidecarURL",
    "SidecarPort",
    "JobScriptBuildConfig",
    "JobScriptTemplate",
    "VerboseLogging",
    "ErrorsOnlyLogging",
    "DataRootFolder",
    "TLS",
    "Pprof",
    "Tracing",
    "ExportPodData",
}


def env_file_entries(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{rel(path)}: {line!r} is not KEY=VALUE"
            entries[key] = value
    return entries


def unit_entries(path: Path) -> dict[str, dict[str, list[str]]]:
    """[Section] -> key -> values (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        assert current, f"{rel(path)}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{rel(path)}: {line!r} is not Key=Value"
        sections[current].setdefault(key.strip(), []).append(value.strip())
    return sections


def test_there_is_a_leonardo_and_a_local_profile() -> None:
    assert {p.name for p in SAMPLE_CONFIGS} >= {"leonardo.yaml", "local.yaml"}


@pytest.mark.parametrize("path", SAMPLE_CONFIGS, ids=lambda p: p.name)
def test_sample_config_loads_with_the_real_loader(path: Path) -> None:
    settings = load_settings(path)
    # Every key written in the file is one the service knows (the loader forbids others too).
    assert set(yaml.safe_load(path.read_text())) <= set(Settings.model_fields)
    assert settings.data_root.is_absolute()


def test_leonardo_profile_has_its_partitions_gpus_and_an_account_placeholder() -> None:
    s = load_settings(LEONARDO)
    assert s.partition == "dcgp_usr_prod"
    assert s.gpu_partition == "boost_usr_prod"
    assert s.account and "CHANGEME" in s.account
    assert s.runtime in ("singularity", "apptainer")
    # Compute nodes have no internet: every image is a staged SIF file.
    assert s.images and all(v.endswith(".sif") for v in s.images.values())
    assert [t.key for t in s.taints] == ["virtual-node.interlink/no-schedule"]
    text = LEONARDO.read_text()
    assert "4x NVIDIA A100 64 GB" in text and "32 cores" in text


def test_local_profile_runs_on_the_dev_cluster_image() -> None:
    s = load_settings(LOCAL)
    assert s.runtime == "charliecloud"
    assert set(s.images.values()) == {"/var/cache/interlink-slurm/images/debian-python"}
    assert s.gpu_type == "a100"


def test_env_file_overrides_are_configuration_keys() -> None:
    entries = env_file_entries(ENV_FILE)
    assert entries["INTERLINK_SLURM_CONFIG"] == "/etc/interlink-slurm/config.yaml"
    commented = [
        line.lstrip("# ").partition("=")[0]
        for line in ENV_FILE.read_text().splitlines()
        if line.startswith("# INTERLINK_SLURM_")
    ]
    keys = [k for k in [*entries, *commented] if k.startswith("INTERLINK_SLURM_")]
    assert keys
    fields = set(Settings.model_fields)
    for key in keys:
        name = key.removeprefix("INTERLINK_SLURM_").lower()
        assert name == "config" or name in fields, f"{key} is not a configuration key"


def test_env_file_overrides_apply_to_the_leonardo_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commented examples, switched on, still give a valid configuration."""
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("# INTERLINK_SLURM_"):
            key, _, value = line.lstrip("# ").partition("=")
            monkeypatch.setenv(key, value)
    s = load_settings(LEONARDO)
    assert s.log_level == "debug"
    assert s.sbatch_extra == ["--qos=boost_qos_dbg"]


def test_systemd_unit_runs_serve_with_the_env_file_and_the_socket_directory() -> None:
    unit = unit_entries(UNIT)
    service = unit["Service"]
    assert service["EnvironmentFile"] == ["/etc/interlink-slurm/interlink-slurm.env"]
    exec_start = service["ExecStart"][0].split()
    assert exec_start[0].endswith("/bin/interlink-slurm") and exec_start[1] == "serve"
    assert service["User"] != ["root"]
    assert service["NoNewPrivileges"] == ["yes"]
    # The unix socket of the Leonardo profile lives in the unit's RuntimeDirectory.
    listen = load_settings(LEONARDO).listen_unix_path
    assert listen is not None
    assert Path(listen).parent == Path("/run") / service["RuntimeDirectory"][0]
    # The SQLite index lives in the unit's StateDirectory.
    assert (
        load_settings(LEONARDO).state_db_path.parent
        == Path("/var/lib") / (service["StateDirectory"][0])
    )
    # data_root of the Leonardo profile is writable despite ProtectSystem=strict.
    writable = [p.lstrip("-") for p in " ".join(service["ReadWritePaths"]).split()]
    data_root = str(load_settings(LEONARDO).data_root)
    assert any(data_root.startswith(p + "/") for p in writable)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart is executable: point it at one that exists here.
    text = UNIT.read_text().replace("/opt/interlink-slurm/venv/bin/interlink-slurm", "/bin/true")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@pytest.mark.parametrize("path", sorted(INTERLINK.glob("*.yaml")), ids=lambda p: p.name)
def test_interlink_api_config_uses_interlink_keys(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert set(config) <= INTERLINK_API_KEYS, set(config) - INTERLINK_API_KEYS
    # interLink's Go struct reads ports as strings.
    assert all(isinstance(config[k], str) for k in ("InterlinkPort", "SidecarPort"))
    assert config["InterlinkAddress"].startswith(("http://", "https://", "unix://"))
    assert config["SidecarURL"].startswith(("http://", "unix://"))


def plugin_address(listen: str) -> tuple[str, str]:
    """What interLink must say (SidecarURL, SidecarPort) to reach a plugin listening there."""
    if listen.startswith("unix://"):
        return listen, ""
    host, _, port = listen.rpartition(":")
    return f"http://{host}", port


def test_socket_interlink_config_points_at_the_leonardo_plugin() -> None:
    config = yaml.safe_load((INTERLINK / "InterLinkConfig.yaml").read_text())
    url, _ = plugin_address(load_settings(LEONARDO).listen)
    assert config["SidecarURL"] == url


def test_tcp_interlink_config_points_at_the_local_plugin() -> None:
    config = yaml.safe_load((INTERLINK / "InterLinkConfig-tcp.yaml").read_text())
    assert (config["SidecarURL"], config["SidecarPort"]) == plugin_address(
        load_settings(LOCAL).listen
    )


def test_socket_mode_of_the_leonardo_profile_lets_interlinks_group_connect() -> None:
    assert load_settings(LEONARDO).socket_mode == 0o660


def test_configs_are_found_where_the_docs_say() -> None:
    guide = (REPO / "docs" / "operator-guide.md").read_text()
    for path in [*SAMPLE_CONFIGS, UNIT, ENV_FILE, *INTERLINK.glob("*.yaml")]:
        assert rel(path) in guide, f"docs/operator-guide.md does not mention {rel(path)}"
