"""The GPU's code paths, exercised where a CPU allows: devices, precision (autocast, the GradScaler), pinned copies,
the float32 regions under autocast, the precision saved and resumed, and --compile with its fall back to eager.
Tests marked `cuda` run the same paths on a GPU (benchmarks/gpu_check.sh runs them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from gaa_cli import checkpoint as ckpt_io
from gaa_cli.compiled import Compiler, is_compile_failure
from gaa_cli.config import ModelConfig, TrainConfig, validate
from gaa_cli.data import load
from gaa_cli.device import resolve_device, to_device
from gaa_cli.errors import UsageError
from gaa_cli.inference import load_model
from gaa_cli.model import SequenceClassifier
from gaa_cli.precision import inference_precision, resolve_precision
from gaa_cli.random_features import RandomFeatureRidge
from gaa_cli.runs import TrainRequest, run_training
from gaa_cli.tensors import encode_labels, predict_proba, to_tensors
from gaa_cli.train import fit
from gaussian_adaptive_attention import GaussianBlock

from .conftest import SAMPLES

CPU = torch.device("cpu")
TINY_MODEL = dict(width=8, gaa_heads=1, gaa_layers=1, gaa_gaussians=2, stem_layers=1, ridge_features=0)
NO_CUDA = not torch.cuda.is_available()


# --- devices and precisions -------------------------------------------------------------------


def test_device_strings():
    assert resolve_device(" CPU ") == CPU
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else CPU)
    for bad in ("gpu", "cuda:", "cuda:x", "cuda1"):
        with pytest.raises(UsageError, match="unknown device; use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "CUDA:0"])
def test_cuda_without_cuda_is_one_clear_line(spec):
    with pytest.raises(UsageError) as e:
        resolve_device(spec)
    message = e.value.message
    assert "\n" not in message and "CUDA is not available" in message and "--device cpu" in message
    assert message.startswith(f"--device {spec.lower()}:")


def test_cpu_precisions():
    assert resolve_precision("auto", CPU).name == "fp32"
    assert resolve_precision("fp32", CPU).dtype is None
    bf16 = resolve_precision("BF16", CPU)
    assert (bf16.name, bf16.dtype, bf16.device_type) == ("bf16", torch.bfloat16, "cpu")
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with resolve_precision("fp32", CPU).autocast():
        assert not torch.is_autocast_enabled("cpu")
    for spec in ("auto", "fp32", "bf16"):  # the GradScaler is for fp16 on CUDA only
        assert not resolve_precision(spec, CPU).grad_scaler().is_enabled()
    with pytest.raises(UsageError, match="--precision fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("fp8", CPU)
    for saved in ("auto", "fp32", "bf16", "fp16", None, "junk"):  # predictions on the CPU: float32, never refused
        assert inference_precision(saved, CPU).name == "fp32"


def test_precision_is_a_validated_config_option():
    validate(ModelConfig(), TrainConfig(precision="bf16", compile=True))
    with pytest.raises(UsageError, match="--precision fp64: must be auto, fp32, bf16 or fp16"):
        validate(ModelConfig(), TrainConfig(precision="fp64"))


def test_to_device_on_the_cpu_is_the_tensor_itself():
    t = torch.arange(6.0).view(2, 3)
    assert to_device(t, CPU) is t


# --- float32 where it matters, under autocast -------------------------------------------------------


def test_gaussian_block_computes_in_float32_under_autocast():
    """The block's input arrives in bfloat16 under autocast; inside, it is upcast and computed in float32 with
    autocast off, so the result is exactly float32's, rounded once on the way out."""
    torch.manual_seed(0)
    block = GaussianBlock([1, -1], [2, 2], [3, 2], 2)
    h = torch.randn(4, 10, 8).bfloat16()
    mask = torch.rand(4, 10, 1) > 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(h, mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, block(h.float(), mask=mask).bfloat16())


