"""Reading, validating, quarantining and writing the contract's tables.

The tables themselves (columns, types, requirements, enums) are declared once in
`detector.contract`; everything here works from those declarations.

Reading is deliberately two-step: every value is first read as text (or as its
Parquet type) and then cast with ``strict=False``; a non-null input that becomes null
is a problem we can name by file, column, row and value, instead of an exception from
the CSV parser that names none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from detector.contract import (
    BIDI_CONTROLS,
    BOOL,
    COUNTRY,
    COUNTRY_LIST,
    DATE,
    ENUM,
    FLOAT,
    FORMULA_PREFIX,
    FORMULA_STARTS,
    INPUT_TABLES,
    INT,
    LIST_SEPARATOR,
    MAX_ROWS_SHOWN,
    MAX_VALUES_SHOWN,
    POLARS_TYPES,
    RECORD_TABLES,
    STRING,
    STRING_LIST,
    UNKNOWN,
    Column,
    Table,
    iso_country_codes,
    rows_and_values,
)
from detector.csvlines import BadLine, Recovered, count_records, recover
from detector.errors import InputError, UsageError

# Rows validated at once: the text copies kept for error messages cost several times the
# typed data, so longer files are checked slice by slice (see read_table).
READ_CHUNK_ROWS = 500_000


# --------------------------------------------------------------------------- problems


@dataclass
class Issue:
    """One class of problem: a file, a column, what is wrong, and where."""

    severity: str  # "error" or "warning"
    file: str
    column: str | None
    message: str
    rows: list[int] = field(default_factory=list)
    count: int = 0
    values: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = self.file + (f", column '{self.column}'" if self.column else "")
        text = f"{self.severity.upper()} {where}: {self.message}"
        if self.count and not self.rows:  # cross-table checks count rows without numbering them
            return text + f" ({self.count} rows)" + rows_and_values([], 0, self.values)
        return text + rows_and_values(self.rows if self.count else [], self.count, self.values)


@dataclass
class ValidationReport:
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        return "\n".join(str(i) for i in self.errors + self.warnings)

    def error(self, file: str, column: str | None, message: str, **kw) -> None:
        self.issues.append(Issue("error", file, column, message, **kw))

    def warn(self, file: str, column: str | None, message: str, **kw) -> None:
        self.issues.append(Issue("warning", file, column, message, **kw))


class FatalInputError(InputError):
    """A dataset that cannot be read at all: the report says everything found."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.text())


# --------------------------------------------------------------------------- reading


def _clean_text(expr: pl.Expr) -> pl.Expr:
    """Trimmed text, with empty cells as null (the contract's 'empty cell = null')."""
    stripped = expr.cast(pl.String).str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped)


def _parse(column: Column, raw: pl.Expr, source: pl.DataType) -> tuple[pl.Expr, pl.Expr, str]:
    """(typed value, bad mask, what was expected) for one column read from ``source``."""
    kind = column.kind
    if kind == INT and (source.is_integer() or source.is_float() or source.is_decimal()):
        typed = raw.cast(pl.Int64, strict=False)
        lossless = typed.is_not_null() & (typed.cast(pl.Float64) == raw.cast(pl.Float64))
        typed = pl.when(lossless).then(typed)
        return typed, raw.is_not_null() & typed.is_null(), "a whole number"
    if kind == FLOAT and source.is_numeric():
        typed = raw.cast(pl.Float64, strict=False)
        return typed, raw.is_not_null() & ~typed.is_finite().fill_null(False), "a finite number"
    if kind == DATE and source == pl.Date:
        return raw, pl.lit(False), "a date"
    if kind == DATE and isinstance(source, pl.Datetime):
        as_utc = raw.dt.convert_time_zone("UTC") if source.time_zone else raw
        return as_utc.dt.date(), pl.lit(False), "a date"
    if kind == BOOL and source == pl.Boolean:
        return raw, pl.lit(False), "a boolean"

    text = _clean_text(raw)
    present = text.is_not_null()
    if kind == STRING:
        if column.pattern:
            digits = text.str.replace_all(r"[.\s]", "")
            ok = digits.str.contains(column.pattern)
            return pl.when(ok).then(digits), present & ~ok.fill_null(False), column.pattern_hint
        return text, pl.lit(False), "text"
    if kind == INT:
        typed = text.cast(pl.Int64, strict=False)
        return typed, present & typed.is_null(), "a whole number"
    if kind == FLOAT:
        typed = text.cast(pl.Float64, strict=False)
        return (
            pl.when(typed.is_finite()).then(typed),
            present & ~typed.is_finite().fill_null(False),
            "a finite number",
        )
    if kind == DATE:
        typed = text.str.to_date("%Y-%m-%d", strict=False)
        return typed, present & typed.is_null(), "a date YYYY-MM-DD"
    if kind == BOOL:
        low = text.str.to_lowercase()
        typed = (
            pl.when(low.is_in(["true", "1", "yes"]))
            .then(True)
            .when(low.is_in(["false", "0", "no"]))
            .then(False)
        )
        return typed, present & typed.is_null(), "true/false, 1/0 or yes/no"
    if kind == COUNTRY:
        up = text.str.to_uppercase()
        ok = up.is_in(sorted(iso_country_codes()))
        return pl.when(ok).then(up), present & ~ok, "an ISO 3166-1 alpha-2 country code"
    if kind == ENUM:
        low = text.str.to_lowercase()
        return (
            pl.when(low.is_in(list(column.values))).then(low).when(present).then(pl.lit(UNKNOWN)),
            pl.lit(False),
            "one of " + ", ".join(column.values),
        )
    if kind in (COUNTRY_LIST, STRING_LIST):
        # strip first, then drop empty items: "HK; ;SG" is HK and SG
        items = text.str.split(LIST_SEPARATOR).list.eval(pl.element().str.strip_chars()) \
            .list.eval(pl.element().filter(pl.element().str.len_chars() > 0))
        if kind == STRING_LIST:
            return items, pl.lit(False), "a ';'-separated list"
        items = items.list.eval(pl.element().str.to_uppercase())
        bad = items.list.eval(pl.element().is_in(sorted(iso_country_codes())).not_()).list.any()
        return pl.when(~bad.fill_null(False)).then(items), bad.fill_null(False), (
            "';'-separated ISO 3166-1 alpha-2 country codes"
        )
    raise AssertionError(f"unhandled column kind {kind}")


