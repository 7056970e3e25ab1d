"""A request's body and its JSON document, parsed at most once.

The proxy reads three things in a JSON body: the model (routing), the OpenAI `user` field
(attribution) and whether a completion is streamed without usage (usage). Each used to parse the
body again. `RequestBody.document` parses it on first use, with orjson, or with Python's parser
for what orjson refuses and Python takes (NaN, lone surrogates, integers beyond 64 bits), as a
Python upstream would read it; what neither takes leaves `error` set and no document.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class RequestBody:
    __slots__ = ("_document", "_parsed", "error", "raw", "strict")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.error: str | None = None  # why the body is not JSON, once parsed
        self.strict = True  # orjson took it (False: only Python's parser did)
        self._document: Any = None
        self._parsed = False

    @property
    def document(self) -> Any:
        """The body parsed as JSON (any JSON value); None if it is not JSON."""
        if not self._parsed:
            self._parsed = True
            try:
                self._document = orjson.loads(self.raw)
            except orjson.JSONDecodeError:
                self.strict = False
                try:
                    self._document = json.loads(self.raw)
                except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                    self.error = str(exc)
        return self._document

    @property
    def members(self) -> dict[str, Any] | None:
        """The top-level members of a JSON object body; None for anything else."""
        document = self.document
        return document if isinstance(document, dict) else None
