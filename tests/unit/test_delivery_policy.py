"""The delivery policy driven step by step: examples of each rule, then a hypothesis state
machine that plays an arbitrary mix of submits, results, closes and time against it."""

import doctest
from collections import defaultdict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pipeline.delivery_policy
from pipeline.audit import DeliveryStatus
from pipeline.delivery_policy import (
    BreakerState,
    Close,
    DeliveryPolicy,
    Open,
    Outcome,
    PolicySettings,
    Release,
    Send,
    WakeAt,
)

SENT, FAILED, DROPPED, SKIPPED = (
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.DROPPED,
    DeliveryStatus.SKIPPED,
)


def policy_with(**overrides) -> DeliveryPolicy:
    return DeliveryPolicy(PolicySettings(**{"backoff_jitter": 0.0, **overrides}), random=lambda: 0.5)


def outcomes(actions) -> list[tuple[object, DeliveryStatus, int]]:
    return [(a.item, a.status, a.attempts) for a in actions if isinstance(a, Outcome)]


def io(actions) -> list:
    return [a for a in actions if isinstance(a, (Open, Send, Close))]


def test_docstring_examples_run():
    assert doctest.testmod(pipeline.delivery_policy).failed == 0


def test_chunks_of_a_contact_go_in_order_over_one_reused_stream():
    policy = policy_with()
    for n in range(3):
        policy.submit("c", f"chunk-{n}", 100, now_ms=0)
    assert policy.take_actions() == [Open("c", "chunk-0")]
    policy.opened("c", now_ms=1)
    actions = policy.take_actions()
    sent = []
    for n in range(3):
        assert io(actions) == [Send("c", f"chunk-{n}")]
        policy.sent("c", now_ms=2)
        actions = policy.take_actions()
        sent += outcomes(actions)
    assert sent == [(f"chunk-{n}", SENT, 1) for n in range(3)]
    policy.submit("c", "chunk-3", 100, now_ms=3)
    assert policy.take_actions() == [Send("c", "chunk-3")]


def test_contacts_do_not_wait_for_each_other():
    policy = policy_with()
    policy.submit("a", "a-0", 100, now_ms=0)
    policy.submit("b", "b-0", 100, now_ms=0)
    assert policy.take_actions() == [Open("a", "a-0"), Open("b", "b-0")]


def test_an_empty_chunk_is_skipped_at_once():
    policy = policy_with()
    policy.submit("c", "empty", 0, now_ms=0)
    assert policy.take_actions() == [Outcome("empty", SKIPPED, 0)]
    assert policy.contact_ids() == []


def test_the_buffer_holds_its_bound_then_drops_until_cresta_answers():
    policy = policy_with(buffer_ms=300)
    for n in range(3):
        policy.submit("c", n, 100, now_ms=0)
    policy.take_actions()
    policy.open_failed("c", now_ms=1)
    policy.take_actions()
    policy.submit("c", 3, 100, now_ms=2)
    assert outcomes(policy.take_actions()) == [(3, DROPPED, 0)]
    assert policy.is_dropping("c") and policy.buffered_ms("c") == 300
    policy.tick(now_ms=1000)
    assert io(policy.take_actions()) == [Open("c", 0)]
    # Still dropping while the reconnect is in flight, though nothing new has been sent.
    policy.submit("c", 4, 10, now_ms=1000)
    assert outcomes(policy.take_actions()) == [(4, DROPPED, 0)]
    policy.opened("c", now_ms=1001)
    assert not policy.is_dropping("c")
    assert policy.take_actions() == [Send("c", 0)]
    policy.sent("c", now_ms=1002)
    policy.submit("c", 5, 100, now_ms=1002)
    assert policy.buffered_ms("c") == 300
    assert [o[0] for o in outcomes(policy.take_actions())] == [0]


def test_an_empty_buffer_takes_a_chunk_longer_than_the_buffer():
    policy = policy_with(buffer_ms=100, burst_ms=100)
    policy.submit("c", "long", 1000, now_ms=0)
    assert policy.take_actions() == [Open("c", "long")]
    policy.submit("c", "next", 20, now_ms=0)
    assert outcomes(policy.take_actions()) == [("next", DROPPED, 0)]


