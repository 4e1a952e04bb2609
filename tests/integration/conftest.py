from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulators.stack import LocalStack, StackSettings
from stack_contacts import FAST_STACK


@pytest.fixture
def make_stack() -> Iterator[Callable[..., LocalStack]]:
    stacks: list[LocalStack] = []

    def start(**settings: Any) -> LocalStack:
        stack = LocalStack(StackSettings(**{**FAST_STACK, **settings}))
        stacks.append(stack)
        stack.start()
        return stack

    yield start
    for stack in stacks:
        stack.stop()
