"""Fixtures shared by the workflow tests."""

import pytest
from distributed import LocalCluster


@pytest.fixture(scope="session")
def scheduler():
    """One running cluster for the session's runs, given as --scheduler: a fresh worker spends most of half a
    minute (2 cores) importing and loading its model, which these small runs then share."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address
