"""Real Kubernetes pods, as the API server defaults them, on the real local Slurm + Charliecloud.

The image is a hard-linked copy of the test image whose /var/run is an absolute symlink to /run,
as debootstrap and most distributions make it: seen from the host it would point at the host's
/run, so every mount target is looked up inside the image.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import podgen, squashfs
from tests.integration.conftest import (
    LoginNode,
    Plugin,
    all_terminated,
    ssh_plugin,
    states,
    user_dir,
)

pytestmark = pytest.mark.slurm

KUBE_IMAGE = "kube-image"
IMAGE_PATH = "/opt/image/bin:/usr/local/bin:/usr/bin:/bin"  # the image's ENV PATH
IMAGE_WORKDIR = "/srv"  # the image's WORKDIR
SQUASHFS_IMAGE = "kube-image-sqfs"


def hard_linked_image(source: str, into: Path) -> Path:
    """A copy of the image sharing its files' contents (new directories, so nothing done to the
    copy's entries reaches the shared image)."""
    subprocess.run(["cp", "-al", "--", source, str(into)], check=True)
    return into


def ch_files(img: Path, from_image: str, history: list[dict[str, str]]) -> None:
    """What ch-image keeps of an image pulled from a registry, in its ch/: metadata.json
    (json.dumps(indent=2, sort_keys=True)) with the build history (ENTRYPOINT and CMD: the
    image's own command for a container that sets none), ENV and WORKDIR; and the ENV again in
    ch/environment, for ch-run's --set-env. Existing files are replaced, never written through
    (a hard-linked copy's are the original's)."""
    env = {"PATH": IMAGE_PATH, "ILS_FROM_IMAGE": from_image, "ILS_SHARED": "image"}
    metadata = {"arch": "amd64", "cwd": IMAGE_WORKDIR, "env": env, "history": history}
    (img / "ch").mkdir(exist_ok=True)
    for name, text in (
        ("metadata.json", json.dumps(metadata, indent=2, sort_keys=True)),
        ("environment", "".join(f"{k}={v}\n" for k, v in sorted(env.items()))),
    ):
        (img / "ch" / name).unlink(missing_ok=True)
        (img / "ch" / name).write_text(text)


