"""Serving the status page: uvicorn on a thread of the daemon, started and stopped explicitly.

:meth:`WebServer.start` binds the socket first (so a taken port fails there, in the caller,
with the address in the message) and then runs uvicorn on a daemon thread; uvicorn installs no
signal handlers off the main thread, so SIGTERM stays the daemon's. :meth:`WebServer.stop`
asks it to finish and waits for it. Forwarded-for headers are ignored: the allow-list judges
the address that really connected.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import uvicorn

from bonect.catalog.queue import Catalog
from bonect.config import Config
from bonect.errors import BonectError
from bonect.web.app import build_app

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise BonectError(f"web: cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise BonectError(f"web: cannot listen on {host}:{port}: {exc}") from exc
    return sock


@dataclass
class WebServer:
    """The status page being served; build it with :meth:`start`."""

    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket
    url: str

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @classmethod
    def start(
        cls, config: Config, catalog: Catalog, *, model_label: Callable[[], str] | None = None
    ) -> WebServer:
        """Serve the status page of ``config``'s ``[web]`` section over ``catalog``."""
        settings = config.web
        sock = bind(settings.host, settings.port)
        app = build_app(config, catalog, model_label=model_label)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="off",
                proxy_headers=False,
                server_header=False,
                ssl_certfile=settings.tls_certificate,
                ssl_keyfile=settings.tls_key,
            )
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="bonect-web", daemon=True
        )
        thread.start()
        scheme = "https" if settings.tls_certificate is not None else "http"
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        port = int(sock.getsockname()[1])
        url = f"{scheme}://{host}:{port}/"
        logger.info(
            "status page on %s (%s)",
            url,
            "logins from " + str(settings.password_file)
            if settings.password_file is not None
            else "loopback only, no login",
        )
        return cls(server=server, thread=thread, sock=sock, url=url)

    def stop(self) -> None:
        """Stop serving and wait (bounded) for the thread to end."""
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT_S)
        if self.thread.is_alive():
            logger.warning("the status page did not stop within %.0f s", STOP_TIMEOUT_S)
        self.sock.close()
