"""Benchmarks of st_sweeps: each script prints a Markdown table of ratios against a plain
baseline measured in the same run (``python -m benchmarks.run_all --quick``; see RESULTS.md)."""