def _find_table_file(directory: Path, table: Table, report: ValidationReport) -> Path | None:
    """The file holding ``table``, or None (recording an error when that is one).

    Two files for one table, a name that is a directory, a broken or looping link, or a
    missing required table are errors with or without --quarantine: no row of such a
    table can be accounted for.
    """
    candidates = [directory / f"{table.name}.{ext}" for ext in ("csv", "parquet")]
    try:
        found = [p for p in candidates if os.path.lexists(p)]
    except OSError as exc:
        report.error(str(directory), None, f"cannot be listed: {exc.strerror or exc}")
        return None
    if len(found) == 2:
        report.error(
            f"{table.name}.csv / {table.name}.parquet",
            None,
            "both a CSV and a Parquet file exist for this table; keep one so it is clear "
            "which is meant",
        )
        return None
    if not found:
        if table.required:
            report.error(f"{directory}/{table.name}.csv", None,
                         f"required table missing (expected {table.name}.csv or "
                         f"{table.name}.parquet)")
        return None
    path = found[0]
    try:
        if path.is_dir():
            report.error(path.name, None, "is a directory, not a table file")
            return None
        if not path.exists():
            report.error(path.name, None, "is a link to nothing (broken or looping link)")
            return None
        with open(path, "rb"):
            pass
    except OSError as exc:
        report.error(path.name, None, f"cannot be read: {exc.strerror or exc}")
        return None
    return path


def _scan(path: Path) -> pl.LazyFrame:
    if path.suffix == ".parquet":
        return pl.scan_parquet(path)
    # a cell this project wrote with a formula guard (neutralise_text) reads as written
    return pl.scan_csv(
        path,
        infer_schema=False,
        encoding="utf8",
        raise_if_empty=True,
        truncate_ragged_lines=False,
    ).with_columns(unneutralise_text(pl.all()))


@dataclass
class Spill:
    """Where a table longer than ``over_rows`` rows puts the rows that pass validation,
    slice by slice as they pass: Parquet files in ``directory`` (which must outlive the
    table); the table is then a lazy scan of them. So reading a large batch never holds
    all of its typed rows (10M shipments: about 6 GiB of them)."""

    directory: Path
    over_rows: int


def height(frame: pl.DataFrame | pl.LazyFrame) -> int:
    """Rows of a table as read: in memory, or spilled (`Spill`) and scanned."""
    if isinstance(frame, pl.LazyFrame):
        return frame.select(pl.len()).collect().item()
    return frame.height


def column_of(frame: pl.DataFrame | pl.LazyFrame, name: str) -> pl.Series:
    """One column of a table as read, in memory."""
    if isinstance(frame, pl.LazyFrame):
        return frame.select(name).collect().to_series()
    return frame[name]


@dataclass
class TableRead:
    """One table as read: typed rows that passed, rows that failed with their problem."""

    data: pl.DataFrame | pl.LazyFrame  # lazy: spilled (`Spill`)
    quarantined: pl.DataFrame | None = None  # original columns plus `problem`
    path: Path | None = None
    readable: bool = True  # False: the file as a whole could not be used


def _empty(table: Table) -> pl.DataFrame:
    return pl.DataFrame(schema=table.schema)


class _Unreadable(Exception):
    """The file as a whole cannot be used: (file, column, message) for the report."""

    def __init__(self, file: str, column: str | None, message: str):
        super().__init__(message)
        self.where = (file, column, message)


@dataclass
class _Attempt:
    findings: _Findings
    data: pl.DataFrame | pl.LazyFrame
    quarantined: pl.DataFrame | None
    original: list[str]
    passed: int  # rows of ``data``