@pytest.fixture(scope="module")
def kimage(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = hard_linked_image(cluster["ILS_IMAGE"], tmp_path_factory.mktemp("kimg") / "img")
    run = img / "var" / "run"
    run.unlink()
    os.symlink("/run", run)
    history = [
        {"created_by": '/bin/sh -c #(nop)  CMD ["bash"]'},
        {"created_by": 'ENTRYPOINT ["python3","-c"]'},
        {"created_by": "CMD [\"print('the image cmd')\"]"},
    ]
    ch_files(img, "image", history)
    return img


@pytest.fixture(scope="module")
def ksquashfs(kimage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kimage (its /var/run an absolute link) with ch/ files of its own, packed as ch-convert
    packs a SquashFS image (not compressed here: 0.5 s instead of 10)."""
    work = tmp_path_factory.mktemp("ksqfs")
    img = hard_linked_image(str(kimage), work / "img")
    ch_files(
        img, "squashfs", [{"created_by": 'CMD ["python3", "-c", "print(\'the squashfs cmd\')"]'}]
    )
    return squashfs.pack(img, work / "img.sqfs", compressed=False)


@pytest.fixture(scope="module")
def kplugin(
    cluster: dict[str, str],
    kimage: Path,
    ksquashfs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Plugin]:
    workdir = tmp_path_factory.mktemp("real-pods")
    p = Plugin(
        workdir,
        cluster,
        images={
            "debian-python": cluster["ILS_IMAGE"],
            KUBE_IMAGE: str(kimage),
            SQUASHFS_IMAGE: str(ksquashfs),
        },
        status_refresh_seconds=0.5,
    )
    p.start()
    try:
        yield p
    finally:
        p.stop()


def run_to_end(plugin: Plugin, data: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    plugin.create_ok(data)
    return plugin.wait_for(data["pod"], all_terminated, timeout)


def test_service_account_volume_is_read_through_the_image_s_absolute_var_run_link(
    kplugin: Plugin, kimage: Path
) -> None:
    assert os.readlink(kimage / "var" / "run") == "/run"
    sa = podgen.SA_MOUNT_PATH
    the_pod = podgen.pod(
        "sa-pod",
        [
            podgen.container(
                "main",
                f"import os; d = {sa!r}\n"
                "print(open(d + '/ca.crt').read().splitlines()[0])\n"
                "print(open(d + '/namespace').read(), len(open(d + '/token').read()) > 0)",
                image=KUBE_IMAGE,
            )
        ],
    )
    data = podgen.kube_retrieved(the_pod)
    status = run_to_end(kplugin, data)
    st = states(status)["main"]["terminated"]
    assert st["exitCode"] == 0, (st, kplugin.logs(the_pod, "main").text)
    assert kplugin.logs(the_pod, "main").text == "-----BEGIN CERTIFICATE-----\ndefault True\n"
    assert "warning" not in (st.get("message") or "")


def test_disable_projected_volumes_runs_the_pod_without_the_token_and_says_so(
    kplugin: Plugin,
) -> None:
    sa = podgen.SA_MOUNT_PATH
    the_pod = podgen.pod(
        "no-sa",
        [
            podgen.container(
                "main",
                f"import os; print(sorted(os.listdir({sa!r})))",
                image=KUBE_IMAGE,
            )
        ],
    )
    data = podgen.kube_retrieved(the_pod, projected_volumes=False)
    status = run_to_end(kplugin, data)
    st = states(status)["main"]["terminated"]
    assert st["exitCode"] == 0
    assert kplugin.logs(the_pod, "main").text == "[]\n"
    assert "warning" in st["message"] and podgen.sa_volume_name(the_pod) in st["message"]


def test_a_mount_path_the_read_only_image_lacks_is_left_out_with_a_warning(
    kplugin: Plugin,
) -> None:
    the_pod = podgen.pod(
        "no-target",
        [
            podgen.container(
                "main",
                "import os; print(os.path.exists('/opt/nowhere'), os.path.exists('/mnt/config/k'))",
                image=KUBE_IMAGE,
                volumeMounts=[
                    {"name": "cfg", "mountPath": "/opt/nowhere"},
                    {"name": "cfg", "mountPath": "/mnt/config"},
                ],
            )
        ],
        volumes=[{"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}}],
    )
    data = podgen.kube_retrieved(the_pod, config_maps=[podgen.config_map("cfg", {"k": "v"})])
    status = run_to_end(kplugin, data)
    st = states(status)["main"]["terminated"]
    assert st["exitCode"] == 0
    assert kplugin.logs(the_pod, "main").text == "False True\n"
    assert "/opt/nowhere" in st["message"] and "does not exist in image" in st["message"]


# --- isolation like a pod ------------------------------------------------------------------------


def job_processes(job_id: str) -> list[int]:
    """Processes alive with the job's id in their environment (the plugin's own are not)."""
    marker = f"SLURM_JOB_ID={job_id}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if marker in env.split(b"\0") and not stat.rsplit(")", 1)[1].split()[0].startswith("Z"):
            out.append(int(entry))
    return out


def wait_until_gone(cluster: dict[str, str], job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while slurm_state(cluster, job_id) not in ("", "COMPLETED", "CANCELLED", "FAILED"):
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.3)


def slurm_state(cluster: dict[str, str], job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-a", "--states=all", "-j", job_id, "-o", "%T"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
        check=False,
    )
    return out.stdout.strip()


# A container that leaves processes behind: a child in its own process group, and a daemon
# that double-forks into a session of its own (out of the container's process group).
LEAVER = """
import os, subprocess, sys, time
subprocess.Popen(["sleep", "1000"], start_new_session=False)
subprocess.Popen(["sleep", "1001"], start_new_session=False, preexec_fn=os.setpgrp)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1002)
    os._exit(0)
