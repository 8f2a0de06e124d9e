"""The one place background tasks are started: named, and strongly referenced until done."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    # asyncio keeps only a weak reference to tasks; an unreferenced one can vanish mid-flight.
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - this is the wrapper
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