def read_table(path: Path, table: Table, report: ValidationReport, *,
               label: str | None = None, chunk_rows: int | None = None,
               spill: Spill | None = None) -> TableRead:
    """Read one table file, recording every problem in ``report``.

    Rows with errors are split off (with the original text of every column and a
    `problem` column) so the caller can quarantine them or refuse the whole dataset. A
    file longer than ``chunk_rows`` (default ``READ_CHUNK_ROWS``) is checked in slices of
    that many rows, so the text copies validation keeps exist for one slice at a time;
    the report and the quarantined rows are the same as from one pass. With ``spill``,
    a file longer than ``spill.over_rows`` leaves its passed rows on disk (`Spill`).

    Row accounting: the records a file holds are counted independently of the parser
    (CSV: from the raw bytes, detector.csvlines; Parquet: pyarrow's metadata), and the
    rows read plus the rows quarantined must equal that count. A CSV file that is not
    well formed, or that polars reads differently from the count, is read again record
    by record, setting aside each line that is not a record with its number and text.
    """
    name = label or path.name
    chunk_rows = chunk_rows or READ_CHUNK_ROWS
    recovered: Recovered | None = None
    try:
        try:
            if path.stat().st_size == 0:
                raise _Unreadable(name, None, "the file is empty: expected a header row")
            if path.suffix == ".csv":
                counted = count_records(path)
                expected_rows = counted.records
                attempt = None
                if counted.clean:
                    try:
                        attempt = _read_rows(_scan(path), table, name, chunk_rows, path,
                                             numbered=False, spill=spill)
                    except _Unreadable:
                        raise
                    except Exception:  # polars disagrees with the count: read carefully
                        attempt = None
                if attempt is None or _rows(attempt) != expected_rows:
                    recovered = recover(path.read_bytes())
                    if recovered.header_problem:
                        raise _Unreadable(name, None, recovered.header_problem)
                    expected_rows = recovered.records
                    attempt = _read_rows(_recovered_frame(recovered), table, name,
                                         chunk_rows, path, numbered=True,
                                         bad_lines=recovered.bad, spill=spill)
            else:
                import pyarrow.parquet as pq

                expected_rows = pq.ParquetFile(path).metadata.num_rows  # a second reader
                attempt = _read_rows(_scan(path), table, name, chunk_rows, path,
                                     numbered=False, spill=spill)
        except _Unreadable:
            raise
        except Exception as exc:  # polars raises several kinds for unreadable files
            raise _Unreadable(*(_encoding_problem(path, name) or (
                name, None, f"cannot be read as {path.suffix[1:].upper()}: "
                            f"{_first_line(exc)}"))) from None
    except _Unreadable as exc:
        report.error(*exc.where)
        return TableRead(_empty(table), path=path, readable=False)
    attempt.findings.report(report, name)
    if recovered is not None and recovered.bad:
        report.error(name, None, _bad_lines_message(recovered.bad))
    # Every record the file holds, counted without the parser, is either read or
    # quarantined; anything else is a lost row and stops the command.
    if _rows(attempt) != expected_rows:
        set_aside = _rows(attempt) - attempt.passed
        report.error(name, None, f"row accounting failed: the file holds {expected_rows} "
                     f"record(s) (counted independently of the parser) but "
                     f"{attempt.passed} were read and {set_aside} quarantined; nothing "
                     "from this file is used")
        return TableRead(_empty(table), path=path, readable=False)
    return TableRead(attempt.data, attempt.quarantined, path)


def _rows(attempt: _Attempt) -> int:
    return attempt.passed + (attempt.quarantined.height
                                  if attempt.quarantined is not None else 0)


