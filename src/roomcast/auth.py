"""Who a client is and which rooms it may use, from a signed JWT.

Imports only roomcast's bottom layer, PyJWT/cryptography and the stdlib, so every transport
can share one ``Authenticator`` and decide the same way whatever wire the client came in on.
PyJWT and cryptography load with the first ``Authenticator`` (14 MB resident): an open
server never imports them.

What a token carries
--------------------

A token is a JWT whose payload may contain::

    {
      "sub": "user-17",
      "exp": 1767225600,
      "rooms": {
        "subscribe": ["chat:*", "task:42"],
        "publish": "chat:lobby"
      }
    }

``sub`` names the user (presence, "disconnect this user"). ``exp`` is optional, but enforced
when present. ``rooms`` holds glob patterns (``fnmatch`` syntax, case-sensitive; ``*`` also
matches ``:`` and ``/``) of the rooms the holder may subscribe to and publish to from the
client. A missing ``rooms`` (or a missing action inside it) grants nothing, so a token minted
for another service cannot open rooms here by accident; a single string stands for a
one-element list; anything else is refused as ``invalid grants`` rather than guessed at.
Every other claim is kept, read-only, in ``Claims.raw`` for the application's own handlers.

Where a token comes from
------------------------

``token_from_request`` looks, in this order, at:

1. the Socket.IO handshake ``auth`` payload, ``{"token": "..."}`` (what socket.io clients send);
2. the ``Authorization: Bearer <token>`` header (any client that can set headers);
3. the ``?token=`` query parameter, for ``EventSource``, which cannot set headers. Query
   strings end up in access logs, so prefer short-lived tokens there.

Algorithms, and why so few
--------------------------

A shared ``secret`` allows HS256; a PEM ``public_key`` allows RS256 and ES256 (narrowed to the
key's own type). ``none`` is never allowed, and HS* is never allowed with a public key: a
public key is public, so accepting an HMAC token "signed" with the public key's PEM text as
the secret would let anyone forge tokens (the algorithm-confusion attack). Choosing the
algorithms from the configured key, never from the token's header, closes that door.

Expiry of long-lived connections
--------------------------------

``Authenticator.verify`` checks ``exp`` once, at connect. A WebSocket or SSE stream can outlive
its token, so the transports close it when ``Claims.expires_at`` (plus the configured
``leeway``) passes (``transports.expiry``); the client reconnects with a fresh token.

With no secret and no public key the server is *open*: it makes no ``Authenticator`` at all
(one refuses an open configuration), so transports skip verification and grants; that is
meant for development and is logged by the server.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from roomcast.errors import PermissionDenied, Unauthorized
from roomcast.types import RoomName

__all__ = [
    "Claims",
    "AuthConfig",
    "Authenticator",
    "token_from_request",
    "require",
]

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
_PUBLIC_KEY_ALGORITHMS = _RSA_ALGORITHMS | _EC_ALGORITHMS


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token allows: who the holder is and which rooms it may use.

    Attributes:
        subject: the ``sub`` claim, the user id; presence and "disconnect a user" key on it.
        expires_at: the ``exp`` claim as a UNIX timestamp, or None if the token never expires.
        subscribe: glob patterns of the rooms the holder may subscribe to.
        publish: glob patterns of the rooms the holder may publish to from the client.
        raw: every claim of the token, read-only (left out of ``repr``: it may hold personal
            data that does not belong in logs).
    """

    subject: str | None
    expires_at: float | None
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    raw: Mapping[str, Any] = field(repr=False)

    def __post_init__(self) -> None:
        # Handlers receive the claims; a shared, mutable dict would let one of them change
        # what the next check sees.
        if not isinstance(self.raw, MappingProxyType):
            object.__setattr__(self, "raw", MappingProxyType(dict(self.raw)))

    def may_subscribe(self, room: RoomName) -> bool:
        """Whether some ``subscribe`` pattern matches ``room`` (case-sensitive glob)."""
        return any(fnmatchcase(room, pattern) for pattern in self.subscribe)

    def may_publish(self, room: RoomName) -> bool:
        """Whether some ``publish`` pattern matches ``room`` (case-sensitive glob)."""
        return any(fnmatchcase(room, pattern) for pattern in self.publish)


