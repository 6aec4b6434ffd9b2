"""Run msub or metasched-admin as another local user, for tests and labs (needs root):

    python -m metasched.lab.asuser USER msub|admin [args...]

Like `runuser -u USER -- msub ...`, but the program is loaded first, while still root, and
only then does the process become USER (groups, gid, uid): the interpreter and the virtual
environment may live where USER cannot read (e.g. under /root). From the kernel's point of
view (SO_PEERCRED on the daemon's ident socket included) the command runs as USER.
"""

from __future__ import annotations

import os
import pwd
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("msub", "admin"):
        print("usage: python -m metasched.lab.asuser USER msub|admin [args...]", file=sys.stderr)
        return 2
    user, program, args = argv[0], argv[1], argv[2:]
    if program == "msub":
        from metasched.cli.msub import main as run
    else:
        from metasched.cli.admin import main as run
    # what the commands import lazily, loaded while the files are still readable
    import encodings.idna  # noqa: F401
    import json  # noqa: F401

    from google.protobuf import json_format  # noqa: F401

    pw = pwd.getpwnam(user)
    os.initgroups(user, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.environ.update(USER=user, LOGNAME=user, HOME=pw.pw_dir)
    try:
        os.chdir(os.getcwd())
    except OSError:
        os.chdir("/")
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
