"""The error output: records and contacts the job could not process, with the reason.

Bad input never fails the job (DESIGN §5); it becomes one JSON line under ``errors/``
carrying a stable reason code, a readable message and, for undecodable records, the raw
bytes in base64 so the input can be replayed or reported.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

ERROR_SCHEMA = "pipeline-error/1"


@dataclass(frozen=True)
class PipelineError:
    at_ms: int
    #: Where it was found: the stream name, or "assembler" for a contact-level finding.
    source: str
    reason: str
    message: str
    contact_id: str = ""
    raw: bytes = b""

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": ERROR_SCHEMA,
                "at_ms": self.at_ms,
                "source": self.source,
                "reason": self.reason,
                "message": self.message,
                "contact_id": self.contact_id,
                "raw_base64": base64.b64encode(self.raw).decode(),
            },
            sort_keys=True,
        )
