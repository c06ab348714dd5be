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
    assert text.rstrip().endswith("bash train_alcf.sh --finetune")
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
