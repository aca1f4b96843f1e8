"""What an image bomb costs a producer now: time and peak memory of ``preprocess_image``.

Each input runs in a fresh process that reads it from a file and has already
preprocessed one ordinary photo (imports and codecs warm), so the peak RSS it adds is
its own; the baseline is that ordinary 640x480 JPEG photo, in the same run. The bombs are
a few hundred bytes of PNG declaring 60000x1 and 1x20000 pixels (which resizing the short
side to 256 used to blow up to gigabytes), a 12000x12000 PNG (144 megapixels, which
Pillow only warns about), and a 6000x4000 JPEG (24 MP: allowed, decoded at a reduced
scale; then once more decoded in full, for comparison).

    python benchmarks/bench_image_bombs.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CASE = r"""
import json, sys, time
from pathlib import Path
from carbonedge.client import images
from carbonedge.client.images import preprocess_image
from carbonedge.errors import InvalidRequest

def peak_kib():
    # VmHWM: this process image's own peak (ru_maxrss keeps the forking parent's)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


if sys.argv[3] == "full":  # the comparison row: no reduced-scale decoding
    images.DRAFT_ABOVE_PIXELS = 1 << 62
data = Path(sys.argv[1]).read_bytes()
preprocess_image(Path(sys.argv[2]).read_bytes())  # warm: imports, codecs, buffers
before = peak_kib()
t0 = time.perf_counter()
try:
    preprocess_image(data)
    outcome = "ok"
except InvalidRequest as e:
    outcome = str(e)
seconds = time.perf_counter() - t0
grown = peak_kib() - before
print(json.dumps({"bytes": len(data), "seconds": seconds, "rss_kib": grown,
                  "outcome": outcome}))
"""


def make_input(path: Path, kind: str, w: int, h: int) -> None:
    """A smooth gradient with noise as a JPEG photo, or an all-black (tiny) PNG."""
    if kind == "jpeg":
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.clip((xx / w * 200 + yy / h * 50)[..., None]
                      + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path, format="JPEG", quality=90)
    else:
        Image.new("1", (w, h)).save(path, format="PNG")


CASES = [
    ("baseline: 640x480 JPEG photo", "jpeg", 640, 480),
    ("60000x1 PNG", "png", 60000, 1),
    ("1x20000 PNG", "png", 1, 20000),
    ("12000x12000 PNG", "png", 12000, 12000),
    ("6000x4000 JPEG (draft)", "jpeg", 6000, 4000),
    ("6000x4000 JPEG, full decode", "jpeg", 6000, 4000),
]


def run_case(path: Path, warm: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, str(path), str(warm), mode],
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per input (median)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (_, kind, w, h) in enumerate(CASES):
            paths.append(Path(tmp) / f"{i}.{kind}")
            make_input(paths[-1], kind, w, h)
        for (label, *_), path in zip(CASES, paths, strict=True):
            mode = "full" if "full decode" in label else "bounded"
            runs = sorted((run_case(path, paths[0], mode) for _ in range(args.repeat)),
                          key=lambda r: r["seconds"])
            rows.append((label, runs[len(runs) // 2]))
    base = rows[0][1]
    print(f"{'input':<30} {'bytes':>9} {'ms':>9} {'x base':>7} {'peak +MiB':>9}  outcome")
    for label, r in rows:
        print(f"{label:<30} {r['bytes']:>9} {1e3 * r['seconds']:>9.2f} "
              f"{r['seconds'] / base['seconds']:>7.3f} {r['rss_kib'] / 1024:>9.1f}  "
              f"{r['outcome'][:70]}")


if __name__ == "__main__":
    main()
