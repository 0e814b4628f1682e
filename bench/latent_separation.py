"""How far apart a demo VAE's latents put the shapes, colour by colour (issue 20, round 28).

    python bench/latent_separation.py VAE_DIR [VAE_DIR ...]

For each colour, the L2 distance in the VAE's normalised latent (what the DiT learns) between a
square and a circle, and between a triangle and a circle, of that colour moving the same way
(17x64x64 clips rendered as the demo's ground truth; mean over the four directions). The DiT's
loss on a shape it draws wrong grows with this distance, so a colour whose shapes sit close
together gives its shapes a weak signal. It explains one case only (BENCHMARKS.md, round 28):
seed 4's VAE put green squares and magenta triangles 3x closer to circles than other colours did;
five DiT and text variants on its latents read 9-10 of 18 held-out draws, every one missing
"a magenta triangle moving up" in all three draws. A second training of the VAE on the same
clips spread them, and the preset's DiT read 17 of 18. Across the other runs the
least distance does not predict the held-out score.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.demo import shapes  # noqa: E402
from trainer.vae.pixels import to_signed  # noqa: E402
from trainer.vae.pretrained import VideoVAE  # noqa: E402


def shape_separation(vae: VideoVAE) -> dict[str, tuple[float, float]]:
    """colour -> (square-circle, triangle-circle) distance in the normalised latent."""

    def latent(colour: str, shape: str, direction: str) -> torch.Tensor:
        clip = shapes.render(shapes.ShapeClip(colour, shape, direction, 64, 64, 17))
        x = to_signed(clip)[None]
        with torch.no_grad():
            return vae.encode(x)[0]

    n = len(shapes.DIRECTIONS)
    out = {}
    for colour in shapes.COLOURS:
        square = triangle = 0.0
        for d in shapes.DIRECTIONS:
            circle = latent(colour, "circle", d)
            square += float((latent(colour, "square", d) - circle).norm())
            triangle += float((latent(colour, "triangle", d) - circle).norm())
        out[colour] = (square / n, triangle / n)
    return out


def colour_table(
    last: str,
    read: Callable[[VideoVAE], dict[str, tuple[float, float]]],
    worst: Callable[[list[tuple[float, float]]], tuple[float, float]],
    digits: int,
) -> None:
    """One markdown row per VAE directory on the command line: each colour's pair from `read`,
    then `worst` of them (also used by bench/vae_outline.py)."""
    torch.set_num_threads(1)
    print("| VAE | " + " | ".join(shapes.COLOURS) + f" | {last} |")
    print("|---" * (len(shapes.COLOURS) + 2) + "|")
    for path in sys.argv[1:]:
        pairs = list(read(VideoVAE(path)).values())
        cells = " | ".join(f"{a:.{digits}f} / {b:.{digits}f}" for a, b in [*pairs, worst(pairs)])
        print(f"| {path} | {cells} |", flush=True)


def main() -> None:
    colour_table(
        "least (square / triangle)",
        shape_separation,
        lambda p: (min(s for s, _ in p), min(t for _, t in p)),
        0,
    )


if __name__ == "__main__":
    main()
