"""The random-feature ridge classifier against oracles: the features by loops, the ridge by explicit refits."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from gaa_cli.config import DataShape, ModelConfig, TrainConfig, resolve
from gaa_cli.data import load
from gaa_cli.inference import load_model
from gaa_cli.random_features import PENALTIES, TEMPERATURES, RandomFeatureRidge, dilations
from gaa_cli.tensors import predict_proba, to_tensors
from gaa_cli.train import fit


def _data(n: int, t: int, c: int, seed: int = 0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) unequal lengths
    y = torch.arange(n) % classes
    x = (torch.randn(n, t, c, generator=g) + y[:, None, None] * torch.linspace(-1, 1, t)[None, :, None]) * mask[:, :, None]
    return x, mask, y


def _features_by_loops(r: RandomFeatureRidge, x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Each feature straight from its definition: convolve the valid steps (zeros beyond them), count steps above."""
    xs, ms = x.double().numpy(), mask.numpy()
    k, mix, thr = r.kernels.double().numpy(), r.channel_mix.double().numpy(), r.thresholds.double().numpy()
    out = np.zeros((len(x), r.center.numel()))
    for b in range(len(x)):
        n = int(ms[b].sum())
        seq = xs[b, :n]  # (n, C)
        col = 0
        for i, d in enumerate(r.dilations):
            for m in range(len(k)):
                z = np.zeros(n)
                for t in range(n):
                    for j in range(9):
                        s = t + (j - 4) * d
                        for c in range(seq.shape[1]):  # channel c through kernel m shifted by mix - 1, if mix > 0
                            if 0 <= s < n and mix[i, m, c] > 0:
                                z[t] += k[(m + int(mix[i, m, c]) - 1) % len(k), j] * seq[s, c]
                for p in range(thr.shape[2]):
                    out[b, col + m * thr.shape[2] + p] = (z > thr[i, m, p]).mean()
            col += len(k) * thr.shape[2]
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_features_match_their_definition(channels):
    x, mask, y = _data(7, 30, channels)
    r = RandomFeatureRidge(84 * 2 * len(dilations(30)), 30, channels, 3)
    r.fit(x, mask, y, torch.Generator().manual_seed(1))
    assert r.thresholds.shape[2] == 2 and len(r.dilations) == len(dilations(30)) > 1
    if channels > 1:  # every kernel sums a non-empty subset of the channels, and the subsets differ
        used = r.channel_mix > 0
        assert bool(used.any(-1).all()) and len({tuple(v.tolist()) for v in used.flatten(0, 1)}) > 1
        assert len(set(r.channel_mix[used].tolist())) > 1  # and the channels go through different kernels
    got = r.transform(x, mask).double().numpy()
    np.testing.assert_allclose(got, _features_by_loops(r, x, mask), atol=1e-12)
    # the thresholds are quantiles of real outputs: features are neither all 0 nor all 1
    assert 0.05 < got.mean() < 0.95


