"""The docs figure of one synthetic person's four hand aspects (docs/aspects.md): two photos of each.

    PYTHONPATH=src python benchmarks/figure_aspects.py --out docs/images/synthetic_aspects.png [--identity 2]
"""

from __future__ import annotations

import argparse
import sys

from PIL import Image, ImageDraw, ImageFont

from handclip.aspects import ASPECT_NAMES, ASPECTS
from handclip.synthetic.render import render_hand


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--identity", type=int, default=2)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args(argv)
    size, head = args.size, 28
    sheet = Image.new("RGB", (size * len(ASPECTS) + 6 * (len(ASPECTS) - 1), head + 2 * size + 6), "white")
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 16)
    except OSError:
        font = ImageFont.load_default()
    for column, aspect in enumerate(ASPECTS):
        x = column * (size + 6)
        draw.text((x + size // 2, head // 2), ASPECT_NAMES[aspect], fill="black", font=font, anchor="mm")
        for row in range(2):
            sheet.paste(render_hand(args.identity, row, size=size, seed=0, aspect=aspect), (x, head + row * (size + 6)))
    # A 256-colour palette keeps the repository's picture small; the hands keep their look.
    sheet.quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
