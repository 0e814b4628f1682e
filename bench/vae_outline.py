"""How sharply a demo VAE returns each colour's outlines, as the shapes scorer reads them (issue 20,
round 29).

    python bench/vae_outline.py VAE_DIR [VAE_DIR ...]

For each colour, squares and triangles moving each of the four ways (17x64x64, the demo's ground
truth) go through the VAE (encode, decode) and the scorer's outline numbers are read from the
reconstruction: a square's corner fill (read as a square above 0.3; sharp: 1.0) and a triangle's
half ratio (a triangle below 0.6; sharp: 0.42), median over the directions. The DiT's samples are
decoded by this VAE and come out a little softer than its reconstructions, so a colour whose
reconstructed triangles already sit near 0.6 is drawn as a blob. Over 30 demo runs at the slow
machine's steps (rounds 27-29), where the worst colour's half ratio was above 0.54, 16 of 17 runs
read fewer than 15 of 18 held-out draws; at or below it, 11 of 13 read 15 or more (the other two
missed squares, which this does not foresee).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latent_separation import colour_table  # noqa: E402

from infra.demo import shapes  # noqa: E402
from infra.demo.score import measure  # noqa: E402
from trainer.vae.pixels import to_signed, to_uint8  # noqa: E402
from trainer.vae.pretrained import VideoVAE  # noqa: E402


def outlines(vae: VideoVAE) -> dict[str, tuple[float, float]]:
    """colour -> (square corner fill, triangle half ratio) of the reconstructions (medians)."""
    out = {}
    for colour in shapes.COLOURS:
        read: dict[str, list[float]] = {"square": [], "triangle": []}
        for shape, key in (("square", "corner"), ("triangle", "half")):
            for d in shapes.DIRECTIONS:
                x = to_signed(shapes.render(shapes.ShapeClip(colour, shape, d, 64, 64, 17)))
                with torch.no_grad():
                    rec = vae.decode(vae.encode(x[None]))[0].clamp(-1, 1)
                outline = measure(to_uint8(rec))["outline"]
                # A reconstruction with no outline (object lost) reads as the worst value.
                read[shape].append(outline[key] if outline else (0.0 if key == "corner" else 1.0))
        out[colour] = (statistics.median(read["square"]), statistics.median(read["triangle"]))
    return out


def main() -> None:
    colour_table(
        "least corner / most half",
        outlines,
        lambda p: (min(c for c, _ in p), max(h for _, h in p)),
        2,
    )


if __name__ == "__main__":
    main()
