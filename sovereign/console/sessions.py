"""Server-side console sessions: the browser holds a random id; tokens never leave the server."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kms.oidc.tokens import Actor

COOKIE = "__Host-sovereign-console"
MAX_SESSIONS = 10_000
MAX_PENDING_LOGINS = 1_000


@dataclass(frozen=True)
class PendingLogin:
    """A sign-in under way: what the callback must match (state) and prove (the PKCE verifier)."""

    verifier: str = field(repr=False)
    nonce: str
    return_to: str
    created: datetime


@dataclass(frozen=True)
class Session:
    session_id: str = field(repr=False)
    actor: Actor
    access_token: str = field(repr=False)
    csrf: str = field(repr=False)
    signed_in_at: datetime
    expires_at: datetime

    def fresh(self, now: datetime, within: timedelta) -> bool:
        """Signed in recently enough for a decision that needs a fresh sign-in."""
        return now - self.signed_in_at <= within


class Sessions:
    """Sessions and pending logins in memory (a restart signs everyone out; nothing else is lost)."""

    def __init__(self, login_ttl: timedelta = timedelta(minutes=10)) -> None:
        self._sessions: dict[str, Session] = {}
        self._logins: dict[str, PendingLogin] = {}
        self._login_ttl = login_ttl
        self._lock = threading.Lock()

    def begin_login(self, login: PendingLogin) -> str:
        state = secrets.token_urlsafe(32)
        with self._lock:
            self._expire_logins(login.created)
            if len(self._logins) >= MAX_PENDING_LOGINS:  # unauthenticated callers cannot grow memory
                self._logins.pop(next(iter(self._logins)))
            self._logins[state] = login
        return state

    def finish_login(self, state: str, now: datetime) -> PendingLogin | None:
        """The login ``state`` names, once: a replayed or expired callback gets None."""
        with self._lock:
            login = self._logins.pop(state, None)
        if login is None or now - login.created > self._login_ttl:
            return None
        return login

    def open(self, actor: Actor, access_token: str, now: datetime) -> Session:
        session = Session(
            session_id=secrets.token_urlsafe(32),
            actor=actor,
            access_token=access_token,
            csrf=secrets.token_urlsafe(32),
            signed_in_at=now,
            expires_at=actor.expires_at,
        )
        with self._lock:
            self._expire_sessions(now)
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None, now: datetime) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= now:
                del self._sessions[session_id]
                return None
        return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire_logins(self, now: datetime) -> None:
        for state in [s for s, login in self._logins.items() if now - login.created > self._login_ttl]:
            del self._logins[state]

    def _expire_sessions(self, now: datetime) -> None:
        for sid in [s for s, session in self._sessions.items() if session.expires_at <= now]:
            del self._sessions[sid]