def test_a_burst_goes_out_whole_while_cresta_answers():
    """A restored job submits seconds of backlog at once: more than the outage buffer,
    yet nothing has failed, so all of it is sent, in order."""
    policy = policy_with(buffer_ms=300, burst_ms=1000)
    for n in range(10):
        policy.submit("c", n, 100, now_ms=n)
    assert outcomes(policy.take_actions()) == []
    policy.opened("c", now_ms=20)
    sent = []
    for _ in range(10):
        policy.sent("c", now_ms=21)
        sent += outcomes(policy.take_actions())
    assert sent == [(n, SENT, 1) for n in range(10)]


def test_the_burst_bound_caps_what_a_contact_holds_while_cresta_answers():
    policy = policy_with(buffer_ms=300, burst_ms=1000)
    for n in range(11):
        policy.submit("c", n, 100, now_ms=0)
    assert outcomes(policy.take_actions()) == [(10, DROPPED, 0)]
    assert policy.is_dropping("c") and policy.buffered_ms("c") == 1000


def test_an_operation_held_up_past_the_stall_time_brings_the_outage_buffer_back():
    policy = policy_with(buffer_ms=300, burst_ms=1000, stall_ms=500)
    for n in range(3):
        policy.submit("c", n, 100, now_ms=0)
    assert policy.take_actions() == [Open("c", 0)]
    policy.submit("c", 3, 100, now_ms=499)
    assert outcomes(policy.take_actions()) == []
    policy.submit("c", 4, 100, now_ms=500)
    assert outcomes(policy.take_actions()) == [(4, DROPPED, 0)]


def test_a_failure_keeps_a_burst_already_queued_and_drops_what_comes_after():
    policy = policy_with(buffer_ms=300, burst_ms=1000, backoff_base_ms=10)
    for n in range(6):
        policy.submit("c", n, 100, now_ms=0)
    policy.take_actions()
    policy.open_failed("c", now_ms=1)
    policy.submit("c", 6, 100, now_ms=2)
    assert outcomes(policy.take_actions()) == [(6, DROPPED, 0)]
    assert policy.buffered_ms("c") == 600
    policy.tick(now_ms=20)
    assert io(policy.take_actions()) == [Open("c", 0)]
    policy.opened("c", now_ms=21)
    sent = []
    for _ in range(6):
        policy.sent("c", now_ms=22)
        sent += outcomes(policy.take_actions())
    assert [item for item, status, _ in sent if status is SENT] == list(range(6))


def test_an_open_breaker_brings_the_outage_buffer_back_for_every_contact():
    policy = policy_with(buffer_ms=200, burst_ms=1000, breaker_threshold=1, backoff_base_ms=10)
    policy.submit("a", "a-0", 100, now_ms=0)
    policy.take_actions()
    policy.open_failed("a", now_ms=1)
    for n in range(3):
        policy.submit("b", f"b-{n}", 100, now_ms=2)
    assert outcomes(policy.take_actions()) == [("b-2", DROPPED, 0)]


def test_a_failed_open_backs_off_exponentially_up_to_the_cap():
    policy = policy_with(backoff_base_ms=100, backoff_max_ms=350, breaker_threshold=100)
    policy.submit("c", "x", 100, now_ms=0)
    policy.take_actions()
    now, waits = 0, []
    for _ in range(4):
        policy.open_failed("c", now_ms=now)
        (wake,) = [a for a in policy.take_actions() if isinstance(a, WakeAt)]
        waits.append(wake.at_ms - now)
        policy.tick(wake.at_ms - 1)
        assert policy.take_actions() == []
        now = wake.at_ms
        policy.tick(now)
        assert policy.take_actions() == [Open("c", "x")]
    assert waits == [100, 200, 350, 350]


def test_jitter_shortens_the_backoff_by_a_random_part():
    policy = DeliveryPolicy(
        PolicySettings(backoff_base_ms=1000, backoff_jitter=0.5), random=lambda: 0.5
    )
    policy.submit("c", "x", 100, now_ms=0)
    policy.take_actions()
    policy.open_failed("c", now_ms=0)
    assert WakeAt(750) in policy.take_actions()


