"""tools/continual_compare.py: metrics and differences against the first plan, checked inputs."""

import json

import pytest

from tools.continual_compare import main


def _matrix(path, loss, metrics, sets=("a", "b")):
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"checkpoints": list(sets), "eval_sets": list(sets), "loss": loss, "metrics": metrics}))
    return str(path)


def test_table_has_differences_to_the_baseline_and_the_last_row(tmp_path, capsys):
    naive = _matrix(tmp_path / "naive" / "eval" / "matrix.json", [[2.0, 3.0], [2.6, 1.8]],
                    {"id": 1.9, "backward": 2.6, "forward": 3.0})  # fmt: skip
    replay = _matrix(tmp_path / "replay" / "eval" / "matrix.json", [[2.0, 3.0], [2.1, 1.9]],
                     {"id": 1.95, "backward": 2.1, "forward": 3.0})  # fmt: skip
    assert main([naive, replay, "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| naive | 1.900 | 2.600 | 3.000 | 2.600 | 1.800 |"
    assert out[3] == "| replay | 1.950 (+0.050) | 2.100 (-0.500) | 3.000 (+0.000) | 2.100 | 1.900 |"
    assert (tmp_path / "c.png").stat().st_size > 0


def test_bad_inputs_are_refused_by_name(tmp_path):
    good = _matrix(tmp_path / "x" / "eval" / "matrix.json", [[1.0]], {"id": 1, "backward": 1, "forward": 1}, ("a",))
    with pytest.raises(SystemExit, match="does not exist"):
        main([good, str(tmp_path / "missing.json")])
    other = _matrix(tmp_path / "y" / "eval" / "matrix.json", [[1.0]], {"id": 1, "backward": 1, "forward": 1}, ("z",))
    with pytest.raises(SystemExit):
        main([good, other])
    with pytest.raises(SystemExit):
        main([good, "--names", "a,b"])
