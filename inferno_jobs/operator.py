"""Operator logins: the people of ``INFERNO_OPERATORS``, their password hashes, and the short-lived JWTs that
``POST /auth/login`` hands out for the management endpoints (docs/security.md#operator-logins).

Machines authenticate with API keys (:mod:`inferno_jobs.apikey`); operators log in here. A password is stored as
``scrypt.<log2 N>.<r>.<p>.<salt>.<digest>`` (hashlib's scrypt, salt and digest in unpadded base64url): a form with
no ``$``, ``,`` or ``:``, so an ``INFERNO_OPERATORS`` entry survives environment files, compose interpolation and
the comma-separated list as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets

import redis

from inferno_jobs.config import Settings
from inferno_jobs.errors import AuthenticationFailed, NotFound, RateLimitExceeded
from inferno_jobs.job import isoformat, now
from inferno_jobs.keyspace import Keyspace

SCHEME = "scrypt"
DEFAULT_LOG2_N = 17  # OWASP's minimum for scrypt: N=2**17, r=8, p=1 (128 MiB and a few tenths of a second a try)
MAX_LOG2_N = 20  # a hash asking for more memory than this is refused, not computed
ISSUER = "inferno-jobs"
AUDIENCE = "inferno-jobs:operator"
ALGORITHM = "HS256"
BAD_CREDENTIALS = "invalid username or password"
FAILURE_WINDOW_S = 60
MIN_SECRET_CHARS = 32  # RFC 7518: an HS256 key at least as long as its hash

# Gives back the attempt a successful login had reserved; never creates the counter (it may just have expired).
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * r * n + (1 << 20))


def hash_password(password: str, log2_n: int = DEFAULT_LOG2_N, r: int = 8, p: int = 1) -> str:
    """The stored form of ``password`` (a new random salt each time)."""
    if not password:
        raise ValueError("the password is empty")
    salt = os.urandom(16)
    return f"{SCHEME}.{log2_n}.{r}.{p}.{_b64(salt)}.{_b64(_scrypt(password, salt, log2_n, r, p, 32))}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``, compared in constant time; a malformed hash matches nothing."""
    try:
        scheme, log2_n, r, p, salt, digest = encoded.split(".")
        log2_n, r, p, expected = int(log2_n), int(r), int(p), _unb64(digest)
        salt_bytes = _unb64(salt)
    except ValueError:
        return False
    if scheme != SCHEME or not (1 <= log2_n <= MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and expected):
        return False
    return hmac.compare_digest(_scrypt(password, salt_bytes, log2_n, r, p, len(expected)), expected)


def parse_operators(entries: tuple[str, ...]) -> dict[str, str]:
    """``INFERNO_OPERATORS`` (``username:hash`` entries) as ``{username: hash}``; raises ValueError on a bad one."""
    accounts: dict[str, str] = {}
    for entry in entries:
        username, _, encoded = entry.partition(":")
        username = username.strip()
        if not username or not encoded.startswith(SCHEME + ".") or encoded.count(".") != 5:
            raise ValueError(f"INFERNO_OPERATORS: {username or entry[:20]!r} is not 'username:<hash>' "
                             "(make the hash with 'inferno-jobs security hash-password')")
        if username in accounts:
            raise ValueError(f"INFERNO_OPERATORS: operator {username!r} is listed twice")
        accounts[username] = encoded.strip()
    return accounts


def is_token(credential: str | None) -> bool:
    """Whether a bearer credential is a JWT (API keys are ``ij_`` and base64url, without dots)."""
    return bool(credential) and credential.startswith("eyJ") and credential.count(".") == 2


