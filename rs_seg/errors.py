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
        super().__init__(printable(redact_text(where + text)))  # no URL's secrets in a message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every staging copy is removed on the way out."""


def printable(text: str) -> str:
    r"""``text`` with the bytes of a file name that is not UTF-8 written as ``\xff`` escapes.

    Python keeps such bytes in a ``str`` as lone surrogates, which no UTF-8 stream, log file or
    JSON reader takes; escaped, a message naming the file prints in any locale.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_utf8_name(path: str | Path) -> None:
    """Refuse a file name that is not UTF-8 before any work, naming it in one line.

    GDAL, pyogrio and SQLite take names as UTF-8 text, so such a file can be neither read nor
    written by rs_seg; renaming it is the fix.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise RsSegError(
            "the name is not valid UTF-8 text, and GDAL opens and writes only UTF-8 names; "
            "rename the file or folder",
            path,
        ) from None
