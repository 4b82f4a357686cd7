"""Pure image functions: prepare an uploaded photo, clean generated line art, thumbnail.

Bytes in, bytes out; no files, no network, no global state changed. Everything is Pillow's C
code except a 256-bin Otsu loop, so a 1024x1024 page is cleaned, thumbnailed and put in a PDF
(:mod:`pdf_page`) in well under 150 ms on one core (``uv run python -m bench.imaging``).

How a generated page is cleaned (``clean_line_art``):

1. Darkness is measured on the *value* channel, max(R, G, B), not luminance: a colour fill
   (red, yellow, sky blue) has a bright channel and reads as paper, while black, grey and dark
   coloured lines stay dark.
2. A pixel is ink when it is darker than the page's Otsu threshold (clamped to 64..200)
   **and** darker than its neighbourhood (a box mean about 1/32 of the page wide) by
   ``LOCAL_CONTRAST`` levels, or when it is nearly black (< ``ALWAYS_INK``). The local test
   drops broad shading, gradients and grey/colour fills and keeps lines; the absolute test
   keeps deliberate solid-black areas.
3. Specks: an ink pixel survives only when its 9x9 neighbourhood holds at least ~6 ink
   pixels, which removes isolated dots of up to 6 pixels and keeps lines 2 px and wider
   (a 1 px line loses about a pixel at its ends).
4. Ink coverage below 0.2 % (blank) or above 60 % (solid, inverted) is refused as a
   retryable ``unusable_output``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageChops, ImageFilter, ImageOps, UnidentifiedImageError

from realtime_worker.errors import JobError, PermanentJobError, RetryableJobError
from realtime_worker.limits import MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MAX_OUTPUT_PIXELS

SHRINK_BAND = 64  # output rows reduced at a time
# make_thumbnail and open_page (for make_pdf) read the page clean_line_art made (already within its limit);
# Pillow's own bomb check still applies to them.
_OWN_PAGE = 1 << 40
JPEG_QUALITY = 90
THUMBNAIL_SIDE = 400

OTSU_RANGE = (64, 200)
LOCAL_CONTRAST = 24
ALWAYS_INK = 64
SPECK_RADIUS = 4
SPECK_MIN_LEVEL = 20  # mean over 9x9 of a 0/255 mask: 20/255*81 = 6.4 ink pixels
MIN_INK, MAX_INK = 0.002, 0.60


# Pillow raises these (and DecompressionBombError) for data it cannot decode.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                  UnidentifiedImageError)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# HEIC/HEIF (the iPhone's default) is decoded by libheif through pillow-heif, one thread per
# image: the worker already runs IMAGE_THREADS images side by side.
pillow_heif.options.DECODE_THREADS = 1
_HEIF_ERRORS = (RuntimeError, *_DECODE_ERRORS)


@dataclass(frozen=True)
class InputLimits:
    """What an uploaded photo may weigh (bytes) and hold (pixels) before it is decoded."""

    max_bytes: int = MAX_INPUT_BYTES
    max_pixels: int = MAX_INPUT_PIXELS


DEFAULT_INPUT_LIMITS = InputLimits()


@dataclass(frozen=True)
class CleanedPage:
    """A cleaned page as PNG bytes (mode ``1``: pure black on pure white) and its size."""

    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Thumbnail:
    """A preview PNG of at most 400x400 pixels and its size."""

    png: bytes
    width: int
    height: int


def unreadable_input(name: str = "uploaded photo") -> PermanentJobError:
    """``name`` is what the input is to the user (the pipeline passes one per job kind)."""
    return PermanentJobError(f"The {name} could not be read", code="input_unreadable")


def input_too_large(name: str = "uploaded photo",
                    max_pixels: int = MAX_INPUT_PIXELS) -> PermanentJobError:
    return PermanentJobError(
        f"The {name} has too many pixels (at most {max_pixels / 1_000_000:g} megapixels)",
        code="input_too_large",
    )


def input_too_heavy(name: str, max_bytes: int) -> PermanentJobError:
    return PermanentJobError(
        f"The {name} is too large (at most {max_bytes / 2**20:g} MB)", code="input_too_large")


def output_too_large(max_pixels: int = MAX_OUTPUT_PIXELS) -> PermanentJobError:
    return PermanentJobError(
        f"The generated page was too large (more than {max_pixels / 1_000_000:g} megapixels)",
        code="output_too_large")


def unusable_output() -> RetryableJobError:
    return RetryableJobError("The generated page was unusable", code="unusable_output",
                             max_retries=1)


# -- decoding ---------------------------------------------------------------------------------


def _open(data: bytes, unreadable: JobError, too_large: JobError, max_pixels: int,
          draft_side: int | None = None) -> Image.Image:
    """Read the header, refuse more than ``max_pixels``, then decode (first frame only).

    ``draft_side`` lets the JPEG decoder scale down by 1/2..1/8 while decoding (and HEIF use an
    embedded thumbnail of at least that size, when there is one). Pillow's own
    bomb check (a warning above ~89 MP, an error above ~179 MP) also becomes ``too_large``:
    the warning is turned into an error for the call, so none escapes. ``catch_warnings`` is
    process-wide; the filter only touches this one warning category, which is harmless if
    threads interleave.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise too_large
        if draft_side is not None:
            image.draft("RGB", (draft_side, draft_side))
        image.load()
    except _BOMB_ERRORS as exc:
        raise too_large from exc
    except _DECODE_ERRORS as exc:
        raise unreadable from exc
    return image


