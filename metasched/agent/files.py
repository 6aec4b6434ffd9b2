"""A finished job's files, looked at as the job's own user: sizes and checksums when a result
is published, part of a file when someone fetches it.

The agent usually runs as root and the paths come from users (the files named, the job's
directory, whatever symlinks they left there): opened as root, a symlink planted by the user
would show anyone any file on the host. So every look is made by a short-lived child that
has become the user first (groups, gid, uid), with the kernel checking every component of
the path as for the user, using only the shell and coreutils (the agent's own interpreter may
sit where users cannot reach). Only regular files are read. Paths are arguments of a fixed
script, never parsed by a shell.
"""

from __future__ import annotations

import os
import pwd
import subprocess

MAX_BYTES = 1 << 20
TIMEOUT_S = 25.0  # under the daemon's wait for the answer

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

# $1 path, $2 offset, $3 count: the file's size on one line, then the bytes.
_READ = (
    _REGULAR
    + r"""
regular "$1"
printf '%s\n' "$size"
exec dd if="$1" iflag=skip_bytes,count_bytes,nonblock skip="$2" count="$3" bs=65536 status=none
"""
)


class FilesError(Exception):
    """Not possible; the message is one line for the user."""


def _run_as(user: str, script: str, name: str, args: list[str], cwd_home: bool) -> bytes:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise FilesError(f"no such local user {user!r}") from None
    root = os.geteuid() == 0
    if not root and pw.pw_uid != os.geteuid():
        raise FilesError(f"cannot look as {user!r}: the agent is not root")
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", script, name, *args],
            capture_output=True,
            timeout=TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": pw.pw_dir},
            cwd=pw.pw_dir if cwd_home and os.path.isdir(pw.pw_dir) else "/",
            check=False,
            user=pw.pw_uid if root else None,
            group=pw.pw_gid if root else None,
            extra_groups=os.getgrouplist(user, pw.pw_gid) if root else None,
        )
    except subprocess.TimeoutExpired:
        raise FilesError(f"looking at the files took over {TIMEOUT_S:g}s") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise FilesError(why[-1] if why else "the files could not be read")
    return proc.stdout


def home_of(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        raise FilesError(f"no such local user {user!r}") from None


def checksums(user: str, workdir: str, paths: list[str]) -> list[tuple[str, int, str]]:
    """(real path, size, sha256) of each path (relative ones under workdir, or the user's
    home when it is empty), as local account `user` sees them."""
    directory = workdir or home_of(user)
    out = _run_as(user, _CHECKSUMS, "checksum-result", [directory, *paths], cwd_home=True)
    lines = out.decode("utf-8", "surrogateescape").split("\n")[:-1]
    if len(lines) != len(paths):
        raise FilesError("a file's real path is not one line of text")
    found = []
    for line in lines:
        size, digest, real = line.split("\t", 2)
        found.append((real, int(size), digest))
    return found


def read(user: str, path: str, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """(up to max_bytes of path from offset, the file's size), read as local account `user`."""
    count = max(0, min(max_bytes, MAX_BYTES))
    out = _run_as(user, _READ, "read-result", [path, str(offset), str(count)], cwd_home=False)
    size, _, data = out.partition(b"\n")
    return data, int(size)