print("left children", flush=True)
"""


def test_a_deleted_pod_leaves_no_process_of_its_job_alive(
    kplugin: Plugin, cluster: dict[str, str]
) -> None:
    the_pod = podgen.pod(
        "leaves-behind",
        [
            podgen.container("main", LEAVER + "time.sleep(1000)\n"),
            podgen.container(
                "probed",
                "import time; time.sleep(1000)",
                readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 60},
                volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
            ),
        ],
        volumes=[{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        terminationGracePeriodSeconds=20,
    )
    data = podgen.kube_retrieved(the_pod)
    job_id = kplugin.create_ok(data)
    kplugin.wait_for_log(the_pod, "main", "left children\n")
    assert len(job_processes(job_id)) > 5  # the job's processes are seen as such
    assert kplugin.delete(the_pod).status_code == 200
    wait_until_gone(cluster, job_id)
    deadline = time.monotonic() + 10  # slurmstepd's last cleanup may take a moment
    while job_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_processes(job_id) == []


def test_a_container_that_ends_takes_what_it_left_behind_with_it(
    kplugin: Plugin, cluster: dict[str, str]
) -> None:
    leaver = LEAVER.replace("time.sleep(1002)", "time.sleep(1002)\n    os._exit(0)")
    the_pod = podgen.pod(
        "ends-alone",
        [
            podgen.container("leaver", leaver),
            podgen.container("stayer", "import time; time.sleep(1000)"),
        ],
        terminationGracePeriodSeconds=1,
    )
    job_id = kplugin.create_ok(podgen.kube_retrieved(the_pod))
    kplugin.wait_for(the_pod, lambda s: "terminated" in states(s)["leaver"])
    assert "running" in states(kplugin.pod_status(the_pod))["stayer"]
    # Its own process group and session are gone with it; the daemon that made a session of
    # its own is not, while the job runs (it is when the job ends: see the test above).
    sleeps = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in job_processes(job_id)}
    assert not [p for p, cmd in sleeps.items() if cmd in (b"sleep\x001000\x00",)]
    assert not [p for p, cmd in sleeps.items() if cmd in (b"sleep\x001001\x00",)]
    kplugin.delete(the_pod)
    wait_until_gone(cluster, job_id)


def test_each_container_has_a_private_tmp(kplugin: Plugin, tmp_path: Path) -> None:
    marker = f"ils-private-tmp-{tmp_path.name}"
    the_pod = podgen.pod(
        "private-tmp",
        [
            podgen.container(
                "writer",
                f"open('/tmp/{marker}', 'w').write('x'); import os; print(os.listdir('/tmp'))",
            ),
        ],
        init=[podgen.container("before", f"open('/tmp/{marker}-init', 'w').write('x')")],
    )
    status = run_to_end(kplugin, podgen.kube_retrieved(the_pod))
    assert states(status)["writer"]["terminated"]["exitCode"] == 0
    assert kplugin.logs(the_pod, "writer").text == f"[{marker!r}]\n"
    assert not Path(f"/tmp/{marker}").exists()
    assert not Path(f"/tmp/{marker}-init").exists()


HOSTS_CHECK = """
import os, socket
print(socket.gethostbyname("db.internal"), socket.gethostbyname("cache"), os.environ["HOSTNAME"])
print(open("/etc/hosts").read().splitlines()[-3:])
"""


def test_host_aliases_are_in_every_containers_etc_hosts_and_hostname_is_the_pods(
    kplugin: Plugin,
) -> None:
    the_pod = podgen.pod(
        "host-aliases",
        [podgen.container("main", HOSTS_CHECK)],
        init=[podgen.container("setup", 'print(open("/etc/hosts").read().count("db.internal"))')],
        hostAliases=[
            {"ip": "10.9.8.7", "hostnames": ["db.internal", "cache"]},
            {"ip": "fd00::7", "hostnames": ["v6.internal"]},
        ],
    )
    status = run_to_end(kplugin, podgen.kube_retrieved(the_pod))
    assert states(status)["main"]["terminated"]["exitCode"] == 0, status
    assert kplugin.logs(the_pod, "setup").text == "1\n"
    first, last = kplugin.logs(the_pod, "main").text.splitlines()
    assert first == "10.9.8.7 10.9.8.7 host-aliases"
    # The node's own entries stay (its localhost line among them), the pod's come after.
    assert last == repr(
        ["# Entries added by HostAliases.", "10.9.8.7\tdb.internal cache", "fd00::7\tv6.internal"]
    )
    node_hosts = Path("/etc/hosts").read_text()
    assert (kplugin.pod_dir(the_pod) / "hosts").read_text().startswith(node_hosts)


@pytest.fixture(scope="module")
def user_plugin(
    cluster: dict[str, str], login_node: LoginNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plugin]:
    """Jobs as an ordinary user (over SSH): file permissions hold that user back, not root."""
    p = ssh_plugin(tmp_path_factory.mktemp("real-pods-user"), cluster, login_node)
    p.start()
    try:
        yield p
    finally:
        p.stop()


READ_ONLY_CHECK = """
import os
for path in ("/mnt/config/k", "/mnt/config/new", "/mnt/secret/s", "/mnt/data/new"):
    try:
        open(path, "a").write("x")
        print(path, "written")
    except OSError as err:
        print(path, type(err).__name__)
