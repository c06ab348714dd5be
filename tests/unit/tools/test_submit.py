"""tools/submit.py: PBS and Slurm job scripts that auto-resume and stop before the walltime."""

from __future__ import annotations

import subprocess

import pytest

from tools.submit import main, walltime_minutes


def test_walltime_parsing():
    assert walltime_minutes("06:00:00") == 360 and walltime_minutes("00:30:30") == 31 and walltime_minutes("45") == 45


@pytest.mark.parametrize("scheduler", ["pbs", "slurm"])
def test_job_script_resumes_from_its_save_dir_and_exits_before_walltime(tmp_path, scheduler):
    out = tmp_path / "job.sh"
    args = ["--scheduler", scheduler, "--nodes", "4", "--walltime", "01:00:00", "--save", "/ckpt/run 1",
            "--queue", "q", "--account", "proj", "--env", "LR=2e-4", "--env", "OPT=muon",
            "--output", str(out), "--", "--finetune"]
    assert main(args) == 0
    text = out.read_text()
    assert "export SAVE='/ckpt/run 1'" in text and "export LOAD='/ckpt/run 1'" in text
    assert "export EXIT_DURATION_MINS=50" in text and "export OPT=muon" in text
    # Stopped before the walltime with iterations left (75): the job queues its successor.
    again = "qsub" if scheduler == "pbs" else "sbatch"
    assert "status=0; bash train_alcf.sh --finetune || status=$?" in text
    assert f'if [[ "$status" == 75 ]]; then {again} {out}; exit 0; fi' in text
    if scheduler == "pbs":
        assert "#PBS -l select=4" in text and "#PBS -l walltime=01:00:00" in text and "#PBS -A proj" in text
    else:
        assert "#SBATCH --nodes=4" in text and "#SBATCH --requeue" in text and "#SBATCH --signal=TERM@120" in text
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0  # valid bash


def test_bad_input_exits_2(tmp_path, capsys):
    base = ["--scheduler", "pbs", "--nodes", "1", "--save", "x", "--output", str(tmp_path / "j.sh")]
    assert main([*base, "--walltime", "00:05:00"]) == 2
    assert "leaves no time" in capsys.readouterr().err
    assert main([*base, "--walltime", "01:00:00", "--env", "LR"]) == 2
    assert "expected VAR=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", ["pbs", "slurm"])
def test_plan_job_runs_the_plan_and_resubmits_itself_until_done(tmp_path, scheduler):
    out = tmp_path / "cpt.sh"
    plan = tmp_path / "plan.yaml"
    assert main(["--scheduler", scheduler, "--nodes", "2", "--walltime", "02:00:00", "--plan", str(plan),
                 "--output", str(out)]) == 0
    text = out.read_text()
    again = "qsub" if scheduler == "pbs" else "sbatch"
    assert f"export CPT_PLAN={plan}" in text and "SAVE" not in text
    assert "bash train_alcf.sh --time-limit-mins 110 || status=$?" in text
    assert f'if [[ "$status" == 75 ]]; then {again} {out}; exit 0; fi' in text
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    # The job's logic: 75 resubmits and succeeds, 0 ends, anything else fails the job.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / again).write_text(f"#!/bin/bash\necho resubmitted \"$@\" > {tmp_path}/resubmitted\n")
    (fake / again).chmod(0o755)
    script = text.split("export CPT_PLAN")[0] + "\n".join(text.splitlines()[-3:]).replace(
        "bash train_alcf.sh --time-limit-mins 110", "(exit $CODE)")
    for code, rc in ((75, 0), (0, 0), (2, 2)):
        result = subprocess.run(["bash", "-c", script], env={"PATH": f"{fake}:/usr/bin:/bin", "CODE": str(code)})
        assert result.returncode == rc
    assert (tmp_path / "resubmitted").read_text().strip() == f"resubmitted {out}"


def test_plan_or_save_is_required(tmp_path, capsys):
    assert main(["--scheduler", "pbs", "--nodes", "1", "--walltime", "01:00:00"]) == 2
    assert "give --save (one run) or --plan" in capsys.readouterr().err
