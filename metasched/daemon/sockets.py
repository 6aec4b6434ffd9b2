"""The daemon's local sockets: the gRPC Unix socket and its ident socket, kept in place.

A Unix socket is reached through its file: once the file is deleted (a cleanup of /run, an
admin's rm), local users get "No such file" although the daemon still runs. So both files
are looked at every `interval` seconds, and one that is gone, or is no longer the daemon's
own (another file took its name), is logged (socket_missing), made again, and logged again
once it is back (socket_recreated).

gRPC removes a Unix socket's file by name when its server stops, which would delete a
recreated socket that took the same name. So each gRPC server listens on a socket of a
unique, private name in the same directory, which is hard-linked to the public name (a
socket is found by its inode; every name of it reaches the same listener) and then
removed: the public name is the only one, and a stopping server finds nothing of its own
to remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import grpc

from metasched import auth, log

INTERVAL_S = 1.0
# How long a replaced gRPC server may finish the calls it has (watches included)
OLD_SERVER_GRACE_S = 3600.0


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class LocalSockets:
    def __init__(
        self, path: str, new_server: Callable[[], grpc.aio.Server], tokens: auth.LocalTokens
    ) -> None:
        """new_server(): a gRPC server with the daemon's services and no port yet."""
        self.path = path
        self.ident_path = auth.ident_path(path)
        self.new_server = new_server
        self.tokens = tokens
        self.log = log.get(component="sockets")
        self.server: grpc.aio.Server | None = None
        self.ident: auth.IdentServer | None = None
        self._grpc_inode: tuple[int, int] | None = None
        self._names = itertools.count()
        self._watch: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._serve_grpc()
        self.ident = auth.IdentServer(self.ident_path, self.tokens)
        self.ident.start()
        self._watch = asyncio.create_task(self._watch_loop())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.server is not None:
            await self.server.stop(grace=2)
        for task in list(self._retiring):
            task.cancel()
        if self._grpc_inode is not None and _inode(self.path) == self._grpc_inode:
            os.unlink(self.path)
        if self.ident is not None:
            await asyncio.to_thread(self.ident.stop)

    async def _serve_grpc(self) -> None:
        """A new gRPC server on a private socket, then published at self.path."""
        server = self.new_server()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)  # (the directory may be gone too)
        private = os.path.join(
            os.path.dirname(self.path), f".metaschedd-{os.getpid()}-{next(self._names)}"
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private)
        if server.add_insecure_port(f"unix:{private}") == 0:
            raise OSError(f"cannot listen on unix:{private}")
        await server.start()
        os.chmod(private, 0o666)  # every local user may talk to the daemon
        staged = private + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        os.link(private, staged)
        os.rename(staged, self.path)  # replaces whatever has the name, in one step
        os.unlink(private)
        self._grpc_inode = _inode(self.path)
        old, self.server = self.server, server
        if old is not None:
            task = asyncio.create_task(old.stop(grace=OLD_SERVER_GRACE_S))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                await self.check()
            except Exception:
                self.log.exception("socket_check_failed", socket=self.path)

    async def check(self) -> None:
        """Recreate either socket if its file is gone or is no longer ours."""
        now = _inode(self.path)
        if now != self._grpc_inode:
            self._missing(self.path, "grpc", now)
            await self._serve_grpc()
            self.log.info("socket_recreated", socket=self.path, kind="grpc")
        ident = self.ident
        if ident is not None:
            now = _inode(self.ident_path)
            if now != ident.inode:
                self._missing(self.ident_path, "ident", now)
                # stopped first: it waits up to half a second for its accept loop to notice
                await asyncio.to_thread(ident.stop)
                self.ident = auth.IdentServer(self.ident_path, self.tokens)
                self.ident.start()
                self.log.info("socket_recreated", socket=self.ident_path, kind="ident")

    def _missing(self, path: str, kind: str, found: tuple[int, int] | None) -> None:
        self.log.warning(
            "socket_missing",
            socket=path,
            kind=kind,
            found="nothing" if found is None else "another file",
        )
