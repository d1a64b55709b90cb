"""CSV structure checked independently of the CSV parser: row accounting and recovery.

`count_records` reads the raw bytes (vectorised, block by block) and counts RFC 4180
records: newlines outside quotes end a record. It also says whether every record is
well formed — quotes only around whole fields, every record with the header's number of
fields, no bare carriage returns — in which case polars reads the file exactly as
counted, and the reader proves it by comparing the two counts.

A file that is not well formed is read by `recover`, an RFC 4180 tokenizer that works
line by line: a record that does not parse (a misplaced or unbalanced quote, a field
too many or too few) is set aside with its line number and raw text, and the reader
goes on at the next line. Blank lines are records of empty cells, as polars reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

BLOCK_BYTES = 16 << 20


@dataclass
class RecordCount:
    records: int  # data records after the header
    clean: bool  # well formed throughout: the fast parser reads exactly these records
    header_fields: int


def count_records(path: Path, block_bytes: int = BLOCK_BYTES) -> RecordCount:
    """Count the data records of a CSV file from its bytes; see the module notes.

    The file is read in chunks that end at a record's newline (one outside quotes, found
    by counting the quotes before it), so every chunk starts outside quotes. Records are
    newlines outside quotes; "clean" also needs a one-line header, no bare carriage
    return, no blank line, every quote closed, and as many field separators outside
    quotes as the records times the header's. A parser that reads a clean file without
    an error and reports as many records has read every record whole; where it does
    not, the reader falls back to `recover`.
    """
    newlines = commas = 0
    clean = True
    width = None
    ends_with_newline = True
    with open(path, "rb") as fh:
        text = b""
        while True:
            block = fh.read(block_bytes)
            eof = not block
            text += block
            if eof:
                chunk, text = text, b""
            else:
                cut = _record_end(text)
                if cut is None:
                    continue  # one record longer than a block: read on
                chunk, text = text[:cut], text[cut:]
            if not chunk:
                break
            if width is None:
                header = _RECORD.match(chunk)
                width = len(_cells(header.group(0))) if header else 0
                # a header of one line: a quote there must not swallow the records below
                clean &= header is not None and _lines_in(header.group(0).rstrip(b"\r\n")) == 0
                clean &= not chunk.startswith((b"\n", b"\r"))
            if b"\r" not in chunk and b"\n\n" not in chunk:
                # no carriage return, no blank line anywhere: only the count is left
                n, c, balanced = _count_outside_quotes(chunk)
                newlines += n
                commas += c
                clean &= balanced
            else:
                pieces = chunk.split(b'"')
                if len(pieces) % 2 == 0:
                    clean = False  # a quote opened and never closed
                outside = b"\x00".join(pieces[0::2])  # the text outside quoted fields
                newlines += outside.count(b"\n")
                commas += outside.count(b",")
                if b"\r" in outside and outside.count(b"\r") != outside.count(b"\r\n"):
                    clean = False  # a bare carriage return ends a line for some readers only
                if b"\n\n" in outside or b"\n\r\n" in outside:
                    clean = False  # blank lines: the careful reader says what they hold
            ends_with_newline = chunk.endswith(b"\n")
            if eof:
                break
    records = newlines + (0 if ends_with_newline else 1)
    width = width or 0
    clean = clean and commas == records * (width - 1)
    return RecordCount(max(records - 1, 0), clean, width)


# every byte but the quote, the newline and the comma: deleted before counting
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"\n,')


def _count_outside_quotes(chunk: bytes) -> tuple[int, int, bool]:
    """(newlines, commas) outside quoted fields of ``chunk`` (which starts outside
    quotes), and whether every quote is closed. A byte is outside when an even number
    of quotes precede it; only the quotes, newlines and commas are kept to count
    (most of a record is text between them)."""
    import numpy as np

    marks = np.frombuffer(chunk.translate(None, _NOT_STRUCTURE), dtype=np.uint8)
    quotes = marks == ord('"')
    outside = (np.cumsum(quotes, dtype=np.int64) & 1) == 0
    return (int(np.count_nonzero(outside & (marks == ord("\n")))),
            int(np.count_nonzero(outside & (marks == ord(",")))),
            int(np.count_nonzero(quotes)) % 2 == 0)


def _record_end(text: bytes) -> int | None:
    """Just after the last newline of ``text`` that is outside quotes (``text`` starts
    outside quotes), or None."""
    cut = len(text)
    while True:
        cut = text.rfind(b"\n", 0, cut)
        if cut < 0:
            return None
        if text.count(b'"', 0, cut) % 2 == 0:
            return cut + 1


# ----------------------------------------------------------------------------- recovery

_FIELD = rb'(?:"(?:[^"]|"")*+"|[^",\r\n]*+)'
_RECORD = re.compile(_FIELD + rb"(?:," + _FIELD + rb")*+(?:\r\n|\n|\r|\Z)")
_ONE_FIELD = re.compile(_FIELD)
_LINE_END = re.compile(rb"\r\n|\n|\r")


@dataclass
class BadLine:
    line: int  # physical line number, 1 = the header
    row: int  # the data row number the record would have had
    problem: str
    raw: str  # the line as it is in the file, without its line ending


@dataclass
class Recovered:
    header: list[str]
    rows: list[tuple[int, list[str | None]]] = field(default_factory=list)  # (row, cells)
    bad: list[BadLine] = field(default_factory=list)
    header_problem: str | None = None

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.bad)


def _lines_in(chunk: bytes) -> int:
    return chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")


def _cells(record: bytes) -> list[str | None]:
    """The cells of one record that matched ``_RECORD`` (so its structure is valid)."""
    body = record.rstrip(b"\r\n")
    cells: list[str | None] = []
    pos = 0
    while True:
        text = _ONE_FIELD.match(body, pos).group(0)
        if text.startswith(b'"'):
            cells.append(text[1:-1].replace(b'""', b'"').decode("utf-8"))
        else:
            cells.append(text.decode("utf-8") or None)
        pos += len(text)
        if pos >= len(body):
            return cells
        pos += 1  # the comma


def _why(raw: bytes) -> str:
    if b'"' in raw:
        return ("unbalanced or misplaced quote (RFC 4180: a field holding a quote is "
                "enclosed in quotes and the quote doubled, as in \"19\"\" RACK\")")
    return "cannot be split into fields"


def recover(data: bytes) -> Recovered:
    """Tokenise ``data`` (a whole CSV file) record by record; see the module notes.

    Raises UnicodeDecodeError for text that is not UTF-8 (reported as a file error).
    """
    data.decode("utf-8")  # the whole file, once: a bad byte is a file-level problem
    size = len(data)
    found = _RECORD.match(data, 0)
    header_end = found.end() if found else (_LINE_END.search(data) or _EOF(size)).end()
    if found is None:
        first = data[:header_end].rstrip(b"\r\n")
        return Recovered([], header_problem=f"line 1 (the header) cannot be read: {_why(first)}")
    header = [c or "" for c in _cells(data[:header_end])]
    result = Recovered(_dedupe(header))
    pos, line, row = header_end, 1 + _lines_in(data[:header_end]), 0
    width = len(header)
    while pos < size:
        row += 1
        found = _RECORD.match(data, pos)
        record = data[pos:found.end()] if found else b""
        cells = _cells(record) if found else []
        blank = found is not None and record.rstrip(b"\r\n") == b""
        if found is not None and (blank or len(cells) == width):
            result.rows.append((row, [None] * width if blank else cells))
            line += _lines_in(record)
            pos = found.end()
            continue
        # set aside one physical line and go on at the next
        stop = (_LINE_END.search(data, pos) or _EOF(size))
        raw = data[pos:stop.start()]
        if found is not None and _lines_in(record.rstrip(b"\r\n")) == 0:
            problem = f"{len(cells)} field(s) where the header has {width}"
        else:
            problem = _why(raw)
        result.bad.append(BadLine(line, row, problem, raw.decode("utf-8")))
        line += 1
        pos = stop.end()
    return result


class _EOF:
    def __init__(self, size: int):
        self.size = size

    def start(self) -> int:
        return self.size

    def end(self) -> int:
        return self.size


def _dedupe(names: list[str]) -> list[str]:
    """Repeated header names made unique the way polars does (``a``, ``a_duplicated_0``)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            out.append(f"{name}_duplicated_{seen[name]}")
            seen[name] += 1
        else:
            seen[name] = 0
            out.append(name)
    return out
