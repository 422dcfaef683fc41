"""``PendingResult``: a write submitted to the store, whose commit can be awaited."""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = ["PendingResult"]

T_co = TypeVar("T_co", covariant=True)


class PendingResult(Protocol[T_co]):
    """A submitted write whose commit can be awaited."""

    async def wait(self) -> T_co:
        """Wait for the commit and return its result (or raise its error)."""
        ...

    @property
    def done(self) -> bool:
        """Whether the commit (or its failure) is known; ``result()`` may then be called."""
        ...

    def result(self) -> T_co:
        """The result of a write that is ``done`` (or raise its error), without waiting.

        Lets a consumer take a whole committed batch in one go instead of
        yielding to the scheduler once per write.

        Raises:
            RuntimeError: the write is not done yet.
        """
        ...
