"""The training recipe's pieces, against oracles: BatchNorm statistics re-estimated after training."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console

from gaa_cli.config import ModelConfig, TrainConfig
from gaa_cli.data import load
from gaa_cli.inference import load_model
from gaa_cli.model import SequenceClassifier
from gaa_cli.tensors import Tensors, to_tensors
from gaa_cli.train import fit, refresh_batchnorm


def _norms(model: torch.nn.Module) -> list[torch.nn.BatchNorm1d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]


def _batch(n: int, t: int, c: int, seed: int = 0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) unequal lengths
    x = torch.randn(n, t, c, generator=g) * mask[:, :, None]
    return Tensors(x, mask, torch.zeros(n, dtype=torch.long))


def _trained_like(channels: int) -> SequenceClassifier:
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(width=8, stride=1, dropout=0.5), channels, 3)
    model.train()
    for _ in range(3):  # move the running statistics away from their initial values
        model(torch.randn(5, 20, channels), torch.ones(5, 20, dtype=torch.bool))
    return model


def test_refresh_batchnorm_is_the_average_of_equal_batch_statistics():
    data = _batch(37, 20, 2)
    model = _trained_like(2)
    params = {k: v.clone() for k, v in model.named_parameters()}

    # oracle: every BatchNorm's input, batch by batch, with the layers normalising by batch statistics
    seen: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in _norms(model)}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen[m].append(a[0].detach())) for m in seen]
    chunks = torch.arange(37).tensor_split(4)  # 37 samples in batches of about 10: 10, 9, 9, 9
    with torch.no_grad():
        model.eval()
        for m in seen:
            m.train()
        for c in chunks:
            model(data.x[c], data.mask[c])
    for h in hooks:
        h.remove()

    refresh_batchnorm(model, data, batch_size=10, device=torch.device("cpu"))
    for m, inputs in seen.items():
        assert [len(i) for i in inputs] == [10, 9, 9, 9]
        means = torch.stack([i.mean(dim=(0, 2)) for i in inputs])  # (batches, W) over samples and time
        variances = torch.stack([i.var(dim=(0, 2), unbiased=True) for i in inputs])
        torch.testing.assert_close(m.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
        assert m.momentum == 0.1 and not m.training
    assert not model.training  # left in eval mode, dropout included
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_refresh_batchnorm_caps_the_samples_it_reads():
    data = _batch(50, 16, 1, seed=1)
    capped, full = _trained_like(1), _trained_like(1)
    refresh_batchnorm(capped, data, batch_size=8, device=torch.device("cpu"), max_samples=16)
    subset = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:16]
    refresh_batchnorm(full, Tensors(data.x[subset], data.mask[subset], data.y[subset]), batch_size=8, device=torch.device("cpu"))
    for a, b in zip(_norms(capped), _norms(full), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert int(a.num_batches_tracked) == 2  # 16 samples in 2 batches, counted afresh


def test_saved_model_carries_the_refreshed_statistics(tmp_path):
    """The checkpoint `gaa train` keeps holds statistics re-estimated on the training set, not the running ones."""
    rng = np.random.default_rng(0)
    n, t = 45, 30
    y = rng.integers(0, 3, n)
    series = [np.sin(np.linspace(0, 3 + k, t)) + 0.3 * rng.standard_normal(t) for k in y]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"series_id": np.arange(n), "x": [s.tolist() for s in series], "label": y}), path)
    data = load(path)
    (tmp_path / "run").mkdir()
    run = fit(data, None, ModelConfig(width=8, ridge_features=0), TrainConfig(epochs=3), tmp_path / "run", console=Console(file=io.StringIO()), show_progress=False).run_dir

    loaded = load_model(run)
    meta = loaded.meta
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in _norms(loaded.model)]
    t_ = to_tensors(data, meta["normalization"], meta["classes"])
    refresh_batchnorm(loaded.model, t_, meta["train_config"]["batch_size"], torch.device("cpu"))
    for (mean, var), m in zip(saved, _norms(loaded.model), strict=True):
        torch.testing.assert_close(mean, m.running_mean)
        torch.testing.assert_close(var, m.running_var)
    assert meta["train_config"]["batch_size"] == 32 and n % 32 != 0  # a short last batch, which the running averages saw
