"""Reading a job's output file for `msub output`, as the job's own user.

The agent usually runs as root, and the path comes from the user (--output, --chdir, their
job's name): opened as root, a symlink the user planted would show them any file on the
host. So the file is opened by a short-lived child that has become the user first (groups,
gid, uid), with the kernel checking every component of the path as for the user: what it
shows is exactly what the user could read by logging in there. Only a regular file is read
(a FIFO would hold the child until its timeout), at most max_bytes from an offset.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

MAX_BYTES = 1 << 20
DEFAULT_BYTES = 64 << 10
TIMEOUT_S = 10.0

# Runs in the child, as the user, with -I -S (no site packages, no user paths): stdlib only.
_READER = """
import os, stat, sys
path, offset, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        sys.stderr.write(path + " is not a regular file")
        sys.exit(2)
    data = os.pread(fd, limit, offset) if offset < st.st_size else b""
except OSError as e:
    sys.stderr.write((e.strerror or str(e)) + ": " + path)
    sys.exit(2)
sys.stdout.buffer.write(str(st.st_size).encode() + b"\\n" + data)
"""


class OutputError(Exception):
    """The file cannot be read (one line for the user)."""


def read_as(user: str, path: str, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """(up to max_bytes of path from offset, the file's size), read as local account `user`."""
    limit = max(0, min(max_bytes or DEFAULT_BYTES, MAX_BYTES))
    argv = [os.path.realpath(sys.executable), "-I", "-S", "-c", _READER, path, str(offset)]
    argv.append(str(limit))
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise OutputError(f"no such local user {user!r}") from None
    root = os.geteuid() == 0
    if not root and pw.pw_uid != os.geteuid():
        raise OutputError(f"cannot read as {user!r}: the agent is not root")
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/",
            check=False,
            user=pw.pw_uid if root else None,
            group=pw.pw_gid if root else None,
            extra_groups=os.getgrouplist(user, pw.pw_gid) if root else None,
        )
    except subprocess.TimeoutExpired:
        raise OutputError(f"reading {path} took over {TIMEOUT_S:g}s") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise OutputError(why[-1] if why else f"could not read {path}")
    size, _, data = proc.stdout.partition(b"\n")
    return data, int(size)
