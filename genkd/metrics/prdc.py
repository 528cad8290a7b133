"""Precision, recall, density and coverage (Naeem et al. 2020) in bounded memory, on the GPU when there is one.

Every point gets a ball whose radius is the distance to its k-th nearest neighbour in its own set. Precision: share
of fake points inside some real ball. Recall: share of real points inside some fake ball. Density: real balls holding
each fake point, / k, averaged. Coverage: share of real balls holding at least one fake point. Comparisons are strict.

The reference implementation (the ``prdc`` package) builds three full distance matrices with scikit-learn; at 50,000
points that is 30 GB. Here the matrices are swept in tiles and never stored: the k-NN radii come from a running top-k,
the four counts from per-tile comparisons. The decisions are still the reference's, pair for pair, ties included:

* the sweep computes squared distances fast and approximately, with a rigorous bound on the error of every one of them.
  Features are centred and split, in float64, into a head (their coordinates in a rank-``HEAD_RANK`` principal
  subspace, which holds most of their spread) and a tail (the rest). One tile is then an exact int8 matmul of the
  quantised tails (``torch._int_mm``, int32 results) plus, fused into the same float32 addmm, the head products and
  the norms ([h, |x|^2, 1] . [-2 h', 1, |x'|^2]). The tail is small, so its quantisation error is small; it is known
  exactly per point, and with Higham's gamma_n for the float32 part bounds |sweep - exact| by margin_i + margin_j;
* a radius is then known to within that bound, and a comparison is settled when the bound allows. The few comparisons
  it cannot settle, and the radii they involve, are recomputed exactly as scikit-learn does: float64
  ``(-2 x.y + |x|^2) + |y|^2`` on the original features, clamped at 0, rounded to the features' dtype (scikit-learn
  upcasts float32 inputs by chunks and returns float32 distances), square-rooted.

int8 matmuls run about 5x faster than float32 ones on CPUs with VNNI (and on tensor cores), so the sweep costs about
two int8 matmuls' worth of work (N^2 / 2 + M^2 / 2 + N M pairs), where the reference does three float64 ones. How many
pairs need the exact path depends on how much spread the head misses: a few per point for Inception-like features.

Worst case. When the bound is loose against the radii (flat spectra, heavy tails, sets far apart, masses of ties), the
undecided pairs and whole-row recomputations would cost more than the sweep saves. So before the sweep, a strided
sample of ``DECISION_SAMPLE`` points per set is swept against both whole sets (5 % of the work at 10,000 points) and
the share of pairs that would land in the exact path is measured; above ``UNDECIDED_SHARE`` the plain exact path runs
instead: scikit-learn's float64 distances tile by tile (symmetric tiles once), running top-k radii, strict comparisons.
It makes the reference's decisions by construction and does 2/3 of its pairs, so it is never slower than ``prdc``.
"""
import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from genkd.metrics import DEFAULTS, full_float32_precision

ROUNDING = 2.0**-24  # unit roundoff of float32
ROUNDING64 = 2.0**-53
SLACK = 4e-6  # relative, on squared distances: covers the float32 rounding of a distance, of its sqrt, of thresholds
HEAD_SLACK = 1e-9  # relative, on squared norms: covers the float64 split into head and tail (errors ~1e-12)
HEAD_RANK = 128  # principal directions kept in float32: enough for Inception-like spectra, 1/16 of a 2048-d matmul
HEAD_SAMPLE = 2048  # points that estimate the principal subspace (its accuracy only affects speed)
INT8_MAX = 127
CANDIDATES_BEYOND_K = 16  # extra nearest neighbours kept by the sweep, so that an exact radius rarely needs a new pass
GROUP = 8  # entries per group when the sweep looks for the smallest entries of a tile line (see _smallest)
PAIRS_PER_CHUNK = 1 << 18  # feature values handled at once in float64 (exact path, split): chunks that stay in cache
DECISION_SAMPLE = 256  # points per set whose sweep rows decide between the sweep and the plain exact path
# Largest share of a sample's pairs within their error of a radius for which the sweep still pays: an undecided pair
# costs a float64 gather-dot of D values (~50 matmul pairs' worth); calibrated with bench/bench_prdc.py.
UNDECIDED_SHARE = 0.01


