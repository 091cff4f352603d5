"""The WSGI-style ``environ`` python-socketio gives ``connect(sid, environ, auth)``.

Built from the Engine.IO handshake request, with the keys applications read: ``HTTP_*``
headers, ``QUERY_STRING``, ``REMOTE_ADDR``/``REMOTE_PORT``, ``PATH_INFO``,
``REQUEST_METHOD``, ``wsgi.url_scheme`` and ``asgi.scope``. The request may have come
through the native door, which has no ASGI scope, so ``asgi.scope`` is made from the same
request (``type``, ``path``, ``query_string``, ``headers``, ``client``, ``scheme``) for both
doors alike; ``asgi.receive``/``asgi.send`` are absent: the request is over by then.
"""

from __future__ import annotations

from typing import Any

from roomcast.transports.base import HttpRequest

__all__ = ["environ_of"]


def environ_of(request: HttpRequest) -> dict[str, Any]:
    host, port = request.client
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.items()]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": request.raw_query,
        "RAW_URI": request.path + ("?" + request.raw_query if request.raw_query else ""),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": host,
        "REMOTE_PORT": str(port),
        "wsgi.url_scheme": request.scheme,
        "asgi.scope": {
            "type": "http",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "query_string": request.raw_query.encode("latin-1"),
            "headers": headers,
            "client": (host, port),
        },
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ["HTTP_" + key] = value
    return environ
