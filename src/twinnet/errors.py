"""User-facing errors.

Anything the user can fix (a missing file, a bad column, a label that is not 0/1) raises
:class:`TwinnetError` with a one-line message that names the file, row and field. The CLI turns it
into that line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations


class TwinnetError(ValueError):
    """An error in the user's input or settings, explained in one line."""

    exit_code = 2

    def __init__(self, message: str, *, file: object | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.file, self.row, self.field = file, row, field
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class CalibrationError(TwinnetError):
    """Validation data cannot support the requested threshold or probability map."""
