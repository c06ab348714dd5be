"""Hostile input: values entering a job script, duplicate plan keys."""

from __future__ import annotations

import pytest

from tools.submit import main


@pytest.mark.parametrize("flag", ["--name", "--queue", "--account", "--filesystems", "--walltime"])
def test_a_newline_in_a_job_script_value_is_refused(tmp_path, capsys, flag):
    out = tmp_path / "job.sh"
    args = {"--name": "run", "--walltime": "01:00:00", flag: "x\ntouch /tmp/pwned"}
    argv = ["--scheduler", "pbs", "--nodes", "1", "--save", "/ckpt", "--output", str(out)]
    for k, v in args.items():
        argv += [k, v]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} 'x\\ntouch /tmp/pwned'" in err and "job script" in err
    assert not out.exists()


@pytest.mark.parametrize("argv_tail", [["--env", "LR=1\nrm -rf ~"], ["--", "--lr", "1\x1b[2J"]])
def test_control_characters_in_exported_values_are_refused(tmp_path, capsys, argv_tail):
    argv = ["--scheduler", "slurm", "--nodes", "1", "--walltime", "01:00:00", "--save", "/c",
            "--output", str(tmp_path / "j.sh"), *argv_tail]
    assert main(argv) == 2
    assert "control characters" in capsys.readouterr().err


def test_a_space_in_a_header_value_is_refused(tmp_path, capsys):
    argv = ["--scheduler", "slurm", "--nodes", "1", "--walltime", "01:00:00", "--save", "/c",
            "--output", str(tmp_path / "j.sh"), "--account", "proj --exclusive"]
    assert main(argv) == 2
    assert "--account 'proj --exclusive'" in capsys.readouterr().err


def test_a_plan_with_a_duplicate_key_is_refused(tmp_path):
    from megatron.continual.plan import PlanError, load_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text("name: run\ntrain_iters_per_stage: 4\nstages: []\ntrain_iters_per_stage: 400\n")
    with pytest.raises(PlanError, match=r"plan\.yaml:4: key 'train_iters_per_stage' is given twice \(first at line 2\)"):
        load_plan(str(plan))
