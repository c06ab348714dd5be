"""run_result.json: a run's outcome, merged across resumed pieces."""

from __future__ import annotations

from megatron.trainer.run_result import build_result, read_result, write_result

SUMMARY = {"train_iters": 30, "tokens_per_step": 256, "global_batch_size": 4, "seq_length": 64,
           "num_parameters": 1000, "flops_per_step": 2.0e6, "objective": "ar", "unique_samples": None}


def test_pieces_of_a_resumed_run_add_up(tmp_path):
    first = build_result(SUMMARY, iteration=25, stop_reason="SIGTERM", train_loss=2.6, test_loss=None,
                         valid_history=[(10, 3.0), (20, 2.5)], seconds=5.0)
    assert not first["finished"] and first["best_valid_loss"] == 2.5 and first["final_valid_loss"] is None
    write_result(str(tmp_path), first)
    # The second piece restarts from the checkpoint at 20: its evaluation at 20 replaces the first's.
    second = build_result(SUMMARY, iteration=30, stop_reason=None, train_loss=2.4, test_loss=2.45,
                          valid_history=[(20, 2.55), (30, 2.7)], seconds=7.5, earlier=read_result(str(tmp_path)))
    assert second["finished"] and second["valid_history"] == [[10, 3.0], [20, 2.55], [30, 2.7]]
    assert (second["best_valid_loss"], second["best_valid_iteration"], second["final_valid_loss"]) == (2.55, 20, 2.7)
    assert second["wall_seconds"] == 12.5
    assert second["tokens"] == 30 * 256 and second["flops"] == 30 * 2.0e6 and second["flops_6nd"] == 6 * 1000 * 7680
    assert read_result(str(tmp_path / "none")) is None
