"""Running a few calls concurrently and getting a plain exception back.

trio nurseries wrap task failures in ExceptionGroups; the client's retry
decisions catch plain `RpcError`/`FsError`, so `run_all` re-raises the first
failure unwrapped after cancelling the other calls.

Invariants: at most `limit` thunks run at once; when `run_all` returns,
every thunk has finished; when it raises, every thunk has finished or was
cancelled, and the exception is the first one a thunk raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio


async def run_all(
    thunks: Sequence[Callable[[], Awaitable[None]]], limit: int, name: str = "task"
) -> None:
    if len(thunks) == 1:
        await thunks[0]()
        return
    errors: list[Exception] = []
    limiter = trio.CapacityLimiter(max(1, limit))

    async def one(thunk: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        async with limiter:
            try:
                await thunk()
            except Exception as exc:  # handed to the caller below, unwrapped
                errors.append(exc)
                scope.cancel()

    async with trio.open_nursery() as nursery:
        for k, thunk in enumerate(thunks):
            nursery.start_soon(one, thunk, nursery.cancel_scope, name=f"{name}-{k}")
    if errors:
        raise errors[0]
