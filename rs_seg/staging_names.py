"""Who made a staging name: host, PID namespace and process, so cleanup removes only its own.

A staging name is ``.<stem>.<tag>-<owner>-<pid>-<start>-<random><tail>``:

* ``owner``: 8 hex digits of the SHA-1 of the host name and this process's PID namespace
  (``/proc/self/ns/pid``). Two containers on one host may share a host name, but their process
  ids mean different processes; a name made in another namespace is foreign, never "dead".
* ``pid`` and ``start``: the process and its start time (clock ticks after boot, ``/proc``;
  0 where unknown). A live process with that pid but another start time reused the pid, so the
  run that made the name has ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path


def _pid_namespace() -> str:
    with contextlib.suppress(OSError):
        return str(Path("/proc/self/ns/pid").readlink())  # e.g. "pid:[4026531836]"
    return ""


OWNER_ID = hashlib.sha1(f"{socket.gethostname()}\0{_pid_namespace()}".encode()).hexdigest()[:8]

_STAGING = (
    r"(?P<tag>partial|replaced)-(?P<owner>[0-9a-f]{8})-(?P<pid>\d{1,10})-(?P<start>\d{1,20})"
    r"-(?P<random>[0-9a-f]{6})(?P<tail>.*)"
)
_ANY_STAGING = re.compile(rf"^\.(?P<stem>.+?)\.{_STAGING}$", re.DOTALL)
_JOURNAL = re.compile(
    r"^\.(?P<name>.+)\.publish-(?P<owner>[0-9a-f]{8})-(?P<pid>\d{1,10})-(?P<start>\d{1,20})\.json$",
    re.DOTALL,
)
# A staging name inside a message (a GDAL error names the file it failed on): shown as its final
_IN_TEXT = re.compile(
    r"\.(?P<stem>[^/\s'\"]+?)\.(?:partial|replaced)-[0-9a-f]{8}-\d+-\d+-[0-9a-f]{6}"
    r"(?P<tail>[^/\s'\":,;)]*)"
)


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc``); None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); the split starts at field 3
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs with ``pid`` (zombies count as gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False  # no process can have such a pid
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def owner_token() -> str:
    """``<owner>-<pid>-<start>`` of this process (read again after a fork: a new pid)."""
    return f"{OWNER_ID}-{os.getpid()}-{process_start(os.getpid()) or 0}"


def staging_name(final_name: str, tag: str = "partial") -> str:
    """The hidden staging name of ``final_name`` made by this process; keeps the suffix."""
    final = Path(final_name)
    return f".{final.stem}.{tag}-{owner_token()}-{uuid.uuid4().hex[:6]}{final.suffix}"


def journal_name(primary_name: str) -> str:
    """The name of this process's publication journal for the file set of ``primary_name``."""
    return f".{primary_name}.publish-{owner_token()}.json"


@dataclass(frozen=True)
class StagingName:
    """A parsed staging name: what it stages (stem, tail) and which process made it."""

    stem: str
    tag: str
    owner: str
    pid: int
    start: int
    tail: str

    @property
    def original(self) -> str:
        """The name of the output this stages (for ``.replaced-``: the output moved aside)."""
        return f"{self.stem}{self.tail}"

    def made_by(self, owner: str, pid: int, start: int) -> bool:
        """Whether this process made the name."""
        return (self.owner, self.pid, self.start) == (owner, pid, start)

    def of_dead_run(self) -> bool:
        """Made in this host's PID namespace by a process that has ended (see module doc)."""
        return self.owner == OWNER_ID and not running(self.pid, self.start)


def running(pid: int, start: int) -> bool:
    """Whether the process ``pid`` that started at ``start`` (0: unknown) still runs here."""
    if not process_alive(pid):
        return False
    now = process_start(pid)
    return not start or now is None or now == start


def parse_staging(name: str, stem: str | None = None) -> StagingName | None:
    """The parts of a staging name, or None; ``stem``: only a staging copy of that stem.

    Given the stem the name is read from its known prefix, so a stem that itself contains
    ``.partial-`` cannot be cut in the wrong place.
    """
    if stem is None:
        match = _ANY_STAGING.match(name)
    else:
        prefix = f".{stem}."
        match = re.fullmatch(_STAGING, name[len(prefix) :], re.DOTALL)
        match = match if name.startswith(prefix) else None
    if match is None:
        return None
    return StagingName(
        stem if stem is not None else match["stem"],
        match["tag"],
        match["owner"],
        int(match["pid"]),
        int(match["start"]),
        match["tail"],
    )


@dataclass(frozen=True)
class JournalName:
    """A parsed publication journal name (:func:`journal_name`)."""

    owner: str
    pid: int
    start: int

    def of_dead_run(self) -> bool:
        """Written in this host's PID namespace by a process that has ended."""
        return self.owner == OWNER_ID and not running(self.pid, self.start)


def parse_journal(name: str) -> JournalName | None:
    """The parts of a journal name, or None."""
    match = _JOURNAL.match(name)
    if match is None:
        return None
    return JournalName(match["owner"], int(match["pid"]), int(match["start"]))


def is_rs_seg_name(name: str) -> bool:
    """A staging, scratch or journal name of rs_seg."""
    return any(pattern.match(name) for pattern in (_ANY_STAGING, _JOURNAL))


def public_text(text: str) -> str:
    """``text`` with every staging name replaced by its final name, for messages to the user."""

    def final(match: re.Match[str]) -> str:
        tail = match["tail"]
        return f"{match['stem']}{tail[tail.rfind('.') :] if '.' in tail else ''}"

    return _IN_TEXT.sub(final, text)
