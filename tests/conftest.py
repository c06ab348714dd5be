"""Shared fixtures: tiny configs, a one-process gloo group, markers, leftover-group guard."""

from __future__ import annotations

import os
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


def pytest_configure(config: pytest.Config) -> None:
    """Subprocesses (``python tools/X.py``, ``pretrain_gpt.py``, train_alcf.sh) run this checkout.

    pytest's ``pythonpath = ["."]`` puts the checkout first for this process only. An interpreter
    with the project installed from another checkout (one venv, several worktrees) would run that
    one's code in a subprocess; tools/_checkout.py stops such scripts. The checkout goes first on
    the inherited PYTHONPATH, as ALCF/env.sh does for PYTHON_EXEC.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *rest])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    """Destroy any process group a test left behind, so the next one starts clean."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        from megatron.distributed import destroy_distributed

        destroy_distributed()


@pytest.fixture
def dist_world1(tmp_path):
    """A gloo world of one process with megatron-core's parallel state (TP=PP=1)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron.distributed import destroy_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdzv", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    yield
    destroy_distributed()


@pytest.fixture(scope="session")
def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shakespeare_prefix(tmp_path_factory) -> str:
    """A small real-text indexed dataset: six plays of the bundled corpus, byte tokens."""
    from megatron.config.data import DataConfig
    from megatron.data.preprocess import tokenize_to_indexed
    from tools.prepare_default_corpus import play_files

    out = tmp_path_factory.mktemp("shakespeare") / "plays"
    stats = tokenize_to_indexed(play_files()[:6], str(out), DataConfig(tokenizer_type="byte"))
    return stats.prefixes["text"]


@pytest.fixture(scope="session")
def three_corpora(tmp_path_factory) -> dict[str, str]:
    """Three small real-text datasets (three plays each) named by corpus: comedy, history, tragedy."""
    from megatron.config.data import DataConfig
    from megatron.data.preprocess import tokenize_to_indexed
    from tools.prepare_default_corpus import play_files

    root = tmp_path_factory.mktemp("corpora")
    plays = play_files()
    prefixes = {}
    for k, name in enumerate(("comedy", "history", "tragedy")):
        stats = tokenize_to_indexed(plays[6 + 3 * k : 9 + 3 * k], str(root / name), DataConfig(tokenizer_type="byte"))
        prefixes[name] = stats.prefixes["text"]
    return prefixes
