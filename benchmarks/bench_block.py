"""Time GaussianBlock against the loop-by-loop structure and against layer_norm.

For every row (input shape, normalised axis, heads H, Gaussians G, layers) it
times, forward only and forward+backward:

- ours:    ``GaussianBlock`` (eager; with ``--compile`` also ``torch.compile``d);
- oracle:  the loop-by-loop structure of the original (a Python loop over heads
           and over Gaussians, direct product, float32), ``tests/attention_oracle.py``;
- LN:      ``torch.nn.functional.layer_norm`` over the same axis, once per layer
           (no affine, no residual): the memory-bandwidth yardstick. layer_norm
           only normalises the last axis, so for another axis the time includes
           the copy that makes that axis last and contiguous (the result is moved
           back as a view, so later layers of a chain skip the copy); ``LN-last``
           is the same layer_norm on a tensor already laid out with that axis last.

Times are medians over ``--repeats`` rounds of a loop lasting at least
``--min-time`` seconds. Within a row, our block (eager and compiled), LN and
LN-last run in the same rounds, one loop each in turn, so that a slow moment
of the machine slows all of them and the ratio holds still. Ratios:
``orc/ours`` = oracle / ours and ``ours/LN`` = ours / LN, both
forward+backward.

    python benchmarks/bench_block.py                      # default grid, 2 threads
    python benchmarks/bench_block.py --shapes seed 32x128x64:1 --compile
    python benchmarks/bench_block.py --grid full --threads 1 --clock cpu --profile

On a machine shared with other jobs, two threads can be slowed many times over
by OpenMP threads waiting for each other; ``--threads 1 --clock cpu`` (process
CPU time) gives figures that hold still.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from attention_oracle import block_params, oracle_block  # noqa: E402

from gaussian_adaptive_attention import GaussianBlock, fused_kernels_available  # noqa: E402

SHAPES = {
    "seed": ((10, 128), 1),
    "32x128x64:1": ((32, 128, 64), 1),
    "32x128x64:-1": ((32, 128, 64), -1),
    "16x24x1024:-2": ((16, 24, 1024), -2),
    "64x512x256:1": ((64, 512, 256), 1),
}
# (heads, Gaussians, layers): every value of each factor appears at least twice.
SENSIBLE_GRID = [(4, 4, 1), (8, 8, 1), (4, 8, 3), (8, 4, 3)]


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    axis: int
    heads: int
    gaussians: int
    layers: int


CLOCK = time.perf_counter  # --clock cpu: time.process_time (robust to other jobs with --threads 1)


def timeit(fns: dict[str, Callable[[], object]], repeats: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each function over `repeats` rounds.

    Each round runs every function in turn, in a loop of at least `min_time`
    seconds, so that the candidates share the machine's slow and fast moments
    and their ratios hold still even where the absolute times drift.
    """
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        t0 = CLOCK()
        fn()
        calls[name] = max(1, int(min_time / max(CLOCK() - t0, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = CLOCK()
            for _ in range(calls[name]):
                fn()
            times[name].append((CLOCK() - t0) / calls[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def layer_norm_block(x: torch.Tensor, axis: int, layers: int) -> torch.Tensor:
    """layer_norm over `axis` once per layer; the axis is moved last and back."""
    for _ in range(layers):
        x = F.layer_norm(x.movedim(axis, -1), (x.shape[axis],)).movedim(-1, axis)
    return x


def layer_norm_last(x: torch.Tensor, layers: int) -> torch.Tensor:
    for _ in range(layers):
        x = F.layer_norm(x, (x.shape[-1],))
    return x


def forward_only(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def fwd() -> None:
        with torch.no_grad():
            forward(x)

    return fwd


def forward_backward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    return lambda: forward(x).backward(grad)


def profile_top(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor, top: int = 12) -> str:
    from torch.profiler import profile

    for _ in range(3):
        forward(x).backward(grad)
    with profile() as prof:
        for _ in range(10):
            forward(x).backward(grad)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def build_rows(shapes: list[str], grid: list[tuple[int, int, int]]) -> list[Row]:
    rows = []
    for name in shapes:
        shape, axis = SHAPES[name]
        combos = [(4, 5, 3)] if name == "seed" else grid  # the seed README's example
        for heads, gaussians, layers in combos:
            rows.append(Row(name, shape, axis, heads, gaussians, layers))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="rows to run")
    parser.add_argument("--grid", choices=["sensible", "full"], default="sensible", help="(heads, Gaussians, layers) grid")
    parser.add_argument("--heads", type=int, nargs="+", help="override: heads values (full grid over the given values)")
    parser.add_argument("--gaussians", type=int, nargs="+", help="override: Gaussians values")
    parser.add_argument("--layers", type=int, nargs="+", help="override: layers values")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=7, help="timing loops per measurement (median)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timing loop")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(block, fullgraph=True)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the (slow) loop-by-loop oracle")
    parser.add_argument("--profile", action="store_true", help="print top ops where a target is missed")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall time, or process CPU time (use with --threads 1)"
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.heads or args.gaussians or args.layers:
        grid = list(itertools.product(args.heads or [4, 8], args.gaussians or [4, 8], args.layers or [1, 3]))
    elif args.grid == "full":
        grid = list(itertools.product([4, 8], [4, 8], [1, 3]))
    else:
        grid = SENSIBLE_GRID

    fused = "fused CPU kernels" if fused_kernels_available() else "PyTorch path (fused CPU kernels off or unavailable)"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, {fused}, {args.clock} clock, "
        f"median of {args.repeats} interleaved rounds of >= {args.min_time}s loops; times in ms"
    )
    header = "| shape | axis | H | G | L | mode | ours fwd | ours f+b | oracle f+b | LN f+b | LN-last f+b | orc/ours | ours/LN |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    missed: list[str] = []
    profiles: list[str] = []
    for row in build_rows(args.shapes, grid):
        block = GaussianBlock([row.axis] * row.layers, [row.heads] * row.layers, [row.gaussians] * row.layers, row.layers)
        x = torch.randn(row.shape, requires_grad=True)
        grad = torch.randn(row.shape)
        axes = [row.axis] * row.layers
        params = [[tuple(p.detach().clone().requires_grad_() for p in head) for head in layer] for layer in block_params(block)]

        oracle_fb = float("nan")
        if not args.no_oracle:  # far slower: timed on its own
            oracle = forward_backward(lambda t: oracle_block(t, axes, params)[0], x, grad)
            oracle_fb = timeit({"oracle": oracle}, max(3, args.repeats // 2), args.min_time)["oracle"]
        x_last = x.detach().movedim(row.axis, -1).contiguous().requires_grad_()
        grad_last = grad.movedim(row.axis, -1).contiguous()

        modes: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("eager", block)]
        if args.compile:
            torch._dynamo.reset()  # a fresh cache per row: no silent fallback to eager after 8 recompiles
            compiled = torch.compile(block, fullgraph=True)
            t0 = time.perf_counter()
            compiled(x).backward(grad)
            with torch.no_grad():
                compiled(x)
            print(f"<!-- compile time {row.name} H{row.heads} G{row.gaussians} L{row.layers}: {time.perf_counter() - t0:.1f}s -->")
            modes.append(("compile", compiled))
        # ours and layer_norm in the same rounds (see timeit)
        fb = timeit(
            {
                "LN": forward_backward(lambda t: layer_norm_block(t, row.axis, row.layers), x, grad),
                "LN-last": forward_backward(lambda t: layer_norm_last(t, row.layers), x_last, grad_last),
                **{mode: forward_backward(fn, x, grad) for mode, fn in modes},
            },
            args.repeats,
            args.min_time,
        )
        fwd = timeit({mode: forward_only(fn, x) for mode, fn in modes}, args.repeats, args.min_time)
        ln_fb = fb["LN"]
        name = f"{row.name} H{row.heads} G{row.gaussians} L{row.layers}"
        best = min(fb[mode] for mode, _ in modes)
        for mode, _ in modes:
            print(
                f"| {'x'.join(map(str, row.shape))} | {row.axis} | {row.heads} | {row.gaussians} | {row.layers} | {mode} "
                f"| {fwd[mode] * 1e3:.3f} | {fb[mode] * 1e3:.3f} | {oracle_fb * 1e3:.2f} | {ln_fb * 1e3:.3f} | {fb['LN-last'] * 1e3:.3f} "
                f"| {oracle_fb / fb[mode]:.1f} | {fb[mode] / ln_fb:.2f} |",
                flush=True,
            )
            if mode == "eager" and oracle_fb / fb[mode] < 5.0:
                missed.append(f"- {name}: eager orc/ours {oracle_fb / fb[mode]:.1f} < 5")
        row_missed = best / ln_fb > 2.0 or (missed and missed[-1].startswith(f"- {name}:"))
        if best / ln_fb > 2.0:
            missed.append(f"- {name}: fastest ours/LN {best / ln_fb:.2f} > 2")
        if args.profile and row_missed:
            # Op-level breakdown of the eager path (a compiled graph shows as one opaque call).
            profiles.append(f"### profile (eager, forward+backward x10): {name}\n{profile_top(block, x, grad)}")

    if missed:
        print("\nTargets missed:")
        print("\n".join(missed))
    for text in profiles:
        print("\n" + text)


if __name__ == "__main__":
    main()
