"""Loaded by worker processes of tests/integration/test_multi_host.py (it is put first on their PYTHONPATH):
``socket.gethostname()`` answers ``$INFERNO_TEST_HOSTNAME``, so two workers on this machine look like two hosts
(their attempt ids read ``host1:<pid>``, and neither can tell whether the other's processes are alive)."""

import os
import socket

_name = os.environ.get("INFERNO_TEST_HOSTNAME")
if _name:
    socket.gethostname = lambda: _name
