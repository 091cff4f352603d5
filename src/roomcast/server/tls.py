"""TLS on the native door: the server's ``SSLContext``, and reading its certificate again.

Imports only the standard library. Why one long-lived context rather than a new one per
reload: asyncio (and uvloop) wrap each accepted connection with the context the listening
server was created with, and a TLS connection copies the certificate when it starts. So
``load_cert_chain`` on that same context is all a renewal takes: connections already up keep
the session they negotiated, and every handshake after it presents the new certificate. No
socket is closed and no listener is rebound (``roomcast serve`` does it on ``SIGHUP``).
"""

from __future__ import annotations

import logging
import ssl

__all__ = ["CertificateError", "server_context", "reload_certificate"]

logger = logging.getLogger("roomcast.tls")


class CertificateError(Exception):
    """The certificate or its key cannot be used; ``str(exc)`` is one line naming the file."""


def _load(context: ssl.SSLContext, certfile: str, keyfile: str | None) -> None:
    for path in (certfile, keyfile):  # OpenSSL's own error does not say which file is missing
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise CertificateError(f"cannot read the TLS certificate or key: {path}: no such file") from None
            except PermissionError:
                raise CertificateError(f"cannot read the TLS certificate or key: {path}: permission denied") from None
            except OSError as exc:
                raise CertificateError(f"cannot read the TLS certificate or key: {path}: {exc.strerror}") from None
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        where = certfile if keyfile is None else f"{certfile} with key {keyfile}"
        raise CertificateError(f"cannot use the TLS certificate {where}: {reason}") from None
    except OSError as exc:
        raise CertificateError(f"cannot read the TLS certificate {certfile}: {exc.strerror or exc}") from None


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server ``SSLContext`` (TLS 1.2 or later, Python's default ciphers) holding the chain.

    HTTP/1.1 is announced by ALPN, the only protocol the door speaks, so a client that
    offers ``h2`` falls back to it instead of failing.

    Raises:
        CertificateError: a file is missing or unreadable, not PEM, or the key does not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    _load(context, certfile, keyfile)
    return context


def reload_certificate(context: ssl.SSLContext, certfile: str, keyfile: str | None = None) -> bool:
    """Read the chain again into ``context`` (a renewal); ``False``, logged, if it failed.

    A failed reload leaves the old certificate in place: the files are first loaded into a
    scratch context, and only a chain and key that load and match there go into ``context``
    (loading straight into it could leave a new certificate beside no key, and every
    handshake after it would fail). A half-written file at renewal costs a log line.
    """
    try:
        _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), certfile, keyfile)
        _load(context, certfile, keyfile)
    except CertificateError as exc:
        logger.error("%s; still serving the previous certificate", exc)
        return False
    logger.info("TLS certificate reloaded from %s", certfile)
    return True
