"""The one exception type users see: a one-line message that names the file and the problem."""

from __future__ import annotations

from pathlib import Path

from rs_seg.remote import display, redact_text


class RsSegError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    Bugs raise ordinary exceptions (and keep their traceback); anything the user can fix by changing
    an input, a flag or a file raises this, so the command line can print it and exit non-zero.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        text = " ".join(str(message).split())  # guarantee a single line
        where = f"{display(self.path)}: " if self.path is not None else ""
        super().__init__(redact_text(where + text))  # no URL's secrets in a message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every staging copy is removed on the way out."""
