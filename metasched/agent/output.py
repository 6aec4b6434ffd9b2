"""A job's output at its site, looked at as the job's own user: part of its output file for
`msub output` or of a published result's file for `msub result fetch`, and the sizes and
checksums of a result's files when it is published.

The agent usually runs as root, and the paths come from users (--output, --chdir, their
job's name, the files named as a result, whatever symlinks they left there): opened as root,
a symlink the user planted would show them (or whoever fetches their result) any file on the
host. So every look is made by a short-lived child that has become the user first (groups,
gid, uid), with the kernel checking every component of the path as for the user: what it
shows is exactly what the user could read by logging in there. Only regular files are read
(a FIFO would hold the child until its timeout). A path never goes through a shell's
parsing: it is an argument of the child's fixed script.
"""

from __future__ import annotations

import os
import pwd
import subprocess

MAX_BYTES = 1 << 20
DEFAULT_BYTES = 64 << 10
READ_TIMEOUT_S = 10.0
CHECKSUM_TIMEOUT_S = 25.0  # a large result takes a while; under the daemon's wait (30 s)

# Runs as the user: only the shell and coreutils, which every site has where the user may
# run them (the agent's own interpreter may sit where users cannot reach). stat first: the
# size, and a FIFO or device is refused rather than read.
_REGULAR = r"""
regular() {
  info=$(stat -L -c '%s %F' -- "$1") || exit 2
  case "$info" in
    *" regular file"|*" regular empty file") ;;
    *) echo "$1 is not a regular file" >&2; exit 2 ;;
  esac
  size=${info%% *}
}
"""

# $1 path, $2 offset, $3 count: the file's size on one line, then the bytes (dd).
_READER = (
    _REGULAR
    + r"""
regular "$1"
printf '%s\n' "$size"
exec dd if="$1" iflag=skip_bytes,count_bytes,nonblock skip="$2" count="$3" bs=65536 status=none
"""
)

# $1: the directory relative paths are in; then the paths. One line per path: size, sha256,
# the real path (symlinks resolved, as the user sees them).
_CHECKSUMS = (
    _REGULAR
    + r"""
cd -- "$1" || exit 2
shift
for p in "$@"; do
  real=$(realpath -e -- "$p") || exit 2
  regular "$real"
  sum=$(sha256sum < "$real") || exit 2
  printf '%s\t%s\t%s\n' "$size" "${sum%% *}" "$real"
done
"""
)


class OutputError(Exception):
    """The files cannot be looked at (one line for the user)."""


def _run_as(user: str, script: str, name: str, args: list[str], timeout: float) -> bytes:
    """script's stdout, run by /bin/sh as local account `user` (from root), with args."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise OutputError(f"no such local user {user!r}") from None
    root = os.geteuid() == 0
    if not root and pw.pw_uid != os.geteuid():
        raise OutputError(f"cannot read as {user!r}: the agent is not root")
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", script, name, *args],
            capture_output=True,
            timeout=timeout,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/",
            check=False,
            user=pw.pw_uid if root else None,
            group=pw.pw_gid if root else None,
            extra_groups=os.getgrouplist(user, pw.pw_gid) if root else None,
        )
    except subprocess.TimeoutExpired:
        raise OutputError(f"{name} took over {timeout:g}s") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise OutputError(why[-1] if why else f"{name} failed")
    return proc.stdout


def read_as(user: str, path: str, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """(up to max_bytes of path from offset, the file's size), read as local account `user`."""
    limit = max(0, min(max_bytes or DEFAULT_BYTES, MAX_BYTES))
    out = _run_as(user, _READER, "read-output", [path, str(offset), str(limit)], READ_TIMEOUT_S)
    size, _, data = out.partition(b"\n")
    return data, int(size)


def checksums_as(user: str, directory: str, paths: list[str]) -> list[tuple[str, int, str]]:
    """(real path, size, sha256) of each path (relative ones under directory), as local
    account `user` sees them."""
    out = _run_as(user, _CHECKSUMS, "checksum-output", [directory, *paths], CHECKSUM_TIMEOUT_S)
    lines = out.decode("utf-8", "surrogateescape").split("\n")[:-1]
    if len(lines) != len(paths):
        raise OutputError("a file's real path is not one line of text")
    found = []
    for line in lines:
        size, digest, real = line.split("\t", 2)
        found.append((real, int(size), digest))
    return found