def _read_rows(lf: pl.LazyFrame, table: Table, name: str, chunk_rows: int, path: Path, *,
               numbered: bool, bad_lines: list[BadLine] = (),
               spill: Spill | None = None) -> _Attempt:
    """Type and check every row of ``lf``; ``numbered``: it carries its own ``__row``."""
    source_schema = lf.collect_schema()
    if numbered:
        source_schema = pl.Schema({k: v for k, v in source_schema.items() if k != "__row"})

    # Header names are matched without regard to case or surrounding spaces.
    by_key = {n.strip().lower(): n for n in source_schema.names()}
    missing = [c.name for c in table.columns if c.required and c.name not in by_key]
    if missing:
        header = list(source_schema.names())
        if path.suffix == ".csv" and any(not c.isprintable() for c in "".join(header)):
            raise _Unreadable(name, None, "does not look like a CSV text file: the first "
                              "line holds binary or control characters")
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            hint = f" (the header is one column {header[0][:80]!r}: is the file comma-separated?)"
        shown = [h if len(h) <= 40 else h[:40] + "…" for h in header[:12]]
        raise _Unreadable(name, ", ".join(missing),
                          f"required column(s) missing; found {shown}{hint}")

    exprs: list[pl.Expr] = []
    # column, bad-mask name, expected, the value as text (over the `__orig_` copy, so it
    # is rendered only for the rows that fail: a typed Parquet column is not turned into
    # text row by row just in case)
    checks: list[tuple[Column, str, str, pl.Expr]] = []
    typed_by_name: dict[str, pl.Expr] = {}
    # source column -> its checks, computed once per distinct text (`_by_value`)
    per_value: dict[str, list[pl.Expr]] = {}
    for column in table.columns:
        src_name = by_key.get(column.name)
        if src_name is None:
            exprs.append(pl.lit(None, POLARS_TYPES[column.kind]).alias(column.name))
            continue
        source = source_schema[src_name]
        raw, text = pl.col(src_name), pl.col(f"__orig_{src_name}")
        by_value = _by_value(column, source, table)
        if isinstance(source, pl.List):  # a native Parquet list: read as the ';'-joined text
            raw = raw.cast(pl.List(pl.String)).list.join(LIST_SEPARATOR)
            text = text.cast(pl.List(pl.String)).list.join(LIST_SEPARATOR)
            source = pl.String()
        typed, bad, expected = _parse(column, raw, source)
        typed_by_name[column.name] = typed.cast(POLARS_TYPES[column.kind])
        outputs = [typed.cast(POLARS_TYPES[column.kind]).alias(f"__typed_{column.name}"),
                   bad.alias(f"__bad_{column.name}")]
        checks.append((column, f"__bad_{column.name}", expected, text.cast(pl.String)))
        if column.required:
            outputs.append(_clean_text(raw).is_null().alias(f"__null_{column.name}")
                           if not source.is_temporal() and not source.is_numeric()
                           and source != pl.Boolean
                           else raw.is_null().alias(f"__null_{column.name}"))
        if column.kind == ENUM:
            outputs.append(_clean_text(raw).alias(f"__raw_{column.name}"))
        if by_value:
            per_value[src_name] = outputs
            outputs = [pl.col(o.meta.output_name()) for o in outputs]
        outputs[0] = outputs[0].alias(column.name)
        exprs.extend(outputs)

    original = list(source_schema.names())
    # Record tables keep the columns the contract does not name ("extra columns": a real
    # export's own fields, model inputs when a training config names them), as read.
    contract_keys = {c.name for c in table.columns}
    extras = [n for n in original if table.name in ("shipments", "leases")
              and n.strip().lower() not in contract_keys and not n.startswith("__")]
    select = [pl.col("__row"), *[pl.col(c).alias(f"__orig_{c}") for c in original], *exprs]
    findings = _Findings()
    passed_parts: list[pl.DataFrame] = []
    passed_rows = 0
    quarantined_parts: list[pl.DataFrame] = []
    total = lf.select(pl.len()).collect().item()
    spilled: list[Path] = []
    spill_to = None
    if spill is not None and total > spill.over_rows:
        import tempfile

        # a folder of its own: a CSV file read a second time (recovered) starts afresh
        spill_to = Path(tempfile.mkdtemp(prefix=f"{table.name}-", dir=spill.directory))
    # Tables longer than one chunk are checked slice by slice (bounded memory); the
    # duplicate-id check is global and needs only the id column of every row.
    duplicate_ids = None
    if table.id_column is not None and total > chunk_rows:
        ids = lf.select(typed_by_name[table.id_column].alias("id")).collect()["id"]
        duplicate_ids = ids.filter(ids.is_duplicated() & ids.is_not_null()).unique()
        del ids
    for offset in range(0, max(total, 1), chunk_rows):
        part = lf.slice(offset, chunk_rows)
        if not numbered:  # a recovered frame numbers its rows as the file does
            part = part.with_row_index("__row", offset=offset + 1)
        df = _with_checks_by_value(part, per_value).select(select).collect()
        if total == 0 and table.required and not bad_lines:
            raise _Unreadable(name, None, "the file has a header but no rows")
        passed, quarantined = _check_chunk(df, table, checks, original, findings,
                                           duplicate_ids, extras)
        del df
        passed_rows += passed.height
        if spill_to is not None:
            spilled.append(spill_to / f"{len(spilled):06d}.parquet")
            passed.write_parquet(spilled[-1], compression="lz4")
            del passed
        else:
            passed_parts.append(passed)
        if quarantined is not None:
            quarantined_parts.append(quarantined)
    if bad_lines:
        quarantined_parts.append(_bad_lines_frame(bad_lines, original))
    if spilled:
        data = pl.scan_parquet(spilled)
    else:
        data = passed_parts[0] if len(passed_parts) == 1 else pl.concat(passed_parts,
                                                                         rechunk=False)
    quarantined = pl.concat(quarantined_parts, how="diagonal_relaxed") \
        if quarantined_parts else None
    return _Attempt(findings, data, quarantined, original, passed_rows)


# Column kinds whose text takes few distinct values (codes, dates, flags): their checks
# run once per distinct text and are joined back, instead of once per row.
_FEW_VALUES = (COUNTRY, COUNTRY_LIST, ENUM, BOOL, DATE)


