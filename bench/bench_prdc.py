"""Time and peak memory of genkd.metrics.prdc against the reference ``prdc`` package, measured in one run.

    python bench/bench_prdc.py                      # N = M = 10,000 vs prdc, then ours alone at 50,000
    python bench/bench_prdc.py --device cuda --large 50000
    python bench/bench_prdc.py --cases flat,heavy --large 0      # adversarial cases only

Features are structured like Inception pool features (non-negative, low-rank, ten clusters; the fake set shifted),
2048-d float32. Targets: >= 5x faster than prdc on CPU at 10k, 50k within 4 GiB.

Peak memory. numpy: tracemalloc (numpy reports its buffers to it). torch on CPU: tracemalloc cannot see torch's
allocator, so we reset the process's resident-set high-water mark (writing 5 to /proc/self/clear_refs, Linux >= 4.0)
right before the call and read VmHWM right after; the increase over the resident set before the call is the peak
extra memory of the call. It is an upper bound on the live peak: glibc's heap keeps some freed blocks (running with
MALLOC_MMAP_THRESHOLD_=131072 shows the live peak, at a large cost in speed). The same RSS measure is printed for prdc,
for a like-for-like comparison. On CUDA: torch.cuda.max_memory_allocated.

Speed depends on the features: the sweep keeps a rank-128 principal subspace in float32 and quantises the rest to int8,
so the less spread lies beyond that subspace, the fewer pairs need the exact path (these features: 8 %). The
adversarial cases (``--cases``) are the inputs where that bound is loose: there genkd decides from a sample to run its
plain exact path, and must still be at least as fast as prdc (ratio >= 1.0) and equal to it:

* flat: isotropic Gaussian features, no principal subspace worth keeping (the whole spread lands in the int8 tail);
* heavy: Student-t (1.5 degrees of freedom) coordinates, a few huge values set the int8 step for everyone;
* far: the inception-like features with the fake set shifted far away (large norms, margins, against small radii);
* ties: features on a coarse integer grid, every point repeated 3 times (duplicates, masses of equal distances).
"""
import argparse
import contextlib
import importlib.metadata
import io
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import prdc as reference_prdc
import torch

import genkd  # noqa: F401  (before anything that may import torchvision)
from genkd.metrics import DEFAULTS, compute_prdc

GIB = 2**30


