import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's cache; each session gets a fresh one."""
    monkeypatch.setenv("MCDI_CACHE", str(tmp_path_factory.getbasetemp() / "mcdi_cache"))
    torch.manual_seed(0)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
