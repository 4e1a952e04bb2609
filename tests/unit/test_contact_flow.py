"""``deploy/connect/contact-flow.json`` against the Amazon Connect Flow language.

The rules are the API reference's ("Amazon Connect Flow language"): ``Version``
2019-10-30, ``StartAction``, ``Actions`` with ``Identifier``/``Type``/``Parameters``/
``Transitions``; identifiers of at most 50 characters without ``% : ( \\ / ) = $ , ; [ ] { }``;
each action's parameters and error types as its own page lists them.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOW_PATH = ROOT / "deploy" / "connect" / "contact-flow.json"
LAMBDA_PLACEHOLDER = "${ContactFlowFunctionArn}"
QUEUE_PLACEHOLDER = "${QueueArn}"

#: Type → (parameters its page documents, error types it documents, terminal).
DOCUMENTED_ACTIONS = {
    "UpdateContactMediaStreamingBehavior": (
        {"MediaStreamingState", "Participants", "MediaStreamType"}, {"NoMatchingError"}, False,
    ),
    "UpdateContactTargetQueue": ({"QueueId", "AgentId"}, {"NoMatchingError"}, False),
    "InvokeLambdaFunction": (
        {"LambdaFunctionARN", "InvocationTimeLimitSeconds", "InvocationType", "LambdaInvocationAttributes",
         "ResponseValidation"},
        {"NoMatchingError"},
        False,
    ),
    "Compare": ({"ComparisonValue"}, {"NoMatchingCondition"}, False),
    "TagContact": ({"Tags"}, set(), False),
    "TransferContactToQueue": (set(), {"QueueAtCapacity", "NoMatchingError"}, False),
    "MessageParticipant": ({"Text", "PromptId", "SSML", "Media"}, {"NoMatchingError"}, False),
    "DisconnectParticipant": (set(), set(), True),
}
_FORBIDDEN_IN_IDENTIFIER = re.compile(r"[%:(\\/)=$,;\[\]{}]")


@pytest.fixture(scope="module")
def flow() -> dict:
    return json.loads(FLOW_PATH.read_text())


@pytest.fixture(scope="module")
def actions(flow) -> dict[str, dict]:
    return {action["Identifier"]: action for action in flow["Actions"]}


def targets(action: dict) -> list[str]:
    transitions = action["Transitions"]
    found = [transitions["NextAction"]] if "NextAction" in transitions else []
    found += [error["NextAction"] for error in transitions.get("Errors", [])]
    found += [condition["NextAction"] for condition in transitions.get("Conditions", [])]
    return found


def reachable(actions: dict[str, dict], start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for target in targets(actions[todo.popleft()]):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def of_type(actions: dict[str, dict], action_type: str) -> list[dict]:
    return [action for action in actions.values() if action["Type"] == action_type]


def test_the_flow_is_well_formed(flow, actions):
    assert flow["Version"] == "2019-10-30"
    assert set(flow) <= {"Version", "StartAction", "Metadata", "Actions"}
    assert len(actions) == len(flow["Actions"]), "identifiers must be unique"
    assert flow["StartAction"] in actions
    for identifier, action in actions.items():
        assert set(action) == {"Identifier", "Type", "Parameters", "Transitions"}, identifier
        assert 0 < len(identifier) <= 50 and not _FORBIDDEN_IN_IDENTIFIER.search(identifier), identifier
        for target in targets(action):
            assert target in actions, f"{identifier} goes to unknown action {target!r}"
    # The flow designer's layout names only existing actions.
    assert set(flow["Metadata"]["ActionMetadata"]) <= set(actions)


def test_every_action_is_reachable_from_the_start(flow, actions):
    assert reachable(actions, flow["StartAction"]) == set(actions)


def test_each_action_uses_only_its_documented_parameters_and_errors(actions):
    for identifier, action in actions.items():
        assert action["Type"] in DOCUMENTED_ACTIONS, f"{identifier}: undocumented type {action['Type']}"
        parameters, errors, terminal = DOCUMENTED_ACTIONS[action["Type"]]
        assert set(action["Parameters"]) <= parameters, identifier
        assert {error["ErrorType"] for error in action["Transitions"].get("Errors", [])} <= errors, identifier
        if terminal:
            assert action["Transitions"] == {}, f"{identifier} ends the flow: its Transitions must be empty"
        else:
            assert "NextAction" in action["Transitions"], identifier


def test_streaming_starts_first_with_what_the_customer_says_and_hears(flow, actions):
    first = actions[flow["StartAction"]]
    assert first["Type"] == "UpdateContactMediaStreamingBehavior"
    assert first["Parameters"] == {
        "MediaStreamingState": "Enabled",
        "MediaStreamType": "Audio",
        "Participants": [{"ParticipantType": "Customer", "MediaDirections": ["From", "To"]}],
    }


def test_the_lambda_is_invoked_synchronously_within_the_block_limit_for_a_string_map(flow, actions):
    (invoke,) = of_type(actions, "InvokeLambdaFunction")
    parameters = invoke["Parameters"]
    assert parameters["InvocationType"] == "SYNCHRONOUS"
    assert 1 <= int(parameters["InvocationTimeLimitSeconds"]) <= 8
    assert parameters["ResponseValidation"] == {"ResponseType": "STRING_MAP"}
    # Invoked after streaming started: the event then carries MediaStreams.
    assert invoke["Identifier"] in reachable(actions, actions[flow["StartAction"]]["Transitions"]["NextAction"])


def test_the_arns_are_placeholders_that_the_readme_says_how_to_replace(actions):
    (invoke,) = of_type(actions, "InvokeLambdaFunction")
    (set_queue,) = of_type(actions, "UpdateContactTargetQueue")
    assert invoke["Parameters"]["LambdaFunctionARN"] == LAMBDA_PLACEHOLDER
    assert set_queue["Parameters"]["QueueId"] == QUEUE_PLACEHOLDER
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying to AWS"):]
    assert LAMBDA_PLACEHOLDER in section and QUEUE_PLACEHOLDER in section


def test_the_flow_branches_on_the_handlers_status_and_queues_the_call_either_way(actions):
    (invoke,) = of_type(actions, "InvokeLambdaFunction")
    (compare,) = of_type(actions, "Compare")
    (transfer,) = of_type(actions, "TransferContactToQueue")
    assert invoke["Transitions"]["NextAction"] == compare["Identifier"]
    assert compare["Parameters"] == {"ComparisonValue": "$.External.status"}
    (ok,) = compare["Transitions"]["Conditions"]
    assert ok["Condition"] == {"Operator": "Equals", "Operands": ["OK"]}
    # OK, any other status (ERROR), and a failed invocation (timeout, throttling) all
    # reach the queue, without passing through a hang-up.
    outcomes = [ok["NextAction"], *targets(compare), *targets(invoke)]
    for start in outcomes:
        path = reachable(actions, start)
        assert transfer["Identifier"] in path, start
    disconnect = of_type(actions, "DisconnectParticipant")[0]["Identifier"]
    assert all(disconnect not in reachable_before(actions, start, transfer["Identifier"]) for start in outcomes)


def reachable_before(actions: dict[str, dict], start: str, stop: str) -> set[str]:
    """Actions reachable from ``start`` without going through ``stop``."""
    seen, todo = {start}, deque([start] if start != stop else [])
    while todo:
        for target in targets(actions[todo.popleft()]):
            if target not in seen and target != stop:
                seen.add(target)
                todo.append(target)
    return seen


def test_only_a_successful_hand_off_tags_the_contact_for_the_contact_events_rule(actions):
    (compare,) = of_type(actions, "Compare")
    (tag,) = of_type(actions, "TagContact")
    (ok,) = compare["Transitions"]["Conditions"]
    assert ok["NextAction"] == tag["Identifier"]
    assert tag["Parameters"]["Tags"] == {"cresta-audio": "streamed"}
    assert [a["Identifier"] for a in actions.values() if tag["Identifier"] in targets(a)] == [compare["Identifier"]]


def test_the_flow_stops_streaming_before_it_hangs_up(actions):
    (disconnect,) = of_type(actions, "DisconnectParticipant")
    callers = [action for action in actions.values() if disconnect["Identifier"] in targets(action)]
    assert callers
    for action in callers:
        assert action["Type"] == "UpdateContactMediaStreamingBehavior"
        assert action["Parameters"]["MediaStreamingState"] == "Disabled"
