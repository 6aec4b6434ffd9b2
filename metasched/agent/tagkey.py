"""The agent's tag key: proof, in a Slurm job's comment, that this agent submitted the job.

Anyone who can run sbatch at a site can write any comment on their own job. The plain tag
(metasched:<federation>:<job>:<attempt>) only names a job; the agent appends an HMAC of it
and of the local user it submits as, with a key only the agent holds:

    metasched:<federation>:<job>:<attempt>:<mac>
    mac = first 32 hex digits of HMAC-SHA256(key, "<federation>:<job>:<attempt>:<local user>")

A job is taken for ours only if its MAC verifies for its owner (Slurm's record of who
submitted it, which no user can choose), so a tag copied onto another user's job, or one
planted for a job id not yet used, is worth nothing.

The key lives in the agent's state directory as `tag.key`, made at first start (mode 0600,
never overwritten). One hex key per line: the first signs, every line verifies. To rotate,
`metasched-agent --rotate-tag-key` puts a new key first and keeps the old ones, so jobs
submitted before still verify; drop an old line once no job signed with it can still be in
Slurm or its accounting. Back it up with the journal (the whole state directory): an agent
that lost its key still recognises the jobs its journal knows by their Slurm id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from metasched import tags

MAC_HEX = 32  # 128 bits: unguessable, and short enough for a comment and a WCKey
KEY_FILE = "tag.key"
_KEY_LINE = re.compile(r"^[0-9a-f]{64}$")


class TagKeyError(Exception):
    """The key file is unusable (bad permissions or contents): the agent must not start."""


class TagKeys:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise TagKeyError("no tag key")
        self._keys = keys

    # ------------------------------------------------------------------ the file
    @classmethod
    def load_or_create(cls, state_dir: Path) -> TagKeys:
        path = state_dir / KEY_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return cls.load(path)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> TagKeys:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise TagKeyError(f"cannot read tag key {path}: {e.strerror}") from None
        with os.fdopen(fd) as f:
            st = os.fstat(f.fileno())
            if st.st_mode & 0o077:
                raise TagKeyError(
                    f"tag key {path} is readable by others (mode {st.st_mode & 0o777:o}): "
                    "chmod 600 it, and make a new one if others may have read it"
                )
            if st.st_uid != os.geteuid():
                raise TagKeyError(f"tag key {path} is not owned by the agent's user")
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        if not lines or not all(_KEY_LINE.match(ln) for ln in lines):
            raise TagKeyError(f"tag key {path}: expected lines of 64 hex digits")
        return cls([bytes.fromhex(ln) for ln in lines])

    @staticmethod
    def rotate(state_dir: Path) -> None:
        """Put a new signing key first; older keys stay to verify jobs already out there."""
        path = state_dir / KEY_FILE
        old = [k.hex() for k in TagKeys.load(path)._keys] if path.exists() else []
        tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join([secrets.token_hex(32), *old]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ------------------------------------------------------------------ signing
    @staticmethod
    def _mac(key: bytes, tag: tags.Tag, user: str) -> str:
        msg = f"{tag.federation}:{tag.job_id}:{tag.attempt}:{user}".encode()
        return hmac.new(key, msg, hashlib.sha256).hexdigest()[:MAC_HEX]

    def sign(self, tag: str, user: str) -> str:
        """The comment for a job of `tag` submitted as local `user`."""
        parsed = tags.parse(tag)
        if parsed is None:
            raise ValueError(f"not a metasched tag: {tag!r}")
        return f"{parsed}:{self._mac(self._keys[0], parsed, user)}"

    def verify(self, comment: str, user: str) -> bool:
        """Does comment carry a MAC, by one of our keys, of its tag for this owner?"""
        parsed = tags.parse(comment)
        return parsed is not None and self.verify_mac(parsed, tags.mac_of(comment), user)

    def verify_mac(self, tag: tags.Tag, mac: str, user: str) -> bool:
        if not mac or not user:
            return False
        return any(hmac.compare_digest(mac, self._mac(k, tag, user)) for k in self._keys)