def test_a_chunk_that_breaks_every_stream_fails_after_max_attempts():
    policy = policy_with(max_attempts=2, breaker_threshold=100)
    policy.submit("c", "poison", 100, now_ms=0)
    policy.submit("c", "next", 100, now_ms=0)
    now = 0
    results = []
    for _ in range(2):
        policy.take_actions()
        policy.opened("c", now_ms=now)
        assert policy.take_actions() == [Send("c", "poison")]
        policy.send_failed("c", now_ms=now)
        results += outcomes(policy.take_actions())
        now += 10_000
        policy.tick(now)
    assert results == [("poison", FAILED, 2)]
    assert policy.take_actions() == [Open("c", "next")]


def test_the_breaker_opens_after_consecutive_failures_and_lets_one_probe_through():
    policy = policy_with(breaker_threshold=2, breaker_cooldown_ms=1000, backoff_base_ms=10)
    for contact in "abc":
        policy.submit(contact, f"{contact}-0", 100, now_ms=0)
    assert len(io(policy.take_actions())) == 3
    policy.open_failed("a", now_ms=1)
    policy.open_failed("b", now_ms=1)
    assert policy.breaker.state is BreakerState.OPEN
    assert WakeAt(1001) in policy.take_actions()
    policy.opened("c", now_ms=2)  # started before the breaker opened; Cresta answered
    assert policy.breaker.state is BreakerState.CLOSED
    assert io(policy.take_actions()) == [Send("c", "c-0")]


def test_nothing_is_opened_or_sent_while_the_breaker_is_open():
    policy = policy_with(breaker_threshold=1, breaker_cooldown_ms=1000, backoff_base_ms=10)
    policy.submit("a", "a-0", 100, now_ms=0)
    policy.take_actions()
    policy.open_failed("a", now_ms=0)
    policy.take_actions()
    policy.submit("b", "b-0", 100, now_ms=5)
    policy.tick(now_ms=500)
    assert io(policy.take_actions()) == []
    policy.tick(now_ms=1000)
    (probe,) = io(policy.take_actions())
    assert policy.breaker.state is BreakerState.HALF_OPEN
    policy.tick(now_ms=1001)
    assert io(policy.take_actions()) == []
    policy.open_failed(probe.contact_id, now_ms=1002)
    assert policy.breaker.state is BreakerState.OPEN
    assert WakeAt(2002) in policy.take_actions()
    policy.tick(now_ms=2002)
    (probe,) = io(policy.take_actions())
    policy.opened(probe.contact_id, now_ms=2003)
    assert policy.breaker.state is BreakerState.CLOSED
    assert {type(a) for a in io(policy.take_actions())} == {Send, Open}


def test_close_waits_for_queued_chunks_then_ends_the_stream_and_releases_the_contact():
    policy = policy_with()
    policy.submit("c", "x", 100, now_ms=0)
    policy.take_actions()
    policy.opened("c", now_ms=0)
    policy.take_actions()
    policy.close_contact("c", now_ms=0)
    assert io(policy.take_actions()) == []
    policy.sent("c", now_ms=1)
    assert io(policy.take_actions()) == [Close("c")]
    policy.closed("c", now_ms=2)
    assert policy.take_actions() == [Release("c")]
    assert policy.contact_ids() == []


def test_chunks_still_waiting_when_the_close_grace_ends_are_failed():
    policy = policy_with(close_grace_ms=500, backoff_base_ms=10_000, backoff_max_ms=10_000, breaker_threshold=100)
    for n in range(3):
        policy.submit("c", n, 100, now_ms=0)
    policy.take_actions()
    policy.opened("c", now_ms=0)
    policy.take_actions()
    policy.send_failed("c", now_ms=0)
    policy.take_actions()
    policy.close_contact("c", now_ms=0)
    assert WakeAt(500) in policy.take_actions()
    policy.tick(now_ms=500)
    assert policy.take_actions() == [
        Outcome(0, FAILED, 1),
        Outcome(1, FAILED, 0),
        Outcome(2, FAILED, 0),
        Release("c"),
    ]


