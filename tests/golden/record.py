"""Record the golden flow's outputs: `python -m tests.golden.record` (only when a change is meant to alter them)."""

import tempfile
from pathlib import Path

from tests.golden.flow import run_flow, write_expected

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        write_expected(run_flow(Path(tmp)))
