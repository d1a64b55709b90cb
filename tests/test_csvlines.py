"""detector.csvlines.count_records: the record count independent of the parser (row
accounting), on its vectorised path (no carriage return, no blank line) and on the
exact path it keeps for those, at block sizes that cut records and quoted fields."""

from __future__ import annotations

import csv
import io

import pytest

from detector.csvlines import count_records

CLEAN = (
    b'id,name,note\n'
    b'1,"Lion Gate, Ltd","said ""hi"""\n'
    b'2,plain,"two\nlines, and a comma"\n'
    b'3,,\n'
    b'4,"",x\n'
)


def _write(tmp_path, data: bytes):
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
def test_clean_file_counts_what_a_csv_reader_reads(tmp_path, block):
    path = _write(tmp_path, CLEAN)
    rows = list(csv.reader(io.StringIO(CLEAN.decode())))
    counted = count_records(path, block)
    assert (counted.records, counted.clean, counted.header_fields) == (len(rows) - 1, True, 3)


@pytest.mark.parametrize("block", [1, 5, 1 << 20])
@pytest.mark.parametrize("data, records", [
    (CLEAN + b'5,"never closed,x\n6,a,b\n', None),  # a quote opened and never closed
    (CLEAN + b'5,a,b,extra\n', 5),  # a field too many
    (CLEAN + b'5,a\n', 5),  # a field too few
    (CLEAN + b'5,a"b,c\n', None),  # a lone quote inside an unquoted field
])
def test_malformed_file_is_not_clean(tmp_path, block, data, records):
    counted = count_records(_write(tmp_path, data), block)
    assert not counted.clean
    if records is not None:
        assert counted.records == records


@pytest.mark.parametrize("block", [2, 1 << 20])
def test_carriage_returns_and_blank_lines_take_the_exact_path(tmp_path, block):
    crlf = CLEAN.replace(b"\n", b"\r\n")
    counted = count_records(_write(tmp_path, crlf), block)
    assert (counted.records, counted.clean) == (4, True)
    bare = CLEAN + b'5,a\rb,c\n'
    assert not count_records(_write(tmp_path, bare), block).clean
    blank = CLEAN + b'\n5,a,b\n'
    assert not count_records(_write(tmp_path, blank), block).clean
    quoted_blank = CLEAN + b'5,"a\n\nb",c\n'  # a blank line inside quotes is data
    counted = count_records(_write(tmp_path, quoted_blank), block)
    assert (counted.records, counted.clean) == (5, True)


def test_last_record_without_newline(tmp_path):
    counted = count_records(_write(tmp_path, CLEAN + b'5,a,"b\nc"'), 4)
    assert (counted.records, counted.clean) == (5, True)
