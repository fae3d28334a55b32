"""Domain errors. The CLI alone turns them into one line and an exit code."""

from __future__ import annotations


class LoracheckError(Exception):
    """Base of every error loracheck raises on purpose."""


class UsageError(LoracheckError):
    """Bad flags, a path that does not exist, a bad loracheck setting: exit code 2."""


class ArtifactError(LoracheckError):
    """An input file that cannot be read as what it claims to be (diagnostic LC001 and kin).

    ``code`` is the diagnostic code the fault maps to (LC001 corrupt/unreadable, LC002 no LoRA
    content, LC003 Git LFS pointer, LC215 pickle checkpoint); ``location`` a key when known.
    """

    def __init__(
        self,
        path: str,
        detail: str,
        *,
        code: str = "LC001",
        line: int | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail
        self.code = code
        self.line = line
        self.location = location


class DeadlineExceeded(LoracheckError):
    """Reading one unit would run past its deadline (``--timeout``): the unit's LC001.

    Raised before a step whose cost is known up front (one layer's linear algebra, which no
    signal can interrupt) when that step alone would not fit in the time left.
    """
