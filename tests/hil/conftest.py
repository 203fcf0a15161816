"""Fixtures of the HIL tests: a private sshd started by the test (skipped, with the reason, when it cannot run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sshd_server import SshServer, sshd_unavailable_reason  # noqa: E402


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 that lets ``root`` in with :attr:`SshServer.client_key`."""
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with SshServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server
