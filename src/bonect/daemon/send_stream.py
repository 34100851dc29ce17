"""Sending an sCT while it is written: the writer hands each file on, a thread per destination
sends it at once.

The writer :meth:`~FileFeed.put`\\ s each path into a :class:`FileFeed` once the file is whole
under its final name, and :meth:`~FileFeed.close`\\ s the feed when it is done (or fails);
:class:`SenderThreads` runs one sender per destination over the feed, each taking only the
paths still pending for it, at its own pace. The catalog stays the record: the sends were
planned before the first file was written, and each answer is recorded as it arrives, so a
crash at any point resumes with exactly the instances not yet stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


class FileFeed:
    """Paths in the order they were written, read by any number of readers, each from the
    start and at its own pace; a reader waits for the next path until the feed is closed."""

    def __init__(self) -> None:
        self._paths: list[Path] = []
        self._closed = False
        self._changed = threading.Condition()

    def put(self, path: Path) -> None:
        """One more file, whole under its final name."""
        with self._changed:
            if self._closed:
                raise ValueError("the feed is closed")
            self._paths.append(path)
            self._changed.notify_all()

    def close(self) -> None:
        """No more files: the readers end once they have taken what was put."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __iter__(self) -> Iterator[Path]:
        taken = 0
        while True:
            with self._changed:
                self._changed.wait_for(partial(self._ready, taken))
                if taken == len(self._paths):
                    return
                path = self._paths[taken]
            taken += 1
            yield path

    def _ready(self, taken: int) -> bool:
        return taken < len(self._paths) or self._closed

    def only(self, wanted: frozenset[Path]) -> Iterator[Path]:
        """The paths of the feed that are in ``wanted``, as they come."""
        return (path for path in self if path in wanted)

    def batches(self, wanted: frozenset[Path]) -> Iterator[list[Path]]:
        """The paths of the feed that are in ``wanted``, each time as many as have come since
        the last batch was taken (at least one), until the feed is closed."""
        taken = 0
        while True:
            with self._changed:
                self._changed.wait_for(partial(self._ready, taken))
                new, taken = self._paths[taken:], len(self._paths)
            if not new:
                return
            if batch := [path for path in new if path in wanted]:
                yield batch


class SenderThreads(Generic[Result]):
    """One thread per destination, each running its send function over a feed.

    ``senders`` maps a destination name to the function that sends an iterable of paths there
    and returns its report. :meth:`join` waits for all of them.
    """

    def __init__(self, feed: FileFeed, senders: Mapping[str, Callable[[FileFeed], Result]]) -> None:
        self._results: dict[str, Result] = {}
        self._errors: dict[str, BaseException] = {}
        self._threads = [
            threading.Thread(
                target=self._run, args=(name, send, feed), name=f"send-{name}", daemon=True
            )
            for name, send in senders.items()
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, send: Callable[[FileFeed], Result], feed: FileFeed) -> None:
        try:
            self._results[name] = send(feed)
        except BaseException as exc:  # raised again in the joining thread
            self._errors[name] = exc

    def wait(self) -> None:
        """Wait for every sender, their errors logged (when the writer itself failed)."""
        for thread in self._threads:
            thread.join()
        for name, error in self._errors.items():
            logger.warning("sending to %s failed: %r", name, error)

    def join(self) -> dict[str, Result]:
        """Wait for every sender; their reports by destination. The first sender's error is
        raised (after all have ended), the others are logged."""
        for thread in self._threads:
            thread.join()
        if not self._errors:
            return dict(self._results)
        (first, error), *others = self._errors.items()
        for name, other in others:
            logger.warning("sending to %s failed too: %r", name, other)
        logger.debug("sending to %s failed", first)
        raise error
