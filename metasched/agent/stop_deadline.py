"""SIGTERM ends the agent within STOP_DEADLINE_SECONDS, even while no Python code can run.

The agent's own handler (main.py) sets its stop flag; SiteAgent.run then cancels the stream
and gives a command in flight STOP_GRACE_SECONDS. But a Python signal handler runs only when
the main thread gets the GIL, and pyslurm holds the GIL through every RPC: a pyslurm agent
waiting on a slurmctld that never answers runs no Python at all until Slurm's MessageTimeout.

What still happens at once is Python's C-level handler writing the signal's number to the
wakeup fd (signal.set_wakeup_fd). A small process of its own (this module's main) reads the
other end of that pipe; once the agent has been asked to stop it waits for the pipe to close
(the agent has exited) until the deadline, and then ends the agent with SIGKILL. Nothing is
lost: the agent journals every command's intent before it asks Slurm (site_agent.submit), so
the restarted agent finds the job or submits it, once.

The watchdog ignores SIGTERM (systemd signals every process of the unit), kills only its own
parent (a pid taken by another process once the agent is gone is never touched), and ends
when the agent does.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from metasched import log

STOP_DEADLINE_SECONDS = 1.9  # above SiteAgent's grace (1.5 s), under the 2 s promised
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def arm(site: str) -> subprocess.Popen[bytes]:
    """Start the watchdog for this process and route the stop signals' wakeup bytes to it.
    Call from the main thread after the stop handlers are installed."""
    r, w = os.pipe()
    os.set_blocking(w, False)  # set_wakeup_fd requires it; a full pipe drops bytes, no block
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "metasched.agent.stop_deadline", str(r), str(os.getpid()), site],
        pass_fds=(r,),
        stdin=subprocess.DEVNULL,
        cwd="/",
    )
    os.close(r)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return watchdog


def _closed(fd: int, timeout: float) -> bool:
    """Has the agent's end of the pipe closed within timeout (bytes read meanwhile dropped)?"""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready and not os.read(fd, 64):
            return True
    return False


def watch(fd: int, agent: int, site: str) -> int:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    wanted = {int(s) for s in _STOP_SIGNALS}
    while True:
        data = os.read(fd, 64)
        if not data:
            return 0  # the agent ended (or never asked to stop)
        if wanted & set(data):
            break
    asked = time.monotonic()
    if _closed(fd, STOP_DEADLINE_SECONDS) or os.getppid() != agent:
        return 0
    os.kill(agent, signal.SIGKILL)
    log.get(site=site).warning(
        "agent_killed_at_stop_deadline",
        pid=agent,
        stop_s=round(time.monotonic() - asked, 3),
        why="still busy (a Slurm call in flight); its intent is journalled",
    )
    return 0


if __name__ == "__main__":
    log.setup(process="metasched-agent")
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
