"""systemd's notify protocol (sd_notify(3)), for Type=notify units: one datagram of
NAME=value lines to the socket in $NOTIFY_SOCKET. Without that variable (not started by
systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send READY=1, WATCHDOG=1, STATUS=..., STOPPING=1...; True if a socket took it."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(lines).encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float:
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec, when systemd set it for this
    process (WATCHDOG_USEC, and WATCHDOG_PID naming us, if given); else 0."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2e6
