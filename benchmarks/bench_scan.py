"""Image scan speed: handclip.data.images.scan_images vs a plain one-by-one full decode.

Writes N photo-sized JPEGs (1600x1200, like 11k Hands) to a temporary folder and times
1) the straightforward loop: Image.open(p).load() + convert("RGB") for each file, one after another;
2) scan_images(paths) (thread pool, JPEG DCT-scaled decode that still reads every block).
Both must flag the same truncated file. Prints the images/s of each and the ratio.
Usage: python benchmarks/bench_scan.py [N]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from handclip.data.images import scan_images


def main(n: int = 120) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        base = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        photo = Image.fromarray(base).resize((1600, 1200), Image.BILINEAR)
        paths = []
        for k in range(n):
            path = Path(tmp) / f"Hand_{k:07d}.jpg"
            photo.rotate(k % 7).save(path, "JPEG", quality=90)
            paths.append(str(path))
        data = Path(paths[-1]).read_bytes()
        Path(paths[-1]).write_bytes(data[: len(data) * 3 // 4])

        start = time.perf_counter()
        bad_loop = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.load()
                    im.convert("RGB")
            except OSError:
                bad_loop.append(p)
        loop_s = time.perf_counter() - start

        start = time.perf_counter()
        problems = scan_images(paths)
        scan_s = time.perf_counter() - start
        assert [p.path for p in problems] == bad_loop == [paths[-1]], (problems, bad_loop)
        print(f"{n} JPEGs 1600x1200: full-decode loop {n / loop_s:.0f} img/s, "
              f"scan_images {n / scan_s:.0f} img/s, ratio {loop_s / scan_s:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 120)
