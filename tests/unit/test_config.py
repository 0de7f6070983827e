"""Configuration: YAML + INTERLINK_SLURM_* overrides, every mistake named at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlink_slurm.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_yaml_file_is_read_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "data_root: /srv/pods\nruntime: charliecloud\n"))
    assert str(s.data_root) == "/srv/pods"
    assert s.state_db_path == Path("/srv/pods/state.db")
    assert s.runtime_binary == "ch-run"
    assert s.listen_host_port == ("127.0.0.1", 4000)
    assert s.token() is None


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLINK_SLURM_PARTITION", "boost_usr_prod")
    monkeypatch.setenv("INTERLINK_SLURM_IMAGES", '{"python:3.11": "/sif/python.sif"}')
    s = load_settings(write(tmp_path, "data_root: /srv/pods\npartition: other\n"))
    assert s.partition == "boost_usr_prod"
    assert s.images == {"python:3.11": "/sif/python.sif"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("runtime: apptainer\n", ["data_root", "Field required"]),
        ("data_root: /x\nruntim: apptainer\n", ["runtim", "unknown key"]),
        ("data_root: relative/dir\n", ["data_root", "absolute"]),
        ("data_root: /x\nruntime: docker\n", ["runtime"]),
        ("data_root: /x\npartition: 'a b'\n", ["partition", "not a valid Slurm name"]),
        ("data_root: /x\nlisten: nowhere\n", ["listen"]),
        (
            "data_root: /x\nsbatch_extra: ['--uid=0', '--job-name=x']\n",
            ["sbatch_extra", "--job-name"],
        ),
        ("data_root: /x\nsbatch_extra: ['-ofile']\n", ["sbatch_extra", "-o"]),
        ("data_root: /x\ndefault_memory: lots\n", ["default_memory", "quantity"]),
        ("data_root: /x\nauth_token: a\nauth_token_file: /t\n", ["auth_token_file"]),
        ("data_root: /x\ntaints: [{key: k, effect: Sometimes}]\n", ["taints.0.effect"]),
        ("- just\n- a list\n", ["mapping"]),
        ("data_root: [unclosed\n", ["not valid YAML"]),
        ("data_root: /x\npass_environment: ['A B']\n", ["pass_environment", "'A B'"]),
        ("data_root: /x\npass_environment: ['']\n", ["pass_environment", "variable name"]),
    ],
)
def test_a_wrong_or_missing_key_is_named(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    for w in words:
        assert w in str(err.value)


def test_missing_or_empty_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_token_file: cannot read"):
        load_settings(None, data_root="/x", auth_token_file=str(tmp_path / "none"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(None, data_root="/x", auth_token_file=str(tmp_path / "empty"))


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_settings(missing)
    assert str(err.value) == f"{missing}: cannot read: No such file or directory"


def test_an_environment_variable_that_sets_no_key_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INTERLINK_SLURM_PARTITON", "boost_usr_prod")
    with pytest.raises(ConfigError) as err:
        load_settings(None, data_root="/x")
    assert str(err.value) == (
        "environment: INTERLINK_SLURM_PARTITON: matches no configuration key "
        "(did you mean INTERLINK_SLURM_PARTITION?)"
    )


def test_environment_variables_that_set_keys_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLINK_SLURM_PARTITION", "boost_usr_prod")
    monkeypatch.setenv("INTERLINK_SLURM_CONFIG", "/not/read/here.yaml")  # the CLI's, not a key
    assert load_settings(None, data_root="/x").partition == "boost_usr_prod"


@pytest.mark.parametrize(
    "text", ["socket_mode: '0660'", "socket_mode: '0o660'", "socket_mode: 432"]
)
def test_socket_mode_is_read_as_octal(tmp_path: Path, text: str) -> None:
    s = load_settings(write(tmp_path, f"data_root: /x\n{text}\n"))
    assert s.socket_mode == 0o660


def test_a_slurm_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    # It would end the #SBATCH line and start another one.
    with pytest.raises(ConfigError, match="partition"):
        load_settings(None, data_root="/x", partition="boost_usr_prod\n")


def test_enroot_create_dir_is_an_absolute_path_for_the_enroot_runtime_only() -> None:
    s = load_settings(None, data_root="/x", runtime="enroot", enroot_create_dir="/local/enroot")
    assert s.enroot_create_dir == Path("/local/enroot")
    assert load_settings(None, data_root="/x", runtime="enroot").enroot_create_dir is None
    with pytest.raises(ConfigError) as err:
        load_settings(None, data_root="/x", runtime="apptainer", enroot_create_dir="/local")
    assert "enroot_create_dir" in str(err.value) and "apptainer" in str(err.value)
    for bad in ("local/enroot", "/local/en root", "/local:enroot"):
        with pytest.raises(ConfigError, match="enroot_create_dir"):
            load_settings(None, data_root="/x", runtime="enroot", enroot_create_dir=bad)


def test_local_slurm_commands_get_only_the_environment_the_site_passes(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "data_root: /srv/pods\nslurm_conf: /etc/slurm/other.conf\n"
            "pass_environment: [PATH, LC_*, 'SITE_?', '*TOKEN']\n",
        )
    )
    plugin_env = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "SITE_A": "kept",
        "SITE_AB": "not matched",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HOME": "/home/op",  # in the default list, not in this one
        "SLURM_CONF": "/etc/slurm/slurm.conf",  # slurm_conf wins
        # The plugin's own configuration never leaves it, even where a pattern matches.
        "INTERLINK_SLURM_AUTH_TOKEN": "the API token",
        "LAB_TOKEN": "matched",
    }
    assert s.local_command_env(plugin_env) == {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "SITE_A": "kept",
        "LAB_TOKEN": "matched",
        "SLURM_CONF": "/etc/slurm/other.conf",
    }


def test_by_default_commands_get_what_finds_programs_not_what_an_operator_exported(
    tmp_path: Path,
) -> None:
    s = load_settings(write(tmp_path, "data_root: /srv/pods\n"))
    plugin_env = {
        "PATH": "/usr/bin",
        "HOME": "/home/op",
        "USER": "op",
        "LANG": "C.UTF-8",
        "https_proxy": "http://proxy:3128",
        "APPTAINER_CACHEDIR": "/scratch/cache",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "INTERLINK_SLURM_CONFIG": "/etc/interlink-slurm/config.yaml",
        "KUBECONFIG": "/home/op/.kube/config",
        "OIDC_CLIENT_SECRET": "secret",
    }
    kept = s.local_command_env(plugin_env)
    assert set(kept) == {
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "https_proxy",
        "APPTAINER_CACHEDIR",
        "SLURM_CONF",
    }
