"""Photos as people send them, made on the spot for tests, the demo and the benchmarks.

A phone's 24-megapixel JPEG, the same as HEIC (written by pillow-heif, as an iPhone would send
it), and a JPEG stored sideways with EXIF orientation 6 that also carries a GPS position, an
XMP packet and an ICC profile: everything the worker must decode, turn upright and never pass
on to Gemini.
"""

from __future__ import annotations

import io

import pillow_heif
from PIL import Image, ImageCms, ImageDraw

PHONE_24MP = (6000, 4000)
ORIENTATION, GPS_IFD = 0x0112, 0x8825
GPS_LATITUDE_REF, GPS_LATITUDE = 1, 2
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
       b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"'
       b' dc:creator="Secret Photographer"/></rdf:RDF></x:xmpmeta>')


def scene(size: tuple[int, int] = PHONE_24MP, shade: int = 0) -> Image.Image:
    """An RGB picture with smooth gradients and a few bold shapes (compresses like a photo);
    ``shade`` moves the shapes, so two scenes differ in their outlines."""
    width, height = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.linear_gradient("L").rotate(90).resize(size)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    side, stroke = min(size), max(2, min(size) // 100)
    for index in range(3):
        left = (index + 1) * width // 5 + shade * side // 10
        top = (index % 2 + 1) * height // 4
        draw.ellipse((left, top, left + side // 4, top + side // 4), fill=(250, 250, 240),
                     outline=(10, 10, 10), width=stroke)
    draw.rectangle((width // 10, height // 10, width // 3, height // 3 + shade * side // 20),
                   outline=(0, 0, 0), width=stroke)
    return image


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, **options)
    return out.getvalue()


def heic(image: Image.Image) -> bytes:
    """The image as a real HEIC file (HEVC in a HEIF container), encoded by libheif."""
    out = io.BytesIO()
    pillow_heif.from_pillow(image).save(out, quality=80)
    return out.getvalue()


def sideways_with_metadata(upright: Image.Image) -> bytes:
    """A JPEG stored rotated 90° counter-clockwise with EXIF orientation 6 (turn it 90°
    clockwise to view), so a viewer that obeys the tag shows ``upright``; it also carries a
    GPS position, an XMP packet naming its author and an sRGB ICC profile."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif.get_ifd(GPS_IFD).update({GPS_LATITUDE_REF: "N", GPS_LATITUDE: (51.0, 30.0, 0.0)})
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return jpeg(stored, exif=exif, icc_profile=profile, xmp=XMP)
