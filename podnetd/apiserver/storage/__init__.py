"""Where cluster objects live: one key per object, a revision per change (see base.py)."""
from .base import (Conflict, KeyExists, KeyNotFound, ObjectStore, StoreError,  # noqa: F401
                   StoreUnavailable, TooOld, WatchEvent)
