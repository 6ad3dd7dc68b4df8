"""The tests run offline: the guard blocks connections beyond this machine, in the test process and
in its Python subprocesses, and records attempts a library might hide; loopback stays open."""

import os
import socket
import subprocess
import sys

import pytest
from conftest import network_guard


@pytest.fixture
def private_log(tmp_path, monkeypatch):
    """These tests reach out on purpose: their attempts go to their own log, not the session's."""
    log = tmp_path / "network.log"
    monkeypatch.setenv(network_guard.LOG_VARIABLE, str(log))
    return log


def test_a_connection_beyond_this_machine_is_blocked_and_recorded(private_log):
    with pytest.raises(network_guard.NetworkBlocked, match="192.0.2.1"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(network_guard.NetworkBlocked, match="a name lookup of 'huggingface.co'"):
        socket.getaddrinfo("huggingface.co", 443)
    assert "192.0.2.1" in private_log.read_text() and "huggingface.co" in private_log.read_text()


def test_a_subprocess_is_guarded_too_even_when_it_hides_the_error(private_log):
    code = ("import socket\ntry:\n    socket.create_connection(('example.com', 443), timeout=1)\n"
            "except Exception as error:\n    print(type(error).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert result.stdout.strip() == "NetworkBlocked"
    assert "example.com" in private_log.read_text()


def test_loopback_stays_open(private_log):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            server.accept()[0].close()
    assert not private_log.exists()