def test_the_chunk_in_flight_when_the_grace_ends_finishes_first():
    policy = policy_with()
    policy.submit("c", "in-flight", 100, now_ms=0)
    policy.submit("c", "waiting", 100, now_ms=0)
    policy.take_actions()
    policy.opened("c", now_ms=0)
    policy.take_actions()
    policy.close_contact("c", now_ms=0, grace_ms=0)
    assert outcomes(policy.take_actions()) == [("waiting", FAILED, 0)]
    policy.sent("c", now_ms=1)
    assert policy.take_actions() == [Outcome("in-flight", SENT, 1), Close("c")]


def test_a_chunk_after_a_close_goes_on_a_new_stream():
    policy = policy_with()
    policy.submit("c", "first", 100, now_ms=0)
    policy.take_actions()
    policy.opened("c", now_ms=0)
    policy.take_actions()
    policy.sent("c", now_ms=0)
    policy.take_actions()
    policy.close_contact("c", now_ms=0)
    policy.submit("c", "late", 100, now_ms=0)
    assert io(policy.take_actions()) == [Close("c")]
    policy.closed("c", now_ms=1)
    assert policy.take_actions() == [Open("c", "late")]


def test_abandon_fails_everything_and_ignores_late_results():
    policy = policy_with()
    policy.submit("c", "in-flight", 100, now_ms=0)
    policy.submit("c", "waiting", 100, now_ms=0)
    policy.take_actions()
    policy.abandon()
    assert policy.take_actions() == [
        Outcome("in-flight", FAILED, 0),
        Outcome("waiting", FAILED, 0),
        Release("c"),
    ]
    policy.opened("c", now_ms=1)
    assert policy.take_actions() == []


def test_a_result_for_an_operation_not_in_flight_is_a_bug():
    policy = policy_with()
    policy.submit("c", "x", 100, now_ms=0)
    with pytest.raises(RuntimeError, match="send result while"):
        policy.sent("c", now_ms=0)


@pytest.mark.parametrize(
    "overrides",
    [{"buffer_ms": -1}, {"max_attempts": 0}, {"backoff_max_ms": 1, "backoff_base_ms": 2}, {"backoff_jitter": 2.0}],
)
def test_invalid_settings_are_refused(overrides):
    with pytest.raises(ValueError, match="invalid delivery policy settings"):
        PolicySettings(**overrides)


# --- properties ---------------------------------------------------------------------------

CONTACTS = ("a", "b", "c")
BUFFER_MS = 400
BURST_MS = 900
STALL_MS = 300


