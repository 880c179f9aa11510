"""Test the papers' claims at CPU scale: `python reproductions/claims.py --scale smoke|cpu --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e .`

from st_sweeps.claims.study import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
