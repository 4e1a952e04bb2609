import doctest
import logging

from websockets.frames import Frame, Opcode

import connectors.cresta.log_redaction
from connectors.cresta.log_redaction import RedactingLogger

TOKEN = "eyJ-access-token"


def test_docstring_examples_run():
    assert doctest.testmod(connectors.cresta.log_redaction).failed == 0


def test_credentials_headers_and_frame_payloads_are_masked_everything_else_kept(caplog):
    caplog.set_level(logging.DEBUG)
    logger = RedactingLogger(logging.getLogger("websockets.client"))
    logger.debug("> %s: %s", "Authorization", f"Bearer {TOKEN}")
    logger.debug("< %s: %s", "Set-Cookie", f"session={TOKEN}")
    logger.debug("> %s: %s", "Host", "cresta.example")
    logger.debug("> %s", Frame(Opcode.TEXT, f'{{"customParameters":{{"Token":"{TOKEN}"}}}}'.encode()))
    logger.debug("= connection is %s", "OPEN")
    assert TOKEN not in caplog.text
    assert caplog.messages == [
        "> Authorization: [redacted]",
        "< Set-Cookie: [redacted]",
        "> Host: cresta.example",
        "> TEXT [49 bytes]",
        "= connection is OPEN",
    ]


def test_nothing_is_formatted_when_debug_is_off(caplog):
    caplog.set_level(logging.INFO)
    RedactingLogger(logging.getLogger("websockets.client")).debug("> %s", object())
    assert caplog.messages == []
