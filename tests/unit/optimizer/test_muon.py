"""Muon: the matrix update against torch.optim.Muon, the AdamW side groups against
torch.optim.AdamW, the LR schedule on both, training, bit-exact resume and the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megatron.config import ConfigError, DistEnv
from megatron.config.optim import OptimConfig
from megatron.optimizer import muon_options as muon
from megatron.optimizer import muon_torch
from megatron.optimizer.muon import MuonOptions
from megatron.optimizer.param_groups import split_param_groups
from megatron.optimizer.registry import OPTIMIZERS
from megatron.schedules.scheduler import LRScheduler
from megatron.trainer.loop import train
from tests.helpers import tiny_plan


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 12)
        self.norm = nn.LayerNorm(12)
        self.output_layer = nn.Linear(12, 10, bias=False)

    def forward(self, tokens):
        return self.output_layer(self.norm(self.proj(self.word_embeddings(tokens))))


def toy_loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 10, (4, 5), generator=g)
    logits = model(tokens)
    return nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())


def build(model, options=None, **cfg):
    cfg = OptimConfig(optimizer="muon", **{"lr": 0.02, "weight_decay": 0.1, **cfg})
    groups = split_param_groups(
        model.named_parameters(), policy="matrix", weight_decay=cfg.weight_decay
    )
    return OPTIMIZERS["muon"].build(groups, cfg, options or MuonOptions())


def fake_grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("shape", [(16, 8), (8, 24)])
@pytest.mark.parametrize("lr_scale", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matrix_update_matches_torch_muon(shape, lr_scale, nesterov):
    torch.manual_seed(0)
    w0 = torch.randn(shape)
    grads = fake_grads(shape, 6)
    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov, "ns_steps": 5}
    ref_p = nn.Parameter(w0.clone())
    ref = torch.optim.Muon([ref_p], adjust_lr_fn=lr_scale, **kw)
    Muon = muon_torch.Muon
    # torch.optim.Muon runs Newton-Schulz in bf16 on every device; ours does on CUDA, fp32 on CPU.
    bf16_p, fp32_p = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    ours_bf16 = Muon([{"params": [bf16_p]}], shape_scale=lr_scale, ns_dtype=torch.bfloat16, **kw)
    ours_fp32 = Muon([{"params": [fp32_p]}], shape_scale=lr_scale, **kw)
    for grad in grads:
        for p, opt in ((ref_p, ref), (bf16_p, ours_bf16), (fp32_p, ours_fp32)):
            p.grad = grad.clone()
            opt.step()
    moved = (ref_p - w0).abs().max().item()
    assert moved > 0.05
    # Same precision: bit for bit (measured max abs diff 0; norm + eps and torch's
    # norm.clamp(min=eps) round to the same bf16 value).
    assert torch.equal(bf16_p, ref_p)
    # fp32 vs bf16 Newton-Schulz: measured max abs diff 0.3-0.8% of the distance moved.
    assert (fp32_p - ref_p).abs().max().item() < 0.02 * moved


def test_orthogonalize_gives_near_orthogonal_rows():
    torch.manual_seed(0)
    for shape in ((8, 32), (32, 8)):
        o = muon_torch.orthogonalize(torch.randn(shape), steps=5)
        assert o.shape == shape and o.dtype == torch.float32
        wide = o if shape[0] < shape[1] else o.T
        s = torch.linalg.svdvals(wide)
        # The quintic trades exact convergence for speed: singular values land in about [0.7, 1.2].
        assert 0.5 < s.min() and s.max() < 1.3


def test_adamw_side_groups_match_torch_adamw():
    # Gradients are set directly: through a model they would differ once proj.weight (Muon in
    # ours, AdamW in the reference) differs.
    torch.manual_seed(0)
    model = Toy()
    options = MuonOptions(adamw_lr=0.005, adamw_beta1=0.8, adamw_beta2=0.95, adamw_eps=1e-6)
    opt = build(model, options)
    named = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in named.items()}
    copies = {n: nn.Parameter(p.detach().clone()) for n, p in named.items()}
    decay = [copies[n] for n in ("word_embeddings.weight", "output_layer.weight")]
    no_decay = [copies[n] for n in ("proj.bias", "norm.weight", "norm.bias")]
    ref = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.005,
        betas=(0.8, 0.95),
        eps=1e-6,
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for n, p in named.items():
            p.grad = torch.randn(p.shape, generator=g)
            copies[n].grad = p.grad.clone()
        opt.step()
        ref.step()
    for n in (
        "word_embeddings.weight",
        "output_layer.weight",
        "proj.bias",
        "norm.weight",
        "norm.bias",
    ):
        assert not torch.equal(named[n], start[n]), n
        assert torch.equal(named[n], copies[n]), n  # bit for bit


def test_only_hidden_matrices_take_newton_schulz(monkeypatch):
    seen = []
    real = muon_torch.orthogonalize

    def spy(m, **kw):
        seen.append(tuple(m.shape))
        return real(m, **kw)

    monkeypatch.setattr(muon_torch, "orthogonalize", spy)
    model = Toy()
    opt = build(model)
    assert [g["rule"] for g in opt.param_groups] == ["matrix", "adamw", "adamw"]
    assert opt.param_groups[0]["params"] == [model.proj.weight]
    for seed in range(2):
        opt.zero_grad()
        toy_loss(model, seed).backward()
        opt.step()
    assert seen == [(12, 6), (12, 6)]
    assert set(opt.state[model.word_embeddings.weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert set(opt.state[model.proj.weight]) == {"momentum_buffer"}


def test_flat_tensor_in_matrix_group_is_an_error():
    # DeepSpeed's ZeRO and fp16/bf16 wrappers hand flat shards: never fall back silently.
    p = nn.Parameter(torch.randn(12))
    opt = muon_torch.Muon([{"params": [p], "name": "matrix"}], lr=0.1)
    p.grad = torch.randn(12)
    with pytest.raises(
        RuntimeError, match=r"matrix group 'matrix' holds a tensor of shape \(12,\), not a 2-D matrix"
    ):
        opt.step()


def test_lr_schedule_scales_both_kinds_of_group():
    model = Toy()
    opt = build(model, MuonOptions(adamw_lr=0.004), lr=0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.004, 0.004]
    sched = LRScheduler(opt, lambda step: 0.5 if step else 0.0, "test", lr=0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    toy_loss(model, 0).backward()
    opt.step()  # multiplier 0: no update, no decay, on either kind of group
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    sched.set_step(1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.002, 0.002])
    opt.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_adamw_defaults_come_from_the_adam_flags():
    opt = build(Toy(), lr=0.03, adam_beta1=0.85, adam_beta2=0.98, adam_eps=1e-7)
    side = opt.param_groups[1]
    assert (side["lr"], side["lr_scale"], side["betas"], side["eps"]) == (
        0.03,
        1.0,
        (0.85, 0.98),
        1e-7,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--muon-momentum", "1.0"], r"--muon-momentum: must be in \[0, 1\), got 1.0"),
        (["--muon-ns-steps", "0"], r"--muon-ns-steps: must be in \[1, 100\), got 0"),
        (
            ["--muon-lr-scale", "spectral"],
            r"--muon-lr-scale: must be one of original, match_rms_adamw",
        ),
        (["--muon-adamw-lr", "0"], r"--muon-adamw-lr: must be > 0, got 0"),
        (["--muon-adamw-beta2", "1.5"], r"--muon-adamw-beta2: must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_options_name_the_flag(flags, message):
    with pytest.raises(ConfigError, match=message):
        tiny_plan("--optimizer", "muon", *flags)


def test_zero3_is_refused_naming_the_pair():
    with pytest.raises(
        ConfigError,
        match=r"--optimizer: muon is not correct under --zero-stage 3 \(supports up to "
        r"ZeRO-2\); use --zero-stage 2 or an element-wise optimizer such as adamw",
    ):
        tiny_plan("--optimizer", "muon", "--zero-stage", "3")


def test_unbound_tensor_parallel_shards_are_refused(monkeypatch):
    # Newton-Schulz on a shard is not Muon on the matrix: without the layout, refuse.
    tp_group = object()
    monkeypatch.setattr(muon_torch, "group_size", lambda g: 2 if g is tp_group else 1)
    p = nn.Parameter(torch.randn(4, 3))
    opt = muon_torch.Muon([{"params": [p], "name": "matrix"}], lr=0.1, tp_group=tp_group)
    p.grad = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="tensor-parallel shards need the model's layout"):
        opt.step()


def run(*flags):
    return train(tiny_plan("--optimizer", "muon", *flags), DistEnv())


def test_tiny_gpt_loss_goes_down():
    result = run(
        "--train-iters", "20", "--hidden-size", "32", "--lr", "1e-2", "--micro-batch-size", "4"
    )
    assert result.iteration == 20
    assert sum(result.losses[-5:]) / 5 < 0.7 * sum(result.losses[:5]) / 5


def test_resume_is_bit_exact(tmp_path):
    save = str(tmp_path / "ckpt")
    flags = ("--train-iters", "8", "--hidden-size", "32", "--muon-adamw-lr", "1e-3")
    full = run(*flags)
    first = run(*flags, "--save", save, "--exit-interval", "4")
    assert first.stop_reason == "exit interval 4 reached" and first.iteration == 4
    second = run(*flags, "--save", save, "--load", save)
    assert first.losses + second.losses == full.losses  # bit for bit


def test_newton_schulz_owners_balance_the_cost():
    shapes = [(1536, 512), (512, 512), (2730, 512), (512, 1365)] * 4
    owners = muon.assign_owners(shapes, 2, 5)
    assert owners == muon.assign_owners(shapes, 2, 5)  # every rank computes the same
    load = [0, 0]
    for shape, owner in zip(shapes, owners, strict=True):
        load[owner] += min(muon.ns_cost(*shape, steps=5))
    assert max(load) / min(load) < 1.1
    assert muon.assign_owners(shapes, 1, 5) == [0] * len(shapes)


@pytest.mark.parametrize("shape", [(48, 16), (16, 40), (24, 24)])
def test_gram_and_direct_newton_schulz_agree(shape):
    # The same polynomial evaluated two ways; fp64 direct is the reference.
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(shape[0], 3, generator=g) @ torch.randn(3, shape[1], generator=g)
    for m in (torch.randn(shape, generator=g), low_rank + 1e-3 * torch.randn(shape, generator=g)):
        ref = muon_torch.orthogonalize(m.double(), steps=5, dtype=torch.float64, gram=False)
        for gram in (True, False):
            out = muon_torch.orthogonalize(m, steps=5, gram=gram)
            assert out.shape == shape
            assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-4, gram
    direct, gram_cost = muon.ns_cost(512, 2048, 5)
    assert gram_cost < 0.7 * direct  # the MLP weight of hidden 512 takes the Gram form
    assert muon.ns_cost(512, 512, 5)[0] < muon.ns_cost(512, 512, 5)[1]  # square: direct


def test_split_fused_rows_are_the_ones_attention_and_swiglu_read():
    from types import SimpleNamespace

    from megatron.optimizer.muon_distributed import fused_parts

    spec = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, head_dim=3, swiglu=True)
    for tp in (1, 2):
        rows = (4 + 2 * 2) * 3 // tp
        # What SelfAttention.forward does with the QKV output, applied to the row numbers.
        qkv = torch.arange(rows).view(1, 1, 2 // tp, 2 + 2, 3)
        q, k, v = qkv[:, :, :, :2].reshape(-1), qkv[:, :, :, 2].reshape(-1), qkv[:, :, :, 3].reshape(-1)
        got = fused_parts("layers.0.self_attention.query_key_value.weight", rows, spec, tp)
        assert [t.tolist() for t in got] == [q.tolist(), k.tolist(), v.tolist()]
    gate, up = fused_parts("layers.0.mlp.dense_h_to_4h.weight", 10, spec, 1)
    assert gate.tolist() == list(range(5)) and up.tolist() == list(range(5, 10))
    assert fused_parts("layers.0.mlp.dense_4h_to_h.weight", 10, spec, 1) is None
    assert fused_parts("layers.0.mlp.dense_h_to_4h.weight", 10, SimpleNamespace(swiglu=False), 1) is None