@dataclass(frozen=True)
class AuthConfig:
    """How tokens are checked. Neither ``secret`` nor ``public_key``: the server is open.

    Attributes:
        secret: shared HMAC secret (HS256). Left out of ``repr`` so it never reaches a log.
        public_key: PEM public key (RSA or EC); the issuer keeps the private key.
        algorithms: accepted ``alg`` values. Empty means "what the key allows": HS256 for a
            secret, RS256 and ES256 for a public key. ``none`` is always refused, as is any
            HS* algorithm with a public key (algorithm confusion, see the module docstring).
        audience: if set, the token's ``aud`` must contain it. If unset, a token that names
            an audience is refused: it was minted for someone else (RFC 7519 §4.1.3).
        issuer: if set, the token's ``iss`` must equal it.
        leeway: seconds of clock skew tolerated on ``exp`` and ``nbf``.

    Raises:
        ValueError: on a configuration that would be unsafe or silently ignored: both a
            secret and a key, an empty secret, a forbidden algorithm, a negative leeway, or
            algorithms/audience/issuer given without any key (the operator meant auth on,
            but the server would run open).
    """

    secret: str | None = field(default=None, repr=False)
    public_key: str | None = None
    algorithms: tuple[str, ...] = ()
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0

    def __post_init__(self) -> None:
        if self.secret is not None and self.public_key is not None:
            raise ValueError("configure either a secret or a public key, not both")
        if self.secret == "":
            raise ValueError("secret must not be empty; leave it unset for an open server")
        if not math.isfinite(self.leeway) or self.leeway < 0:
            raise ValueError("leeway must be a finite number of seconds >= 0")
        algorithms = tuple(self.algorithms)
        if self.open:
            if algorithms or self.audience is not None or self.issuer is not None:
                raise ValueError(
                    "algorithms, audience or issuer configured without a secret or public key;"
                    " refusing to run open by accident"
                )
            object.__setattr__(self, "algorithms", ())
            return
        allowed = _HMAC_ALGORITHMS if self.secret is not None else _PUBLIC_KEY_ALGORITHMS
        if not algorithms:
            algorithms = ("HS256",) if self.secret is not None else ("RS256", "ES256")
        forbidden = [alg for alg in algorithms if alg not in allowed]
        if forbidden:
            kind = "a secret" if self.secret is not None else "a public key"
            raise ValueError(f"algorithm(s) {forbidden} not allowed with {kind}")
        object.__setattr__(self, "algorithms", algorithms)

    @property
    def open(self) -> bool:
        """Whether no key is configured: the server then runs open, with no ``Authenticator``."""
        return self.secret is None and self.public_key is None

    @classmethod
    def from_values(
        cls,
        *,
        secret: str | None = None,
        public_key_file: str | os.PathLike[str] | None = None,
        algorithms: str | Iterable[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> AuthConfig:
        """Build from CLI flags or environment variables.

        Empty strings count as unset (an exported-but-empty variable must not become an empty
        HMAC secret), the PEM is read from ``public_key_file``, and ``algorithms`` may be a
        comma-separated string. Raises ``OSError`` if the file cannot be read.
        """
        public_key = None
        if public_key_file:
            public_key = Path(public_key_file).read_text(encoding="utf-8")
        if isinstance(algorithms, str):
            algorithms = algorithms.split(",")
        names = tuple(name.strip() for name in algorithms or () if name.strip())
        return cls(
            secret=secret or None,
            public_key=public_key,
            algorithms=names,
            audience=audience or None,
            issuer=issuer or None,
            leeway=leeway,
        )


class Authenticator:
    """Turns a client's token into ``Claims``, or refuses it with ``Unauthorized``.

    Built once per server and shared by every transport. The public key is parsed here, so a
    broken PEM stops the server at start-up (``ValueError``) instead of refusing every client.
    Refusal reasons are short fixed strings, safe to send to the client: they never contain
    the token or key material. The PyJWT exception stays as ``__cause__`` for server logs.
    """

    __slots__ = ("config", "_key", "_algorithms", "refused", "denied")

    def __init__(self, config: AuthConfig) -> None:
        if config.open:
            raise ValueError("an open configuration (no secret, no public key) needs no Authenticator")
        self.config = config
        self.refused = 0  # tokens refused (``verify``), for operators
        self.denied = 0  # actions a valid token does not grant (``permit``)
        self._key: Any = config.secret
        self._algorithms: list[str] = list(config.algorithms)
        if config.public_key is not None:
            # PyJWT and cryptography (14 MB resident) load with the first Authenticator: an
            # open server, and every process that only publishes, never import them.
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                key = load_pem_public_key(config.public_key.encode())
            except ValueError:
                raise ValueError("public_key is not a PEM public key") from None
            if isinstance(key, rsa.RSAPublicKey):
                family = _RSA_ALGORITHMS
            elif isinstance(key, ec.EllipticCurvePublicKey):
                family = _EC_ALGORITHMS
            else:
                raise ValueError("public_key must be an RSA or EC key")
            # Only the key's own family: an ES256 token is then refused as a disallowed
            # algorithm for an RSA key, instead of reaching signature code with the wrong key.
            self._algorithms = [alg for alg in config.algorithms if alg in family]
            if not self._algorithms:
                raise ValueError(f"none of the algorithms {list(config.algorithms)} fits the key")
            self._key = key

    @property
    def open(self) -> bool:
        """Whether the server runs open (see ``AuthConfig.open``)."""
        return self.config.open

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The ``alg`` values actually accepted, after narrowing to the key's type."""
        return tuple(self._algorithms)

    def verify(self, token: str | None, *, now: float | None = None) -> Claims:
        """Check ``token`` and return what it grants.

        Args:
            token: the raw JWT, e.g. from ``token_from_request``; None or "" if absent.
            now: the current UNIX time, for tests; defaults to ``time.time()``. ``exp`` and
                ``nbf`` are checked here against it (with ``leeway``), not by PyJWT, so an
                injected clock is honoured. ``iat`` is informational and not checked.

        Raises:
            Unauthorized: missing, malformed, badly signed, wrong ``alg``/``aud``/``iss``,
                expired or not yet valid token, or malformed ``sub``/``rooms`` claims.
        """
        try:
            return self._verify(token, now)
        except Unauthorized:
            self.refused += 1
            raise

    def permit(self, claims: Claims, action: Literal["subscribe", "publish"], room: RoomName) -> None:
        """``require(claims, action, room)``, counting a refusal in ``denied``.

        Raises:
            PermissionDenied: ``claims`` do not allow ``action`` on ``room``.
        """
        try:
            require(claims, action, room)
        except PermissionDenied:
            self.denied += 1
            raise

    def _verify(self, token: str | None, now: float | None) -> Claims:
        import jwt  # loaded once, by the first verification (see __init__)

        config = self.config
        if not token:
            raise Unauthorized("token required")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("invalid signature") from exc
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError) as exc:
            raise Unauthorized("algorithm not allowed") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("invalid audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("invalid issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            # Only ``aud`` and ``iss`` can be missing here: both come from our config.
            raise Unauthorized(f"invalid {'audience' if exc.claim == 'aud' else 'issuer'}") from exc
        except jwt.DecodeError as exc:
            raise Unauthorized("malformed token") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc

        clock = time.time() if now is None else now
        expires_at = _timestamp(payload, "exp")
        if expires_at is not None and clock >= expires_at + config.leeway:
            raise Unauthorized("token expired")
        not_before = _timestamp(payload, "nbf")
        if not_before is not None and clock + config.leeway < not_before:
            raise Unauthorized("token not yet valid")
        subject = payload.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise Unauthorized("invalid subject")
        subscribe, publish = _grants(payload)
        return Claims(
            subject=subject,
            expires_at=expires_at,
            subscribe=subscribe,
            publish=publish,
            raw=MappingProxyType(payload),
        )


def _timestamp(payload: Mapping[str, Any], name: str) -> float | None:
    """Read a NumericDate claim; refuse anything but a finite number (JSON allows NaN here)."""
    if name not in payload:
        return None
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unauthorized(f"invalid {name}")
    return float(value)


def _grants(payload: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read ``rooms.subscribe`` and ``rooms.publish``; absent grants nothing."""
    if "rooms" not in payload:
        return (), ()
    rooms = payload["rooms"]
    if not isinstance(rooms, Mapping):
        raise Unauthorized("invalid grants")
    return _patterns(rooms, "subscribe"), _patterns(rooms, "publish")


def _patterns(rooms: Mapping[str, Any], action: str) -> tuple[str, ...]:
    if action not in rooms:
        return ()
    value = rooms[action]
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(pattern, str) for pattern in value):
        return tuple(value)
    raise Unauthorized("invalid grants")


TOKEN_HEADERS: Final = ("authorization",)
"""The request headers ``token_from_request`` reads: what a session must keep of its
handshake for the namespaces its client connects later."""


def token_from_request(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    auth_payload: Any = None,
) -> str | None:
    """Find the client's token: handshake ``auth`` payload, then Bearer header, then ``?token=``.

    The order puts the most deliberate channel first: a Socket.IO client that sends an
    ``auth`` payload means it, whereas headers and query strings can be added by proxies or
    left over in URLs. ``headers`` keys must be lower-case. Empty values count as absent.
    """
    if isinstance(auth_payload, Mapping):
        token = auth_payload.get("token")
        if isinstance(token, str) and token:
            return token
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    token = query.get("token")
    if token:
        return token
    return None


def require(claims: Claims, action: Literal["subscribe", "publish"], room: RoomName) -> None:
    """Raise ``PermissionDenied`` unless ``claims`` allow ``action`` on ``room``.

    One place builds the refusal, so every transport sends the client the same message.
    """
    if action == "subscribe":
        allowed = claims.may_subscribe(room)
    elif action == "publish":
        allowed = claims.may_publish(room)
    else:
        raise ValueError(f"unknown action {action!r}")
    if not allowed:
        raise PermissionDenied(f"not allowed to {action} {room!r}")
