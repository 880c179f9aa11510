"""Rebuild the Soft Truncation paper's stl10 table: `python reproductions/stl10.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e .`

from st_sweeps.reproduce.cli import entry_point  # noqa: E402

if __name__ == "__main__":
    entry_point("stl10")