def _padded(length: int) -> int:
    """Rows and inner size for ``torch._int_mm`` on CUDA: a multiple of 8, more than 16 (harmless on CPU)."""
    return max(24, -(-length // 8) * 8)


@dataclass
class _FeatureSet:
    """One point set: the original features (exact path) and its split form (sweep).

    The sweep's squared distance of points i, j is ``head[i] . head_right[j] - 2 scale^2 (tail[i] . tail[j])``.
    """

    original: torch.Tensor  # (N, D), float32 or float64: the dtype scikit-learn would compute in
    norms: torch.Tensor  # (N,) float64 squared norms of the original features, the reference's |x|^2
    head: torch.Tensor  # (N, r + 2) float32 rows [h, |x - c|^2, 1]
    head_right: torch.Tensor  # (N, r + 2) float32 rows [-2 h, 1, |x - c|^2]
    tail: torch.Tensor  # (padded N, padded D) int8: round(tail / scale), zero rows and columns beyond the set's
    scale: float  # the tail's quantisation step
    tail_norms: torch.Tensor  # (N,) float64 |scale * quantised tail|^2
    rounding_norms: torch.Tensor  # (N,) float64 |tail - scale * quantised tail|^2: the quantisation error, exactly
    float_margin: torch.Tensor  # (N,) float64: this point's share of the bound on everything else (float rounding)
    margin: torch.Tensor = field(init=False)  # (N,) float64: its share of the bound on |sweep - exact|, see bound_with

    def __len__(self) -> int:
        return len(self.original)

    def bound_with(self, ratio: float) -> None:
        """Margins for a quantisation bound shared with the other set, split by ``ratio`` (see ``_quantisation_ratio``).

        With a = scale |q|, b = |tail - scale q|, the tail product is off by 2 (a_i b_j + b_i a_j + b_i b_j) on a
        squared distance, and 2 a_i b_j <= ratio a_i^2 + b_j^2 / ratio (AM-GM): margins that add up over a pair.
        """
        self.margin = self.float_margin + ratio * self.tail_norms + (1 + 1 / ratio) * self.rounding_norms


def _split(real: torch.Tensor, centre: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """(head basis, tail step): (D, rank) float64 orthonormal columns near the top principal directions of the real
    set (seeded randomised range finder on a sample) and the int8 step that spans the sample's tails.

    Neither needs to be exact: the basis only decides how much of the spread stays in float32, and tail values beyond
    the step's range are clamped, with their larger rounding counted exactly. Both only affect speed.
    """
    dim = real.shape[1]
    if dim <= rank:
        return torch.eye(dim, dtype=torch.float64, device=real.device), 1.0  # no tail
    sample = (real[:: max(1, len(real) // HEAD_SAMPLE)][:HEAD_SAMPLE].double() - centre).float()
    generator = torch.Generator(real.device).manual_seed(0)
    probe = torch.randn(dim, rank, generator=generator, device=real.device)
    basis = torch.linalg.qr((sample.T @ (sample @ probe)).double()).Q  # one power iteration sharpens the subspace
    tails = sample - (sample @ basis.float()) @ basis.T.float()
    return basis, tails.abs().max().item() / INT8_MAX or 1.0


def _feature_set(features: torch.Tensor, centre: torch.Tensor, basis: torch.Tensor, scale: float) -> _FeatureSet:
    count, dim = features.shape
    device, rank = features.device, basis.shape[1]
    head = torch.empty(count, rank + 2, device=device)
    quantised = torch.zeros(count + _padded(1), _padded(dim), dtype=torch.int8, device=device)  # any block padded
    raw_norms, norms, tail_norms, rounding_norms = (
        torch.empty(count, dtype=torch.float64, device=device) for _ in range(4)
    )
    chunk = max(1, PAIRS_PER_CHUNK // dim)
    for start in range(0, count, chunk):  # float64 by cache-sized chunks: the split is exact to ~1e-12 relative
        rows = slice(start, min(start + chunk, count))
        raw = features[rows].double()
        raw_norms[rows] = raw.square().sum(dim=1)
        centred = raw - centre
        coordinates = centred @ basis
        tail = centred - coordinates @ basis.T
        levels = (tail / scale).round_().clamp_(-INT8_MAX, INT8_MAX)
        quantised[rows, :dim] = levels
        head[rows, :rank] = coordinates
        norms[rows] = centred.square().sum(dim=1)
        tail_norms[rows] = levels.square().sum(dim=1) * scale**2
        rounding_norms[rows] = tail.sub_(levels.mul_(scale)).square_().sum(dim=1)
    head[:, rank] = norms
    head[:, rank + 1] = 1
    if not (torch.isfinite(norms).all() and torch.isfinite(head).all()):  # a NaN or infinity reaches its norm
        raise ValueError("PRDC needs finite features: some hold NaN or infinity (or values beyond float32 range)")
    head_right = torch.cat([-2 * head[:, :rank], head[:, rank + 1 :], head[:, rank : rank + 1]], dim=1)

    # Everything but the quantisation: the tile's float32 addmm of length r + 3 is off by gamma_(r+3) times the sum of
    # its absolute terms, <= 2 (|x_c|^2 + |y_c|^2) + a^2 + a'^2; rounding h, the norms, the int32 product and its
    # weight to float32 adds a few units of roundoff of the same; the float64 split adds HEAD_SLACK; the reference's
    # own float64 evaluation on the raw features adds (D + 4) u64 (|x|^2 + |y|^2).
    gamma = (rank + 3) * ROUNDING / (1 - (rank + 3) * ROUNDING)
    float_margin = (
        8 * (gamma + ROUNDING) * (norms + tail_norms)
        + HEAD_SLACK * norms
        + (dim + 4) * ROUNDING64 * raw_norms * (1 + 2 * dim * ROUNDING64)  # raw_norms itself is float64-rounded
    )
    parts = (head, head_right, quantised, scale, tail_norms, rounding_norms, float_margin)
    return _FeatureSet(features, raw_norms, *parts)


def _quantisation_ratio(*sets: _FeatureSet) -> float:
    """The AM-GM split that minimises the summed quantisation margins: sqrt(sum b^2 / sum a^2)."""
    tail = sum(points.tail_norms.sum().item() for points in sets)
    rounding = sum(points.rounding_norms.sum().item() for points in sets)
    return (rounding / tail) ** 0.5 if rounding and tail else 1.0


@functools.cache
def _int8_matmul_available(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` runs on this device: CPUs and recent GPUs have int8 kernels, some older GPUs not."""
    probe = torch.ones(_padded(1), _padded(1), dtype=torch.int8, device=device)
    try:
        return bool((torch._int_mm(probe, probe) == len(probe)).all())
    except (RuntimeError, NotImplementedError):  # no kernel for this backend, or none for this GPU
        return False


def _squared_distances(x: _FeatureSet, rows: slice, y: _FeatureSet, cols: slice) -> torch.Tensor:
    """Sweep tile of squared distances between x[rows] and y[cols]: exact int8 tail product, float32 head addmm."""
    height, width = rows.stop - rows.start, cols.stop - cols.start
    left = x.tail[rows.start : rows.start + _padded(height)]
    right = y.tail[cols.start : cols.start + _padded(width)].T
    if _int8_matmul_available(left.device):
        tails = torch._int_mm(left, right)[:height, :width].float()
    else:  # as exact, slower: int8 products summed in float64 stay integers far below 2^53
        tails = (left.double() @ right.double())[:height, :width].float()
    return tails.addmm_(x.head[rows], y.head_right[cols].T, beta=-2 * x.scale * y.scale)


def _exact_distances(x: _FeatureSet, rows: torch.Tensor, y: _FeatureSet, cols: torch.Tensor, dtype) -> torch.Tensor:
    """scikit-learn's euclidean distances of the pairs (x[rows[p]], y[cols[p]]), in small chunks (fast, bounded)."""
    chunk = max(1, PAIRS_PER_CHUNK // x.original.shape[1])
    distances = torch.empty(len(rows), dtype=dtype, device=x.original.device)
    for start in range(0, len(rows), chunk):
        pair_rows, pair_cols = rows[start : start + chunk], cols[start : start + chunk]
        dots = (x.original[pair_rows].double() * y.original[pair_cols].double()).sum(dim=1)
        squared = (-2 * dots + x.norms[pair_rows]) + y.norms[pair_cols]
        distances[start : start + chunk] = squared.clamp_(min=0).to(dtype).sqrt_()
    return distances


def _blocks(count: int, tile_size: int) -> list[slice]:
    return [slice(start, min(start + tile_size, count)) for start in range(0, count, tile_size)]


@dataclass
class _Radii:
    """k-NN radii of one set: bounds from the sweep for all points, exact values on demand.

    The radius of point i is the reference's (k+1)-th smallest distance of row i, self included at 0.
    """

    points: _FeatureSet
    k: int
    tile_size: int
    nearest: torch.Tensor  # (N, kept) float32 sweep squared distances of the nearest kept points, ascending
    nearest_index: torch.Tensor  # (N, kept) their indices
    error: torch.Tensor  # (N,) float64: |sweep - exact| <= error_i for every squared distance of row i
    exact_values: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.exact_values = torch.full_like(self.error, float("nan"), dtype=self.points.original.dtype)

    def squared_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) bounds on every squared radius: order statistics move by at most the error of their row."""
        sweep = self.nearest[:, self.k].double()
        return (sweep - self.error) * (1 - SLACK), (sweep + self.error) * (1 + SLACK)

    def exact(self, rows: torch.Tensor) -> torch.Tensor:
        """The reference's radii of ``rows``, computed once each."""
        missing = rows[self.exact_values[rows].isnan()].unique()
        if len(missing):
            self.exact_values[missing] = self._compute(missing)
        return self.exact_values[rows]

    def _compute(self, rows: torch.Tensor) -> torch.Tensor:
        k, points, dtype = self.k, self.points, self.points.original.dtype
        nearest, nearest_index, error = self.nearest[rows].double(), self.nearest_index[rows], self.error[rows]
        # Points more than 2 errors below the sweep's (k+1)-th smallest are surely nearer than the radius, points more
        # than 2 errors above surely farther: the radius is the exact distance of rank k+1-below among the others.
        low, high = nearest[:, k] - 2 * error, nearest[:, k] + 2 * error
        below = (nearest < low[:, None]).sum(dim=1)
        # Points beyond the kept ones are at least nearest[-1] - margin_i - max margin. If that may not clear the radius
        # (<= sweep + error), the row is recomputed in full (rare: dense ties, duplicates).
        beyond = nearest[:, -1] - points.margin[rows] - points.margin.max()
        whole_row = (beyond <= nearest[:, k] + error) & (nearest.shape[1] < len(points))
        window = (nearest >= low[:, None]) & (nearest <= high[:, None]) & ~whole_row[:, None]
        exact = torch.full(nearest.shape, float("inf"), dtype=dtype, device=rows.device)
        slot_rows, slots = window.nonzero(as_tuple=True)
        neighbours = nearest_index[slot_rows, slots]
        exact[slot_rows, slots] = _exact_distances(points, rows[slot_rows], points, neighbours, dtype)
        exact[window & (nearest_index == rows[:, None])] = 0  # scikit-learn zeroes the diagonal of a set against itself
        radii = exact.sort(dim=1).values.gather(1, (k - below)[:, None]).squeeze(1)
        if whole_row.any():
            radii[whole_row] = self._whole_rows(rows[whole_row])
        return radii

    def _whole_rows(self, rows: torch.Tensor) -> torch.Tensor:
        points, dtype = self.points, self.points.original.dtype
        x = points.original[rows].double()
        smallest = torch.empty(len(rows), 0, dtype=dtype, device=rows.device)
        for start in range(0, len(points), self.tile_size):
            cols = slice(start, min(start + self.tile_size, len(points)))
            y = points.original[cols].double()
            squared = (-2 * x @ y.T + points.norms[rows, None]) + points.norms[None, cols]
            distances = squared.clamp_(min=0).to(dtype).sqrt_()
            distances[rows[:, None] == torch.arange(cols.start, cols.stop, device=rows.device)] = 0
            smallest = torch.cat([smallest, distances], dim=1)
            smallest = smallest.topk(min(self.k + 1, smallest.shape[1]), dim=1, largest=False).values
        return smallest[:, self.k]


def _smallest(tile: torch.Tensor, count: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the ``count`` smallest entries along ``dim`` of a tile, for every line across it.

    Minima over groups of consecutive entries (a cheap reduction whichever way the tile is laid out) first pick the
    ``count`` groups that can hold them, so the exact top-k sees count x GROUP entries per line instead of all: about
    twice as fast as torch.topk over the tile, and no transposed copy for dim 0.
    """
    length = tile.shape[dim]
    lines = tile if dim == 1 else tile.T
    if length <= 2 * count * GROUP:
        return lines.topk(min(count, length), dim=1, largest=False)
    full = length - length % GROUP
    minima = tile.narrow(dim, 0, full).unflatten(dim, (full // GROUP, GROUP)).amin(dim=dim + 1)
    chosen = (minima if dim == 1 else minima.T).topk(count, dim=1, largest=False).indices
    index = (chosen[:, :, None] * GROUP + torch.arange(GROUP, device=tile.device)).flatten(1)
    if full < length:
        index = torch.cat([index, torch.arange(full, length, device=tile.device).expand(len(index), -1)], dim=1)
    top = lines.gather(1, index).topk(count, dim=1, largest=False)
    return top.values, index.gather(1, top.indices)


def _knn_radii(points: _FeatureSet, k: int, tile_size: int) -> _Radii:
    """Sweep the set against itself, keeping each point's nearest squared distances (a running top-k per row)."""
    count, device = len(points), points.original.device
    kept = min(count, k + 1 + CANDIDATES_BEYOND_K)
    nearest = torch.full((count, kept), float("inf"), device=device)
    nearest_index = torch.zeros((count, kept), dtype=torch.long, device=device)

    def merge(rows: slice, squared: torch.Tensor, cols: slice, dim: int) -> None:
        """Fold the tile's smallest entries along ``dim`` into the running nearest of ``rows``."""
        top_values, top_indices = _smallest(squared, kept, dim)
        values = torch.cat([nearest[rows], top_values], dim=1)
        indices = torch.cat([nearest_index[rows], top_indices + cols.start], dim=1)
        merged = values.topk(kept, dim=1, largest=False)
        nearest[rows], nearest_index[rows] = merged.values, indices.gather(1, merged.indices)

    # The distance matrix is symmetric: each off-diagonal tile serves its rows and, along dim 0, its columns.
    blocks = _blocks(count, tile_size)
    for index, cols in enumerate(blocks):
        for rows in blocks[: index + 1]:
            squared = _squared_distances(points, rows, points, cols)
            merge(rows, squared, cols, dim=1)
            if rows != cols:
                merge(cols, squared, rows, dim=0)
    # |sweep - exact| <= margin_i + margin_j for each pair, so each order statistic of row i moves by at most
    # margin_i + the largest margin of its kept points; points beyond the kept ones count only if they come that close.
    error = points.margin + points.margin[nearest_index].max(dim=1).values
    outside = nearest[:, -1].double() - points.margin - points.margin.max() < nearest[:, k].double() - error
    error[outside] = points.margin[outside] + points.margin.max()
    return _Radii(points, k, tile_size, nearest, nearest_index, error)


def _as_tensor(features, device) -> torch.Tensor:
    features = torch.as_tensor(features, device=device)
    if features.dtype != torch.float64:
        features = features.float()
    if features.ndim != 2:
        raise ValueError(f"PRDC needs (N, D) features, got shape {tuple(features.shape)}")
    return features


@torch.no_grad()
def compute_prdc(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    k: int = DEFAULTS["prdc_k"],
    tile_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """precision, recall, density, coverage of (N, D) real and (M, D) fake features, as ``prdc.compute_prdc``.

    Memory is O((N + M) D + tile_size^2); ``device`` defaults to that of ``real_features`` (CPU for numpy arrays),
    ``tile_size`` to the device's entry in ``genkd.metrics.DEFAULTS``.
    """
    if device is None:
        device = real_features.device if torch.is_tensor(real_features) else "cpu"
    device = torch.device(device)
    tile_size = tile_size or DEFAULTS["prdc_tile_size"].get(device.type, DEFAULTS["prdc_tile_size"]["cpu"])
    real, fake = _as_tensor(real_features, device), _as_tensor(fake_features, device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"PRDC with k = {k} needs more than {k} real and fake points, got {len(real)} and {len(fake)}")

    with full_float32_precision():  # TF32 or bf16 matmuls would void the error bound
        centre = real.mean(dim=0).double()  # distances ignore the shift; the error bound shrinks with it
        basis, scale = _split(real, centre, HEAD_RANK)
        real_set, fake_set = _feature_set(real, centre, basis, scale), _feature_set(fake, centre, basis, scale)
        ratio = _quantisation_ratio(real_set, fake_set)
        real_set.bound_with(ratio)
        fake_set.bound_with(ratio)
        if _undecided_share(real_set, fake_set, k) > UNDECIDED_SHARE:
            counts = _exact_counts(real_set, fake_set, k, tile_size)
        else:
            real_radii, fake_radii = _knn_radii(real_set, k, tile_size), _knn_radii(fake_set, k, tile_size)
            counts = _ball_counts(real_radii, fake_radii, tile_size)

    fakes_in_real_balls, fake_in_some_real_ball, real_ball_holds_fake, real_in_some_fake_ball = counts
    return {
        "precision": fake_in_some_real_ball.double().mean().item(),
        "recall": real_in_some_fake_ball.double().mean().item(),
        "density": fakes_in_real_balls.sum().item() / (k * len(fake)),
        "coverage": real_ball_holds_fake.double().mean().item(),
    }


def _decide(sweep: torch.Tensor, error: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """(surely inside, unsure) for squared distances known to within ``error`` against squared radii in [low, high]."""
    inside = sweep + error < low
    return inside, ~inside & (sweep - error <= high)


def _ball_counts(real_radii: _Radii, fake_radii: _Radii, tile_size: int):
    """Per-point counts behind the four metrics, from one sweep over the real x fake tiles."""
    real, fake = real_radii.points, fake_radii.points
    device = real.original.device
    dtype = torch.float32 if real.original.dtype == fake.original.dtype == torch.float32 else torch.float64
    fakes_in_real_balls = torch.zeros(len(fake), dtype=torch.long, device=device)  # density numerator, per fake
    fake_in_some_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=device)  # precision
    real_ball_holds_fake = torch.zeros(len(real), dtype=torch.bool, device=device)  # coverage
    real_in_some_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=device)  # recall

    def count(rows: torch.Tensor, cols: torch.Tensor, in_real_ball: torch.Tensor, in_fake_ball: torch.Tensor) -> None:
        inside_cols = cols[in_real_ball]
        fakes_in_real_balls.index_add_(0, inside_cols, torch.ones_like(inside_cols))
        fake_in_some_real_ball[inside_cols] = True
        real_ball_holds_fake[rows[in_real_ball]] = True
        real_in_some_fake_ball[rows[in_fake_ball]] = True

    real_low, real_high = real_radii.squared_bounds()
    fake_low, fake_high = fake_radii.squared_bounds()
    unsure_pairs = []
    for cols in _blocks(len(fake), tile_size):
        for rows in _blocks(len(real), tile_size):
            squared = _squared_distances(real, rows, fake, cols)
            # Only pairs within their error of some ball can be inside one: a float32 threshold per row and per column
            # finds those few, which are then decided one by one in float64.
            row_reach = ((real_high[rows] + real.margin[rows] + fake.margin[cols].max()) * (1 + SLACK)).float()
            col_reach = ((fake_high[cols] + fake.margin[cols] + real.margin[rows].max()) * (1 + SLACK)).float()
            near = (squared <= row_reach[:, None]) | (squared <= col_reach[None, :])
            pair_rows, pair_cols = near.nonzero(as_tuple=True)
            sweep = squared[pair_rows, pair_cols].double()
            pair_rows, pair_cols = pair_rows + rows.start, pair_cols + cols.start
            error = real.margin[pair_rows] + fake.margin[pair_cols]
            in_real, unsure_real = _decide(sweep, error, real_low[pair_rows], real_high[pair_rows])
            in_fake, unsure_fake = _decide(sweep, error, fake_low[pair_cols], fake_high[pair_cols])
            unsure = unsure_real | unsure_fake
            count(pair_rows[~unsure], pair_cols[~unsure], in_real[~unsure], in_fake[~unsure])
            pair_data = (pair_rows, pair_cols, sweep, error, in_real, unsure_real, in_fake, unsure_fake)
            unsure_pairs.append([tensor[unsure] for tensor in pair_data])
    rows, cols, sweep, error, in_real, unsure_real, in_fake, unsure_fake = map(torch.cat, zip(*unsure_pairs))

    # The unsure pairs against the exact radii of their balls; the pairs still unsure get exact distances.
    real_side, fake_side = unsure_real.nonzero().squeeze(1), unsure_fake.nonzero().squeeze(1)
    real_squared = real_radii.exact(rows[real_side]).double().square()
    in_real[real_side], unsure_real[real_side] = _decide(
        sweep[real_side], error[real_side], real_squared * (1 - SLACK), real_squared * (1 + SLACK)
    )
    fake_squared = fake_radii.exact(cols[fake_side]).double().square()
    in_fake[fake_side], unsure_fake[fake_side] = _decide(
        sweep[fake_side], error[fake_side], fake_squared * (1 - SLACK), fake_squared * (1 + SLACK)
    )
    real_side, fake_side = unsure_real.nonzero().squeeze(1), unsure_fake.nonzero().squeeze(1)
    exact_pairs = torch.cat([real_side, fake_side]).unique()
    distances = torch.empty(len(rows), dtype=dtype, device=device)
    distances[exact_pairs] = _exact_distances(real, rows[exact_pairs], fake, cols[exact_pairs], dtype)
    in_real[real_side] = distances[real_side] < real_radii.exact(rows[real_side]).to(dtype)
    in_fake[fake_side] = distances[fake_side] < fake_radii.exact(cols[fake_side]).to(dtype)
    count(rows, cols, in_real, in_fake)
    return fakes_in_real_balls, fake_in_some_real_ball, real_ball_holds_fake, real_in_some_fake_ball


def _sample(count: int) -> torch.Tensor:
    return torch.arange(0, count, max(1, count // DECISION_SAMPLE))[:DECISION_SAMPLE]


def _undecided_share(real: _FeatureSet, fake: _FeatureSet, k: int) -> float:
    """Share of the sampled points' pairs (with their own set, for the radii, and with the other set, for the balls)
    whose sweep distance lies within its error of the sampled point's k-NN radius: what the exact path would get.

    The sampled rows are swept against the whole sets, so their radii bounds are the ones the full sweep would find.
    """
    share, pairs = 0.0, 0
    for points, other in ((real, fake), (fake, real)):
        rows = _sample(len(points)).to(points.original.device)
        own = _squared_distances(_rows_of(points, rows), slice(0, len(rows)), points, slice(0, len(points))).double()
        cross = _squared_distances(_rows_of(points, rows), slice(0, len(rows)), other, slice(0, len(other))).double()
        error = points.margin[rows] + torch.maximum(points.margin.max(), other.margin.max())
        radius = own.kthvalue(k + 1, dim=1).values  # self included, at ~0
        low, high = (radius - 2 * error) * (1 - SLACK), (radius + 2 * error) * (1 + SLACK)
        for distances in (own, cross):
            share += ((distances >= low[:, None]) & (distances <= high[:, None])).sum().item()
            pairs += distances.numel()
    return share / pairs


def _rows_of(points: _FeatureSet, rows: torch.Tensor) -> _FeatureSet:
    """The sweep view of a subset of points (padded int8 tail block included)."""
    tail = torch.zeros(len(rows) + _padded(1), points.tail.shape[1], dtype=torch.int8, device=points.tail.device)
    tail[: len(rows)] = points.tail[rows]
    parts = [points.head[rows], points.head_right[rows], tail, points.scale]
    return _FeatureSet(points.original[rows], points.norms[rows], *parts, *(
        values[rows] for values in (points.tail_norms, points.rounding_norms, points.float_margin)))


def _exact_tile(x: _FeatureSet, rows: slice, y: _FeatureSet, cols: slice, dtype, same_set: bool) -> torch.Tensor:
    """scikit-learn's euclidean distances of a tile: float64 ``(-2 x.y + |x|^2) + |y|^2``, clamped at 0, rounded to
    the features' dtype, square-rooted; the diagonal of a set against itself zeroed."""
    dots = x.original[rows].double() @ y.original[cols].double().T
    squared = (-2 * dots + x.norms[rows, None]) + y.norms[None, cols]
    distances = squared.clamp_(min=0).to(dtype).sqrt_()
    if same_set and rows.start < cols.stop and cols.start < rows.stop:
        index = torch.arange(rows.start, rows.stop, device=distances.device)
        on_diagonal = index[:, None] == torch.arange(cols.start, cols.stop, device=distances.device)
        distances[on_diagonal] = 0
    return distances


def _exact_radii(points: _FeatureSet, k: int, tile_size: int, dtype) -> torch.Tensor:
    """Each point's (k+1)-th smallest distance within its set (self at 0 included), symmetric tiles computed once."""
    count = len(points)
    smallest = torch.full((count, k + 1), float("inf"), dtype=dtype, device=points.original.device)

    def merge(rows: slice, distances: torch.Tensor) -> None:
        joined = torch.cat([smallest[rows], distances], dim=1)
        smallest[rows] = joined.topk(min(k + 1, joined.shape[1]), dim=1, largest=False).values

    blocks = _blocks(count, tile_size)
    for index, cols in enumerate(blocks):
        for rows in blocks[: index + 1]:
            distances = _exact_tile(points, rows, points, cols, dtype, same_set=True)
            merge(rows, distances)
            if rows != cols:
                merge(cols, distances.T)
    return smallest[:, k]


def _exact_counts(real: _FeatureSet, fake: _FeatureSet, k: int, tile_size: int):
    """The four per-point counts of ``_ball_counts``, the reference's way: exact distances everywhere."""
    device = real.original.device
    dtype = torch.float32 if real.original.dtype == fake.original.dtype == torch.float32 else torch.float64
    real_radii = _exact_radii(real, k, tile_size, real.original.dtype).to(dtype)
    fake_radii = _exact_radii(fake, k, tile_size, fake.original.dtype).to(dtype)
    fakes_in_real_balls = torch.zeros(len(fake), dtype=torch.long, device=device)
    fake_in_some_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_ball_holds_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    real_in_some_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=device)
    for cols in _blocks(len(fake), tile_size):
        for rows in _blocks(len(real), tile_size):
            distances = _exact_tile(real, rows, fake, cols, dtype, same_set=False)
            in_real = distances < real_radii[rows, None]
            fakes_in_real_balls[cols] += in_real.sum(dim=0)
            fake_in_some_real_ball[cols] |= in_real.any(dim=0)
            real_ball_holds_fake[rows] |= in_real.any(dim=1)
            real_in_some_fake_ball[rows] |= (distances < fake_radii[None, cols]).any(dim=1)
    return fakes_in_real_balls, fake_in_some_real_ball, real_ball_holds_fake, real_in_some_fake_ball