def _by_value(column: Column, source: pl.DataType, table: Table) -> bool:
    """Whether ``column``, read from text, is checked once per distinct value."""
    return (source == pl.String and column.name != table.id_column
            and (column.kind in _FEW_VALUES or (column.kind == STRING and column.pattern)))


def _with_checks_by_value(part: pl.LazyFrame, per_value: dict[str, list[pl.Expr]]
                          ) -> pl.LazyFrame:
    """``part`` with the checks of ``per_value`` (source column -> expressions over it),
    each evaluated on the column's distinct values and joined back by value (a null
    value to the null row), row order kept. Every check is a function of the one value,
    so each row gets what evaluating it row by row gives."""
    if not per_value:
        return part
    rows = part.collect()  # read once; the distinct values come from it
    checks = []
    for src_name, outputs in per_value.items():
        values = rows.select(src_name)
        checked = values.unique().with_columns(outputs)
        # joined on the one column (joining the whole frame would copy every column)
        checks.append(values.join(checked, on=src_name, how="left", nulls_equal=True,
                                  maintain_order="left").drop(src_name))
    return rows.hstack([c for frame in checks for c in frame.get_columns()]).lazy()


def _recovered_frame(recovered: Recovered) -> pl.LazyFrame:
    """The well-formed records of a recovered CSV file, as text, with their row numbers."""
    width = len(recovered.header)
    columns = list(zip(*(cells for _, cells in recovered.rows))) or [()] * width
    frame = pl.DataFrame(
        {"__row": pl.Series([r for r, _ in recovered.rows], dtype=pl.Int64),
         **{name: pl.Series(values, dtype=pl.String)
            for name, values in zip(recovered.header, columns)}})
    return frame.lazy().with_columns(unneutralise_text(pl.all().exclude("__row")))


def _bad_lines_message(bad: list[BadLine]) -> str:
    shown = "; ".join(f"line {b.line} ({b.problem}): {b.raw[:80]!r}"
                      for b in bad[:MAX_ROWS_SHOWN])
    more = f"; and {len(bad) - MAX_ROWS_SHOWN} more" if len(bad) > MAX_ROWS_SHOWN else ""
    return f"{len(bad)} line(s) cannot be read as CSV records: {shown}{more}"


def _bad_lines_frame(bad: list[BadLine], original: list[str]) -> pl.DataFrame:
    """Quarantine rows for lines that are not records: the problem, line and raw text."""
    return pl.DataFrame({
        **{c: pl.Series([None] * len(bad), dtype=pl.String) for c in original},
        "problem": [f"line {b.line}: {b.problem}" for b in bad],
        "line_number": pl.Series([b.line for b in bad], dtype=pl.Int64),
        "raw_line": [b.raw for b in bad],
    })


@dataclass
class _Finding:
    severity: str
    column: str | None
    message: str
    rows: list[int]
    count: int
    values: list[str]


class _Findings:
    """Problems found chunk by chunk, merged into what one pass over the file reports.

    Each check has a fixed position (``order``) so the merged report lists problems in
    the same order whatever chunk first met them; rows and values keep the first ones
    in file order, counts add up.
    """

    def __init__(self):
        self.items: dict[int, _Finding] = {}

    def add(self, order: int, severity: str, column: str | None, message: str, *,
            rows: list[int], count: int, values: list[str] | None = None) -> None:
        found = self.items.get(order)
        if found is None:
            self.items[order] = _Finding(severity, column, message, rows[:MAX_ROWS_SHOWN],
                                         count, list(values or []))
            return
        found.rows = (found.rows + rows)[:MAX_ROWS_SHOWN]
        found.count += count
        found.values = list(dict.fromkeys(found.values + list(values or [])))[:MAX_VALUES_SHOWN]

    def report(self, report: ValidationReport, name: str) -> None:
        for order in sorted(self.items):
            f = self.items[order]
            kw = {"rows": f.rows, "count": f.count}
            if f.values:
                kw["values"] = f.values
            (report.error if f.severity == "error" else report.warn)(name, f.column, f.message,
                                                                    **kw)


_DUPLICATE_ORDER = 1_000_000
_RECOVERABLE_ORDER = 2_000_000


