"""Where application definitions and policy states live across restarts.

``--app-state`` picks the store:
- ``""`` (the default): SQLite in ``<model repository>/.clipperd/applications.sqlite`` (a hidden
  folder: the repository scan skips it), created on the first write. When the repository is not
  a folder this process may write (a read-only mount, another user's files, a bucket), nothing is
  written there: the file is ``$XDG_STATE_HOME/clipperd/applications-<hash>.sqlite`` instead
  (``~/.local/state`` without XDG_STATE_HOME; the hash names the repository's path).
- ``sqlite:///path/to/file.sqlite``: SQLite at that path.
- ``redis://host:port/db``: a Redis shared by several server processes. Each change is written
  to Redis and announced on a pub/sub channel; every other replica reloads what changed, so a
  definition or a learnt weight set on one replica is used by the others within milliseconds.
- ``memory://``: nothing kept (tests, throwaway servers).

Layout: one record per application (its definition, JSON) and one per (application, user id)
policy state (JSON). Concurrent feedback to the same user on two replicas: the last write wins."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

Definition = dict[str, Any]
States = dict[str, dict[str, Any]]
# (application, user id or None for the whole application) changed on another replica;
# ("", None): anything may have changed, reload everything
OnChange = Callable[[str, str | None], Awaitable[None]]


class AppStore(Protocol):
    def describe(self) -> str:
        """Where the state lives and who shares it, for the log."""
        ...

    async def open(self, on_change: OnChange) -> None: ...

    async def close(self) -> None: ...

    async def load_all(self) -> dict[str, tuple[Definition, States]]: ...

    async def load(self, app: str) -> tuple[Definition, States] | None: ...

    async def create(self, app: str, definition: Definition) -> bool:
        """False when the name is taken (another replica may have taken it)."""
        ...

    async def save(self, app: str, definition: Definition, states: States | None = None) -> None:
        """The definition, and with ``states`` all the policy states (replacing the old ones)."""
        ...

    async def save_state(self, app: str, uid: str, state: dict[str, Any]) -> None: ...

    async def delete(self, app: str) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self.apps: dict[str, tuple[Definition, States]] = {}

    def describe(self) -> str:
        return "in memory, not kept (per replica)"

    async def open(self, on_change: OnChange) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load_all(self) -> dict[str, tuple[Definition, States]]:
        return dict(self.apps)

    async def load(self, app: str) -> tuple[Definition, States] | None:
        return self.apps.get(app)

    async def create(self, app: str, definition: Definition) -> bool:
        if app in self.apps:
            return False
        self.apps[app] = (definition, {})
        return True

    async def save(self, app: str, definition: Definition, states: States | None = None) -> None:
        old = self.apps.get(app, ({}, {}))[1]
        self.apps[app] = (definition, old if states is None else dict(states))

    async def save_state(self, app: str, uid: str, state: dict[str, Any]) -> None:
        if app in self.apps:
            self.apps[app][1][uid] = state

    async def delete(self, app: str) -> None:
        self.apps.pop(app, None)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS applications (name TEXT PRIMARY KEY, definition TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policy_states (
    app TEXT NOT NULL, uid TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (app, uid)
);
"""
_PUT_APP = "INSERT OR REPLACE INTO applications (name, definition) VALUES (?, ?)"
_PUT_STATE = "INSERT OR REPLACE INTO policy_states (app, uid, state) VALUES (?, ?, ?)"


class SqliteStore:
    """One file, written at each change (a few hundred µs with WAL and synchronous=NORMAL)."""

    def __init__(self, path: Path, why: str = "") -> None:
        self.path = path
        self.why = why  # why the default store is not in the repository, for the log
        self._db: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"{self.why}SQLite at {self.path} (per replica: other replicas neither see nor share it)"

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None and (create or self.path.exists()):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def open(self, on_change: OnChange) -> None:
        self._connect(create=False)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def load_all(self) -> dict[str, tuple[Definition, States]]:
        db = self._connect(create=False)
        if db is None:
            return {}
        apps: dict[str, tuple[Definition, States]] = {
            name: (json.loads(text), {}) for name, text in db.execute("SELECT name, definition FROM applications")
        }
        for app, uid, text in db.execute("SELECT app, uid, state FROM policy_states"):
            if app in apps:
                apps[app][1][uid] = json.loads(text)
        return apps

    async def load(self, app: str) -> tuple[Definition, States] | None:
        return (await self.load_all()).get(app)

    async def create(self, app: str, definition: Definition) -> bool:
        db = self._connect(create=True)
        assert db is not None
        cursor = db.execute(
            "INSERT OR IGNORE INTO applications (name, definition) VALUES (?, ?)", (app, json.dumps(definition))
        )
        return cursor.rowcount == 1

    async def save(self, app: str, definition: Definition, states: States | None = None) -> None:
        db = self._connect(create=True)
        assert db is not None
        with db:
            db.execute("BEGIN")
            db.execute(_PUT_APP, (app, json.dumps(definition)))
            if states is not None:
                db.execute("DELETE FROM policy_states WHERE app = ?", (app,))
                db.executemany(
                    "INSERT INTO policy_states (app, uid, state) VALUES (?, ?, ?)",
                    [(app, uid, json.dumps(s)) for uid, s in states.items()],
                )

    async def save_state(self, app: str, uid: str, state: dict[str, Any]) -> None:
        db = self._connect(create=True)
        assert db is not None
        db.execute(_PUT_STATE, (app, uid, json.dumps(state)))

    async def delete(self, app: str) -> None:
        db = self._connect(create=False)
        if db is not None:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM applications WHERE name = ?", (app,))
                db.execute("DELETE FROM policy_states WHERE app = ?", (app,))