"""


def test_read_only_mounts_are_not_writable_under_charliecloud(user_plugin: Plugin) -> None:
    the_pod = podgen.pod(
        "read-only",
        [
            podgen.container(
                "main",
                READ_ONLY_CHECK,
                volumeMounts=[
                    {"name": "cfg", "mountPath": "/mnt/config", "readOnly": True},
                    {"name": "sec", "mountPath": "/mnt/secret"},  # secrets: always read-only
                    {"name": "data", "mountPath": "/mnt/data"},
                ],
            )
        ],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}},
            {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 420}},
            {"name": "data", "emptyDir": {}},
        ],
    )
    data = podgen.kube_retrieved(
        the_pod,
        config_maps=[podgen.config_map("cfg", {"k": "v"})],
        secrets=[podgen.secret("sec", {"s": "t"})],
    )
    status = run_to_end(user_plugin, data)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert user_plugin.logs(the_pod, "main").text == (
        "/mnt/config/k PermissionError\n"
        "/mnt/config/new PermissionError\n"
        "/mnt/secret/s PermissionError\n"
        "/mnt/data/new written\n"
    )


# --- a container without command ----------------------------------------------------------------


def test_a_container_without_command_runs_the_image_s_entrypoint_and_cmd(kplugin: Plugin) -> None:
    the_pod = podgen.pod(
        "image-command",
        [
            podgen.container("default", image=KUBE_IMAGE),
            podgen.container("with-args", image=KUBE_IMAGE, args=["print('the pod args')"]),
        ],
    )
    status = run_to_end(kplugin, podgen.kube_retrieved(the_pod))
    assert {n: s["terminated"]["exitCode"] for n, s in states(status).items()} == {
        "default": 0,
        "with-args": 0,
    }
    assert kplugin.logs(the_pod, "default").text == "the image cmd\n"
    assert kplugin.logs(the_pod, "with-args").text == "the pod args\n"


def test_the_image_s_env_and_workdir_apply_under_the_pod_s_own(kplugin: Plugin) -> None:
    # As a kubelet runs an image: its ENV, then the pod's env over it (a value with a newline
    # too); its WORKDIR unless the container sets workingDir.
    script = (
        "import os; e = os.environ\n"
        "print(os.getcwd(), e['PATH'], e['ILS_FROM_IMAGE'], repr(e['ILS_SHARED']))"
    )
    shared = {"name": "ILS_SHARED", "value": "pod\nvalue"}
    the_pod = podgen.pod(
        "image-config",
        [
            podgen.container("image-wd", script, image=KUBE_IMAGE, env=[shared]),
            podgen.container("own-wd", script, image=KUBE_IMAGE, workingDir="/tmp"),
        ],
    )
    status = run_to_end(kplugin, podgen.kube_retrieved(the_pod))
    assert {n: s["terminated"]["exitCode"] for n, s in states(status).items()} == {
        "image-wd": 0,
        "own-wd": 0,
    }
    logs = {c: kplugin.logs(the_pod, c).text for c in ("image-wd", "own-wd")}
    assert logs == {
        "image-wd": f"/srv {IMAGE_PATH} image 'pod\\nvalue'\n",
        "own-wd": f"/tmp {IMAGE_PATH} image 'image'\n",
    }


def test_a_squashfs_image_s_env_and_workdir_apply_too(kplugin: Plugin) -> None:
    # ch-run runs a SquashFS file (ch-convert's format) through squashfuse; the job reads its
    # ch/ files with unsquashfs -cat. The service-account volume is bound through the image's
    # absolute /var/run link, looked up inside the file with unsquashfs at create.
    token = f"{podgen.SA_MOUNT_PATH}/token"
    script = (
        "import os; e = os.environ\n"
        f"print(os.getcwd(), e['PATH'], e['ILS_FROM_IMAGE'], open({token!r}).read() != '')"
    )
    # The plugin reads the image's own command (CMD here) from it at create, the same way.
    default = podgen.container("default", image=SQUASHFS_IMAGE)
    main = podgen.container("main", script, image=SQUASHFS_IMAGE)
    the_pod = podgen.pod("squashfs", [main, default])
    status = run_to_end(kplugin, podgen.kube_retrieved(the_pod))
    for name in ("main", "default"):
        st = states(status)[name]["terminated"]
        assert st["exitCode"] == 0, (st, kplugin.logs(the_pod, name).text)
    assert kplugin.logs(the_pod, "main").text == f"/srv {IMAGE_PATH} squashfs True\n"
    assert kplugin.logs(the_pod, "default").text == "the squashfs cmd\n"


def test_an_image_without_a_command_of_its_own_is_refused_naming_it(kplugin: Plugin) -> None:
    the_pod = podgen.pod("no-image-command", [podgen.container("main")])
    r = kplugin.create(podgen.kube_retrieved(the_pod))
    assert r.status_code == 422, r.text
    assert "spec.containers[0].command" in r.text and "ch/metadata.json" in r.text


# --- securityContext -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uid_plugin(
    cluster: dict[str, str], remote: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plugin]:
    """The plugin as root with the local sbatch, namespace team-a allowed the job user's uid."""
    user = remote["ILS_REMOTE_USER"]
    uid = pwd.getpwnam(user).pw_uid
    p = Plugin(
        tmp_path_factory.mktemp("real-pods-uid"),
        cluster,
        # Reachable by the job's user: the pod's directory is handed to it.
        data_root=str(user_dir(user, "uid") / "data"),
        namespace_uids={"team-a": str(uid)},
    )
    p.start()
    try:
        yield p
    finally:
        p.stop()


