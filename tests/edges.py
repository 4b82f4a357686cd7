"""Does a page follow an image's outlines? A measure for the fake Gemini's edge pages.

Independent of how the fake finds edges: here an edge is a jump of more than ``JUMP`` grey
levels to the next pixel right or below, widened by ``SLACK`` pixels either side. A page
follows an image when most of its ink (inside the frame) lies in that zone.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageFilter, ImageOps

JUMP = 12
SLACK = 10  # the fake finds edges at half the page's size and draws them doubled
FRAME = 16  # pixels of the page's border left out


def placed(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` as greyscale fitted inside ``size`` (aspect kept) and centred on black."""
    fitted = ImageOps.contain(image.convert("L"), size)
    canvas = Image.new("L", size, 0)
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return canvas


def edge_zone(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """255 within ``SLACK`` pixels of an outline of ``image`` laid out on a page of ``size``."""
    grey = placed(image.filter(ImageFilter.GaussianBlur(1)), size)
    right = ImageChops.difference(grey, ImageChops.offset(grey, 1, 0))
    below = ImageChops.difference(grey, ImageChops.offset(grey, 0, 1))
    jumps = ImageChops.lighter(right, below).point(lambda v: 255 if v > JUMP else 0)
    return jumps.filter(ImageFilter.MaxFilter(2 * SLACK + 1))


def share_on_edges(page_png: bytes, image: Image.Image) -> float:
    """The fraction of the page's ink (inside its frame) that lies near ``image``'s outlines."""
    page = Image.open(io.BytesIO(page_png)).convert("L")
    inner = (FRAME, FRAME, page.width - FRAME, page.height - FRAME)
    ink = page.point(lambda v: 255 if v < 128 else 0).crop(inner)
    zone = edge_zone(image, page.size).crop(inner)
    on_edges = ImageChops.darker(ink, zone).histogram()[255]
    return on_edges / max(1, ink.histogram()[255])