def test_ridge_half_stays_float32_under_autocast():
    torch.manual_seed(0)
    ridge = RandomFeatureRidge(84, 16, 1, 3)
    x, mask = torch.randn(12, 16, 1), torch.ones(12, 16, dtype=torch.bool)
    ridge.fit(x, mask, torch.arange(12) % 3, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = ridge(x.bfloat16(), mask)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, ridge(x.bfloat16().float(), mask))


def test_predict_proba_under_bf16_is_float32_and_close():
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(stride=1, **TINY_MODEL), 3, 4).eval()
    t = to_tensors(load(SAMPLES / "gestures_test.parquet"), {"mean": [0.0] * 3, "std": [1.0] * 3}, None)
    exact = predict_proba(model, t, CPU)
    mixed = predict_proba(model, t, CPU, precision=resolve_precision("bf16", CPU))
    assert mixed.dtype == np.float32 and np.allclose(mixed.sum(1), 1, atol=1e-5)
    assert not np.array_equal(mixed, exact)  # autocast did act
    assert np.abs(mixed - exact).max() < 0.05


# --- training: bf16 on the CPU, checkpoints in float32, the precision saved and resumed ----------


def _sines(path: Path, n: int, seed: int):
    """n sequences of 32 steps, 3 classes told apart by frequency, with noise: learnt in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    steps = np.linspace(0, 6, 32)
    series = [np.sin((1 + k) * steps + rng.uniform(0, 6)) + 0.3 * rng.standard_normal(32) for k in y]
    pq.write_table(pa.table({"series_id": np.arange(n), "x": [s.tolist() for s in series], "label": y}), path)
    return load(path)


@pytest.fixture(scope="module")
def sines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sines")
    return _sines(folder / "train.parquet", 48, 0), _sines(folder / "test.parquet", 60, 1)


def _fit(data, run_dir: Path, **train) -> Path:
    run_dir.mkdir()
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 8, "device": "cpu", "val_split": 0.0, **train})
    fit(data, None, ModelConfig(**TINY_MODEL), cfg, run_dir, console=Console(file=io.StringIO()), show_progress=False)
    return run_dir


def _accuracy(run_dir: Path, test) -> float:
    loaded = load_model(run_dir, "cpu")
    t = to_tensors(test, loaded.meta["normalization"], loaded.meta["classes"])
    probs = predict_proba(loaded.model, t, loaded.device, precision=loaded.precision)
    return float((probs.argmax(1) == encode_labels(test.labels, loaded.meta["classes"])).mean())


@pytest.fixture(scope="module")
def bf16_run(sines, tmp_path_factory):
    return _fit(sines[0], tmp_path_factory.mktemp("bf16") / "run", precision="bf16")


def test_bf16_training_on_the_cpu_learns_like_float32(sines, bf16_run, tmp_path):
    fp32 = _fit(sines[0], tmp_path / "fp32", precision="fp32")
    acc_bf16, acc_fp32 = _accuracy(bf16_run, sines[1]), _accuracy(fp32, sines[1])
    assert acc_bf16 > 0.6 and acc_fp32 > 0.6  # 3 classes: chance is 0.33
    assert abs(acc_bf16 - acc_fp32) <= 0.15
    losses = [ckpt_io.load(r / ckpt_io.LAST).meta["metrics"]["train_loss"] for r in (bf16_run, fp32)]
    assert losses[0] != losses[1] and abs(losses[0] - losses[1]) < 0.1  # autocast acted, and changed little


def test_checkpoints_stay_float32_and_record_the_precision(bf16_run):
    for name in (ckpt_io.BEST, ckpt_io.LAST):
        ck = ckpt_io.load(bf16_run / name)
        assert ck.meta["train_config"]["precision"] == "bf16" and ck.meta["precision"] == "bf16"
        assert all(t.dtype == torch.float32 for t in ck.model.values() if t.is_floating_point())
    assert "amp.scaler" not in ckpt_io.load(bf16_run / ckpt_io.LAST).state  # no GradScaler on the CPU
    assert 'precision = "bf16"' in (bf16_run / "config.toml").read_text()


def _unfinish(run_dir: Path, epochs: int) -> None:
    """Make a finished run's last checkpoint one that has `epochs` epochs to go to (as if stopped early)."""
    ck = ckpt_io.load(run_dir / ckpt_io.LAST)
    ck.meta["train_config"]["epochs"] = epochs
    ck.meta["resume"]["loop"]["finished"] = False
    ckpt_io.save(run_dir / ckpt_io.LAST, ck)


