"""The printable page: a cleaned page as a one-page PDF of the job's paper size. Pure:
bytes in, bytes out (fpdf2 lays the page out; the image goes in losslessly)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from fpdf import FPDF

from realtime_worker.imaging import open_page
from realtime_worker.jobs import PaperSize

MARGIN_MM = 10.0
TITLE_BAND_MM = 14.0
MIN_PRINT_DPI = 100.0
PAPER_MM: dict[PaperSize, tuple[float, float]] = {
    PaperSize.A4: (210.0, 297.0),
    PaperSize.LETTER: (215.9, 279.4),
}


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    w: float
    h: float


def make_pdf(page_png: bytes, *, paper: PaperSize, title: str | None) -> bytes:
    """One printable page: the image centred inside 10 mm margins, the title above it.

    The page is portrait unless the image is wider than tall. The image is scaled to fit but
    never drawn larger than its size at ``MIN_PRINT_DPI`` (100 dpi), and embedded losslessly
    (Flate, never JPEG). Characters the built-in font lacks become ``?``.
    """
    image = open_page(page_png)
    landscape = image.width > image.height
    pdf = _new_pdf(paper, landscape)
    top = MARGIN_MM
    if title:
        _draw_title(pdf, _latin1(title))
        top += TITLE_BAND_MM
    area = _Box(MARGIN_MM, top, pdf.w - 2 * MARGIN_MM, pdf.h - top - MARGIN_MM)
    box = _fit(image.width, image.height, area)
    pdf.image(image, x=box.x, y=box.y, w=box.w, h=box.h)
    return bytes(pdf.output())


def _new_pdf(paper: PaperSize, landscape: bool) -> FPDF:
    pdf = FPDF(orientation="L" if landscape else "P", unit="mm", format=PAPER_MM[paper])
    pdf.set_auto_page_break(False)
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_image_filter("FlateDecode")
    pdf.set_creator("realtime-worker")
    pdf.add_page()
    return pdf


def _draw_title(pdf: FPDF, title: str) -> None:
    pdf.set_title(title)
    size = 20.0
    pdf.set_font("Helvetica", style="B", size=size)
    width = pdf.w - 2 * MARGIN_MM
    while size > 10 and pdf.get_string_width(title) > width:
        size -= 1
        pdf.set_font_size(size)
    body = title
    while body and pdf.get_string_width(title) > width:
        body = body[:-1].rstrip()
        title = body + "..."
    pdf.set_xy(MARGIN_MM, MARGIN_MM)
    pdf.cell(w=width, h=TITLE_BAND_MM - 4, text=title, align="C")


def _latin1(text: str) -> str:
    """Text the PDF core fonts can show: compatibility forms folded, the rest as ``?``."""
    folded = unicodedata.normalize("NFKC", " ".join(text.split()))
    return folded.encode("latin-1", errors="replace").decode("latin-1")


def _fit(width_px: int, height_px: int, area: _Box) -> _Box:
    """The largest box of the image's aspect inside ``area`` (centred), capped at 100 dpi."""
    mm_per_px = 25.4 / MIN_PRINT_DPI
    scale = min(area.w / width_px, area.h / height_px, mm_per_px)
    w, h = width_px * scale, height_px * scale
    return _Box(area.x + (area.w - w) / 2, area.y + (area.h - h) / 2, w, h)
