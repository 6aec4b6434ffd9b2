"""Reading a job's output file for `msub output`, as the job's own user.

The agent usually runs as root, and the path comes from the user (--output, --chdir, their
job's name): opened as root, a symlink the user planted would show them any file on the
host. So the file is opened by a short-lived child that has become the user first (groups,
gid, uid), with the kernel checking every component of the path as for the user: what it
shows is exactly what the user could read by logging in there. Only a regular file is read
(a FIFO would hold the child until its timeout), at most max_bytes from an offset.
A path never goes through a shell's parsing: it is an argument of the child's fixed script.
"""

from __future__ import annotations

import os
import pwd
import subprocess

MAX_BYTES = 1 << 20
DEFAULT_BYTES = 64 << 10
TIMEOUT_S = 10.0

# Runs as the user: only the shell and coreutils, which every site has where the user may
# run them (the agent's own interpreter may sit where users cannot reach). stat first: the
# size, and a FIFO or device is refused rather than read; dd then reads the bytes asked for.
_READER = r"""
info=$(stat -L -c '%s %F' -- "$1") || exit 2
case "$info" in
  *" regular file"|*" regular empty file") ;;
  *) echo "$1 is not a regular file" >&2; exit 2 ;;
esac
printf '%s\n' "${info%% *}"
exec dd if="$1" iflag=skip_bytes,count_bytes,nonblock skip="$2" count="$3" bs=65536 status=none
"""


class OutputError(Exception):
    """The file cannot be read (one line for the user)."""


def read_as(user: str, path: str, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """(up to max_bytes of path from offset, the file's size), read as local account `user`."""
    limit = max(0, min(max_bytes or DEFAULT_BYTES, MAX_BYTES))
    argv = ["/bin/sh", "-c", _READER, "read-output", path, str(offset), str(limit)]
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
