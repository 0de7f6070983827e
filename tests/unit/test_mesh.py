"""interLink's full mesh: the EOFMESH heredoc the virtual kubelet prepends to the pre-exec
becomes mesh.sh in the pod directory, and the containers are started through it."""

from __future__ import annotations

import pytest

from interlink_slurm.config import load_settings
from interlink_slurm.translate.annotations import PRE_EXEC, split_mesh
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg

MESH_BODY = '#!/bin/bash\nset -e\nunshare --net "$@" &\nfg 1\n'
HEREDOC = f"cat <<'EOFMESH' > $TMPDIR/mesh.sh\n{MESH_BODY}EOFMESH\n"


@pytest.mark.parametrize(
    ("text", "mesh", "rest"),
    [
        (HEREDOC + "module load x\n", MESH_BODY, "module load x\n"),
        ("export A=1\n" + HEREDOC, MESH_BODY, "export A=1\n"),
        (HEREDOC.replace("$TMPDIR", "${TMPDIR}"), MESH_BODY, ""),
        # Not interLink's heredoc, or never closed: the pre-exec runs as written.
        ("cat <<'EOF' > $TMPDIR/mesh.sh\nx\nEOF\n", None, None),
        ("cat <<'EOFMESH' > $TMPDIR/mesh.sh\nx\n", None, None),
        ("echo EOFMESH\n", None, None),
    ],
)
def test_the_mesh_heredoc_is_split_from_the_rest_of_the_pre_exec(
    text: str, mesh: str | None, rest: str | None
) -> None:
    assert split_mesh(text) == (mesh, text if rest is None else rest)


def plan_with_pre_exec(text: str) -> JobPlan:
    the_pod = pg.pod(
        "p",
        [pg.container("main", command=["true"])],
        init=[pg.container("init", command=["true"])],
        annotations={PRE_EXEC: text},
    )
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod))
    return build_plan(data, load_settings(None, data_root="/data/ils"), "/data/ils/default/p")


def test_a_mesh_pod_gets_mesh_sh_and_its_containers_start_through_it() -> None:
    plan = plan_with_pre_exec(HEREDOC + "module load x\n")
    files = {f.path: f for f in plan.files}
    assert files["mesh.sh"].content.decode() == MESH_BODY
    assert files["mesh.sh"].mode == 0o700
    pre_exec = files["pre-exec.sh"].content.decode()
    assert "module load x" in pre_exec and "EOFMESH" not in pre_exec
    script = render_script(plan)
    assert 'bash ./mesh.sh /bin/bash "$POD_DIR/mesh-pod.sh"\n' in script
    # The mesh's shell gets the job's library as job.sh does (its functions and variables, such
    # as ILS_AFTER_LAUNCH for a launcher), and of this script only its variables and ils_pod.
    assert """  echo 'cd "$POD_DIR" || exit 1; . ./ils.sh || exit 1'\n""" in script
    assert "  declare -f ils_pod\n" in script
    body = script.split("ils_pod() {", 1)[1].split("\n}\n", 1)[0]
    assert "ils_container init" in body and "ils_container main" in body
    # Inside a function every exit of the containers' part is a return.
    code = [line for line in body.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "exit" in line] and '  return "$status"' in code
    # The pre-exec still runs before, outside the mesh.
    assert script.index(". ./pre-exec.sh") < script.index("ils_pod() {")


def test_a_pod_whose_pre_exec_is_only_the_mesh_has_no_pre_exec_file() -> None:
    plan = plan_with_pre_exec(HEREDOC)
    assert plan.pre_exec is None and plan.mesh == "mesh.sh"