_APPS_KEY = "clipperd:applications"
_STATE_KEY = "clipperd:application-state:"
_CHANNEL = "clipperd:application-changes"


class RedisStore:
    """Definitions in one hash, each application's states in a hash of their own; each change
    is published with this replica's id so that the others (not itself) reload it."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.origin = uuid.uuid4().hex
        self._listener: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return f"Redis at {_without_password(self.url)} (shared by every replica that names it)"

    async def open(self, on_change: OnChange) -> None:
        await self.client.ping()
        pubsub = self.client.pubsub()
        await pubsub.subscribe(_CHANNEL)
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub, on_change))

    async def _listen(self, pubsub: Any, on_change: OnChange) -> None:
        """Applies the other replicas' changes; when the connection drops, retries every
        second and, back, reloads everything (changes made meanwhile were not heard)."""
        while True:
            try:
                await self._follow(pubsub, on_change)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("lost the Redis change feed (%s): retrying", error)
            await asyncio.sleep(1.0)
            try:
                await pubsub.aclose()
                pubsub = self.client.pubsub()
                await pubsub.subscribe(_CHANNEL)
                await on_change("", None)
                log.info("Redis change feed back; applications reloaded")
            except Exception:
                continue

    async def _follow(self, pubsub: Any, on_change: OnChange) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                event = json.loads(message["data"])
                if event.get("origin") != self.origin:
                    await on_change(str(event["app"]), event.get("uid"))
            except Exception:
                log.exception("could not apply an application change from Redis")

    async def _announce(self, app: str, uid: str | None = None) -> None:
        await self.client.publish(_CHANNEL, json.dumps({"app": app, "uid": uid, "origin": self.origin}))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.client.aclose()

    async def load_all(self) -> dict[str, tuple[Definition, States]]:
        names: list[str] = await self.client.hkeys(_APPS_KEY)  # type: ignore[misc,assignment]
        loaded = {name: await self.load(name) for name in names}
        return {name: record for name, record in loaded.items() if record is not None}

    async def load(self, app: str) -> tuple[Definition, States] | None:
        text = await self.client.hget(_APPS_KEY, app)
        if text is None:
            return None
        states: dict[str, str] = await self.client.hgetall(_STATE_KEY + app)  # type: ignore[misc,assignment]
        return json.loads(text), {uid: json.loads(s) for uid, s in states.items()}

    async def create(self, app: str, definition: Definition) -> bool:
        created = bool(await self.client.hsetnx(_APPS_KEY, app, json.dumps(definition)))
        if created:
            await self.client.delete(_STATE_KEY + app)
            await self._announce(app)
        return created

    async def save(self, app: str, definition: Definition, states: States | None = None) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(_APPS_KEY, app, json.dumps(definition))
            if states is not None:
                pipe.delete(_STATE_KEY + app)
                if states:
                    pipe.hset(_STATE_KEY + app, mapping={uid: json.dumps(s) for uid, s in states.items()})
            await pipe.execute()
        await self._announce(app)

    async def save_state(self, app: str, uid: str, state: dict[str, Any]) -> None:
        await self.client.hset(_STATE_KEY + app, uid, json.dumps(state))
        await self._announce(app, uid)

    async def delete(self, app: str) -> None:
        await self.client.hdel(_APPS_KEY, app)
        await self.client.delete(_STATE_KEY + app)
        await self._announce(app)


def check_store_spec(spec: str) -> None:
    """ValueError when ``--app-state`` names no store this server knows."""
    if spec not in ("", "memory://") and not spec.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
        raise ValueError(f"--app-state {spec!r}: use sqlite:///path, redis://host:port/db or memory://")


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{parts.netloc.rpartition('@')[2]}").geturl()


def _writable_folder(folder: Path) -> bool:
    """``folder`` is a directory this process may create files in (access(2) also answers
    EROFS for a read-only mount, and judges root by the mount, not the mode bits)."""
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def state_home() -> Path:
    """$XDG_STATE_HOME/clipperd, ~/.local/state/clipperd without it (HOME=/tmp in the image)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clipperd"


def default_sqlite(repository: Path | str) -> SqliteStore:
    """The default store: in the repository when it is a folder this process may write in,
    otherwise in :func:`state_home` under a name of the repository's own, so two repositories
    never mix. A bucket (a URL) counts as not writable: its local copy is a cache, which a
    resync may replace, and the server never writes into the bucket."""
    if isinstance(repository, Path):
        inside = repository / ".clipperd"
        if _writable_folder(inside) or (not inside.exists() and _writable_folder(repository)):
            return SqliteStore(inside / "applications.sqlite")
        name = str(repository.absolute())
        why = f"the model repository {repository} is not writable here, so nothing is written there: "
    else:
        name = repository
        why = f"the model repository {repository} is a bucket, read only: "
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return SqliteStore(state_home() / f"applications-{digest}.sqlite", why)


def open_store(spec: str, repository: Path | str) -> AppStore:
    """The store ``--app-state`` names (see the module's docstring)."""
    check_store_spec(spec)
    if spec == "":
        return default_sqlite(repository)
    if spec.startswith("sqlite:///"):
        return SqliteStore(Path(spec.removeprefix("sqlite://")))
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    return MemoryStore()
