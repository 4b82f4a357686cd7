"""RSS one 24-megapixel photo adds while it is prepared for Gemini (``prepare_input_photo``).

``uv run python -m bench.photo_decode`` makes a phone-sized photo (6000x4000) as JPEG, as PNG
(RGB and RGBA) and as HEIC, then prepares each in a fresh process and prints that process's
peak RSS (``VmHWM``) minus its RSS just before the call, with the input bytes already read.
Encoding the HEIC takes about half a minute on one core.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from realtime_worker_devstack import photos

LIMIT_MIB = 150 * 1e6 / 2**20  # the target: ≤ 150 MB per photo


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def with_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(image.size))
    return rgba


INPUTS: dict[str, Callable[[Image.Image], bytes]] = {
    "JPEG": photos.jpeg,
    "PNG RGB": png,
    "PNG RGBA": lambda image: png(with_alpha(image)),
    "HEIC": photos.heic,
}


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str) -> None:
    """Runs in the fresh process: print the RSS the call added at its peak, in KiB."""
    from realtime_worker import imaging  # measured after its own import

    data = Path(path).read_bytes()
    before = status_kib("VmRSS")
    imaging.prepare_input_photo(data)
    print(status_kib("VmHWM") - before, flush=True)


def measure(data: bytes) -> float | str:
    """MiB added at the peak, or the error the call ended with."""
    with tempfile.NamedTemporaryFile(suffix=".img") as file:
        file.write(data)
        file.flush()
        out = subprocess.run([sys.executable, "-m", "bench.photo_decode", "--child", file.name],
                             check=False, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["no output"])[-1]
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    image = photos.scene()
    print(f"prepare_input_photo of one {image.width}x{image.height} photo "
          f"({image.width * image.height / 1e6:.0f} MP), fresh process each")
    print(f"{'format':<10} {'file MB':>8} {'RSS added at peak (MiB)':>24}")
    worst = 0.0
    for name, encode in INPUTS.items():
        data = encode(image)
        added = measure(data)
        if isinstance(added, str):
            print(f"{name:<10} {len(data) / 1e6:>8.1f} failed: {added}", flush=True)
            continue
        worst = max(worst, added)
        print(f"{name:<10} {len(data) / 1e6:>8.1f} {added:>24.0f}", flush=True)
    verdict = "within" if worst <= LIMIT_MIB else "OVER"
    print(f"worst {worst:.0f} MiB ({verdict} the {LIMIT_MIB:.0f} MiB = 150 MB target)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main()