def structured_features(count: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative features of a 64-d latent with ten clusters through a fixed random map (shared by all sets)."""
    mixing = np.random.default_rng(1234).standard_normal((64, dim)).astype(np.float32) / 8
    centres = np.random.default_rng(4321).standard_normal((10, 64)).astype(np.float32) * 2
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, 10, count)] + rng.standard_normal((count, 64), dtype=np.float32) + shift
    return np.maximum(latent @ mixing, 0).astype(np.float32)


def adversarial_features(case: str, count: int, dim: int, seed: int) -> np.ndarray:
    """One set of an adversarial case (see the module docstring); ``seed`` 0 is the real set, 1 the fake one."""
    rng = np.random.default_rng(100 + seed)
    if case == "flat":
        return rng.standard_normal((count, dim), dtype=np.float32) + 0.1 * seed
    if case == "heavy":
        return rng.standard_t(1.5, (count, dim)).astype(np.float32) + 0.1 * seed
    if case == "far":
        return structured_features(count, dim, seed, shift=8.0 * seed)
    if case == "ties":
        distinct = rng.integers(0, 3, (-(-count // 3), dim)).astype(np.float32)
        return np.repeat(distinct, 3, axis=0)[:count]
    raise ValueError(f"unknown case {case!r}: choose from {', '.join(CASES)}")


CASES = ("inception-like", "flat", "heavy", "far", "ties")


def case_features(case: str, count: int, dim: int, seed: int) -> np.ndarray:
    if case == "inception-like":
        return structured_features(count, dim, seed, shift=0.15 * seed)
    return adversarial_features(case, count, dim, seed)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, device: torch.device, numpy: bool = False) -> tuple[object, tuple[float, float], dict]:
    """(result, (wall seconds, CPU seconds of all threads), peak memory increases in bytes by method) of one call.

    tracemalloc only for numpy code (it slows Python allocations, and cannot see torch's)."""
    memory = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _status_kib("VmRSS")
    if numpy:
        tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        memory["cuda"] = torch.cuda.max_memory_allocated() - base
    seconds = (time.perf_counter() - start, time.process_time() - cpu_start)
    if numpy:
        memory["tracemalloc"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    memory["rss"] = (_status_kib("VmHWM") - rss_before) * 1024
    return result, seconds, memory


def describe(memory: dict) -> str:
    names = {"cuda": "CUDA max allocated", "tracemalloc": "tracemalloc", "rss": "peak RSS"}
    return ", ".join(f"{names[key]} +{value / GIB:.2f} GiB" for key, value in memory.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="N = M for the comparison with prdc")
    parser.add_argument("--large", type=int, default=50_000, help="N = M for ours alone; 0 skips it")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--tile-size", type=int, default=None, help=f"default: {DEFAULTS['prdc_tile_size']}")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"PRDC, k = {args.k}, D = {args.dim}, structured float32 features; ours on {device}, prdc "
        f"{importlib.metadata.version('prdc')} on CPU; {torch.get_num_threads()} CPU threads"
    )

    def ours(real_t: torch.Tensor, fake_t: torch.Tensor):
        return measure(lambda: compute_prdc(real_t, fake_t, args.k, args.tile_size, device), device)

    # Warm both up on a few points (library loading, kernel selection), then time ours first: the reference's worker
    # threads and processes linger after it returns and would slow whatever ran next.
    warm_real, warm_fake = structured_features(200, args.dim, 0), structured_features(200, args.dim, 1, shift=0.15)
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints its sizes
        reference_prdc.compute_prdc(warm_real, warm_fake, args.k)
    compute_prdc(torch.from_numpy(warm_real).to(device), torch.from_numpy(warm_fake).to(device), args.k)
    ratios = {}
    for case in args.cases.split(","):
        real, fake = (case_features(case, args.size, args.dim, seed) for seed in (0, 1))
        result, seconds, memory = ours(torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device))
        with contextlib.redirect_stdout(io.StringIO()):
            reference, reference_s, reference_memory = measure(
                lambda: reference_prdc.compute_prdc(real, fake, args.k), torch.device("cpu"), numpy=True
            )
        difference = max(abs(float(reference[key]) - result[key]) for key in result)
        ratios[case] = reference_s[0] / seconds[0]
        print(f"{case}: N = M = {args.size}  (load average {os.getloadavg()[0]:.1f}; wall time shared, CPU time ours)")
        reference_times = f"{reference_s[0]:7.1f} s wall {reference_s[1]:7.1f} s CPU"
        print(f"  prdc (sklearn)      {reference_times}  {describe(reference_memory)}")
        print(f"  genkd.metrics.prdc  {seconds[0]:7.1f} s wall {seconds[1]:7.1f} s CPU  {describe(memory)}")
        print(
            f"  speed-up {ratios[case]:.2f}x wall, {reference_s[1] / seconds[1]:.2f}x CPU; "
            f"max |difference| of the four metrics: {difference:.1e}"
        )
        print("  " + ", ".join(f"{key} {value:.4f}" for key, value in result.items()))
    print("speed-up over prdc (wall): " + ", ".join(f"{case} {ratio:.2f}x" for case, ratio in ratios.items()))

    if args.large:
        real = torch.from_numpy(structured_features(args.large, args.dim, seed=2)).to(device)
        fake = torch.from_numpy(structured_features(args.large, args.dim, seed=3, shift=0.15)).to(device)
        result, seconds, memory = ours(real, fake)
        print(f"N = M = {args.large} (features themselves: {2 * real.numel() * 4 / GIB:.2f} GiB, not counted)")
        print(f"  genkd.metrics.prdc  {seconds[0]:7.1f} s wall {seconds[1]:7.1f} s CPU  {describe(memory)} (target: 4 GiB)")
        print("  " + ", ".join(f"{key} {value:.4f}" for key, value in result.items()))


if __name__ == "__main__":
    main()
