"""Where each contact's read has got to, kept in DynamoDB so any worker can resume it.

A checkpoint says: this contact's audio up to and including fragment
``last_fragment_number`` is on the audio-frames stream, a GetMedia call with
``StartSelectorType=CONTINUATION_TOKEN`` and ``continuation_token`` returns what comes
next, and these are the per-track totals so far (so the END record of a resumed read
still covers the whole contact). The worker writes one only after the producer has
flushed the frames it covers; ``completed`` marks a contact whose END is out, so a
duplicate delivery of its work item is dropped instead of read twice.

One item per contact, key ``contact_id``. Writes are conditional, so a worker that lost
the contact (its message came back to the queue while it was stuck, and another worker
took over) cannot move the checkpoint backwards or keep reading in lockstep with the new
owner: progress must be at a later fragment, or at the same fragment by the reader that
wrote it there. A reader that resumes a contact takes the checkpoint over where it is
(``take_over``), and whoever ends the contact may complete it where it is; ``completed``
is final. Fragment numbers are decimal strings of up to 128 digits
(GetMedia's ``AfterFragmentNumber`` pattern) that grow with time, longer than a DynamoDB
number holds, so the order is kept in ``position``: the number left-padded with zeros
to 128 characters, which DynamoDB compares as a string in numeric order.

``expires_at`` is the table's TTL attribute. A checkpoint outlives every redelivery of
its work item by default (SQS keeps a message 4 days unless told otherwise).

The same item carries ``contact_ended_at_ms``, written by the contact-events Lambda when
Connect reports the contact DISCONNECTED (``mark_contact_ended``): the worker asks for it
when a GetMedia body ends for want of new fragments, to tell a finished call from a
live one that paused. Checkpoint writes update their own attributes only, so neither
writer erases the other's, whichever comes first.

>>> from pipeline.records import Track
>>> checkpoint = ContactCheckpoint("c-1", "917", "917", frames={Track.CUSTOMER: 2, Track.AGENT: 2},
...                                samples={Track.CUSTOMER: 1024, Track.AGENT: 1024})
>>> checkpoint.position[-4:], len(checkpoint.position)
('0917', 128)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.records import Track

log = logging.getLogger(__name__)

#: SQS's default message retention: a work item cannot come back after this.
DEFAULT_TTL_S = 4 * 24 * 3600
#: GetMedia's AfterFragmentNumber pattern allows 1–128 digits.
POSITION_WIDTH = 128
_FRAGMENT_NUMBER = re.compile(r"[0-9]{0,128}")

ATTR_CONTACT_ID = "contact_id"
ATTR_POSITION = "position"
ATTR_LAST_FRAGMENT_NUMBER = "last_fragment_number"
ATTR_CONTINUATION_TOKEN = "continuation_token"
ATTR_FRAMES = "frames"
ATTR_SAMPLES = "samples"
ATTR_LAST_AUDIO_END_MS = "last_audio_end_ms"
ATTR_READER_ID = "reader_id"
ATTR_COMPLETED = "completed"
ATTR_END_REASON = "end_reason"
ATTR_UPDATED_AT_MS = "updated_at_ms"
ATTR_EXPIRES_AT = "expires_at"
ATTR_CONTACT_ENDED_AT_MS = "contact_ended_at_ms"

#: Progress: a later fragment, or the same one rewritten by the reader that wrote it.
_PROGRESS_CONDITION = (
    "attribute_not_exists(#position) OR (#completed = :false AND "
    "(#position < :position OR (#position = :position AND #reader_id = :reader_id)))"
)
#: Taking over or completing: any reader, at the position the contact was left at or later.
_AT_OR_AFTER_CONDITION = "attribute_not_exists(#position) OR (#completed = :false AND #position <= :position)"


class CheckpointError(Exception):
    """The checkpoint store cannot be read or written (a fault that may pass)."""


class StaleCheckpointError(CheckpointError):
    """The stored checkpoint is ahead of this one: another reader owns the contact now."""


@dataclass(frozen=True)
class ContactCheckpoint:
    """One contact's read progress. ``frames``/``samples`` are per track, published so far.

    ``last_audio_end_ms`` is the producer time just after the last published sample
    (the END record's timestamp); ``reader_id`` names the read that wrote it.
    """

    contact_id: str
    last_fragment_number: str
    continuation_token: str
    frames: Mapping[Track, int] = field(default_factory=dict)
    samples: Mapping[Track, int] = field(default_factory=dict)
    last_audio_end_ms: int = 0
    updated_at_ms: int = 0
    reader_id: str = ""
    completed: bool = False
    end_reason: str = ""

    def __post_init__(self) -> None:
        if not _FRAGMENT_NUMBER.fullmatch(self.last_fragment_number):
            raise ValueError(f"fragment number {self.last_fragment_number[:32]!r} is not 0-128 decimal digits")

    @property
    def position(self) -> str:
        """``last_fragment_number`` as a string that sorts in numeric order."""
        return self.last_fragment_number.rjust(POSITION_WIDTH, "0")


class CheckpointStore(Protocol):
    def get(self, contact_id: str) -> ContactCheckpoint | None:
        """The contact's checkpoint, or None; raises ``CheckpointError``."""
        ...

    def put(self, checkpoint: ContactCheckpoint, *, take_over: bool = False) -> None:
        """Store it unless that would move the contact backwards or past another
        reader's write at the same fragment (``StaleCheckpointError``); ``take_over``
        makes this reader the owner of a checkpoint it resumes from."""
        ...

    def contact_ended_at_ms(self, contact_id: str) -> int:
        """When Connect reported the contact over (epoch ms), 0 if it has not; raises
        ``CheckpointError``."""
        ...

    def mark_contact_ended(self, contact_id: str, ended_at_ms: int) -> None:
        """Record that the contact is over; the first mark stays. Raises ``CheckpointError``."""
        ...


class DynamoDbCheckpointStore:
    """Checkpoints in a DynamoDB table keyed by ``contact_id`` (see ``create_table``).

    Parameters
    ----------
    dynamodb_client:
        A boto3 ``dynamodb`` client (injected so tests can stub it).
    table_name:
        The table; its TTL attribute should be ``expires_at``.
    ttl_s:
        How long a checkpoint is kept after its last write.
    """

    def __init__(self, dynamodb_client: Any, table_name: str, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._client = dynamodb_client
        self.table_name = table_name
        self.ttl_s = ttl_s

    def get(self, contact_id: str) -> ContactCheckpoint | None:
        try:
            # Strongly consistent: a redelivered contact must see the last write of the
            # worker it replaces, made moments ago.
            response = self._client.get_item(
                TableName=self.table_name,
                Key={ATTR_CONTACT_ID: {"S": contact_id}},
                ConsistentRead=True,
            )
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointError(f"reading the checkpoint of {contact_id} failed: {exc}") from exc
        item = response.get("Item")
        # An item with only the ended mark holds no progress yet.
        return None if item is None or ATTR_POSITION not in item else _from_item(item)

    def put(self, checkpoint: ContactCheckpoint, *, take_over: bool = False) -> None:
        item = _to_item(checkpoint, self.ttl_s)
        del item[ATTR_CONTACT_ID]
        # The condition's :position and :reader_id are the values written, so the SET
        # clause and the condition share their placeholders.
        names = {f"#{name}": name for name in item}
        values = {f":{name}": value for name, value in item.items()}
        values[":false"] = {"BOOL": False}
        condition = _AT_OR_AFTER_CONDITION if checkpoint.completed or take_over else _PROGRESS_CONDITION
        try:
            # UpdateItem rather than PutItem: the item may hold the contact's ended mark.
            self._client.update_item(
                TableName=self.table_name,
                Key={ATTR_CONTACT_ID: {"S": checkpoint.contact_id}},
                UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in item),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise StaleCheckpointError(
                    f"the checkpoint of {checkpoint.contact_id} is ahead of fragment "
                    f"{checkpoint.last_fragment_number or '-'} or completed"
                ) from exc
            raise CheckpointError(f"writing the checkpoint of {checkpoint.contact_id} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise CheckpointError(f"writing the checkpoint of {checkpoint.contact_id} failed: {exc}") from exc

    def contact_ended_at_ms(self, contact_id: str) -> int:
        try:
            response = self._client.get_item(
                TableName=self.table_name,
                Key={ATTR_CONTACT_ID: {"S": contact_id}},
                ConsistentRead=True,
                ProjectionExpression="#ended",
                ExpressionAttributeNames={"#ended": ATTR_CONTACT_ENDED_AT_MS},
            )
            return int(response.get("Item", {}).get(ATTR_CONTACT_ENDED_AT_MS, {}).get("N", "0"))
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointError(f"reading whether {contact_id} has ended failed: {exc}") from exc
        except ValueError as exc:
            raise CheckpointError(f"malformed ended mark of {contact_id}: {exc}") from exc

    def mark_contact_ended(self, contact_id: str, ended_at_ms: int) -> None:
        try:
            # if_not_exists: Connect's events come at least once; the first time counts,
            # and a mark never shortens the TTL a checkpoint set.
            self._client.update_item(
                TableName=self.table_name,
                Key={ATTR_CONTACT_ID: {"S": contact_id}},
                UpdateExpression="SET #ended = if_not_exists(#ended, :ended), #expires = if_not_exists(#expires, :expires)",
                ExpressionAttributeNames={"#ended": ATTR_CONTACT_ENDED_AT_MS, "#expires": ATTR_EXPIRES_AT},
                ExpressionAttributeValues={
                    ":ended": {"N": str(ended_at_ms)},
                    ":expires": {"N": str(ended_at_ms // 1000 + self.ttl_s)},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointError(f"marking {contact_id} ended failed: {exc}") from exc


def create_table(dynamodb_client: Any, table_name: str) -> None:
    """Create the checkpoint table (on-demand capacity) with TTL on ``expires_at``; wait until it is active."""
    dynamodb_client.create_table(
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": ATTR_CONTACT_ID, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": ATTR_CONTACT_ID, "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb_client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    dynamodb_client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": ATTR_EXPIRES_AT},
    )


def _per_track(counts: Mapping[Track, int]) -> dict[str, Any]:
    return {"M": {track.label: {"N": str(counts.get(track, 0))} for track in Track}}


def _to_item(checkpoint: ContactCheckpoint, ttl_s: int) -> dict[str, Any]:
    return {
        ATTR_CONTACT_ID: {"S": checkpoint.contact_id},
        ATTR_POSITION: {"S": checkpoint.position},
        ATTR_LAST_FRAGMENT_NUMBER: {"S": checkpoint.last_fragment_number},
        ATTR_CONTINUATION_TOKEN: {"S": checkpoint.continuation_token},
        ATTR_FRAMES: _per_track(checkpoint.frames),
        ATTR_SAMPLES: _per_track(checkpoint.samples),
        ATTR_LAST_AUDIO_END_MS: {"N": str(checkpoint.last_audio_end_ms)},
        ATTR_READER_ID: {"S": checkpoint.reader_id},
        ATTR_COMPLETED: {"BOOL": checkpoint.completed},
        ATTR_END_REASON: {"S": checkpoint.end_reason},
        ATTR_UPDATED_AT_MS: {"N": str(checkpoint.updated_at_ms)},
        ATTR_EXPIRES_AT: {"N": str(checkpoint.updated_at_ms // 1000 + ttl_s)},
    }


def _from_item(item: dict[str, Any]) -> ContactCheckpoint:
    try:
        return ContactCheckpoint(
            contact_id=item[ATTR_CONTACT_ID]["S"],
            last_fragment_number=item[ATTR_LAST_FRAGMENT_NUMBER]["S"],
            continuation_token=item[ATTR_CONTINUATION_TOKEN]["S"],
            frames=_counts(item[ATTR_FRAMES]),
            samples=_counts(item[ATTR_SAMPLES]),
            last_audio_end_ms=int(item[ATTR_LAST_AUDIO_END_MS]["N"]),
            updated_at_ms=int(item[ATTR_UPDATED_AT_MS]["N"]),
            reader_id=item[ATTR_READER_ID]["S"],
            completed=item[ATTR_COMPLETED]["BOOL"],
            end_reason=item[ATTR_END_REASON]["S"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint item {item.get(ATTR_CONTACT_ID)}: {exc!r}") from exc


def _counts(value: dict[str, Any]) -> dict[Track, int]:
    counts = value["M"]
    return {track: int(counts[track.label]["N"]) for track in Track}
