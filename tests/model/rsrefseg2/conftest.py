import pytest

from rsrs.model import load_model


@pytest.fixture(scope="session")
def tiny2():
    """The tiny2 preset (RSRefSeg 2 at toy width) on CPU, seeded random init, shared read-only across tests."""
    return load_model("tiny2", device="cpu")