def test_features_ignore_what_lies_beyond_a_sequence():
    x, mask, y = _data(6, 24, 2)
    r = RandomFeatureRidge(2000, 24, 2, 3)
    r.fit(x, mask, y, torch.Generator().manual_seed(0))
    noisy = x + 100 * torch.randn(x.shape) * ~mask[:, :, None]  # garbage in the padded steps
    torch.testing.assert_close(r.transform(noisy, mask), r.transform(x, mask))
    # and a batch gives the same features as its samples one by one (chunking included)
    one = torch.cat([r.transform(x[i : i + 1], mask[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(r.transform(x, mask), one)


def _ridge_by_refits(a: np.ndarray, targets: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights and intercept on all rows, and leave-one-out scores from N explicit refits (intercept not penalised).

    Each refit centres its own rows and solves in the dual, (A A^T + lam I) alpha = Y - mean(Y), w = A^T alpha.
    """

    def solve(rows):
        mu, ym = a[rows].mean(0), targets[rows].mean(0)
        ac = a[rows] - mu
        w = ac.T @ np.linalg.solve(ac @ ac.T + lam * np.eye(len(rows)), targets[rows] - ym)  # (F, K)
        return w, ym - mu @ w

    n = len(a)
    loo = []
    for i in range(n):
        w, b = solve(np.delete(np.arange(n), i))
        loo.append(a[i] @ w + b)
    w, b = solve(np.arange(n))
    return w, b, np.stack(loo)


@pytest.mark.parametrize("n, length, per_kernel", [(14, 20, 2), (24, 100, 4)])
def test_ridge_is_the_leave_one_out_choice_among_explicit_refits(n, length, per_kernel):
    # the second case has 4032 features for 24 samples: the fit nearly interpolates at small penalties
    x, mask, y = _data(n, length, 1, seed=3)
    r = RandomFeatureRidge(84 * per_kernel * len(dilations(length)), length, 1, 3)
    summary = r.fit(x, mask, y, torch.Generator().manual_seed(0), smoothing=0.1)
    feats = r.transform(x, mask).double()
    a = ((feats - r.center.double()) / r.scale.double()).numpy()
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-5)  # centre and scale are stored as float32
    targets = F.one_hot(y, 3).double().numpy() * 2 - 1
    fits = {lam: _ridge_by_refits(a, targets, lam) for lam in PENALTIES}
    lam = min(PENALTIES, key=lambda v: ((targets - fits[v][2]) ** 2).sum())
    w, b, loo = fits[lam]
    np.testing.assert_allclose(r.weight.double().numpy(), w, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(r.bias.double().numpy(), b, atol=1e-5)
    tau = min(TEMPERATURES, key=lambda t: float(F.cross_entropy(t * torch.tensor(loo), y, label_smoothing=0.1)))
    assert float(r.temperature) == tau and summary["temperature"] == tau and summary["penalty"] == lam
    assert summary["loo_accuracy"] == pytest.approx((loo.argmax(1) == y.numpy()).mean())
    # the logits are the temperature times the ridge scores
    torch.testing.assert_close(r(x, mask).double(), tau * (torch.tensor(a) @ torch.tensor(w) + torch.tensor(b)), atol=1e-3, rtol=1e-3)


def test_unfitted_ridge_is_ignored_and_fitted_one_is_averaged():
    from gaa_cli.model import SequenceClassifier

    x, mask, y = _data(9, 16, 2)
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(width=8, stride=1, ridge_features=500, ridge_length=16), 2, 3).eval()
    with torch.no_grad():
        net = torch.softmax(model(x, mask), -1)
        torch.testing.assert_close(model.probabilities(x, mask), net)  # before fitting: the network alone
        model.ridge.fit(x, mask, y, torch.Generator().manual_seed(0))
        torch.testing.assert_close(model.probabilities(x, mask), (net + torch.softmax(model.ridge(x, mask), -1)) / 2)


def _parquet(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    series = [(np.sin(np.linspace(0, 3 + 2 * k, 25)) + 0.3 * rng.standard_normal(25)).tolist() for k in y]
    pq.write_table(pa.table({"x": pa.array(series, pa.list_(pa.float64())), "label": pa.array([f"c{k}" for k in y])}), path)


def test_fit_saves_the_fitted_ridge_and_predictions_weigh_both(tmp_path):
    _parquet(tmp_path / "train.parquet", 30, 0)
    _parquet(tmp_path / "test.parquet", 12, 1)
    data = load(tmp_path / "train.parquet")
    console = Console(file=io.StringIO())
    (tmp_path / "run").mkdir()
    (tmp_path / "net").mkdir()
    result = fit(data, None, ModelConfig(width=8), TrainConfig(epochs=2, batch_size=8), tmp_path / "run", console=console, show_progress=False)
    loaded = load_model(tmp_path / "run")
    assert result.ridge is not None and result.ridge["samples"] == loaded.meta["n_train_samples"] == 24  # 30 less the 20% held out
    assert loaded.meta["ridge"] == result.ridge
    assert result.ridge["penalty"] in PENALTIES and result.ridge["temperature"] == float(loaded.model.ridge.temperature)
    ridge = loaded.model.ridge
    assert ridge is not None and ridge.fitted and loaded.meta["model_config"]["ridge_features"] == 10_000
    assert loaded.meta["model_config"]["ridge_length"] == 25
    test = load(tmp_path / "test.parquet", schema=loaded.schema)
    t = to_tensors(test, loaded.meta["normalization"], loaded.meta["classes"])
    w = float(loaded.model.blend)
    assert w == loaded.meta["metrics"]["blend"]  # the weight the validation chose, saved with the model
    with torch.no_grad():
        want = w * torch.softmax(loaded.model(t.x, t.mask), -1) + (1 - w) * torch.softmax(ridge(t.x, t.mask), -1)
    np.testing.assert_allclose(predict_proba(loaded.model, t, loaded.device), want.numpy(), atol=1e-6)
    # the ridge alone separates these classes
    assert (ridge(t.x, t.mask).argmax(1) == t.y).float().mean() >= 0.75

    # --ridge-features 0: the network alone, and a checkpoint without the ridge's tensors
    result = fit(data, None, ModelConfig(width=8, ridge_features=0), TrainConfig(epochs=2, batch_size=8), tmp_path / "net", console=console, show_progress=False)
    alone = load_model(tmp_path / "net")
    assert alone.model.ridge is None and not any(k.startswith("ridge.") for k in alone.model.state_dict())
    assert result.ridge is None and alone.meta["ridge"] is None


def test_default_ridge_follows_the_channel_rule():
    from gaa_cli.config import MULTICHANNEL_RIDGE

    uni, _ = resolve(ModelConfig(), TrainConfig(), DataShape(n_samples=50, length=30, channels=1, n_classes=2))
    multi, _ = resolve(ModelConfig(), TrainConfig(), DataShape(n_samples=50, length=30, channels=3, n_classes=2))
    forced, _ = resolve(ModelConfig(ridge_features=500), TrainConfig(), DataShape(n_samples=50, length=30, channels=3, n_classes=2))
    assert (uni.ridge_features, uni.ridge_length) == (10_000, 30)
    assert multi.ridge_features == (10_000 if MULTICHANNEL_RIDGE else 0) and forced.ridge_features == 500


@pytest.mark.parametrize("n, length, per_kernel", [(150, 12, 1), (40, 30, 2)])
def test_streamed_solve_matches_the_direct_one(n, length, per_kernel, monkeypatch):
    # the first case has more samples than features (84), the second fewer (336): the fit nearly interpolates
    from gaa_cli import ridge_solve

    x, mask, y = _data(n, length, 1, seed=5)
    r = RandomFeatureRidge(84 * per_kernel * len(dilations(length)), length, 1, 3)
    r.fit(x, mask, y, torch.Generator().manual_seed(0))
    feats = r.transform(x, mask).double()
    calls = []

    def features(rows):
        calls.append(len(rows))
        return feats[rows]

    monkeypatch.setattr(ridge_solve, "CHUNK_BYTES", 8 * feats.shape[1] * 16)  # chunks of 16 rows
    direct = ridge_solve.solve_dual(feats, y, 3, smoothing=0.1)
    streamed = ridge_solve.solve_streamed(features, y, feats.shape[1], 3, torch.Generator().manual_seed(0), smoothing=0.1)
    assert max(calls) == 16 and sum(calls) == 2 * n  # both passes over every row, a chunk at a time
    assert (streamed.penalty, streamed.temperature, streamed.loo_samples) == (direct.penalty, direct.temperature, n)
    assert streamed.loo_accuracy == pytest.approx(direct.loo_accuracy)
    for got, want in [(streamed.center, direct.center), (streamed.scale, direct.scale), (streamed.bias, direct.bias)]:
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(streamed.weight, direct.weight, atol=1e-6, rtol=1e-6)

    # leave-one-out on a sample of rows: one penalty, so the weights cannot differ, and the sample is what was scored
    monkeypatch.setattr(ridge_solve, "LOO_SAMPLES", 25)
    monkeypatch.setattr(ridge_solve, "PENALTIES", [1.0])
    calls.clear()
    direct = ridge_solve.solve_dual(feats, y, 3)
    part = ridge_solve.solve_streamed(features, y, feats.shape[1], 3, torch.Generator().manual_seed(0))
    assert part.loo_samples == 25 and sum(calls) == n + 25 and part.penalty == direct.penalty == 1.0
    torch.testing.assert_close(part.weight, direct.weight, atol=1e-6, rtol=1e-6)


def test_large_sets_are_streamed_and_subsampled_with_a_note(monkeypatch):
    from gaa_cli import random_features

    x, mask, y = _data(120, 16, 2, seed=2)
    dual = RandomFeatureRidge(500, 16, 2, 3)
    want = dual.fit(x, mask, y, torch.Generator().manual_seed(4))
    monkeypatch.setattr(random_features, "DUAL_SAMPLES", 50)
    streamed = RandomFeatureRidge(500, 16, 2, 3)
    got = streamed.fit(x, mask, y, torch.Generator().manual_seed(4))
    assert got == pytest.approx(want) and "subsampled_from" not in got  # every sample, the same choices
    torch.testing.assert_close(streamed(x, mask), dual(x, mask), atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(random_features, "MAX_SAMPLES", 80)
    assert streamed.fit(x, mask, y, torch.Generator().manual_seed(4))["subsampled_from"] == 120


def test_training_says_when_the_ridge_saw_a_subset(tmp_path, monkeypatch):
    from gaa_cli import random_features

    _parquet(tmp_path / "train.parquet", 30, 0)
    monkeypatch.setattr(random_features, "MAX_SAMPLES", 10)
    notes = []
    result = fit(load(tmp_path / "train.parquet"), None, ModelConfig(width=8), TrainConfig(epochs=1, batch_size=8), tmp_path,
                 console=Console(file=io.StringIO()), show_progress=False, notes=notes.extend)
    assert result.ridge["samples"] == 10 and result.ridge["subsampled_from"] == 24
    assert any("random 10 of the 24 training samples" in line for line in notes)
