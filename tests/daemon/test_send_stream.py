"""The file feed between the sCT writer and its senders: every reader gets every path once, in
the order written; ``batches`` hands over what has come since the last batch."""

from __future__ import annotations

import threading
from pathlib import Path

from bonect.daemon.send_stream import FileFeed

WAIT_S = 30.0  # only a failing test waits this long


def test_batches_take_what_has_come_since_the_last_and_skip_what_is_not_wanted() -> None:
    feed = FileFeed()
    paths = [Path(f"CT{n:06d}.dcm") for n in range(1, 7)]
    wanted = frozenset(paths) - {paths[2]}
    batches = feed.batches(wanted)
    feed.put(paths[0])
    assert next(batches) == [paths[0]]
    for path in paths[1:4]:
        feed.put(path)
    assert next(batches) == [paths[1], paths[3]]  # paths[2] is not this reader's
    feed.put(paths[2])  # only an unwanted path came: the reader waits for more
    feed.put(paths[4])
    feed.put(paths[5])
    feed.close()
    assert list(batches) == [[paths[4], paths[5]]]


def test_a_reader_waits_for_the_writer_and_ends_when_the_feed_is_closed() -> None:
    feed = FileFeed()
    got: list[list[Path]] = []
    reader = threading.Thread(target=lambda: got.extend(feed.batches(frozenset({Path("a")}))))
    reader.start()
    feed.put(Path("a"))
    feed.close()
    reader.join(WAIT_S)
    assert not reader.is_alive()
    assert got == [[Path("a")]]
    assert list(feed) == [Path("a")]  # a reader from the start still gets everything
