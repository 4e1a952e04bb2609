"""An Amazon Connect call as the pipeline sees it.

For each call the simulator does what Connect does: writes Connect-layout MKV fragments
of both tracks into a (pooled) KVS stream in real time, invokes the contact-flow Lambda
handler with a Connect-shaped event right after the first fragment (as the flow's
*Invoke Lambda* block follows *Start media streaming*), and at hang-up sends the
EventBridge DISCONNECTED contact event to the contact-events handler.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from emulators.connect.voices import synthesize_track
from pipeline.mkv import write_connect_fragment
from pipeline.records import Track

SAMPLE_RATE = 8000
ACCOUNT_ID = "123456789012"

#: The Amazon Connect instance every emulated call (and every bench contact) belongs to.
EMULATED_INSTANCE_ID = "d5b716a2-6b0e-4f38-9d55-52d1f6b2f0a1"


@dataclass(frozen=True)
class FragmentWrite:
    """When a fragment's audio reached KVS: the origin of pipeline-added latency."""

    first_sample: int
    sample_count: int
    written_at: float
    fragment_number: str


@dataclass
class SimulatedCall:
    contact_id: str
    stream_arn: str
    instance_id: str
    seconds: float
    seed: int
    attributes: dict[str, str]
    agent_id: str
    pcm: dict[Track, bytes] = field(default_factory=dict)
    fragments: list[FragmentWrite] = field(default_factory=list)
    flow_result: dict[str, str] = field(default_factory=dict)


def connect_flow_event(call: SimulatedCall, start_fragment_number: str, start_timestamp_ms: int) -> dict[str, Any]:
    """The contact-flow Lambda event, shaped as in the Connect admin guide."""
    region = call.stream_arn.split(":")[3]
    instance_arn = f"arn:aws:connect:{region}:{ACCOUNT_ID}:instance/{call.instance_id}"
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "Attributes": call.attributes,
                "Channel": "VOICE",
                "ContactId": call.contact_id,
                "CustomerEndpoint": {"Address": "+15555550100", "Type": "TELEPHONE_NUMBER"},
                "InitialContactId": call.contact_id,
                "InitiationMethod": "INBOUND",
                "InstanceARN": instance_arn,
                "MediaStreams": {
                    "Customer": {
                        "Audio": {
                            "StartFragmentNumber": start_fragment_number,
                            "StartTimestamp": str(start_timestamp_ms),
                            "StreamARN": call.stream_arn,
                        }
                    }
                },
                "PreviousContactId": call.contact_id,
                "Queue": {"ARN": f"{instance_arn}/queue/{uuid.uuid4()}", "Name": "BasicQueue"},
                "SystemEndpoint": {"Address": "+15555550199", "Type": "TELEPHONE_NUMBER"},
            },
            "Parameters": {"AgentId": call.agent_id},
        },
    }


def disconnected_event(call: SimulatedCall) -> dict[str, Any]:
    """EventBridge "Amazon Connect Contact Event" for the hang-up."""
    region = call.stream_arn.split(":")[3]
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Amazon Connect Contact Event",
        "source": "aws.connect",
        "account": ACCOUNT_ID,
        "region": region,
        "detail": {
            "eventType": "DISCONNECTED",
            "contactId": call.contact_id,
            "channel": "VOICE",
            "instanceArn": f"arn:aws:connect:{region}:{ACCOUNT_ID}:instance/{call.instance_id}",
            "initiationMethod": "INBOUND",
        },
    }


class ConnectCallSimulator:
    """Plays calls into the KVS media emulator and the Connect-side Lambda handlers."""

    def __init__(
        self,
        kvs_endpoint_url: str,
        contact_flow_handler: Callable[[dict[str, Any]], dict[str, str]],
        contact_event_handler: Callable[[dict[str, Any]], dict[str, str]],
        fragment_ms: int = 1000,
    ) -> None:
        self.kvs_endpoint_url = kvs_endpoint_url
        self.contact_flow_handler = contact_flow_handler
        self.contact_event_handler = contact_event_handler
        self.fragment_ms = fragment_ms

    def new_call(self, stream_arn: str, seconds: float, seed: int) -> SimulatedCall:
        call = SimulatedCall(
            contact_id=str(uuid.UUID(int=uuid.uuid4().int)),
            stream_arn=stream_arn,
            instance_id=EMULATED_INSTANCE_ID,
            seconds=seconds,
            seed=seed,
            attributes={"CustomerTier": "gold" if seed % 2 else "standard", "Language": "en-US"},
            agent_id=f"agent-{seed:04d}",
        )
        call.pcm = {track: synthesize_track(track, seconds, seed, SAMPLE_RATE) for track in Track}
        return call

    def play(self, call: SimulatedCall) -> SimulatedCall:
        """Runs the call in real time; returns it with each fragment's write time."""
        samples_per_fragment = SAMPLE_RATE * self.fragment_ms // 1000
        total = len(call.pcm[Track.CUSTOMER]) // 2
        started = time.time()
        start_ms = int(started * 1000)
        with httpx.Client(base_url=self.kvs_endpoint_url, timeout=10.0) as http:
            for index, first in enumerate(range(0, total, samples_per_fragment)):
                count = min(samples_per_fragment, total - first)
                # A fragment is written once its audio has happened.
                delay = started + (first + count) / SAMPLE_RATE - time.time()
                if delay > 0:
                    time.sleep(delay)
                fragment = write_connect_fragment(
                    contact_id=call.contact_id,
                    instance_id=call.instance_id,
                    timecode_ms=start_ms + first * 1000 // SAMPLE_RATE,
                    customer_pcm=call.pcm[Track.CUSTOMER][2 * first : 2 * (first + count)],
                    agent_pcm=call.pcm[Track.AGENT][2 * first : 2 * (first + count)],
                    sample_rate=SAMPLE_RATE,
                )
                response = http.post(
                    "/putMedia",
                    content=fragment,
                    headers={"x-amzn-stream-arn": call.stream_arn, "content-type": "application/octet-stream"},
                )
                response.raise_for_status()
                fragment_number = _persisted_fragment_number(response.text)
                call.fragments.append(FragmentWrite(first, count, time.time(), fragment_number))
                if index == 0:
                    call.flow_result = self.contact_flow_handler(
                        connect_flow_event(call, fragment_number, start_ms)
                    )
                    if call.flow_result.get("status") != "OK":
                        raise RuntimeError(f"contact flow Lambda refused the call: {call.flow_result}")
        self.contact_event_handler(disconnected_event(call))
        return call


def _persisted_fragment_number(ack_body: str) -> str:
    for line in ack_body.splitlines():
        if not line.strip():
            continue
        ack = json.loads(line)
        if ack.get("EventType") == "PERSISTED":
            return str(ack["FragmentNumber"])
    raise RuntimeError(f"KVS did not acknowledge the fragment: {ack_body[:200]!r}")
