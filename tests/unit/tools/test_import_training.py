"""Training on an imported Hugging Face model, with no shape or tokenizer flags typed.

- The first step's loss at TP=2 and at PP=2 equals the one at TP=1, which equals the loss
  ``transformers`` computes on the same batch (each family's options: GQA with a head dim of its
  own, Llama 3.1 RoPE, biases, q/k/v-only biases, parallel residual, partial rotary, tanh GeLU,
  learned positions; tied and untied).
- 20 steps at TP=2 on Shakespeare (tokenized with the import's bundled tokenizer through
  ``tools/preprocess_data.py --tokenizer-model SAVE``) lower the loss.
- A two-stage CPT plan whose ``init_checkpoint`` is the import runs (slow).
"""

from __future__ import annotations

import os

import pytest
import torch

from megatron.checkpointing.importing.formats import open_source
from megatron.checkpointing.importing.writer import import_checkpoint
from megatron.config import DistEnv, parse_args
from megatron.plan import resolve
from megatron.trainer.loop import train
from tests.helpers import run_distributed
from tests.unit.tools.hf_fixtures import VOCAB, build_model, save_model

pytest.importorskip("transformers")

RUN = ["--micro-batch-size", "2", "--seq-length", "32", "--log-interval", "1", "--eval-interval", "1000",
       "--eval-iters", "1"]
FIRST_STEP = ["--train-iters", "1", "--lr", "1e-3", "--mock-data", "--vocab-size", str(VOCAB), "--seed", "7"]


def _run(env: DistEnv, *flags: str) -> list[float]:
    plan = resolve(parse_args([*RUN, *flags]).config, env)
    return train(plan, env).losses


def _import(tmp_path, family: str) -> str:
    src = save_model(build_model(family), str(tmp_path / "hf"))
    out = str(tmp_path / "ours")
    import_checkpoint(open_source(src), out)
    return out


@pytest.mark.parametrize("family", [
    "llama3-gqa-bias-tied",
    pytest.param("pythia", marks=pytest.mark.slow),
    pytest.param("qwen2-gqa-tied", marks=pytest.mark.slow),
    pytest.param("gpt2", marks=pytest.mark.slow),
    pytest.param("qwen3-qknorm-tied", marks=pytest.mark.slow),
    pytest.param("olmo2-gqa", marks=pytest.mark.slow),
])
def test_first_step_loss_is_the_same_at_tp2_and_pp2(tmp_path, family):
    out = _import(tmp_path, family)
    load = ["--load", out, "--universal-checkpoint", "--finetune", *FIRST_STEP]
    one = _run(DistEnv(), *load)
    tp2 = run_distributed(_run, *load, "--tensor-model-parallel-size", "2")
    pp2 = run_distributed(_run, *load, "--pipeline-model-parallel-size", "2")
    assert tp2[0] == pytest.approx(one, abs=1e-5)
    assert pp2[1] == pytest.approx(one, abs=1e-5)  # the last stage reports the loss


@pytest.fixture(scope="module")
def shakespeare_import(tmp_path_factory) -> tuple[str, str]:
    """An imported Llama whose bundled tokenizer is a BPE of the plays, and the plays tokenized by
    ``tools/preprocess_data.py --tokenizer-model SAVE``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from tools import preprocess_data
    from tools.prepare_default_corpus import play_files

    root = tmp_path_factory.mktemp("shakespeare_import")
    plays = play_files()[:3]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train(plays, trainers.BpeTrainer(vocab_size=384, special_tokens=["<unk>", "<|endoftext|>"]))
    size = tokenizer.get_vocab_size()
    src = save_model(build_model("llama3-gqa-bias-tied", vocab_size=size), str(root / "hf"), tokenizer=False)
    tokenizer.save(os.path.join(src, "tokenizer.json"))
    out = str(root / "ours")
    import_checkpoint(open_source(src), out)
    prefix = str(root / "plays")
    assert preprocess_data.main(["--input", *plays, "--output-prefix", prefix, "--tokenizer-model", out,
                                 "--append-eod"]) == 0
    data_list = root / "list.txt"
    data_list.write_text(f"1 {prefix}_text_document plays\n")
    return out, str(data_list)


@pytest.mark.slow
def test_continue_training_at_tp2_lowers_the_loss(shakespeare_import):
    out, data_list = shakespeare_import
    ranks = run_distributed(_run, "--load", out, "--universal-checkpoint", "--finetune", "--train-iters", "20",
                            "--data-file-list", data_list, "--tensor-model-parallel-size", "2",
                            "--lr", "1e-2", "--split", "100,0,0")
    losses = ranks[0]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    assert torch.isfinite(torch.tensor(losses)).all()


@pytest.mark.slow
def test_cpt_plan_starts_from_an_import(shakespeare_import, tmp_path, repo_root):
    import json
    import subprocess
    import sys

    import yaml

    out, data_list = shakespeare_import
    plan = {"name": "imported", "output_dir": str(tmp_path / "out"), "launcher": "python",
            "init_checkpoint": out, "train_iters_per_stage": 3,
            "args": {"seq_length": 32, "micro_batch_size": 2, "log_interval": 1, "eval_iters": 1},
            "method": {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_iters": 1, "schedule": "cosine"},
            "stages": [{"key": "s1", "data": data_list}, {"key": "s2", "data": data_list}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    done = subprocess.run([sys.executable, "-W", "ignore", os.path.join(repo_root, "tools", "continual_run.py"),
                           "--plan", str(path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "out" / "imported"
    for key in ("s1", "s2"):
        assert (root / key / "STAGE_DONE.json").exists()
    meta = json.load(open(root / "s2" / "global_step3" / "run_metadata.json"))
    assert meta["config"]["--use-rope-scaling"] is True and meta["config"]["--tokenizer-model"].startswith(out)
