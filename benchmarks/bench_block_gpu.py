"""GaussianBlock's forward+backward on a device, against layer_norm on the same tensor.

On a GPU the fused kernels (CPU-only) do not apply: the block runs its PyTorch formulation, eagerly (a few dozen
small kernels per layer) or, with ``--compile``, through ``torch.compile`` (the branch-free formulation that
``functional.py`` uses while tracing, fused into a few kernels). The yardstick is
``torch.nn.functional.layer_norm`` over the same axis, once per layer: one read and one write of the tensor,
what a normalisation costs at the least. The axis is moved last for it (the copy is part of its time, as in
bench_block.py).

Each row times, in the same interleaved rounds, ours (eager, and compiled with ``--compile``) and layer_norm,
forward+backward, and prints milliseconds and the ratio ours/LN. On a GPU every timed loop ends with
``torch.cuda.synchronize()``, so the times are of the work, not of queueing it. With ``--autocast bf16`` (or
fp16) the input comes in that dtype under autocast, as in mixed-precision training; the block computes in
float32 inside (attention.attend_layers) and returns the input's dtype.

    python benchmarks/bench_block_gpu.py                       # the GPU if there is one, else the CPU
    python benchmarks/bench_block_gpu.py --device cuda --compile --autocast bf16
    python benchmarks/bench_block_gpu.py --device cpu --quick  # seconds: checks that it runs
    python benchmarks/bench_block_gpu.py --json out.json       # also the rows as JSON

Also prints the peak GPU memory of each row's block (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gaussian_adaptive_attention import GaussianBlock, fused_kernels_available  # noqa: E402

# name: (shape, axis, heads, Gaussians, layers)
ROWS = {
    "model": ((32, 256, 64), 1, 1, 2, 1),  # the CLI's default network: (B, T', W) over time
    "wide": ((64, 512, 256), 1, 8, 4, 1),
    "deep": ((32, 128, 64), 1, 4, 8, 3),
    "features": ((16, 24, 1024), -1, 8, 4, 1),
}
QUICK = {"model": ((8, 64, 16), 1, 1, 2, 1), "features": ((4, 8, 64), -1, 2, 2, 1)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timeit(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each function over `repeats` rounds that run every function in turn."""
    sync = synchronizer(device)
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        calls[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / calls[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def layer_norm_block(x: torch.Tensor, axis: int, layers: int) -> torch.Tensor:
    """layer_norm over `axis` once per layer; the axis is moved last and back."""
    for _ in range(layers):
        x = F.layer_norm(x.movedim(axis, -1), (x.shape[axis],)).movedim(-1, axis)
    return x


def forward_backward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor,
                     dtype: torch.dtype | None) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = forward(x)
        out.backward(grad)

    return step


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available here; use --device cpu")
    return torch.device(device)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="rows to run [default: all]")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(block)")
    parser.add_argument("--autocast", choices=["off", *DTYPES], default="off", help="input dtype and autocast, as in mixed precision")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (median)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timing loop")
    parser.add_argument("--quick", action="store_true", help="small rows, 2 rounds: checks that everything runs")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    device = resolve(args.device)
    dtype = DTYPES.get(args.autocast)
    rows = QUICK if args.quick else {k: ROWS[k] for k in (args.rows or ROWS)}
    repeats, min_time = (2, 0.005) if args.quick else (args.repeats, args.min_time)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads, " + (
        "fused CPU kernels" if fused_kernels_available() else "PyTorch path")
    print(f"torch {torch.__version__}, {where}, input {args.autocast if dtype else 'float32'}; forward+backward, ms, "
          f"median of {repeats} interleaved rounds")
    header = "| row | shape | axis | H | G | L | mode | ours f+b | LN f+b | ours/LN | peak MiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    results = []
    for name, (shape, axis, heads, gaussians, layers) in rows.items():
        block = GaussianBlock([axis] * layers, [heads] * layers, [gaussians] * layers, layers).to(device)
        x = torch.randn(shape, device=device, dtype=dtype or torch.float32, requires_grad=True)
        grad = torch.randn(shape, device=device, dtype=dtype or torch.float32)
        modes: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("eager", block)]
        if args.compile:
            torch._dynamo.reset()
            compiled = torch.compile(block)
            t0 = time.perf_counter()
            try:
                forward_backward(compiled, x, grad, dtype)()
                synchronizer(device)()
                print(f"<!-- {name}: compiled in {time.perf_counter() - t0:.1f} s -->")
                modes.append(("compile", compiled))
            except Exception as e:  # no Triton, no C++ compiler: the eager rows still come
                print(f"<!-- {name}: torch.compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}) -->")
        fns = {"LN": forward_backward(lambda t: layer_norm_block(t, axis, layers), x, grad, dtype)}
        fns.update({mode: forward_backward(fn, x, grad, dtype) for mode, fn in modes})
        times = timeit(fns, device, repeats, min_time)
        for mode, fn in modes:
            peak = float("nan")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                forward_backward(fn, x, grad, dtype)()
                torch.cuda.synchronize(device)
                peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            row = {"row": name, "shape": list(shape), "axis": axis, "heads": heads, "gaussians": gaussians, "layers": layers, "mode": mode,
                   "device": str(device), "input": args.autocast if dtype else "fp32", "ours_ms": times[mode] * 1e3,
                   "ln_ms": times["LN"] * 1e3, "ratio": times[mode] / times["LN"], "peak_mib": peak}
            results.append(row)
            print(f"| {name} | {'x'.join(map(str, shape))} | {axis} | {heads} | {gaussians} | {layers} | {mode} | {row['ours_ms']:.3f} "
                  f"| {row['ln_ms']:.3f} | {row['ratio']:.2f} | {peak:.1f} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
