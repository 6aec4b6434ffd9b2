"""The tag metasched puts into every forwarded Slurm job's comment.

It names the federation (so two daemons, or a rebuilt database, never adopt each other's
jobs), the global job id and the attempt, so after any crash the agent can find our jobs in
squeue or accounting and the daemon can tell which attempt a Slurm job belongs to.

The daemon speaks of the plain tag; the agent writes it into Slurm followed by a MAC that
only it can make (metasched.agent.tagkey), and takes no job for ours without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG_RE = re.compile(r"metasched:([0-9a-f]{8,32}):(\d+):(\d+)(?::([0-9a-f]{32}))?(?![0-9a-f:])")


@dataclass(frozen=True)
class Tag:
    federation: str
    job_id: int
    attempt: int

    def __str__(self) -> str:
        return f"metasched:{self.federation}:{self.job_id}:{self.attempt}"


def parse(comment: str) -> Tag | None:
    m = _TAG_RE.search(comment or "")
    if not m:
        return None
    return Tag(m.group(1), int(m.group(2)), int(m.group(3)))


def mac_of(comment: str) -> str:
    """The MAC the agent appended to the tag in comment ("" for a plain, older tag)."""
    m = _TAG_RE.search(comment or "")
    return (m.group(4) or "") if m else ""


def comment(tag: str, user_comment: str = "") -> str:
    """The Slurm comment of a forwarded job: the tag, then the user's own --comment (the
    tag first, so the user's text can never be read as it; jobspec refuses a user comment
    that holds a tag)."""
    return f"{tag} {user_comment}" if user_comment else tag


def user_comment(slurm_comment: str) -> str:
    """The user's own part of a forwarded job's comment."""
    m = _TAG_RE.match(slurm_comment or "")
    return slurm_comment[m.end() :].lstrip() if m else slurm_comment
