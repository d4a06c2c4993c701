"""The one error the record's operations raise: an HTTP status and the words to show."""

from __future__ import annotations


class RecordError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