def _flatten(image: Image.Image) -> Image.Image:
    """RGB or L without alpha: transparency becomes white paper."""
    if image.mode in ("1", "L", "RGB"):
        return image.convert("L") if image.mode == "1" else image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image.convert("F").point(lambda v: v / 256).convert("L")
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    paper = Image.new("RGB", rgba.size, "white")
    paper.paste(rgba, mask=rgba.getchannel("A"))
    return paper


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# -- uploaded photos --------------------------------------------------------------------------


def prepare_input_photo(data: bytes, max_side: int = 1024, *, name: str = "uploaded photo",
                        limits: InputLimits = DEFAULT_INPUT_LIMITS) -> bytes:
    """Decode an uploaded photo or page, upright and on white, at most ``max_side`` px, as JPEG.

    Memory stays bounded: the byte and pixel limits are checked before anything is decoded,
    JPEG decodes at 1/2..1/8 scale, and any other format is reduced by an integer factor
    right after decoding, before a single full-size copy is made. The JPEG is encoded from
    the pixels alone: no EXIF (GPS), XMP or ICC profile of the upload reaches Gemini.

    Raises ``PermanentJobError`` with code ``input_unreadable`` (not an image, corrupt) or
    ``input_too_large`` (over ``limits``, decompression bombs); their messages call the
    input ``name``, what it is to the user.
    """
    if len(data) > limits.max_bytes:
        raise input_too_heavy(name, limits.max_bytes)
    unreadable, too_large = unreadable_input(name), input_too_large(name, limits.max_pixels)
    if pillow_heif.is_supported(io.BytesIO(data)):
        image = _decode_heif(data, unreadable, too_large, limits.max_pixels, max_side)
    else:
        image = _decode(data, unreadable, too_large, limits.max_pixels, max_side)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return _jpeg(_pixels_only(image))


def _decode(data: bytes, unreadable: JobError, too_large: JobError, max_pixels: int,
            max_side: int) -> Image.Image:
    """Any format Pillow reads, reduced early, turned upright by its EXIF tag, RGB."""
    image = _open(data, unreadable, too_large, max_pixels, draft_side=max_side)
    try:
        factor = _factor(image.size, max_side)
        if factor > 1:
            image = _reduced(image, factor)
        return _flatten(ImageOps.exif_transpose(image)).convert("RGB")
    except _DECODE_ERRORS as exc:
        raise unreadable from exc


def _decode_heif(data: bytes, unreadable: JobError, too_large: JobError, max_pixels: int,
                 max_side: int) -> Image.Image:
    """HEIC/HEIF, primary image, RGB. libheif already applies the file's rotation and
    mirroring (which take precedence over any EXIF tag in HEIF), so no EXIF is read; its
    decoded buffer is read in bands, so Pillow never holds a full-size copy of it."""
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        width, height = heif.size
        if width * height > max_pixels:
            raise too_large
        buffer, mode, stride = memoryview(heif.data), heif.mode, heif.stride
        image = _reduced_rows(height, _factor(heif.size, max_side), lambda top, bottom:
                              Image.frombytes(mode, (width, bottom - top),
                                              buffer[top * stride:bottom * stride],
                                              "raw", mode, stride))
        return image.convert("RGB")
    except _HEIF_ERRORS as exc:
        raise unreadable from exc