def test_run_as_user_selects_the_job_s_unix_user_where_the_namespace_may(
    uid_plugin: Plugin, remote: dict[str, str]
) -> None:
    uid = pwd.getpwnam(remote["ILS_REMOTE_USER"]).pw_uid
    show = "import os; print(os.getuid())"
    allowed = podgen.pod(
        "as-user",
        [podgen.container("main", show)],
        namespace="team-a",
        securityContext={"runAsUser": uid, "runAsNonRoot": True},
    )
    elsewhere = podgen.pod(
        "as-root",
        [podgen.container("main", show)],
        namespace="team-b",
        securityContext={"runAsUser": uid},
    )
    for the_pod in (allowed, elsewhere):
        uid_plugin.create_ok(podgen.kube_retrieved(the_pod))
    done = {
        p["metadata"]["name"]: uid_plugin.wait_for(p, all_terminated) for p in (allowed, elsewhere)
    }
    assert states(done["as-user"])["main"]["terminated"]["exitCode"] == 0, (
        uid_plugin.logs(allowed, "main").text,
        (uid_plugin.pod_dir(allowed) / "job.out").read_text(),
    )
    assert uid_plugin.logs(allowed, "main").text == f"{uid}\n"
    assert "warning" not in (states(done["as-user"])["main"]["terminated"].get("message") or "")
    # team-b may not: the job runs as the plugin's user (root here), and the status says so.
    assert uid_plugin.logs(elsewhere, "main").text == "0\n"
    message = states(done["as-root"])["main"]["terminated"]["message"]
    assert "runAsUser" in message and "namespace team-b may not run as uid" in message


