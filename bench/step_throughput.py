"""Training-step throughput of our stack against a plain-PyTorch GPT, measured in the same run.

Baseline ("plain torch"): the same Llama-style architecture written directly in ``torch.nn``
(fused QKV ``nn.Linear``, RoPE, ``scaled_dot_product_attention``, SwiGLU, RMSNorm, tied head),
``torch.optim.AdamW`` (foreach) and ``clip_grad_norm_``: no DeepSpeed, no megatron-core.
Ours: ``TrainEngine.train_step`` (megatron-core TP layers at TP=1, DeepSpeed ZeRO-0 engine, our
grad-norm/clip, LR scheduler). The two are timed in alternating blocks so machine noise hits
both; the printed ratio is ours / baseline seconds per step (1.00 = no overhead).

    .venv/bin/python bench/step_throughput.py                 # the demo model, CPU
    .venv/bin/python bench/step_throughput.py --hidden-size 512 --num-layers 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.data.loader import Batch  # noqa: E402
from megatron.distributed import destroy_distributed, init_distributed  # noqa: E402
from megatron.plan import resolve  # noqa: E402
from megatron.trainer.engine import TrainEngine  # noqa: E402


class PlainBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = nn.RMSNorm(hidden)
        self.fc1 = nn.Linear(hidden, 2 * ffn, bias=False)
        self.fc2 = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, h // self.heads).unbind(2)
        q, k = (_rotate(t, cos, sin).transpose(1, 2) for t in (q, k))
        a = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, h))
        gate, up = self.fc1(self.norm2(x)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, hidden: int, heads: int, layers: int, ffn: int, seq: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(PlainBlock(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(hidden)
        head_dim = hidden // heads
        inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(seq).float(), inv).repeat(1, 2)
        self.register_buffer("cos", angles.cos()[None, :, None, :])
        self.register_buffer("sin", angles.sin()[None, :, None, :])

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits = self.norm(x) @ self.embed.weight.t()
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def time_steps(step, batches: list[Batch], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        step(batches[i % len(batches)])
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    bench, model_flags = parser.parse_known_args()
    # The demo preset's model (ALCF/presets/demo.yaml) on random tokens; flags override it.
    flags = ["--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "4",
             "--seq-length", "128", "--micro-batch-size", "16", "--normalization", "rmsnorm",
             "--swiglu", "--disable-bias-linear", "--mock-data", "--vocab-size", "258",
             "--train-iters", "1000", "--lr", "2e-3", "--weight-decay", "0.1",
             "--adam-beta2", "0.95", *model_flags]
    plan = resolve(parse_args(flags).config, DistEnv())
    spec = plan.model
    ctx = init_distributed(plan, DistEnv())
    try:
        ours = TrainEngine(plan, ctx)
        plain = PlainGPT(spec.vocab_size, spec.hidden_size, spec.num_attention_heads,
                         spec.num_layers, spec.ffn_hidden_size, spec.seq_length)
        opt = torch.optim.AdamW(plain.parameters(), lr=plan.config.optim.lr, betas=(0.9, 0.95),
                                weight_decay=0.1, foreach=True)

        def plain_step(batch: Batch) -> None:
            loss = plain(batch.tokens, batch.labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def our_step(batch: Batch) -> None:
            ours.train_step([batch], iteration=0)

        gen = torch.Generator().manual_seed(0)
        shape = (plan.config.train.micro_batch_size, spec.seq_length + 1)
        batches = []
        for _ in range(4):
            seq = torch.randint(0, spec.original_vocab_size, shape, generator=gen)
            batches.append(Batch(seq[:, :-1], seq[:, 1:], torch.ones(shape[0], shape[1] - 1),
                                 torch.zeros(shape[0], dtype=torch.long)))
        time_steps(plain_step, batches, 2)  # warm-up
        time_steps(our_step, batches, 2)
        base_t, our_t = [], []
        for _ in range(bench.rounds):
            base_t.append(time_steps(plain_step, batches, bench.steps))
            our_t.append(time_steps(our_step, batches, bench.steps))
    finally:
        destroy_distributed()
    tokens = shape[0] * spec.seq_length
    base, mine = statistics.median(base_t), statistics.median(our_t)
    print(f"model: {spec.num_layers} layers, hidden {spec.hidden_size}, seq {spec.seq_length}, "
          f"micro-batch {shape[0]}, {torch.get_num_threads()} threads, device cpu")
    print(f"baseline plain torch : {base * 1e3:8.1f} ms/step  {tokens / base:10,.0f} tok/s")
    print(f"ours (DeepSpeed ZeRO-0, megatron-core TP=1): {mine * 1e3:8.1f} ms/step  "
          f"{tokens / mine:10,.0f} tok/s")
    print(f"ratio ours/baseline (time per step): {mine / base:.3f}")


if __name__ == "__main__":
    main()
