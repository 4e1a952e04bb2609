"""Credentials out of the WebSocket library's log records.

At DEBUG, ``websockets`` logs every handshake header (so the ``Authorization: Bearer``
access token) and the beginning and end of every frame (so a Media Streams ``start`` with
its ``Token`` parameter, and audio). Both the client adapters and the Cresta emulator hand
their connections this adapter instead of a plain logger.
"""

from __future__ import annotations

import logging
from typing import Any

_HEADER_LINES = frozenset({"> %s: %s", "< %s: %s"})
_FRAME_LINES = frozenset({"> %s", "< %s"})
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class RedactingLogger(logging.LoggerAdapter):
    """Masks credential headers and frame payloads; passes everything else unchanged.

    >>> import io
    >>> out = io.StringIO()
    >>> base = logging.getLogger("redaction-example")
    >>> base.addHandler(logging.StreamHandler(out)); base.setLevel(logging.DEBUG)
    >>> RedactingLogger(base).debug("> %s: %s", "Authorization", "Bearer abc")
    >>> out.getvalue()
    '> Authorization: [redacted]\\n'
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if msg in _HEADER_LINES and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            args = (args[0], "[redacted]")
        elif msg in _FRAME_LINES and len(args) == 1 and hasattr(args[0], "opcode"):
            frame = args[0]
            args = (f"{frame.opcode.name} [{len(frame.data)} bytes]",)
        self.logger.log(level, msg, *args, **kwargs)
