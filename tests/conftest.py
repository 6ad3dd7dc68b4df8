"""Fixtures shared by test modules, and the network guard every test runs under."""

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
import torch

_GUARD_DIR = Path(__file__).parent / "network_guard"


def _load_guard():
    spec = importlib.util.spec_from_file_location("network_guard", _GUARD_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


network_guard = _load_guard()


def pytest_configure(config):
    """Block the network here and in every Python subprocess (see network_guard/sitecustomize.py)."""
    handle, log = tempfile.mkstemp(prefix="emotivetalk-network-", suffix=".log")
    os.close(handle)
    os.environ[network_guard.LOG_VARIABLE] = log
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_GUARD_DIR), os.environ.get("PYTHONPATH")]))
    network_guard.install()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything reached for the network, even where a library hid the error."""
    log = Path(os.environ.get(network_guard.LOG_VARIABLE, ""))
    if not log.is_file():
        return
    attempts = log.read_text(encoding="utf-8")
    log.unlink()
    if attempts:
        print(f"\nSomething reached for the network during the tests:\n{attempts}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def one_thread():
    """Run single-threaded (the training tests ask for it): on a shared 2-core machine two
    intra-op threads can be 100x slower than one, spinning against other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
