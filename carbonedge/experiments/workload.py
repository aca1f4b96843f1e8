"""Inputs and summaries for experiments: synthetic images, per-mode statistics."""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from carbonedge.broker.results import InferenceResult


def synthetic_images(count: int, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """``count`` distinct PNG images (smooth gradients plus noise), as encoded bytes.

    ImageNet cannot be downloaded here; these exercise the real decode and preprocessing
    path (Pillow, resize, crop, normalise) with varied content.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.5, 0.5, (3, 2))
        chans = [base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)]
        arr = np.stack(chans, axis=-1) + rng.normal(0, 20, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    return images


@dataclass(frozen=True, slots=True)
class ModeSummary:
    """What one configuration did over a run of requests."""

    name: str
    count: int
    share: dict[str, float]
    mean_ms: float
    p95_ms: float
    throughput_rps: float
    carbon_g_per_inf: float
    energy_kwh_per_inf: float
    random_init: bool
    power_source: str = ""
    """Where the host CPU power that charged most of these tasks came from."""

    def reduction_vs(self, baseline: ModeSummary) -> float:
        """Carbon reduction against ``baseline`` in percent (negative = more carbon)."""
        if baseline.carbon_g_per_inf <= 0:
            return math.nan
        return 100.0 * (1 - self.carbon_g_per_inf / baseline.carbon_g_per_inf)


def summarise(name: str, results: Sequence[InferenceResult], wall_s: float) -> ModeSummary:
    """Share per node, latency (end to end) mean and p95, throughput, carbon and energy."""
    latencies = sorted(r.e2e_ms for r in results)
    counts = Counter(r.node for r in results)
    n = len(results)
    return ModeSummary(
        name=name,
        count=n,
        share={node: c / n for node, c in counts.items()},
        mean_ms=statistics.fmean(latencies),
        p95_ms=percentile(latencies, 95),
        throughput_rps=n / wall_s if wall_s > 0 else math.nan,
        carbon_g_per_inf=statistics.fmean(r.carbon_g for r in results),
        energy_kwh_per_inf=statistics.fmean(r.energy_kwh for r in results),
        random_init=any(r.random_init for r in results),
        power_source=Counter(str(r.raw.get("power_source", "")) for r in results)
        .most_common(1)[0][0] if results else "",
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def format_table(rows: Sequence[ModeSummary], nodes: Sequence[str], baseline: ModeSummary) -> str:
    """The demo's table: one row per configuration."""
    short = [n.removeprefix("node-") for n in nodes]
    head = (f"{'mode':<12} {' / '.join(short):>22} {'mean ms':>8} {'p95 ms':>8} {'req/s':>6} "
            f"{'gCO2/inf':>10} {'vs mono':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        share = " / ".join(f"{100 * row.share.get(n, 0):.0f}%" for n in nodes)
        reduction = "-" if row is baseline else f"{row.reduction_vs(baseline):+.1f}%"
        lines.append(f"{row.name:<12} {share:>22} {row.mean_ms:8.1f} {row.p95_ms:8.1f} "
                     f"{row.throughput_rps:6.2f} {row.carbon_g_per_inf:10.3g} {reduction:>8}")
    return "\n".join(lines)