def _check_chunk(df: pl.DataFrame, table: Table,
                 checks: list[tuple[Column, str, str, pl.Expr]],
                 original: list[str], findings: _Findings,
                 duplicate_ids: pl.Series | None, extras: list[str] = ()
                 ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Record one chunk's problems; split its rows into (passed typed rows, quarantined)."""
    kept = [*table.column_names, *[pl.col(f"__orig_{c}").alias(c) for c in extras]]
    problem_parts: list[pl.Expr] = []
    for i, (column, bad_name, expected, text) in enumerate(checks):
        bad = df[bad_name]
        n_bad = int(bad.sum())
        if n_bad:
            sub = df.filter(bad)
            findings.add(3 * i, "error", column.name, f"expected {expected}",
                         rows=sub["__row"].head(MAX_ROWS_SHOWN).to_list(), count=n_bad,
                         values=_distinct(sub.select(text).to_series()))
            problem_parts.append(
                pl.when(pl.col(bad_name)).then(pl.format(
                    f"{column.name}: expected {expected}, got '{{}}'", text))
            )
        if column.required:
            nulls = df[f"__null_{column.name}"]
            n_null = int(nulls.sum())
            if n_null:
                findings.add(3 * i + 1, "error", column.name, "required value is empty",
                             rows=df.filter(nulls)["__row"].head(MAX_ROWS_SHOWN).to_list(),
                             count=n_null)
                problem_parts.append(pl.when(pl.col(f"__null_{column.name}"))
                                     .then(pl.lit(f"{column.name}: required value is empty")))
        if column.kind == ENUM:
            unknown = (df[column.name] == UNKNOWN) & (
                df[f"__raw_{column.name}"].str.to_lowercase() != UNKNOWN)
            n_unknown = int(unknown.sum())
            if n_unknown:
                findings.add(3 * i + 2, "warning", column.name,
                             f"value not in the contract's list ({', '.join(column.values)}); "
                             "read as 'unknown'",
                             rows=df.filter(unknown)["__row"].head(MAX_ROWS_SHOWN).to_list(),
                             count=n_unknown,
                             values=_distinct(df.filter(unknown)[f"__raw_{column.name}"]))

    if table.id_column is not None and df.height:
        ids = df[table.id_column]
        dup = (ids.is_duplicated() if duplicate_ids is None
               else ids.is_in(duplicate_ids.implode())) & ids.is_not_null()
        n_dup = int(dup.sum())
        if n_dup:
            findings.add(_DUPLICATE_ORDER, "error", table.id_column,
                         "duplicate id (every copy is rejected)",
                         rows=df.filter(dup)["__row"].head(MAX_ROWS_SHOWN).to_list(),
                         count=n_dup, values=_distinct(df.filter(dup)[table.id_column]))
            df = df.with_columns(__dup=dup)
            problem_parts.append(pl.when(pl.col("__dup")).then(
                pl.format(f"{table.id_column}: duplicate id '{{}}'", pl.col(table.id_column))))

    _warn_recoverable(df, table, findings)

    if not problem_parts:
        return df.select(kept), None
    # concat_str gives "" (not null) when every part is null: only non-empty is a problem
    problem = pl.concat_str(problem_parts, separator="; ", ignore_nulls=True)
    df = df.with_columns(pl.when(problem.str.len_chars() > 0).then(problem).alias("problem"))
    failed = df.filter(pl.col("problem").is_not_null())
    passed = df.filter(pl.col("problem").is_null())
    quarantined = failed.select(
        *[pl.col(f"__orig_{c}").alias(c) for c in original], pl.col("problem"))
    return passed.select(kept), quarantined


def _warn_recoverable(df: pl.DataFrame, table: Table, findings: _Findings):
    """Implausible but usable values: kept and scored, and said out loud."""
    checks = {
        "shipments": [("gross_weight_kg", pl.col("gross_weight_kg") < 0, "negative weight"),
                      ("value_usd", pl.col("value_usd") < 0, "negative value"),
                      ("quantity", pl.col("quantity") <= 0, "quantity is zero or negative")],
        "leases": [("gpu_count", pl.col("gpu_count") <= 0, "gpu_count is zero or negative"),
                   ("value_usd", pl.col("value_usd") < 0, "negative value")],
        "parties": [("employees", pl.col("employees") < 0, "negative employee count")],
        "labels": [("label", ~pl.col("label").is_in([0, 1]),
                    "label must be 0 or 1; the row is ignored for training")],
    }.get(table.name, [])
    if not checks:
        return
    # the masks over the few columns they read, then rows only where one hits (filtering
    # the whole wide chunk per check cost more than the checks)
    masks = df.select(mask.fill_null(False).alias(str(k))
                      for k, (_, mask, _) in enumerate(checks))
    for k, (column, _, message) in enumerate(checks):
        if not masks[str(k)].any():
            continue
        hit = df.select("__row", column).filter(masks[str(k)])
        if hit.height:
            findings.add(_RECOVERABLE_ORDER + k, "warning", column, message + " (row kept)",
                         rows=hit["__row"].head(MAX_ROWS_SHOWN).to_list(), count=hit.height,
                         values=_distinct(hit[column].cast(pl.String)))


def _distinct(series: pl.Series) -> list[str]:
    return [str(v) for v in series.drop_nulls().unique(maintain_order=True).head(MAX_VALUES_SHOWN)]


def _encoding_problem(path: Path, name: str) -> tuple[str, str | None, str] | None:
    """(file, column, message) locating the first non-UTF-8 byte of a CSV file, if any."""
    if path.suffix.lower() != ".csv":
        return None
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        start = exc.start
    line_start = data.rfind(b"\n", 0, start) + 1
    line_no = data.count(b"\n", 0, start) + 1
    line_end = data.find(b"\n", start)
    line = data[line_start:line_end if line_end >= 0 else len(data)].decode("latin-1")
    header = data[:data.find(b"\n")].decode("utf-8", "replace").strip().split(",")
    column = None
    if line_no > 1:  # which field holds the bad byte (assumes no quoted newlines before it)
        import csv

        offset, position = 0, start - line_start
        for i, field_text in enumerate(next(csv.reader([line]), [])):
            offset = line.find(field_text, offset) + len(field_text)
            if offset > position:
                column = header[i].strip() if i < len(header) else None
                break
    where = f"line {line_no} (data row {line_no - 1})" if line_no > 1 else "the header"
    return (name, column, f"not UTF-8: byte {data[start:start + 1]!r} in {where}; "
            f"value: {line[max(0, start - line_start - 20):start - line_start + 20]!r}; "
            "save the file as UTF-8")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    """A validated dataset: typed frames for every contract table."""

    directory: Path
    shipments: pl.DataFrame | pl.LazyFrame  # lazy: waiting on disk (`Spill`)
    parties: pl.DataFrame
    leases: pl.DataFrame
    labels: pl.DataFrame  # resolved: one row per labelled record
    screening_list: pl.DataFrame | None  # None when the directory holds none
    report: ValidationReport
    quarantined: dict[str, pl.DataFrame] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def quarantined_rows(self) -> int:
        return sum(df.height for df in self.quarantined.values())


def read_dataset(directory: str | Path, *, allow_errors: bool = False,
                 spill: Spill | None = None) -> Dataset:
    """Read, normalise and validate every contract table in ``directory``.

    With ``allow_errors`` the rows that fail are kept aside in ``Dataset.quarantined``
    (see :func:`write_quarantine`) and the rest is returned; without it any error
    raises :class:`FatalInputError` listing every problem found. Problems that stop
    the dataset being read at all (no shipments file, an unreadable file) raise
    either way. With ``spill``, shipments longer than ``spill.over_rows`` wait on disk
    (`Spill`: ``Dataset.shipments`` is then a lazy scan).
    """
    directory = Path(directory)
    report = ValidationReport()
    if not directory.is_dir():
        raise InputError(f"{directory}: dataset directory not found")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise InputError(f"{directory}: dataset directory cannot be read (permission denied)")

    reads: dict[str, TableRead] = {}
    files: dict[str, Path] = {}
    fatal = False
    for table in INPUT_TABLES.values():
        errors_before = len(report.errors)
        path = _find_table_file(directory, table, report)
        if path is None:
            fatal |= len(report.errors) > errors_before  # the table itself is the problem
            reads[table.name] = TableRead(_empty(table))
            continue
        files[table.name] = path
        reads[table.name] = read_table(path, table, report,
                                       spill=spill if table.name == "shipments" else None)
        fatal |= not reads[table.name].readable  # nothing to quarantine row by row

    labels = resolve_labels(reads["labels"].data, report, files.get("labels"))
    labels = _check_references(reads, labels, report, files)

    quarantined = {k: r.quarantined for k, r in reads.items() if r.quarantined is not None}
    if report.errors and (fatal or not allow_errors):
        raise FatalInputError(report)
    return Dataset(
        directory=directory,
        shipments=reads["shipments"].data,
        parties=reads["parties"].data,
        leases=reads["leases"].data,
        labels=labels,
        screening_list=reads["screening_list"].data if "screening_list" in files else None,
        report=report,
        quarantined=quarantined,
        files=files,
    )


def resolve_labels(labels: pl.DataFrame, report: ValidationReport,
                   path: Path | None) -> pl.DataFrame:
    """One label per record: the latest ``decided_on`` wins, label 1 on a tie."""
    labels = labels.filter(pl.col("label").is_in([0, 1]))
    key = ["record_kind", "record_id"]
    repeated = labels.filter(pl.len().over(key) > 1)
    if repeated.height:
        ids = repeated["record_id"].unique(maintain_order=True)
        report.warn(path.name if path else "labels", "record_id",
                    "several labels for one record; the latest decided_on wins (label 1 on a tie)",
                    values=ids.head(MAX_VALUES_SHOWN).to_list())
    return (
        labels.sort([*key, "decided_on", "label"], nulls_last=False)
        .group_by(key, maintain_order=True)
        .last()
        .sort(key)
    )


def _ids(df: pl.DataFrame, column: str) -> pl.Series:
    return df[column].drop_nulls().unique()


def _check_references(reads: dict[str, TableRead], labels: pl.DataFrame,
                      report: ValidationReport, files: dict[str, Path]) -> pl.DataFrame:
    """Warn of dangling party references and of labels for records not in the dataset;
    the labels of records in the dataset."""
    party_ids = _ids(reads["parties"].data, "party_id")
    for table, column in [("shipments", "consignee_party_id"), ("parties", "parent_party_id"),
                          ("leases", "provider_party_id"), ("leases", "lessee_party_id")]:
        values = column_of(reads[table].data, column).drop_nulls()
        dangling = values.filter(~values.is_in(party_ids.implode()))
        if dangling.len():
            report.warn(files[table].name, column,
                        "refers to a party_id not in parties (resolved by name instead)",
                        count=dangling.len(), values=_distinct(dangling))
    keep = []
    for kind, table in RECORD_TABLES.items():
        # the record ids as read (is_in ignores their nulls and repeats: no unique pass)
        ids = column_of(reads[table.name].data, table.id_column)
        of_kind = labels.filter(pl.col("record_kind") == kind)
        known = of_kind["record_id"].is_in(ids.implode())
        unknown = of_kind.filter(~known)
        if unknown.height:
            report.warn(files["labels"].name, "record_id",
                        f"label for a {kind} not in the dataset; ignored",
                        count=unknown.height, values=_distinct(unknown["record_id"]))
        keep.append(of_kind.filter(known))
    return pl.concat(keep)


def read_frame(frame: pl.DataFrame, table: Table, label: str) -> pl.DataFrame:
    """One table handed over in memory, parsed and checked as if read from a file.

    For callers that hold a frame rather than a file (the MLflow pyfunc): raw text as
    ``pd.read_csv`` gives it (dates as strings, ``;``-joined lists, numbers that pandas
    guessed) and already-typed columns alike. Any row that fails raises
    :class:`FatalInputError` naming ``label``, the column, the rows and the values.
    """
    import tempfile

    # A column pandas could not type (all empty) arrives as Null: keep it as text.
    frame = frame.with_columns(pl.col(n).cast(pl.String) for n, t in frame.schema.items()
                               if t == pl.Null or t == pl.Object)
    report = ValidationReport()
    with tempfile.TemporaryDirectory(prefix="detector-frame-") as tmp:
        path = Path(tmp) / f"{table.name}.parquet"
        frame.write_parquet(path)
        read = read_table(path, table, report, label=label)
    if report.errors:
        raise FatalInputError(report)
    return read.data


def write_quarantine(dataset: Dataset, directory: str | Path) -> list[Path]:
    """Write each table's failed rows (original columns + `problem`) as CSV in ``directory``."""
    from detector.files import os_failure

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_failure(exc, directory, "create the quarantine directory") from None
    written = []
    for name, df in dataset.quarantined.items():
        path = directory / f"{name}.csv"
        write_table(df, path)
        written.append(path)
    return written


# --------------------------------------------------------------------------- writing




def escape_bidi(text: pl.Expr) -> pl.Expr:
    return text.str.replace_many(list(BIDI_CONTROLS), [f"\\u{ord(c):04x}" for c in BIDI_CONTROLS])


def neutralise_text(text: pl.Expr) -> pl.Expr:
    """A text column as it is safe to write in CSV: bidi controls escaped, and a leading
    ``'`` before a cell that a spreadsheet would run as a formula (DATA_CONTRACT.md)."""
    text = escape_bidi(text)
    # a cell already starting with ' before such a character gets one more, so reading
    # back (unneutralise_text) gives exactly the original
    formula = text.str.contains("^'*[" + FORMULA_STARTS.replace("-", "\\-") + "]")
    return pl.when(formula).then(pl.lit(FORMULA_PREFIX) + text).otherwise(text)


def unneutralise_text(text: pl.Expr) -> pl.Expr:
    """What :func:`neutralise_text` prefixed, read back without the ``'`` (CSV input)."""
    prefixed = text.str.contains("^''*[" + FORMULA_STARTS.replace("-", "\\-") + "]")
    return pl.when(prefixed).then(text.str.slice(1)).otherwise(text)


def write_table(df: pl.DataFrame, path: str | Path, *, safe_text: bool = True) -> Path:
    """Write a frame in the contract's form (CSV or Parquet by extension), atomically.

    The data goes to a temporary file beside the target and is renamed into place, so a
    failure never leaves a partial file nor removes the previous one. List columns are
    joined with ';'. In CSV (unless ``safe_text`` is False) every text cell is
    neutralised (:func:`neutralise_text`); Parquet keeps the raw values.
    """
    from detector.files import atomic_write

    return atomic_write(path, table_writer(df, path, safe_text=safe_text))


def table_writer(df: pl.DataFrame, path: str | Path, *, safe_text: bool = True):
    """A function writing ``df`` as :func:`write_table` does, in the format ``path``'s
    extension names, to the file it is given (the caller handles atomicity)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UsageError(f"{path}: output must end in .csv or .parquet")
    # The contract stores list columns as one ';'-joined string in both formats.
    lists = [n for n, t in df.schema.items() if isinstance(t, pl.List)]
    out = df.with_columns(pl.col(n).list.join(LIST_SEPARATOR) for n in lists)
    if suffix == ".parquet":
        return lambda target: out.write_parquet(target)
    if safe_text:
        text = [n for n, t in out.schema.items() if t == pl.String]
        out = out.with_columns(neutralise_text(pl.col(n)).alias(n) for n in text)
    return lambda target: out.write_csv(target, date_format="%Y-%m-%d")
