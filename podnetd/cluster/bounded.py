"""Bounded bookkeeping for state that peers can make grow: an LRU map with a cap, and a logger
that says the same thing at most once a minute (a hostile peer retries every round)."""
import collections
import logging
import time


class LruDict(collections.OrderedDict):
    """A dict holding at most `cap` entries; put() returns what it evicted (least recently
    used first), so the caller can close it."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def touch(self, key):
        value = self[key]
        self.move_to_end(key)
        return value

    def put(self, key, value) -> list:
        self[key] = value
        self.move_to_end(key)
        evicted = []
        while len(self) > self.cap:
            evicted.append(self.popitem(last=False))
        return evicted


class RateLimitedLog:
    """log(level, key, msg, *args): emitted when `key` was not logged in the last `interval`
    seconds; the keys remembered are capped (the oldest forgotten first)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, cap: int = 1024,
                 clock=time.monotonic):
        self.logger, self.interval, self.clock = logger, interval, clock
        self.last = LruDict(cap)
        self.suppressed = 0

    def __call__(self, level: int, key, msg: str, *args) -> bool:
        now = self.clock()
        when = self.last.get(key)
        if when is not None and now - when < self.interval:
            self.suppressed += 1
            return False
        self.last.put(key, now)
        self.logger.log(level, msg, *args)
        return True
