from pathlib import Path

import pytest

#: ../shared/data/real beside the repository (absent on a user's fresh clone).
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real-data folder; skips the test when it is absent."""
    if not (REAL_DATA / "imagery").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA
