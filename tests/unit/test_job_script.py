"""interLink's own job script (RetrievedPodData.jobScript): run as the pod's work inside the
plugin's job, ignored, or refused, as the site says (job_script)."""

from __future__ import annotations

from typing import Any

import pytest

from interlink_slurm.config import load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg

SCRIPT = "#!/bin/bash\n#SBATCH --job-name=from-interlink\nsrun hostname\n"


def plan(policy: str, **settings: Any) -> JobPlan:
    the_pod = pg.pod(
        "p",
        [pg.container("main", image="not-staged:1"), pg.container("side", command=["x"])],
        init=[pg.container("setup", command=["y"])],
    )
    data = pg.retrieved(the_pod)
    data["jobScript"] = SCRIPT
    s = load_settings(None, data_root="/data/ils", job_script=policy, **settings)
    return build_plan(RetrievedPodData.model_validate(data), s, "/data/ils/default/p")


def test_run_makes_the_script_the_first_container_s_work_with_the_pod_s_resources() -> None:
    # Charliecloud could not run the pod's own image: the script does not need it.
    p = plan("run", runtime="charliecloud", account="proj1")
    files = {f.path: f for f in p.files}
    assert files["job-script.sh"].content.decode() == SCRIPT
    assert files["job-script.sh"].mode == 0o700
    assert p.runtime_argv["main"] == ("bash", "./job-script.sh")
    assert p.runtime_argv["setup"] == ("true",)
    assert p.runtime_argv["side"][:2] == ("bash", "-c") and p.runtime_argv["side"][-1] == "main"
    assert "--account=proj1" in p.directives
    assert all(c.binds == () and c.env == () for c in (*p.init_containers, *p.containers))
    script = render_script(p)
    assert "ils_container main bash ./job-script.sh &" in script


def test_ignore_builds_the_job_from_the_pod() -> None:
    p = plan("ignore")
    assert "job-script.sh" not in {f.path for f in p.files}
    assert p.runtime_argv["main"][0] == "apptainer"


def test_refuse_answers_422_naming_the_job_script() -> None:
    with pytest.raises(PodRejected) as info:
        plan("refuse")
    assert info.value.field == "jobScript"
    assert "job_script: refuse" in info.value.reason
