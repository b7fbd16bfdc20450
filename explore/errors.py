"""The one error a query can end in: an HTTP status (always 4xx) and a message for the user."""

from __future__ import annotations


class QueryError(Exception):
    def __init__(self, status: int, message: str):
        assert 400 <= status < 500, status
        super().__init__(message)
        self.status, self.message = status, message
