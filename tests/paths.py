"""Where the tests find the repository and the shared data (../shared/data beside the checkout)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
