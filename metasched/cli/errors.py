"""How msub and metasched-admin fail: one line on stderr and an exit status, never a traceback.

2: the command line itself is wrong; 1: the daemon refused, or could not be reached;
130: interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import grpc

from metasched import auth


class UsageError(Exception):
    """The command line is wrong; the message says how."""


def one_line(text: object) -> str:
    """An error message as exactly one line: whatever the user typed (a file name, an option's
    value) may hold newlines or other line or control characters; they are shown escaped."""
    s = str(text).strip()
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s) or "error"


def run(prog: str, body: Callable[[], int], address: Callable[[], str]) -> int:
    """body()'s exit status, or the one-line error for whatever it raised."""

    def fail(message: object, status: int = 1) -> int:
        print(one_line(f"{prog}: {message}"), file=sys.stderr)
        return status

    try:
        return body()
    except UsageError as e:
        return fail(e, 2)
    except auth.Unreachable as e:
        return fail(f"cannot reach metaschedd at {address()}: {e}")
    except (auth.AuthError, OSError) as e:
        return fail(e)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        details = (e.details() if hasattr(e, "details") else "") or str(code)
        if code == grpc.StatusCode.UNAVAILABLE:
            return fail(f"cannot reach metaschedd at {address()}: {details}")
        return fail(details)
    except KeyboardInterrupt:
        return 130
