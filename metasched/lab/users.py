"""Real local users for tests and labs (needs root): what a plain user submits, at a site
whose jobs run as that user. Each test module names its own (a prefix of its task's), so
parallel runs never share one."""

from __future__ import annotations

import contextlib
import pwd
import subprocess
from collections.abc import Iterator

from metasched.lab.federation import wait_for


@contextlib.contextmanager
def local_user(name: str) -> Iterator[str]:
    """The user name, made now if there is no such user, and then removed at the end once
    its last processes are gone (userdel refuses while a job's process lingers)."""
    made = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
        made = True
    try:
        yield name
    finally:
        if made:
            wait_for(
                lambda: (
                    subprocess.run(["userdel", name], capture_output=True).returncode in (0, 6)
                ),  # 6: already gone
                60,
                f"userdel {name}",
            )
