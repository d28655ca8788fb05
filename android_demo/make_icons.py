"""Draws the web app's home-screen icons (icons/icon-192.png, icons/icon-512.png) with PIL.

    python android_demo/make_icons.py

The PNGs are committed; rerun only to change them. A stylized face with a check mark on the
project's blue, everything inside the central 80% so the icon also works as "maskable".
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
BG = (25, 86, 160)
FG = (255, 255, 255)
OK = (90, 200, 120)


def icon(size: int) -> Image.Image:
    s = 4 * size  # draw large, then downsample: smooth edges
    im = Image.new("RGB", (s, s), BG)
    d = ImageDraw.Draw(im)
    u = s / 100  # 1% of the side
    d.ellipse((30 * u, 18 * u, 70 * u, 64 * u), outline=FG, width=round(4 * u))  # head
    d.ellipse((40 * u, 35 * u, 45 * u, 40 * u), fill=FG)  # eyes
    d.ellipse((55 * u, 35 * u, 60 * u, 40 * u), fill=FG)
    d.arc((41 * u, 40 * u, 59 * u, 54 * u), 20, 160, fill=FG, width=round(3 * u))  # mouth
    d.ellipse((54 * u, 54 * u, 80 * u, 80 * u), fill=OK)  # badge with a check mark
    d.line([(60 * u, 67 * u), (65.5 * u, 73 * u), (74 * u, 60 * u)], fill=FG,
           width=round(4 * u), joint="curve")
    return im.resize((size, size), Image.LANCZOS)


def main() -> None:
    (HERE / "icons").mkdir(exist_ok=True)
    for size in (192, 512):
        icon(size).save(HERE / "icons" / f"icon-{size}.png", optimize=True)


if __name__ == "__main__":
    main()