class PolicyMachine(RuleBasedStateMachine):
    """A driver that performs the policy's I/O actions in any order with any result, and
    checks after every step what the policy promises."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = DeliveryPolicy(
            PolicySettings(
                buffer_ms=BUFFER_MS,
                burst_ms=BURST_MS,
                stall_ms=STALL_MS,
                max_attempts=2,
                backoff_base_ms=50,
                backoff_max_ms=400,
                breaker_threshold=3,
                breaker_cooldown_ms=300,
                close_grace_ms=200,
            ),
            random=lambda: 0.3,
        )
        self.now = 0
        self.next_item = 0
        self.submitted: dict[str, list[int]] = defaultdict(list)
        self.results: dict[int, list[DeliveryStatus]] = defaultdict(list)
        self.sent_order: dict[str, list[int]] = defaultdict(list)
        self.in_flight: dict[str, Open | Send | Close] = {}
        self.stream_open: dict[str, bool] = defaultdict(bool)
        self.wakes: list[int] = []
        # The model of "Cresta answers this contact": no failure since its last success,
        # and when its operation started.
        self.failing: dict[str, bool] = defaultdict(bool)
        self.started_at: dict[str, int] = {}

    def absorb(self) -> None:
        for action in self.policy.take_actions():
            if isinstance(action, (Open, Send, Close)):
                assert action.contact_id not in self.in_flight, "two operations at once on a contact"
                if isinstance(action, (Open, Send)):
                    assert self.policy.breaker.state is not BreakerState.OPEN
                if isinstance(action, Send):
                    assert self.stream_open[action.contact_id]
                    unsettled = [i for i in self.submitted[action.contact_id] if not self.results[i]]
                    assert action.item == unsettled[0], "a send that is not the contact's oldest chunk"
                if isinstance(action, Close):
                    assert self.stream_open[action.contact_id]
                self.in_flight[action.contact_id] = action
                self.started_at[action.contact_id] = self.now
            elif isinstance(action, Outcome):
                self.results[action.item].append(action.status)
                if action.status is SENT:
                    assert self.policy.breaker.state is BreakerState.CLOSED
                    self.sent_order[self.contact_of(action.item)].append(action.item)
            elif isinstance(action, WakeAt):
                self.wakes.append(action.at_ms)
            elif isinstance(action, Release):
                assert not self.stream_open[action.contact_id]
                assert action.contact_id not in self.in_flight
                self.failing[action.contact_id] = False  # a forgotten contact starts afresh

    def contact_of(self, item: int) -> str:
        return next(c for c, items in self.submitted.items() if item in items)

    @rule(contact=st.sampled_from(CONTACTS), duration=st.sampled_from([0, 20, 100, 250]))
    def submit(self, contact, duration):
        item = self.next_item
        self.next_item += 1
        self.submitted[contact].append(item)
        held_up = contact in self.in_flight and self.now - self.started_at[contact] >= STALL_MS
        answering = not self.failing[contact] and self.policy.breaker.state is BreakerState.CLOSED and not held_up
        buffered_before = self.policy.buffered_ms(contact)
        self.policy.submit(contact, item, duration, self.now)
        self.absorb()
        accepted = not self.results[item] or self.results[item] != [DROPPED]
        bound = BURST_MS if answering else BUFFER_MS
        if accepted and buffered_before and duration:
            assert buffered_before + duration <= bound, "a chunk past the bound was queued"

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), ok=st.booleans())
    def complete(self, data, ok):
        contact = data.draw(st.sampled_from(sorted(self.in_flight)))
        action = self.in_flight.pop(contact)
        if isinstance(action, Open):
            self.stream_open[contact] = ok
            self.failing[contact] = not ok
            (self.policy.opened if ok else self.policy.open_failed)(contact, self.now)
        elif isinstance(action, Send):
            self.stream_open[contact] = ok
            self.failing[contact] = not ok
            (self.policy.sent if ok else self.policy.send_failed)(contact, self.now)
        else:
            self.stream_open[contact] = False
            self.policy.closed(contact, self.now)
        self.absorb()

    @rule(contact=st.sampled_from(CONTACTS), grace=st.sampled_from([None, 0, 50]))
    def close_contact(self, contact, grace):
        self.policy.close_contact(contact, self.now, grace)
        self.absorb()

    @rule(step=st.integers(1, 500))
    def time_passes(self, step):
        self.now += step
        if any(at <= self.now for at in self.wakes):
            self.wakes = [at for at in self.wakes if at > self.now]
            self.policy.tick(self.now)
            self.absorb()

    @invariant()
    def at_most_one_receipt_per_chunk(self):
        assert all(len(statuses) <= 1 for statuses in self.results.values())

    @invariant()
    def the_buffer_bound_holds(self):
        for contact in CONTACTS:
            assert self.policy.buffered_ms(contact) <= BURST_MS or self.policy.buffered_chunks(contact) == 1

    @invariant()
    def sent_chunks_keep_their_contact_s_order(self):
        for contact, sent in self.sent_order.items():
            assert sent == sorted(sent)

    def teardown(self):
        """Close everything and let Cresta answer: every chunk ends with exactly one receipt."""
        self.policy.close_all(self.now)
        self.absorb()
        for _ in range(10_000):
            if not self.policy.contact_ids():
                break
            if self.in_flight:
                contact, action = next(iter(self.in_flight.items()))
                del self.in_flight[contact]
                if isinstance(action, Open):
                    self.stream_open[contact] = True
                    self.policy.opened(contact, self.now)
                elif isinstance(action, Send):
                    self.policy.sent(contact, self.now)
                else:
                    self.stream_open[contact] = False
                    self.policy.closed(contact, self.now)
            else:
                self.now = max(self.wakes + [self.now + 1])
                self.wakes.clear()
                self.policy.tick(self.now)
            self.absorb()
        assert self.policy.contact_ids() == []
        every_item = [i for items in self.submitted.values() for i in items]
        assert all(len(self.results[i]) == 1 for i in every_item), dict(self.results)


TestPolicyProperties = PolicyMachine.TestCase
TestPolicyProperties.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
