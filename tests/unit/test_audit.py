"""Audit rows: what ``pipeline.audit.audit_values`` keeps of a chunk and its receipt."""

from __future__ import annotations

import dataclasses
import json

from audit_rows import chunk
from pipeline.audit import DeliveryReceipt, DeliveryStatus, audit_columns, audit_values
from pipeline.records import Track

ATTRIBUTES = {"queue": "Billing", "language": "en-US", "customer_phone": "+15550100", "card_last4": "4242"}
RECEIPT = DeliveryReceipt(DeliveryStatus.SENT, 1, 12, 1_700_000_000_000)


def audio_with_attributes():
    audio = chunk("c-1", Track.CUSTOMER, 3)
    return dataclasses.replace(audio, info=dataclasses.replace(audio.info, attributes=dict(ATTRIBUTES)))


def attributes_of(values: list[object]) -> dict[str, str]:
    names = [column.name for column in audit_columns(False)]
    return json.loads(values[names.index("attributes")])


def test_the_row_keeps_only_the_attributes_sent_to_cresta():
    values = audit_values(audio_with_attributes(), RECEIPT, False, frozenset({"queue", "language", "absent"}))
    assert attributes_of(values) == {"queue": "Billing", "language": "en-US"}


def test_an_empty_allowlist_keeps_no_attribute():
    assert attributes_of(audit_values(audio_with_attributes(), RECEIPT, False, frozenset())) == {}


def test_without_an_allowlist_every_attribute_is_kept():
    assert attributes_of(audit_values(audio_with_attributes(), RECEIPT, False)) == ATTRIBUTES


def test_values_follow_the_columns_with_and_without_audio():
    audio = audio_with_attributes()
    assert len(audit_values(audio, RECEIPT, False)) == len(audit_columns(False))
    with_audio = audit_values(audio, RECEIPT, True)
    assert len(with_audio) == len(audit_columns(True))
    assert with_audio[-1] == audio.pcm
