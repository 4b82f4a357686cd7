"""Benchmarks: ``uv run python -m bench.<name>``; they print figures, they assert nothing."""