class Operators:
    """The configured operators: checks their logins (with a limit on failures) and issues and verifies their
    tokens. One per API process; every replica signs with the same secret."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)
        self.accounts = parse_operators(settings.operators)
        if settings.jwt_secret and len(settings.jwt_secret) < MIN_SECRET_CHARS:
            raise ValueError(f"INFERNO_JWT_SECRET must be at least {MIN_SECRET_CHARS} characters (or empty: one is "
                             "generated)")
        self._secret = settings.jwt_secret or None
        self._release = client.register_script(_RELEASE)
        self._decoy = None
        if self.accounts:
            # An unknown username is checked against this hash, made with the same cost as a real one, so a
            # failed login takes as long whether the user exists or not.
            _, log2_n, r, p, _, _ = next(iter(self.accounts.values())).split(".")
            self._decoy = hash_password(secrets.token_urlsafe(16), int(log2_n), int(r), int(p))

    @property
    def enabled(self) -> bool:
        """True when at least one operator is configured."""
        return bool(self.accounts)

    def secret(self) -> str:
        """``INFERNO_JWT_SECRET``, or the generated one every replica shares through Redis."""
        if self._secret is None:
            key = self.keys.jwt_secret()
            self.redis.set(key, secrets.token_urlsafe(48), nx=True)
            value = self.redis.get(key)
            self._secret = value.decode() if isinstance(value, bytes) else value
        return self._secret

    def login(self, username: str, password: str, client_ip: str) -> dict:
        """A token for the operator: ``{access_token, token_type, expires_in, expires_at}``.

        Raises :class:`NotFound` when no operator is configured, :class:`AuthenticationFailed` for a wrong
        password or unknown user (the same message for both) and :class:`RateLimitExceeded` once this username
        has failed ``login_failures_per_min`` times from this IP in the current minute.
        """
        if not self.enabled:
            raise NotFound("operator logins are not configured on this deployment (INFERNO_OPERATORS); "
                           "use an API key")
        attempt = self._reserve_attempt(username, client_ip)
        encoded = self.accounts.get(username)
        matched = verify_password(password, encoded or self._decoy)
        if not (matched and encoded):
            raise AuthenticationFailed(BAD_CREDENTIALS)
        if attempt:
            self._release(keys=[attempt])
        return self.issue(username)

    def _reserve_attempt(self, username: str, client_ip: str) -> str | None:
        """Count this attempt as a failure until it succeeds, so concurrent guesses cannot all slip under the limit.
        Returns the counter's key (None when failures are not limited)."""
        limit = self.settings.login_failures_per_min
        if not limit:
            return None
        t = now()
        start = int(t // FAILURE_WINDOW_S) * FAILURE_WINDOW_S
        key = self.keys.login_failures(username, client_ip, start)
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, FAILURE_WINDOW_S + 5)
            count, _ = pipe.execute()
        if count > limit:
            retry_after_s = max(1, math.ceil(start + FAILURE_WINDOW_S - t))
            raise RateLimitExceeded(f"too many failed logins for this user from this address; retry after "
                                    f"{retry_after_s} seconds", details={"retry_after": retry_after_s},
                                    retry_after_s=retry_after_s)
        return key

    def issue(self, username: str) -> dict:
        """A signed token naming ``username``, valid for ``jwt_ttl_s``."""
        import jwt  # PyJWT is in the api extra; hash_password (the CLI) works without it

        issued_at = int(now())
        expires_at = issued_at + self.settings.jwt_ttl_s
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": username, "iat": issued_at, "exp": expires_at,
                  "jti": secrets.token_hex(8)}
        return {"access_token": jwt.encode(claims, self.secret(), algorithm=ALGORITHM), "token_type": "bearer",
                "expires_in": self.settings.jwt_ttl_s, "expires_at": isoformat(expires_at)}

    def verify(self, token: str) -> str:
        """The operator a token names; raises :class:`AuthenticationFailed` for an expired, forged or foreign token,
        or one whose operator is no longer configured."""
        import jwt

        if not self.enabled:
            raise AuthenticationFailed("operator tokens are not accepted: operator logins are not configured")
        try:
            claims = jwt.decode(token, self.secret(), algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("token expired: log in again (POST /auth/login)") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed("invalid operator token") from exc
        if claims["sub"] not in self.accounts:
            raise AuthenticationFailed("invalid operator token: its operator is no longer configured")
        return claims["sub"]
