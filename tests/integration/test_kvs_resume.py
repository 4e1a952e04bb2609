"""Connector workers that crash, stop and fail, on the local stack over real HTTP: moto
(SQS with its dead-letter queue, DynamoDB checkpoints, Kinesis, the KVS control plane)
and the KVS media emulator. Every test reads the audio-frames stream back and checks
that each frame is there exactly once, in order per track, and that the END record's
totals cover the whole contact. (Reconnections that users of other consumers complain
about are in ``test_connect_complaints.py``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from connectors.kvs.worker import ReadSettings
from pipeline.records import AudioFrame, ContactWork
from stack_contacts import (
    CONTACT,
    MISSING_STREAM_ARN,
    OTHER_CONTACT,
    WAIT_S,
    Contact,
    RecordingMediaSource,
    assert_exactly_once,
    assert_queues_empty,
    checkpoint_reaches,
    checkpoints,
    read_records,
    running_worker,
    token_selector,
    wait_until,
    write_live,
)


def test_a_new_worker_resumes_a_killed_workers_contact_exactly_once(make_stack, tmp_path):
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 4)
    contact.queue(stack)
    log_path = tmp_path / "killed-worker.log"
    with log_path.open("w") as log_file:
        killed = subprocess.Popen(
            [sys.executable, "-c", "import sys; from connectors.kvs.worker import main; sys.exit(main())",
             "--frames-stream", stack.settings.audio_frames_stream,
             "--kvs-media-endpoint", stack.kvs.endpoint_url,
             "--checkpoint-interval-s", "0", "--max-idle-s", "60", "--visibility-timeout-s", "2"],
            env={**os.environ, **stack.aws_environment()}, stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            # Mid-contact: everything written so far is read and checkpointed, the
            # contact is live (its GetMedia connection open), and the worker dies.
            wait_until(checkpoint_reaches(stack, contact, 3), "the first worker's checkpoint")
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(WAIT_S)
    contact.put(stack, 3)

    source = RecordingMediaSource(stack)
    with running_worker(stack, source, ReadSettings(max_idle_s=0.5), visibility_timeout_s=2) as worker:
        records = read_records(stack, {CONTACT})
    assert_exactly_once(records, contact)
    assert source.selectors[0] == token_selector(contact.numbers[3])
    assert worker.frames_published == sum(
        isinstance(r, AudioFrame) and int(r.fragment_number) > int(contact.numbers[3]) for r in records
    )
    final = checkpoints(stack).get(CONTACT)
    assert final.completed and final.end_reason == "stream_ended"
    assert_queues_empty(stack)


def test_a_stopped_worker_hands_its_contact_over_mid_stream_without_gap_or_duplicate(make_stack):
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    writing_done = threading.Event()
    writer = threading.Thread(target=write_live, args=(stack, contact, writing_done))
    settings = ReadSettings(max_idle_s=0.5, checkpoint_interval_s=0)

    first_source = RecordingMediaSource(stack)
    writer.start()
    try:
        with running_worker(stack, first_source, settings) as first:
            wait_until(lambda: len(contact.numbers) > 4 and checkpoint_reaches(stack, contact, 3)(), "progress")
        handed_over_at = checkpoints(stack).get(CONTACT)
        second_source = RecordingMediaSource(stack)
        with running_worker(stack, second_source, settings) as second:
            wait_until(lambda: second_source.selectors, "the second worker to take the contact")
            writing_done.set()
            writer.join(WAIT_S)
            records = read_records(stack, {CONTACT})
    finally:
        writing_done.set()
    assert first.contacts_handed_back == 1 and first.contacts_done == 0
    assert second_source.selectors[0] == token_selector(handed_over_at.continuation_token)
    assert second.contacts_done == 1
    assert_exactly_once(records, contact)
    assert_queues_empty(stack)


def test_a_contact_that_keeps_failing_goes_to_the_dead_letter_queue(make_stack):
    # KVS refuses every connection (all of the stream's GetMedia slots are taken).
    stack = make_stack(kvs_max_connections_per_stream=0)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    sqs = stack.client("sqs")
    source = RecordingMediaSource(stack)
    settings = ReadSettings(retry_initial_s=0.01, retry_max_s=0.01, max_failed_connects=1)
    with running_worker(stack, source, settings, retry_delay_s=0) as worker:
        dead = wait_until(
            lambda: sqs.receive_message(QueueUrl=stack.dead_letter_queue_url, WaitTimeSeconds=1).get("Messages"),
            "the work item in the dead-letter queue",
        )
    assert ContactWork.decode(dead[0]["Body"]).contact_id == CONTACT
    assert worker.contacts_handed_back == stack.settings.max_receive_count
    assert len(source.selectors) == 2 * stack.settings.max_receive_count
    attributes = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    kinesis = stack.client("kinesis")
    name = stack.settings.audio_frames_stream
    shard = kinesis.describe_stream(StreamName=name)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    assert kinesis.get_records(ShardIterator=iterator)["Records"] == []


def test_a_missing_stream_fails_its_contact_alone(make_stack):
    stack = make_stack()
    missing = Contact(OTHER_CONTACT, MISSING_STREAM_ARN)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 3)
    missing.queue(stack)
    contact.queue(stack)
    with running_worker(stack, RecordingMediaSource(stack), ReadSettings(max_idle_s=0.5)) as worker:
        records = read_records(stack, {CONTACT, OTHER_CONTACT})
    assert_exactly_once(records, contact)
    assert_exactly_once(records, missing, reason="stream_not_found")
    assert checkpoints(stack).get(OTHER_CONTACT).end_reason == "stream_not_found"
    assert worker.contacts_done == 2
    assert_queues_empty(stack)