def _resume(run_dir: Path, data: Path, **options) -> dict:
    req = TrainRequest(data=data, resume=run_dir, train_options=options)
    run_training(req, console=Console(file=io.StringIO()), show_progress=False, notes=lambda lines: None)
    return ckpt_io.load(run_dir / ckpt_io.LAST).meta


def test_resume_keeps_the_saved_precision_unless_told(sines, tmp_path):
    run = _fit(sines[0], tmp_path / "run", precision="bf16", epochs=1)
    data = Path(sines[0].source)
    _unfinish(run, 2)
    meta = _resume(run, data)
    assert meta["precision"] == "bf16" and meta["train_config"]["precision"] == "bf16" and meta["epoch"] == 2
    _unfinish(run, 3)
    meta = _resume(run, data, precision="fp32")  # like --device, how a run computes may change on resume
    assert meta["precision"] == "fp32" and meta["train_config"]["precision"] == "fp32" and meta["epoch"] == 3
    _unfinish(run, 4)
    with pytest.raises(UsageError, match="--precision fp16 needs a CUDA GPU"):
        _resume(run, data, precision="fp16")
    with pytest.raises(UsageError, match="drop --lr"):
        _resume(run, data, lr=0.1)


def test_old_checkpoints_without_a_precision_predict_in_float32(bf16_run, tmp_path):
    ck = ckpt_io.load(bf16_run / ckpt_io.BEST)
    del ck.meta["train_config"]["precision"], ck.meta["train_config"]["compile"], ck.meta["precision"]
    ckpt_io.save(tmp_path / "old.safetensors", ck)
    loaded = load_model(tmp_path / "old.safetensors", "cpu")
    assert loaded.precision.name == "fp32"


# --- --compile ---------------------------------------------------------------------------------


def _step(model, x, mask, y):
    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x, mask).float(), y)
        loss.backward()
        return loss.detach()

    return step


def _model_and_batch():
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(stride=1, **TINY_MODEL), 3, 4)
    x, mask = torch.randn(6, 16, 3), torch.ones(6, 16, dtype=torch.bool)
    mask[0, 12:] = False
    return model, x, mask, torch.arange(6) % 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_training_step_matches_eager():
    """torch.compile's tracing (AOTAutograd, with the fused CPU kernels' fake implementations) without code
    generation: the aot_eager backend. Same loss, same gradients, same state dict keys."""
    torch._dynamo.reset()
    model, x, mask, y = _model_and_batch()
    loss = _step(model, x, mask, y)()
    grads = [p.grad.clone() for p in model.parameters()]
    notes: list[str] = []
    compiler = Compiler(model, True, CPU, notes.extend, backend="aot_eager")
    assert compiler.active and notes == []
    compiled_loss = compiler.run(_step(model, x, mask, y))
    assert compiler.active and notes == []
    torch.testing.assert_close(compiled_loss, loss)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no code generator here")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_failed_compile_is_one_note_and_eager_from_then_on():
    torch._dynamo.reset()
    model, x, mask, y = _model_and_batch()
    eager = _step(model, x, mask, y)()
    notes: list[str] = []
    compiler = Compiler(model, True, CPU, notes.extend, backend=_failing_backend)
    loss = compiler.run(_step(model, x, mask, y))
    assert not compiler.active and len(notes) == 1
    assert notes[0].startswith("--compile: torch.compile failed (") and "no code generator here" in notes[0]
    assert notes[0].endswith("the network runs eagerly") and "\n" not in notes[0]
    torch.testing.assert_close(loss, eager)
    compiler.run(_step(model, x, mask, y))
    assert len(notes) == 1  # noted once


