"""Streaming reader for the records of a JSON array, without loading the whole file.

Annotation files are one big JSON document: `[{...}, {...}]` (LLaVA) or `{"annotations": [...]}`
(MiniGPT-4, Clotho-Detail, VGGSS) or `{"data": [...]}` (WavCaps). `iter_json_array` reads the file in
chunks and yields the array's elements one at a time together with their byte offset, so a reader can
later resume at any element (`start=(offset, index)`) by seeking, instead of re-parsing from the top.

Only the path to the array is parsed structurally; other top-level values are decoded and dropped.
A syntax error raises `JSONStreamError` with the element index, byte offset and (when known) line.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, BinaryIO, Iterator

CHUNK_BYTES = 1 << 20
MAX_VALUE_CHARS = 1 << 28  # one record larger than this is refused instead of read into memory
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_BOM = codecs.BOM_UTF8


class JSONStreamError(ValueError):
    """Malformed JSON; `index` is the array element being read (None before the array), `offset` a byte offset."""

    def __init__(self, message: str, index: int | None, offset: int, line: int | None):
        where = f"byte {offset}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{message} ({where})")
        self.reason = message
        self.index = index
        self.offset = offset
        self.line = line


class _Cursor:
    """A window of decoded text over a binary file, tracking the byte offset (and line) of `pos`."""

    def __init__(self, handle: BinaryIO, start_byte: int, track_lines: bool):
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.byte = start_byte
        self.line: int | None = 1 if track_lines else None
        self.eof = False

    def fill(self) -> bool:
        """Appends the next chunk; False at end of file."""
        if self.eof:
            return False
        data = self.handle.read(CHUNK_BYTES)
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise JSONStreamError(f"not UTF-8 text: {exc.reason}", None, self.byte, self.line) from None
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        if not data:
            self.eof = True
        return bool(data) or bool(text)

    def advance(self, end: int) -> None:
        segment = self.buf[self.pos : end]
        self.byte += len(segment.encode("utf-8"))
        if self.line is not None:
            self.line += segment.count("\n")
        self.pos = end

    def peek(self) -> str | None:
        """Skips whitespace; the next character, or None at end of file."""
        while True:
            self.advance(_WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def value(self, index: int | None) -> Any:
        """Decodes one JSON value at `pos`, reading more of the file while the value is incomplete."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Only an error at the end of the window (or an unterminated string) may be a value
                # cut by the chunk boundary; anything else is a real syntax error.
                incomplete = exc.pos >= len(self.buf) - 8 or exc.msg.startswith("Unterminated string")
                if incomplete and len(self.buf) - self.pos < MAX_VALUE_CHARS and self.fill():
                    continue
                offset = self.byte + len(self.buf[self.pos : exc.pos].encode("utf-8"))
                line = None if self.line is None else self.line + self.buf.count("\n", self.pos, exc.pos)
                raise JSONStreamError(f"invalid JSON: {exc.msg}", index, offset, line) from None
            if end == len(self.buf) and self.fill():
                continue  # a number may continue in the next chunk
            self.advance(end)
            return value

    def error(self, message: str, index: int | None) -> JSONStreamError:
        return JSONStreamError(message, index, self.byte, self.line)


def iter_json_array(
    handle: BinaryIO, key: str | None = None, start: tuple[int, int] | None = None
) -> Iterator[tuple[int, int, Any]]:
    """Yields (index, byte offset, value) for each element of the array.

    `key` None: the document is the array; otherwise the array is the top-level object's field `key`.
    `start` = (byte offset, index) of an element previously yielded: resume there (seeks the handle).
    """
    if start is not None:
        offset, index = start
        handle.seek(offset)
        cursor = _Cursor(handle, offset, track_lines=False)
    else:
        head = handle.read(len(_BOM))
        if head != _BOM:
            handle.seek(0)
        cursor = _Cursor(handle, handle.tell(), track_lines=True)
        index = 0
        _open_array(cursor, key)
        if cursor.peek() == "]":
            return
    while True:
        if cursor.peek() is None:
            raise cursor.error("unexpected end of file inside the array (missing ']')", index)
        offset = cursor.byte
        value = cursor.value(index)
        yield index, offset, value
        index += 1
        char = cursor.peek()
        if char == ",":
            cursor.advance(cursor.pos + 1)
            if cursor.peek() == "]":
                raise cursor.error("invalid JSON: trailing comma before ']'", index)
            continue
        if char == "]":
            return
        if char is None:
            raise cursor.error("unexpected end of file inside the array (missing ']')", index)
        raise cursor.error(f"invalid JSON: expected ',' or ']' after element {index - 1}, found {char!r}", index)


def _open_array(cursor: _Cursor, key: str | None) -> None:
    """Moves the cursor just inside the target array's '['."""
    char = cursor.peek()
    if key is None:
        if char != "[":
            raise cursor.error(f"expected the document to be a JSON array, found {_describe(char)}", None)
        cursor.advance(cursor.pos + 1)
        return
    if char != "{":
        raise cursor.error(f"expected a JSON object with a {key!r} list, found {_describe(char)}", None)
    cursor.advance(cursor.pos + 1)
    while True:
        char = cursor.peek()
        if char == "}" or char is None:
            raise cursor.error(f"missing field {key!r} (the list of records)", None)
        if char != '"':
            raise cursor.error(f"invalid JSON: expected a field name, found {_describe(char)}", None)
        name = cursor.value(None)
        if cursor.peek() != ":":
            raise cursor.error(f"invalid JSON: expected ':' after field {name!r}", None)
        cursor.advance(cursor.pos + 1)
        if name == key:
            char = cursor.peek()
            if char != "[":
                raise cursor.error(f"field {key!r} must be a list, found {_describe(char)}", None)
            cursor.advance(cursor.pos + 1)
            return
        cursor.value(None)  # another field: decode and drop
        char = cursor.peek()
        if char == ",":
            cursor.advance(cursor.pos + 1)
        elif char != "}":
            raise cursor.error(f"invalid JSON: expected ',' or '}}' after field {name!r}, found {_describe(char)}", None)


def _describe(char: str | None) -> str:
    if char is None:
        return "end of file"
    return {"{": "an object", "[": "a list", '"': "a string"}.get(char, repr(char))
