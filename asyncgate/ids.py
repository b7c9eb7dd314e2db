"""Job ids: UUID version 7 (RFC 9562), time-ordered, so that new jobs sit together at the end
of the primary key instead of all over it.

Every update of a job writes a new primary-key entry beside its id; with random ids those land
on random pages of an index as large as the table, with time-ordered ids on the few pages of
the recent jobs, whatever the table's size.
"""

from __future__ import annotations

import os
import time
import uuid


def new_job_id() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then 74 random bits.

    Ids made within one millisecond are not ordered among themselves (no counter): only their
    neighbourhood in the index matters, and their order is created_at's job, not the id's.
    """
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)