def test_run_as_non_root_is_refused_when_the_job_would_run_as_root(uid_plugin: Plugin) -> None:
    the_pod = podgen.pod(
        "non-root", [podgen.container("main", "print(1)")], securityContext={"runAsNonRoot": True}
    )
    r = uid_plugin.create(podgen.kube_retrieved(the_pod))
    assert r.status_code == 422, r.text
    assert "spec.securityContext.runAsNonRoot" in r.text


# --- interLink's full mesh -----------------------------------------------------------------------

# A stand-in for the script interLink's virtual kubelet prepends (Network.FullMesh): the same
# heredoc and the same contract, its arguments run inside a network namespace of its own, here
# without slirp4netns and WireGuard.
STANDIN_MESH = """cat <<'EOFMESH' > $TMPDIR/mesh.sh
#!/bin/bash
set -e
set -m
echo "=== Starting network namespace ==="
unshare --user --map-root-user --net --mount "$@" &
fg 1
EOFMESH
echo "the rest of the pre-exec ran"
"""


def test_full_mesh_pre_exec_runs_the_containers_inside_the_mesh(kplugin: Plugin) -> None:
    show = "import os; print(os.readlink('/proc/self/ns/net'))"
    the_pod = podgen.pod(
        "in-mesh",
        [podgen.container("a", show), podgen.container("b", show + "; raise SystemExit(3)")],
        init=[podgen.container("setup", show)],
        annotations={"slurm-job.vk.io/pre-exec": STANDIN_MESH},
    )
    status = run_to_end(kplugin, podgen.kube_retrieved(the_pod))
    codes = {n: s["terminated"]["exitCode"] for n, s in states(status).items()}
    assert codes == {"a": 0, "b": 3}
    assert states(status, "initContainers")["setup"]["terminated"]["exitCode"] == 0
    host = os.readlink("/proc/self/ns/net")
    seen = {kplugin.logs(the_pod, c).text.strip() for c in ("setup", "a", "b")}
    assert len(seen) == 1 and host not in seen  # one network namespace, the mesh's
    pod_dir = kplugin.pod_dir(the_pod)
    out = (pod_dir / "job.out").read_text()
    assert "=== Starting network namespace ===" in out
    assert "the rest of the pre-exec ran" in out
    assert "EOFMESH" not in (pod_dir / "pre-exec.sh").read_text()
    assert (pod_dir / "mesh.sh").read_text().startswith("#!/bin/bash\n")


# --- interLink's job script -----------------------------------------------------------------------


def test_interlink_s_job_script_runs_as_the_pod_s_work_under_its_container_names(
    kplugin: Plugin,
) -> None:
    the_pod = podgen.pod(
        "job-script",
        [podgen.container("main", "print('not run')"), podgen.container("side", "print(1)")],
        init=[podgen.container("setup", "print('not run either')")],
    )
    data = podgen.kube_retrieved(the_pod)
    data["jobScript"] = (
        "#!/bin/bash\n#SBATCH --job-name=ignored-here\n"
        'echo "from interLink\'s script in job ${SLURM_JOB_ID:+a Slurm job}"\nexit 4\n'
    )
    status = run_to_end(kplugin, data)
    assert {n: s["terminated"]["exitCode"] for n, s in states(status).items()} == {
        "main": 4,
        "side": 4,
    }
    assert states(status, "initContainers")["setup"]["terminated"]["exitCode"] == 0
    assert kplugin.logs(the_pod, "main").text == "from interLink's script in job a Slurm job\n"


