"""The image pipeline on the sample pages in fixtures/pages (made by fixtures/make_samples.py).

Line structure is measured as an F1 score of ink pixels against ``clean.png`` (the same drawing,
black on white, thresholded at 128), counting a pixel as matched when the other mask has ink
within 2 px. The pass mark 0.95: our cleaner scores >= 0.99 on every sample, while a mirrored
copy of the same drawing scores 0.31, a 20 px shift 0.44 and naive thresholding of the coloured
page 0.67 — the tests below show those failing cases score under the mark.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps
from pypdf import PdfReader
from pypdf.generic import DictionaryObject

from realtime_worker import imaging, limits, pdf_page
from realtime_worker.errors import PermanentJobError, RetryableJobError
from realtime_worker.jobs import PaperSize
from realtime_worker_devstack import photos

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PAGES, PHOTOS = FIXTURES / "pages", FIXTURES / "photos"
GOOD_PAGES = ["clean.png", "greyish.png", "coloured.png", "noisy.jpg", "photo_like.png"]
F1_PASS = 0.95
MM = 72 / 25.4


# -- helpers ----------------------------------------------------------------------------------


def page_bytes(name: str) -> bytes:
    return (PAGES / name).read_bytes()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def naive_ink(image: Image.Image, threshold: int = 128) -> Image.Image:
    """255 where the luminance is below ``threshold``."""
    return image.convert("L").point(lambda v: 255 if v < threshold else 0)


def ink_count(mask: Image.Image) -> int:
    return mask.histogram()[255]


def grow(mask: Image.Image, pixels: int) -> Image.Image:
    # MaxFilter(1) kills the interpreter with SIGFPE in Pillow 12.3, hence the guard.
    return mask if pixels == 0 else mask.filter(ImageFilter.MaxFilter(2 * pixels + 1))


def line_f1(reference: Image.Image, candidate: Image.Image, tolerance: int = 2) -> float:
    """F1 of ink pixels, a pixel matching when the other mask has ink within ``tolerance``."""
    hits = ink_count(ImageChops.darker(candidate, grow(reference, tolerance)))
    found = ink_count(ImageChops.darker(reference, grow(candidate, tolerance)))
    precision = hits / max(1, ink_count(candidate))
    recall = found / max(1, ink_count(reference))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    return naive_ink(decode(page_bytes("clean.png")))


@pytest.fixture(scope="module")
def cleaned_page() -> imaging.CleanedPage:
    return imaging.clean_line_art(page_bytes("clean.png"))


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says ``width`` x ``height`` (CRC fixed): a cheap 'huge' image."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# -- the similarity measure itself ------------------------------------------------------------


def test_the_measure_scores_a_different_drawing_low(reference: Image.Image) -> None:
    assert line_f1(reference, reference) == 1.0
    assert line_f1(reference, Image.new("L", reference.size, 0)) == 0.0
    assert line_f1(reference, ImageOps.mirror(reference)) < 0.5
    assert line_f1(reference, ImageChops.offset(reference, 20, 0)) < 0.5


@pytest.mark.parametrize("name", ["coloured.png", "photo_like.png"])
def test_naive_thresholding_fails_the_pass_mark(reference: Image.Image, name: str) -> None:
    assert line_f1(reference, naive_ink(decode(page_bytes(name)))) < F1_PASS


# -- clean_line_art ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_PAGES)
def test_cleaned_page_is_pure_black_on_white(name: str) -> None:
    page = imaging.clean_line_art(page_bytes(name))
    image = decode(page.png)
    colours = {value for _, value in image.convert("L").getcolors() or []}
    assert colours == {0, 255}
    assert image.mode in ("1", "L")
    assert (page.width, page.height) == image.size == (1024, 1024)


@pytest.mark.parametrize("name", GOOD_PAGES)
def test_cleaned_page_keeps_the_lines(name: str, reference: Image.Image) -> None:
    page = imaging.clean_line_art(page_bytes(name))
    assert line_f1(reference, naive_ink(decode(page.png))) >= F1_PASS


@pytest.mark.parametrize("name", GOOD_PAGES)
def test_cleaned_page_is_smaller_than_the_input(name: str) -> None:
    data = page_bytes(name)
    assert len(imaging.clean_line_art(data).png) < len(data)


def test_specks_are_removed(reference: Image.Image) -> None:
    away_from_lines = ImageOps.invert(grow(reference, 3))
    source = naive_ink(decode(page_bytes("noisy.jpg")))
    cleaned = naive_ink(decode(imaging.clean_line_art(page_bytes("noisy.jpg")).png))
    specks_before = ink_count(ImageChops.darker(source, away_from_lines))
    specks_after = ink_count(ImageChops.darker(cleaned, away_from_lines))
    assert specks_before > 1000
    assert specks_after < specks_before / 10


def _transparent_background(image: Image.Image) -> Image.Image:
    """Black lines on fully transparent *black* pixels: flattening must give white paper."""
    rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))
    rgba.putalpha(ImageOps.invert(image.convert("L")))
    return rgba


def _sixteen_bit(image: Image.Image) -> Image.Image:
    """Greyscale ``I;16``: each 8-bit level v becomes v * 257 (bytes v, v little-endian)."""
    grey = image.convert("L")
    return Image.frombytes("I;16", grey.size, Image.merge("LA", (grey, grey)).tobytes())


CONVERSIONS: dict[str, Callable[[Image.Image], bytes]] = {
    "png-16-bit": lambda im: encoded(_sixteen_bit(im), "PNG"),
    "webp": lambda im: encoded(im, "WEBP", quality=80),
    "jpeg-greyscale": lambda im: encoded(im.convert("L"), "JPEG", quality=60),
    "palette-png": lambda im: encoded(im.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "la-png": lambda im: encoded(im.convert("LA"), "PNG"),
    "rgba-transparent": lambda im: encoded(_transparent_background(im), "PNG"),
}


@pytest.mark.parametrize("fmt", CONVERSIONS)
def test_any_format_and_mode_is_cleaned(fmt: str, reference: Image.Image) -> None:
    data = CONVERSIONS[fmt](decode(page_bytes("clean.png")).convert("RGB"))
    page = imaging.clean_line_art(data)
    assert line_f1(reference, naive_ink(decode(page.png))) >= F1_PASS


@pytest.mark.parametrize("name", ["blank.png", "solid.png"])
def test_blank_and_solid_pages_are_unusable(name: str) -> None:
    with pytest.raises(RetryableJobError) as caught:
        imaging.clean_line_art(page_bytes(name))
    assert caught.value.code == "unusable_output"
    assert caught.value.max_retries == 1
    assert caught.value.user_message == "The generated page was unusable"


def test_unusable_even_without_cleaning() -> None:
    with pytest.raises(RetryableJobError):
        imaging.clean_line_art(page_bytes("blank.png"), clean=False)


def test_undecodable_output_is_unusable() -> None:
    with pytest.raises(RetryableJobError) as caught:
        imaging.clean_line_art(b"<html>not an image</html>")
    assert caught.value.code == "unusable_output"


def test_without_cleaning_colours_stay_but_alpha_goes() -> None:
    coloured = imaging.clean_line_art(page_bytes("coloured.png"), clean=False)
    assert decode(coloured.png).mode == "RGB"
    assert len(decode(coloured.png).getcolors(1_000_000) or []) > 2
    page = decode(page_bytes("clean.png"))
    flat = imaging.clean_line_art(encoded(_transparent_background(page), "PNG"), clean=False)
    assert decode(flat.png).convert("L").getpixel((5, 5)) == 255


def test_a_three_by_four_page_keeps_its_size() -> None:
    tall = decode(page_bytes("clean.png")).resize((768, 1024))
    page = imaging.clean_line_art(encoded(tall, "PNG"))
    assert (page.width, page.height) == (768, 1024)


# -- make_thumbnail ---------------------------------------------------------------------------


def test_thumbnail_of_a_square_page(cleaned_page: imaging.CleanedPage) -> None:
    thumb = imaging.make_thumbnail(cleaned_page.png)
    assert (thumb.width, thumb.height) == decode(thumb.png).size == (400, 400)


def test_thumbnail_keeps_aspect_and_never_upscales() -> None:
    tall = imaging.make_thumbnail(encoded(Image.new("L", (768, 1024), 255), "PNG"))
    assert (tall.width, tall.height) == (300, 400)
    small = imaging.make_thumbnail(encoded(Image.new("L", (200, 100), 255), "PNG"))
    assert (small.width, small.height) == (200, 100)


def test_thumbnail_is_on_white() -> None:
    clear = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    ImageDraw.Draw(clear).ellipse((200, 200, 600, 600), fill=(0, 0, 0, 255))
    thumb = decode(imaging.make_thumbnail(encoded(clear, "PNG")).png).convert("L")
    assert thumb.getpixel((2, 2)) == 255
    assert thumb.getpixel((200, 200)) == 0


# -- make_pdf ---------------------------------------------------------------------------------


def pdf_reader(data: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(data))


def image_placement(reader: PdfReader) -> tuple[float, float, float, float]:
    """(width, height, x, y) in points, from the ``w 0 0 h x y cm /I Do`` of the page."""
    contents = reader.pages[0].get_contents()
    assert contents is not None
    number = r"(-?[\d.]+)"
    found = re.search(rf"{number} 0 0 {number} {number} {number} cm\s*/I\w* Do",
                      contents.get_data().decode("latin-1"))
    assert found is not None
    w, h, x, y = (float(v) for v in found.groups())
    return w, h, x, y


@pytest.mark.parametrize(("paper", "size"), [(PaperSize.A4, (595.28, 841.89)),
                                             (PaperSize.LETTER, (612.0, 792.0))])
def test_pdf_has_one_page_of_the_paper_size(cleaned_page: imaging.CleanedPage,
                                            paper: PaperSize, size: tuple[float, float]) -> None:
    reader = pdf_reader(pdf_page.make_pdf(cleaned_page.png, paper=paper, title=None))
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert float(box.width) == pytest.approx(size[0], abs=1)
    assert float(box.height) == pytest.approx(size[1], abs=1)


def test_pdf_embeds_one_lossless_image(cleaned_page: imaging.CleanedPage) -> None:
    data = pdf_page.make_pdf(cleaned_page.png, paper=PaperSize.A4, title=None)
    resources = cast(DictionaryObject, pdf_reader(data).pages[0]["/Resources"])
    xobjects = cast(DictionaryObject, resources["/XObject"].get_object())
    images = [obj.get_object() for obj in xobjects.values()
              if obj.get_object()["/Subtype"] == "/Image"]
    assert len(images) == 1
    assert images[0]["/Filter"] == "/FlateDecode"
    assert b"DCTDecode" not in data


def test_pdf_image_fits_inside_the_margins_centred(cleaned_page: imaging.CleanedPage) -> None:
    reader = pdf_reader(pdf_page.make_pdf(cleaned_page.png, paper=PaperSize.A4, title=None))
    w, h, x, y = image_placement(reader)
    page_w, page_h = 595.28, 841.89
    assert w == pytest.approx(page_w - 20 * MM, abs=0.5)  # 1024 px fills the width
    assert x == pytest.approx(10 * MM, abs=0.5)
    assert y == pytest.approx((page_h - h) / 2, abs=0.5)


def test_pdf_never_blows_a_tiny_image_up_past_100_dpi() -> None:
    tiny = encoded(Image.new("L", (100, 100), 255), "PNG")
    w, h, x, _ = image_placement(pdf_reader(pdf_page.make_pdf(tiny, paper=PaperSize.A4,
                                                             title=None)))
    assert w == pytest.approx(72.0, abs=0.1)
    assert h == pytest.approx(72.0, abs=0.1)
    assert x == pytest.approx((595.28 - 72) / 2, abs=0.5)


def test_pdf_title_is_printed_above_the_image(cleaned_page: imaging.CleanedPage) -> None:
    data = pdf_page.make_pdf(cleaned_page.png, paper=PaperSize.LETTER, title="Tiger Party")
    reader = pdf_reader(data)
    assert "Tiger Party" in reader.pages[0].extract_text()
    _, h, _, y = image_placement(reader)
    assert y + h <= 792 - 10 * MM - pdf_page.TITLE_BAND_MM * MM + 0.5


def test_pdf_without_title_has_no_text(cleaned_page: imaging.CleanedPage) -> None:
    data = pdf_page.make_pdf(cleaned_page.png, paper=PaperSize.A4, title=None)
    assert pdf_reader(data).pages[0].extract_text().strip() == ""


def test_pdf_title_outside_latin1_does_not_crash(cleaned_page: imaging.CleanedPage) -> None:
    title = "Café 🐯 ﬁsh 猫 “quoted”"
    data = pdf_page.make_pdf(cleaned_page.png, paper=PaperSize.A4, title=title)
    assert "Café ? fish ?" in pdf_reader(data).pages[0].extract_text()


def test_pdf_long_title_is_shortened_to_one_line(cleaned_page: imaging.CleanedPage) -> None:
    data = pdf_page.make_pdf(cleaned_page.png, paper=PaperSize.A4, title="word " * 200)
    text = pdf_reader(data).pages[0].extract_text()
    assert text.strip().endswith("...")
    assert "\n" not in text.strip()


def test_pdf_of_a_landscape_image_is_a_landscape_page() -> None:
    wide = encoded(Image.new("L", (1200, 900), 255), "PNG")
    box = pdf_reader(pdf_page.make_pdf(wide, paper=PaperSize.A4, title=None)).pages[0].mediabox
    assert float(box.width) == pytest.approx(841.89, abs=1)
    assert float(box.height) == pytest.approx(595.28, abs=1)


# -- prepare_input_photo ----------------------------------------------------------------------


def test_photo_is_returned_as_jpeg_within_max_side() -> None:
    photo = decode(imaging.prepare_input_photo((PHOTOS / "sample_photo.jpg").read_bytes()))
    assert photo.format == "JPEG"
    assert photo.size == (800, 600)
    smaller = decode(imaging.prepare_input_photo((PHOTOS / "sample_photo.jpg").read_bytes(),
                                                 max_side=256))
    assert smaller.size == (256, 192)


def test_big_photo_is_downscaled_to_1024() -> None:
    big = encoded(Image.new("RGB", (3000, 2000), (200, 100, 50)), "PNG")
    photo = decode(imaging.prepare_input_photo(big))
    assert (photo.format, photo.size) == ("JPEG", (1024, 683))


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    sideways = encoded(Image.new("RGB", (200, 100), "white"), "JPEG", exif=exif)
    assert decode(imaging.prepare_input_photo(sideways)).size == (100, 200)


def test_transparency_is_flattened_on_white() -> None:
    clear = encoded(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")
    photo = decode(imaging.prepare_input_photo(clear)).convert("L")
    assert photo.getpixel((32, 32)) == 255


@pytest.mark.parametrize("data", [
    (PHOTOS / "not_an_image.jpg").read_bytes(),
    b"",
    (PHOTOS / "sample_photo.jpg").read_bytes()[:2000],
], ids=["text", "empty", "truncated-jpeg"])
def test_unreadable_upload_is_a_permanent_error(data: bytes) -> None:
    with pytest.raises(PermanentJobError) as caught:
        imaging.prepare_input_photo(data)
    assert caught.value.code == "input_unreadable"
    assert caught.value.user_message == "The uploaded photo could not be read"


def test_more_pixels_than_the_limit_are_refused() -> None:
    huge = encoded(Image.new("1", (8000, 6300)), "PNG")  # 50.4 MP, a few kB
    with pytest.raises(PermanentJobError) as caught:
        imaging.prepare_input_photo(huge)
    assert caught.value.code == "input_too_large"
    assert caught.value.user_message == (
        "The uploaded photo has too many pixels (at most 50 megapixels)")
    small_limit = imaging.InputLimits(max_pixels=1_000_000)
    with pytest.raises(PermanentJobError) as caught:
        imaging.prepare_input_photo(encoded(Image.new("RGB", (1001, 1000)), "JPEG"),
                                    name="page to edit", limits=small_limit)
    assert caught.value.user_message == "The page to edit has too many pixels (at most 1 megapixels)"


def test_a_file_over_the_byte_limit_is_refused_before_decoding() -> None:
    ten_mb = limits.MAX_INPUT_BYTES
    assert ten_mb == 10 * 1024 * 1024  # the app's upload route refuses anything bigger
    with pytest.raises(PermanentJobError) as caught:
        imaging.prepare_input_photo(b"\xff" * (ten_mb + 1))  # not even an image: never read
    assert caught.value.code == "input_too_large"
    assert caught.value.user_message == "The uploaded photo is too large (at most 10 MB)"
    photo = (PHOTOS / "sample_photo.jpg").read_bytes()
    with pytest.raises(PermanentJobError):
        imaging.prepare_input_photo(photo, limits=imaging.InputLimits(max_bytes=len(photo) - 1))
    assert imaging.prepare_input_photo(photo, limits=imaging.InputLimits(max_bytes=len(photo)))


@pytest.mark.parametrize("side", [7100, 10_000, 20_000], ids=["ours", "pillow-warns", "bomb"])
def test_decompression_bombs_are_refused_without_warnings(side: int) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(PermanentJobError) as caught:
            imaging.prepare_input_photo(png_claiming(side, side))
    assert caught.value.code == "input_too_large"
    assert seen == []


# -- photos as people send them ---------------------------------------------------------------


def halves(size: tuple[int, int]) -> Image.Image:
    """Left half dark red, right half light blue: which way up it is shows in the pixels."""
    image = Image.new("RGB", size, (150, 20, 20))
    image.paste((170, 200, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def colour_at(image: Image.Image, x: float, y: float) -> tuple[int, ...]:
    return cast(tuple[int, ...], image.convert("RGB").getpixel(
        (int(x * (image.width - 1)), int(y * (image.height - 1)))))


def close(colour: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


def test_a_real_heic_is_decoded() -> None:
    heic = photos.heic(halves((640, 480)))
    assert heic[4:12] == b"ftypheic"  # HEVC in a HEIF container, as an iPhone writes it
    photo = decode(imaging.prepare_input_photo(heic))
    assert (photo.format, photo.size) == ("JPEG", (640, 480))
    assert close(colour_at(photo, 0.1, 0.5), (150, 20, 20))
    assert close(colour_at(photo, 0.9, 0.5), (170, 200, 255))


def test_a_large_heic_with_alpha_is_reduced_and_flattened() -> None:
    clear = Image.new("RGBA", (2600, 1300), (0, 0, 0, 0))
    clear.paste((170, 200, 255, 255), (1300, 0, 2600, 1300))
    photo = decode(imaging.prepare_input_photo(photos.heic(clear), max_side=512))
    assert photo.size == (512, 256)
    assert close(colour_at(photo, 0.1, 0.5), (255, 255, 255))  # transparent: white paper
    assert close(colour_at(photo, 0.9, 0.5), (170, 200, 255))


def test_a_sideways_jpeg_comes_out_upright_without_its_metadata() -> None:
    sent = photos.sideways_with_metadata(halves((400, 200)))
    stored = decode(sent)
    assert stored.size == (200, 400) and stored.getexif()[photos.ORIENTATION] == 6
    assert {"exif", "xmp", "icc_profile"} <= set(stored.info)
    prepared = imaging.prepare_input_photo(sent)
    photo = decode(prepared)
    assert photo.size == (400, 200)
    assert close(colour_at(photo, 0.1, 0.5), (150, 20, 20))
    assert close(colour_at(photo, 0.9, 0.5), (170, 200, 255))
    assert not {"exif", "xmp", "icc_profile", "comment"} & set(photo.info)
    assert dict(photo.getexif()) == {}
    for marker in (b"Exif\x00", b"Secret Photographer", b"ns.adobe.com", b"ICC_PROFILE"):
        assert marker not in prepared


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_24_megapixel_photo_becomes_1024_pixels(fmt: str) -> None:
    scene = photos.scene(photos.PHONE_24MP)
    data = photos.jpeg(scene) if fmt == "JPEG" else encoded(scene, "PNG", compress_level=1)
    photo = decode(imaging.prepare_input_photo(data))
    assert photo.size == (1024, 683)
    expected = scene.resize(photo.size, Image.Resampling.BOX)
    histogram = ImageChops.difference(photo, expected).convert("L").histogram()
    assert sum(level * count for level, count in enumerate(histogram)) / sum(histogram) < 8


def test_a_reduced_png_with_alpha_is_flattened_on_white() -> None:
    image = Image.new("RGBA", (5000, 2500), (0, 0, 0, 0))
    image.paste((20, 120, 20, 255), (2500, 0, 5000, 2500))
    photo = decode(imaging.prepare_input_photo(encoded(image, "PNG")))
    assert photo.size == (1024, 512)
    assert close(colour_at(photo, 0.1, 0.5), (255, 255, 255))
    assert close(colour_at(photo, 0.9, 0.5), (20, 120, 20))


# -- what Gemini returns ----------------------------------------------------------------------


def test_a_generated_page_with_too_many_pixels_is_refused_unread() -> None:
    with pytest.raises(PermanentJobError) as caught:
        imaging.clean_line_art(png_claiming(5000, 5000))  # 25 MP
    assert caught.value.code == "output_too_large"
    assert caught.value.user_message == (
        "The generated page was too large (more than 20 megapixels)")
    page = page_bytes("clean.png")
    with pytest.raises(PermanentJobError):
        imaging.clean_line_art(page, max_pixels=1024 * 1024 - 1)
    assert imaging.clean_line_art(page, max_pixels=1024 * 1024).width == 1024
