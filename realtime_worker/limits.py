"""Size limits of the images a job handles: the defaults of their settings, with their reasons.

A module of plain numbers, so that reading the configuration does not load the imaging
libraries (Pillow, fpdf, pillow-heif) into every command's start-up.
"""

from __future__ import annotations

# The app's upload route (apps/web/app/api/upload/route.ts) refuses files over 10 MB.
MAX_INPUT_BYTES = 10 * 1024 * 1024
# 50 MP holds the 48 MP modes of current phones (8064x6048) and 50 MP Android sensors.
MAX_INPUT_PIXELS = 50_000_000
# Gemini's largest ("4K") images are about 17-19 MP; anything far bigger is refused unread.
MAX_OUTPUT_PIXELS = 20_000_000