def test_a_restarted_container_s_earlier_run_leaves_nothing_behind(
    kplugin: Plugin, cluster: dict[str, str], tmp_path: Path
) -> None:
    # Each run starts a child in its own process group (out of reach of a plain kill of the
    # container's process), notes its pid, and fails: restartPolicy OnFailure restarts it.
    runs = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '1003'], preexec_fn=os.setpgrp)\n"
        "open('/mnt/work/pids', 'a').write(f'{child.pid}\\n')\n"
        "n = len(open('/mnt/work/pids').read().split())\n"
        "print('run', n, flush=True)\n"
        "time.sleep(1000 if n >= 2 else 0)\n"
        "raise SystemExit(1)\n"
    )
    the_pod = podgen.pod(
        "restarts",
        [podgen.container("main", runs, volumeMounts=[{"name": "w", "mountPath": "/mnt/work"}])],
        volumes=[{"name": "w", "emptyDir": {}}],
        restartPolicy="OnFailure",
        terminationGracePeriodSeconds=1,
    )
    job_id = kplugin.create_ok(podgen.kube_retrieved(the_pod))
    kplugin.wait_for_log(the_pod, "main", "run 2\n", timeout=90)
    pids = (kplugin.pod_dir(the_pod) / "volumes" / "w" / "pids").read_text().split()
    first, second = (int(p) for p in pids)
    assert not Path(f"/proc/{first}").exists()  # the first run's child ended with its run
    assert Path(f"/proc/{second}").exists()  # the running one's is still there
    kplugin.delete(the_pod)
    wait_until_gone(cluster, job_id)


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_a_failed_run_s_log_tail_is_its_message_and_a_restart_s_last_state_keeps_it(
    request: pytest.FixtureRequest, transport: str
) -> None:
    """FallbackToLogsOnError, as the kubelet does it: the end of a failed run's log (its last 80
    lines, at most 2048 bytes) is the message of its ended state, or of its lastState once the
    container is restarted. A container with the default policy (File) gets no such message.
    Over SSH, as an ordinary user, the state reader is the shell script."""
    kplugin: Plugin = request.getfixturevalue("kplugin" if transport == "local" else "user_plugin")
    traceback = (
        "for i in range(200): print('line', i, flush=True)\n"  # before the traceback, unbuffered
        "raise ValueError('bad input: ' + 'é' * 3)\n"
    )
    flaky = (
        "import os\n"
        "first = not os.path.exists('/mnt/work/ran')\n"
        "open('/mnt/work/ran', 'a').close()\n"
        "if first:\n"
        + "".join(f"    {line}\n" for line in traceback.splitlines())
        + "print('second run, fine')\n"
    )
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    once = podgen.pod(
        "message-never",
        [
            podgen.container("broken", traceback, image="debian-python", **fallback),
            podgen.container("quiet", traceback, image="debian-python"),
            podgen.container("fine", "print('ok')", image="debian-python", **fallback),
        ],
    )
    again = podgen.pod(
        "message-restart",
        [
            podgen.container(
                "flaky",
                flaky,
                image="debian-python",
                volumeMounts=[{"name": "w", "mountPath": "/mnt/work"}],
                **fallback,
            )
        ],
        volumes=[{"name": "w", "emptyDir": {}}],
        restartPolicy="OnFailure",
    )
    for the_pod in (once, again):
        kplugin.create_ok(podgen.kube_retrieved(the_pod))
    status = kplugin.wait_for(podgen.kube_retrieved(once)["pod"], all_terminated, 90)
    ended = {n: s["terminated"] for n, s in states(status).items()}
    log = kplugin.logs(once, "broken").text
    assert ended["broken"]["exitCode"] == 1, log
    tail = "".join(log.splitlines(keepends=True)[-80:]).encode()[-2048:].decode(errors="ignore")
    assert ended["broken"]["message"] == tail
    assert ended["broken"]["message"].endswith("ValueError: bad input: ééé\n")
    assert "line 199\n" in ended["broken"]["message"]
    assert "line 100\n" not in ended["broken"]["message"]  # 80 lines at most
    assert "ValueError" not in ended["quiet"].get("message", "")
    assert "Slurm node" in ended["quiet"]["message"]  # the plugin's own note stays
    assert ended["fine"]["exitCode"] == 0 and "Slurm node" in ended["fine"]["message"]

    status = kplugin.wait_for(podgen.kube_retrieved(again)["pod"], all_terminated, 90)
    flaky_status = status["containers"][0]
    assert flaky_status["restartCount"] == 1
    assert flaky_status["state"]["terminated"]["exitCode"] == 0
    assert "ValueError" not in flaky_status["state"]["terminated"].get("message", "")
    last = flaky_status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (1, "Error")
    assert last["message"].endswith("ValueError: bad input: ééé\n")
    ended_at = flaky_status["state"]["terminated"]["startedAt"]
    when = [datetime.fromisoformat(t) for t in (last["startedAt"], last["finishedAt"], ended_at)]
    assert when == sorted(when)