def _factor(size: tuple[int, int], max_side: int) -> int:
    """The whole factor that keeps the long side at least ``2 * max_side`` (so the LANCZOS
    thumbnail after it keeps its quality)."""
    return max(1, max(size) // (2 * max_side))


def _reduced(image: Image.Image, factor: int) -> Image.Image:
    """Flattened and reduced by ``factor``; ``info`` is kept for ``exif_transpose``."""
    reduced = _reduced_rows(image.height, factor,
                            lambda top, bottom: image.crop((0, top, image.width, bottom)))
    reduced.info = image.info.copy()
    return reduced


def _reduced_rows(height: int, factor: int,
                  rows: Callable[[int, int], Image.Image]) -> Image.Image:
    """An image ``height`` rows tall read through ``rows(top, bottom)``, flattened on white and reduced
    by ``factor``, ``SHRINK_BAND`` output rows at a time: no second full-size buffer (an RGBA
    copy, a premultiplied copy) ever exists next to the decoded one."""
    band = factor * SHRINK_BAND
    first = _flatten(rows(0, min(height, band))).reduce(factor)
    out = Image.new(first.mode, (first.width, -(-height // factor)))
    out.paste(first, (0, 0))
    for top in range(band, height, band):
        out.paste(_flatten(rows(top, min(height, top + band))).reduce(factor),
                  (0, top // factor))
    return out


def _pixels_only(image: Image.Image) -> Image.Image:
    """A copy that carries no ``info`` (EXIF, XMP, ICC profile, comments) into the encoder."""
    bare = Image.new(image.mode, image.size)
    bare.paste(image)
    return bare


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


# -- generated pages --------------------------------------------------------------------------


def clean_line_art(data: bytes, *, clean: bool = True,
                   max_pixels: int = MAX_OUTPUT_PIXELS) -> CleanedPage:
    """Turn a generated page (any format or mode) into black line art on white, as PNG.

    With ``clean=False`` the page is only flattened to RGB or greyscale. Either way a blank
    or mostly solid page raises ``RetryableJobError`` (code ``unusable_output``); a page of
    more than ``max_pixels`` is refused before it is decoded (``output_too_large``).
    """
    image = _flatten(_open(data, unusable_output(), output_too_large(max_pixels), max_pixels))
    ink = ink_mask(image)
    _check_coverage(ink)
    page = ImageOps.invert(ink).convert("1", dither=Image.Dither.NONE) if clean else image
    return CleanedPage(png=_png(page), width=page.width, height=page.height)


def ink_mask(image: Image.Image) -> Image.Image:
    """Mode ``L`` mask of the lines: 255 where ink, 0 where paper (see the module doc)."""
    value = _value_channel(image)
    threshold = _clamp(otsu_threshold(value.histogram()), *OTSU_RANGE)
    radius = max(4, max(value.size) // 64)
    contrast = ImageChops.subtract(value.filter(ImageFilter.BoxBlur(radius)), value)
    dark = value.point(lambda v: 255 if v < threshold else 0)
    edge = contrast.point(lambda v: 255 if v > LOCAL_CONTRAST else 0)
    black = value.point(lambda v: 255 if v < ALWAYS_INK else 0)
    return _remove_specks(ImageChops.lighter(ImageChops.darker(dark, edge), black))


def _value_channel(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return image
    red, green, blue = image.convert("RGB").split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def _remove_specks(ink: Image.Image) -> Image.Image:
    density = ink.filter(ImageFilter.BoxBlur(SPECK_RADIUS))
    crowded = density.point(lambda v: 255 if v >= SPECK_MIN_LEVEL else 0)
    return ImageChops.darker(ink, crowded)


def otsu_threshold(histogram: Sequence[int]) -> int:
    """The grey level that best splits a 256-bin histogram in two classes (Otsu, 1979)."""
    total = sum(histogram)
    weighted_total = sum(level * count for level, count in enumerate(histogram))
    best, best_level = -1.0, 128
    below = weighted_below = 0
    for level, count in enumerate(histogram):
        below += count
        weighted_below += level * count
        above = total - below
        if below == 0 or above == 0:
            continue
        mean_gap = weighted_below / below - (weighted_total - weighted_below) / above
        spread = below * above * mean_gap * mean_gap
        if spread > best:
            best, best_level = spread, level + 1
    return best_level


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _check_coverage(ink: Image.Image) -> None:
    histogram = ink.histogram()
    coverage = histogram[255] / (ink.width * ink.height)
    if not MIN_INK <= coverage <= MAX_INK:
        raise unusable_output()


# -- thumbnail --------------------------------------------------------------------------------


def make_thumbnail(page_png: bytes, max_side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """A preview of a page, at most ``max_side`` on each side, aspect kept, on white."""
    image = _flatten(_open(page_png, unusable_output(), unusable_output(), _OWN_PAGE))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return Thumbnail(png=_png(image), width=image.width, height=image.height)


def open_page(page_png: bytes) -> Image.Image:
    """A page this worker made (PNG) on white; a bilevel page stays as it is."""
    image = _open(page_png, unusable_output(), unusable_output(), _OWN_PAGE)
    return image if image.mode == "1" else _flatten(image)