def test_errors_of_the_model_itself_are_not_compile_failures():
    model, x, mask, y = _model_and_batch()
    notes: list[str] = []
    compiler = Compiler(model, False, CPU, notes.extend)
    assert not compiler.active
    with pytest.raises(RuntimeError):
        compiler.run(lambda: model(x[:, :, :2], mask))  # 2 channels where the model takes 3
    assert not is_compile_failure(ValueError("bad input")) and notes == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compile_option_trains_and_saves_plain_weights(sines, tmp_path, monkeypatch):
    monkeypatch.setenv("GAA_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    run = _fit(sines[0], tmp_path / "run", compile=True, epochs=1)
    ck = ckpt_io.load(run / ckpt_io.BEST)
    assert ck.meta["train_config"]["compile"] is True
    assert all(not k.startswith("_orig_mod") for k in ck.model)
    assert _accuracy(run, sines[1]) > 0.33


# --- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_auto_precision_and_pinned_copies():
    dev = torch.device("cuda")
    p = resolve_precision("auto", dev)
    assert p.name == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
    assert p.grad_scaler().is_enabled() == (p.name == "fp16")
    assert resolve_precision("fp16", dev).grad_scaler().is_enabled()
    t = torch.randn(5, 7)
    moved = to_device(t, dev)
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), t)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_gaussian_block_in_float32_under_autocast(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    torch.manual_seed(0)
    block = GaussianBlock([1, -1], [2, 2], [3, 2], 2).cuda()
    h = torch.randn(4, 10, 8, device="cuda").to(dtype)
    mask = torch.rand(4, 10, 1, device="cuda") > 0.2
    with torch.autocast("cuda", dtype=dtype):
        out = block(h, mask=mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), block(h.float(), mask=mask).to(dtype).float(), rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_cuda_training_matches_the_cpu(sines, tmp_path, precision):
    gpu = _fit(sines[0], tmp_path / "gpu", precision=precision, device="cuda")
    cpu = _fit(sines[0], tmp_path / "cpu", precision="fp32")
    ck = ckpt_io.load(gpu / ckpt_io.LAST)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ck.model.values() if t.is_floating_point())
    assert ("amp.scaler" in ck.state) == (ck.meta["precision"] == "fp16")
    acc_gpu, acc_cpu = _accuracy(gpu, sines[1]), _accuracy(cpu, sines[1])
    assert acc_gpu > 0.6 and abs(acc_gpu - acc_cpu) <= 0.15
    loaded = load_model(gpu, "cuda")
    test = to_tensors(sines[1], loaded.meta["normalization"], None)
    on_gpu = predict_proba(loaded.model, test, loaded.device, precision=loaded.precision)
    on_cpu = predict_proba(load_model(gpu, "cpu").model, test, CPU)
    assert np.abs(on_gpu - on_cpu).max() < 0.05


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cuda_compiled_step_matches_eager():
    from gaa_cli.compiled import compile_unavailable

    dev = torch.device("cuda")
    if compile_unavailable(dev) is not None:
        pytest.skip(compile_unavailable(dev))
    torch._dynamo.reset()
    model, x, mask, y = _model_and_batch()
    model, x, mask, y = model.to(dev), x.to(dev), mask.to(dev), y.to(dev)
    loss = _step(model, x, mask, y)()
    grads = [p.grad.clone() for p in model.parameters()]
    notes: list[str] = []
    compiler = Compiler(model, True, dev, notes.extend)
    compiled_loss = compiler.run(_step(model, x, mask, y))
    assert compiler.active and notes == [], notes
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)
