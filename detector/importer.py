"""`detector import`: a real export (CSV or Parquet files) → a contract dataset, through a
column mapping written in TOML, never through code.

The mapping (see data/mappings/kcs.toml for a worked example and README "Bring your own
data")::

    [source]                       # optional: how the files are read
    delimiter = ","                # CSV only
    [shipments]                    # or [leases]: the record table the rows become
    shipment_id = "Declaration ID"                       # a source column, renamed
    consignee_country = { value = "KR" }                 # a constant
    value_usd = { column = "Item Price", divide = 1180 } # currency / unit conversion
    gross_weight_kg = { column = "Net Mass (lb)", unit = "lb" }
    export_date = { column = "Date", date_format = "%d/%m/%Y" }
    description = { template = "HS {HS6 Code}" }          # text built from columns
    exporter_country = { column = "Departure", map = { ZZ = "" }, fallback = "Origin" }
    [labels]                       # optional: label columns → the labels table
    label = "Fraud"                # 0/1 only; an empty cell = unlabelled
    typology = { column = "Critical Fraud", map = { "0" = "", "2" = "critical" } }
    decided_on = "Date"
    [extra]                        # optional: the rest is kept as extra columns
    drop = ["Free text"]           # ... except these
    keep = ["Date"]                # ... and also these, though a mapping reads them

Every source column that no mapping entry reads as its ``column`` or ``fallback`` is kept
as an extra column (named in snake_case: "Tax Rate" → ``tax_rate``), as text for CSV
sources and in its own type for Parquet. Extra columns become model inputs when a
training config names them (``[inputs]``).

Any problem — an unknown mapping key, a column missing from a file, a value that does not
convert, a label other than 0/1, a value the contract refuses — is collected, all of them
named by mapping key, file, column, rows and values, and nothing is written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from detector.config import read_toml
from detector.contract import (
    BOOL,
    DATE,
    FLOAT,
    INPUT_TABLES,
    INT,
    LABELS,
    LEASES,
    MAX_ROWS_SHOWN,
    MAX_VALUES_SHOWN,
    SHIPMENTS,
    Table,
    rows_and_values,
)
from detector.errors import InputError
from detector.tables import FatalInputError, read_dataset, write_table

RECORD_TABLES = {"shipments": SHIPMENTS, "leases": LEASES}
LABEL_KEYS = ("label", "typology", "decided_on")
SPEC_KEYS = {"column", "value", "template", "map", "fallback", "default", "date_format",
             "multiply", "divide", "unit"}
# Weight units a mapping may name; the contract stores kilograms.
WEIGHT_UNITS_TO_KG = {"kg": 1.0, "g": 0.001, "t": 1000.0, "tonne": 1000.0,
                      "lb": 0.45359237, "oz": 0.028349523125}
TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


@dataclass
class Problem:
    """One mapping problem: where (mapping key, file, column, rows) and what (values)."""

    key: str
    message: str
    file: str | None = None
    column: str | None = None
    rows: list[int] = field(default_factory=list)
    count: int = 0
    values: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = [f"mapping key {self.key}"]
        if self.file:
            where.append(self.file)
        if self.column:
            where.append(f"column {self.column!r}")
        return (", ".join(where) + f": {self.message}"
                + rows_and_values(self.rows, self.count, self.values))


class MappingError(InputError):
    """Every problem found while importing; nothing was written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"import failed, nothing written ({len(problems)} problem(s)):\n"
                         + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class Spec:
    """How one contract column is made from the source (one entry of the mapping)."""

    key: str  # "shipments.value_usd": where it is in the mapping file
    column: str | None = None
    value: object = None
    template: str | None = None
    map: dict | None = None
    fallback: str | None = None
    default: object = None  # used where the source (after map and fallback) is empty
    date_format: str | None = None
    factor: float = 1.0

    def source_columns(self) -> list[str]:
        cols = [c for c in (self.column, self.fallback) if c]
        if self.template:
            cols += TEMPLATE_FIELD.findall(self.template)
        return cols


@dataclass
class Mapping:
    record_table: Table
    columns: dict[str, Spec]
    labels: dict[str, Spec]
    drop: list[str]
    keep: list[str]
    delimiter: str = ","
    path: str = ""

    def consumed(self) -> set[str]:
        """Source columns a mapping entry reads as its column or fallback."""
        return {c for s in [*self.columns.values(), *self.labels.values()]
                for c in (s.column, s.fallback) if c}


def _spec(key: str, raw, problems: list[Problem]) -> Spec | None:
    if isinstance(raw, str):
        return Spec(key, column=raw)
    if not isinstance(raw, dict):
        problems.append(Problem(key, f"expected a source column name or a table such as "
                                     f"{{ column = \"...\" }}, got {raw!r}"))
        return None
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        problems.append(Problem(key, f"unknown option(s) {unknown}; expected some of "
                                     f"{sorted(SPEC_KEYS)}"))
        return None
    sources = [k for k in ("column", "value", "template") if k in raw]
    if len(sources) != 1:
        problems.append(Problem(key, "give exactly one of column, value or template; got "
                                     f"{sources or 'none'}"))
        return None
    factor = 1.0
    for option in ("multiply", "divide"):
        if option in raw:
            number = raw[option]
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number == 0:
                problems.append(Problem(key, f"{option}: expected a non-zero number, got "
                                             f"{number!r}"))
                return None
            factor = factor * number if option == "multiply" else factor / number
    if "unit" in raw:
        unit = str(raw["unit"]).lower()
        if unit not in WEIGHT_UNITS_TO_KG:
            problems.append(Problem(key, f"unit {raw['unit']!r}: expected one of "
                                         f"{sorted(WEIGHT_UNITS_TO_KG)}"))
            return None
        factor *= WEIGHT_UNITS_TO_KG[unit]
    value_map = raw.get("map")
    if value_map is not None and not isinstance(value_map, dict):
        problems.append(Problem(key, f"map: expected a table of source value = new value, got "
                                     f"{value_map!r}"))
        return None
    return Spec(key, column=raw.get("column"), value=raw.get("value"),
                template=raw.get("template"),
                map={str(k): (None if v == "" else str(v)) for k, v in value_map.items()}
                if value_map else None,
                fallback=raw.get("fallback"), default=raw.get("default"),
                date_format=raw.get("date_format"), factor=factor)


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file (keys only; the source columns are checked per file)."""
    path = Path(path)
    raw = read_toml(path, "mapping file")
    problems: list[Problem] = []
    known = {"source", "labels", "extra", *RECORD_TABLES}
    for key in sorted(set(raw) - known):
        problems.append(Problem(key, f"unknown section; expected some of {sorted(known)}"))
    record_names = [t for t in RECORD_TABLES if t in raw]
    if len(record_names) != 1:
        problems.append(Problem("[shipments] / [leases]", "the mapping needs exactly one record "
                                "table, [shipments] or [leases]; found "
                                f"{record_names or 'none'}"))
        raise MappingError(problems)
    table = RECORD_TABLES[record_names[0]]
    columns: dict[str, Spec] = {}
    for name, entry in raw[table.name].items():
        key = f"{table.name}.{name}"
        if name not in table.column_names:
            problems.append(Problem(key, f"not a column of the contract's {table.name} table; "
                                         f"expected some of {table.column_names}"))
            continue
        spec = _spec(key, entry, problems)
        if spec is not None:
            columns[name] = spec
    for c in table.columns:
        if c.required and c.name not in columns and not any(
                p.key == f"{table.name}.{c.name}" for p in problems):
            problems.append(Problem(f"{table.name}.{c.name}",
                                    "required contract column not mapped (give a source column "
                                    "or a constant: { value = ... })"))
    labels: dict[str, Spec] = {}
    for name, entry in raw.get("labels", {}).items():
        key = f"labels.{name}"
        if name not in LABEL_KEYS:
            problems.append(Problem(key, f"expected some of {list(LABEL_KEYS)} (record_kind and "
                                         "record_id come from the record table)"))
            continue
        spec = _spec(key, entry, problems)
        if spec is not None:
            labels[name] = spec
    if raw.get("labels") and "label" not in labels and not any(
            p.key == "labels.label" for p in problems):
        problems.append(Problem("labels.label", "a [labels] section needs `label`"))
    extra = raw.get("extra", {})
    for key in sorted(set(extra) - {"drop", "keep"}):
        problems.append(Problem(f"extra.{key}", "expected drop or keep"))
    lists = {}
    for key in ("drop", "keep"):
        value = extra.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(f"extra.{key}", f"expected a list of column names, got "
                                                    f"{value!r}"))
            value = []
        lists[key] = value
    source = raw.get("source", {})
    for key in sorted(set(source) - {"delimiter"}):
        problems.append(Problem(f"source.{key}", "expected delimiter"))
    delimiter = source.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        problems.append(Problem("source.delimiter", f"expected one character, got {delimiter!r}"))
        delimiter = ","
    if problems:
        raise MappingError(problems)
    return Mapping(table, columns, labels, lists["drop"], lists["keep"], delimiter, str(path))


def extra_column_name(source_name: str) -> str:
    """The snake_case name an extra column gets: "Net Mass (kg)" → "net_mass_kg"."""
    return re.sub(r"[^0-9a-z]+", "_", source_name.strip().lower()).strip("_") or "column"


# --------------------------------------------------------------------------- reading


def _read_source(path: Path, delimiter: str, problems: list[Problem]) -> pl.DataFrame | None:
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema=False, separator=delimiter, encoding="utf8",
                           raise_if_empty=True)
    except FileNotFoundError:
        problems.append(Problem("SOURCE", "file not found", file=str(path)))
    except Exception as exc:  # polars raises several kinds for unreadable files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        problems.append(Problem("SOURCE", f"cannot be read: {first}", file=str(path)))
    return None


def _text(expr: pl.Expr) -> pl.Expr:
    stripped = expr.cast(pl.String).str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped)


def _source_expr(spec: Spec, frame: pl.DataFrame) -> pl.Expr:
    """The spec's value before conversion: text (or the native type) of the source."""
    expr = _mapped_source(spec, frame)
    if spec.default is not None:
        expr = pl.coalesce(expr.cast(pl.String), pl.lit(str(spec.default)))
    return expr


def _defaulted(spec: Spec, frame: pl.DataFrame) -> pl.Expr:
    """Rows where the spec's default stands in for an empty source value."""
    if spec.default is None:
        return pl.lit(False)
    return _mapped_source(spec, frame).is_null()


def _mapped_source(spec: Spec, frame: pl.DataFrame) -> pl.Expr:
    if spec.value is not None:
        return pl.lit(str(spec.value) if not isinstance(spec.value, bool)
                      else str(spec.value).lower())
    if spec.template is not None:
        parts, last = [], 0
        for m in TEMPLATE_FIELD.finditer(spec.template):
            parts.append(pl.lit(spec.template[last:m.start()]))
            parts.append(_text(pl.col(m.group(1))).fill_null(""))
            last = m.end()
        parts.append(pl.lit(spec.template[last:]))
        return _text(pl.concat_str(parts))
    expr = pl.col(spec.column)
    native = frame.schema[spec.column]
    if spec.map is not None or native == pl.String or spec.fallback:
        expr = _text(expr)
        if spec.map is not None:
            expr = expr.replace(list(spec.map), list(spec.map.values()))
        if spec.fallback:
            fb = _text(pl.col(spec.fallback))
            if spec.map is not None:
                fb = fb.replace(list(spec.map), list(spec.map.values()))
            expr = pl.coalesce(expr, fb)
    return expr


def _convert(spec: Spec, kind: str, expr: pl.Expr, native: pl.DataType | None
             ) -> tuple[pl.Expr, pl.Expr, str]:
    """(converted value, bad mask, what was expected) for a contract column kind."""
    present = expr.is_not_null()
    if kind == FLOAT or (kind == INT and spec.factor != 1.0):
        number = expr.cast(pl.Float64, strict=False) * spec.factor
        ok = number.is_finite()
        if kind == INT:
            ok = ok & (number.round(0) == number)
            return (pl.when(ok).then(number.cast(pl.Int64, strict=False)),
                    present & ~ok.fill_null(False), "a whole number")
        return pl.when(ok).then(number), present & ~ok.fill_null(False), "a finite number"
    if kind == INT:
        number = expr.cast(pl.Float64, strict=False)
        ok = number.is_finite() & (number.round(0) == number)
        return (pl.when(ok).then(number.cast(pl.Int64, strict=False)),
                present & ~ok.fill_null(False), "a whole number")
    if kind == DATE:
        if native is not None and native.is_temporal() and spec.column and not spec.map \
                and not spec.fallback:
            return expr.cast(pl.Date), pl.lit(False), "a date"
        fmt = spec.date_format or "%Y-%m-%d"
        typed = expr.cast(pl.String).str.to_date(fmt, strict=False)
        return typed, present & typed.is_null(), f"a date in the format {fmt}"
    if kind == BOOL:
        low = expr.cast(pl.String).str.to_lowercase()
        typed = (pl.when(low.is_in(["true", "1", "yes"])).then(True)
                 .when(low.is_in(["false", "0", "no"])).then(False))
        return typed, present & typed.is_null(), "true/false, 1/0 or yes/no"
    return expr.cast(pl.String), pl.lit(False), "text"


def _distinct(series: pl.Series) -> list[str]:
    return [str(v) for v in series.drop_nulls().unique(maintain_order=True).head(MAX_VALUES_SHOWN)]


def _map_file(mapping: Mapping, path: Path, frame: pl.DataFrame, problems: list[Problem],
              notes: list[Problem]) -> tuple[pl.DataFrame, pl.DataFrame | None] | None:
    """(record rows, label rows) of one source file, or None when it has problems; rows
    that took a mapping's default are counted in ``notes``."""
    file = str(path)
    before = len(problems)
    available = set(frame.columns)
    specs = [*mapping.columns.values(), *mapping.labels.values()]
    for spec in specs:
        for col in spec.source_columns():
            if col not in available:
                problems.append(Problem(spec.key, f"source column {col!r} not in this file; "
                                                  f"it has {sorted(available)[:30]}",
                                        file=file, column=col))
    for col in [*mapping.drop, *mapping.keep]:
        if col not in available:
            problems.append(Problem("extra.drop" if col in mapping.drop else "extra.keep",
                                    f"source column {col!r} not in this file", file=file,
                                    column=col))
    if len(problems) > before:
        return None
    frame = frame.with_row_index("__row", offset=1)
    table = mapping.record_table
    converted, checks = [], []
    for name, spec in mapping.columns.items():
        kind = table.column(name).kind
        native = frame.schema[spec.column] if spec.column else None
        value, bad, expected = _convert(spec, kind, _source_expr(spec, frame), native)
        converted.append(value.alias(name))
        checks.append((spec, bad.alias(f"__bad_{name}"), _source_expr(spec, frame)
                       .cast(pl.String).alias(f"__text_{name}"), expected))
    label_exprs, label_checks = [], []
    for name, spec in mapping.labels.items():
        kind = {"label": INT, "typology": "string", "decided_on": DATE}[name]
        native = frame.schema[spec.column] if spec.column else None
        value, bad, expected = _convert(spec, kind, _source_expr(spec, frame), native)
        if name == "label":
            bad = bad | (value.is_not_null() & ~value.is_in([0, 1]))
            expected = "0 or 1 (an empty cell: unlabelled)"
        label_exprs.append(value.alias(f"__label_{name}"))
        label_checks.append((spec, bad.alias(f"__bad_label_{name}"), _source_expr(spec, frame)
                             .cast(pl.String).alias(f"__text_label_{name}"), expected))
    defaults = [(spec, _defaulted(spec, frame).alias(f"__default_{i}"))
                for i, spec in enumerate(specs) if spec.default is not None]
    evaluated = frame.select(
        "__row", *converted, *label_exprs,
        *[c for _, b, t, _ in checks + label_checks for c in (b, t)],
        *[d for _, d in defaults])
    for spec, mask in defaults:
        hit = evaluated.filter(pl.col(mask.meta.output_name()))
        if hit.height:
            notes.append(Problem(spec.key, f"empty source value: the default {spec.default!r} "
                                           "was used", file=file, column=spec.column,
                                 rows=hit["__row"].head(MAX_ROWS_SHOWN).to_list(),
                                 count=hit.height))
    for spec, bad, text, expected in checks + label_checks:
        hit = evaluated.filter(pl.col(bad.meta.output_name()))
        if hit.height:
            problems.append(Problem(spec.key, f"expected {expected}", file=file,
                                    column=spec.column or spec.template or None,
                                    rows=hit["__row"].head(MAX_ROWS_SHOWN).to_list(),
                                    count=hit.height,
                                    values=_distinct(hit[text.meta.output_name()])))
    if len(problems) > before:
        return None
    records = evaluated.select("__row", *mapping.columns)
    # extras: every column no entry reads as column/fallback (plus `keep`, minus `drop`)
    consumed = mapping.consumed() - set(mapping.keep)
    extras = [c for c in frame.columns if c != "__row" and c not in consumed
              and c not in mapping.drop]
    names: dict[str, str] = {}
    for col in extras:
        name = extra_column_name(col)
        if name in table.column_names or name in names.values() or name.startswith("__"):
            problems.append(Problem("extra", f"extra column {col!r} would be named {name!r}, "
                                             "which is taken (a contract column or another "
                                             "extra); drop it or map it", file=file, column=col))
            continue
        names[col] = name
    if len(problems) > before:
        return None
    records = records.with_columns(
        (frame[c].cast(pl.String) if frame.schema[c] == pl.Categorical else frame[c])
        .alias(n) for c, n in names.items())
    labels = None
    if mapping.labels:
        id_column = table.id_column
        labels = evaluated.select(
            pl.lit("shipment" if table.name == "shipments" else "lease").alias("record_kind"),
            pl.col(id_column).alias("record_id"),
            pl.col("__label_label").alias("label"),
            (pl.col("__label_typology") if "typology" in mapping.labels
             else pl.lit(None, pl.String)).alias("typology"),
            (pl.col("__label_decided_on") if "decided_on" in mapping.labels
             else pl.lit(None, pl.Date)).alias("decided_on"),
        ).filter(pl.col("label").is_not_null())
    return records, labels


# --------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    out_dir: Path
    records: int
    labels: int
    confirmed: int
    files: list[str]
    extra_columns: list[str]
    warnings: list[str]
    record_table: str


def _file_rows(bounds: list[tuple[str, int, int]], row: int) -> tuple[str, int]:
    """(file, row in that file) of a row of the combined table (1-based)."""
    for file, first, n in bounds:
        if first <= row < first + n:
            return file, row - first + 1
    return "?", row


def import_data(sources: list[str | Path], out_dir: str | Path, mapping_path: str | Path,
                log=lambda _: None, progress=None) -> ImportResult:
    """Map ``sources`` into a contract dataset in ``out_dir`` (Parquet tables).

    All problems are collected and raised together as a `MappingError`; nothing is
    written unless every row of every file maps and passes the contract's checks.
    ``progress`` (detector.progress.Progress) receives the phases of the work.
    """
    from detector.progress import Progress

    progress = progress or Progress.silent()
    mapping = load_mapping(mapping_path)
    out_dir = Path(out_dir)
    existing = [p.name for t in INPUT_TABLES for p in (out_dir / f"{t}.csv",
                                                        out_dir / f"{t}.parquet") if p.exists()]
    if existing:
        raise InputError(f"{out_dir}: already holds {existing}; import into a new or empty "
                         "directory")
    if not sources:
        raise InputError("import: give at least one SOURCE file")
    problems: list[Problem] = []
    notes: list[Problem] = []
    records, labels, bounds = [], [], []
    row = 1
    for source in sources:
        path = Path(source)
        with progress.phase(f"read and map {path}") as phase:
            frame = _read_source(path, mapping.delimiter, problems)
            if frame is None:
                continue
            mapped = _map_file(mapping, path, frame, problems, notes)
            phase.finish(f"{frame.height:,} rows")
        if mapped is None:
            continue
        recs, labs = mapped
        bounds.append((str(path), row, recs.height))
        row += recs.height
        records.append(recs.drop("__row"))
        if labs is not None:
            labels.append(labs)
    if problems:
        raise MappingError(problems)
    table = mapping.record_table
    combined = pl.concat(records, how="diagonal_relaxed")
    extra_columns = [c for c in combined.columns if c not in table.column_names]
    combined_labels = pl.concat(labels) if labels else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".detector-import-", dir=out_dir.parent))
    with progress.phase(f"check {combined.height:,} records against the contract and "
                        f"write {out_dir}"):
        try:
            write_table(combined, staging / f"{table.name}.parquet")
            if combined_labels is not None:
                write_table(combined_labels, staging / f"{LABELS.name}.parquet")
            try:
                dataset = read_dataset(staging)
            except FatalInputError as exc:
                raise MappingError(_contract_problems(exc.report.errors, mapping,
                                                      bounds)) from None
            out_dir.mkdir(parents=True, exist_ok=True)
            written = []
            try:
                for p in sorted(staging.iterdir()):
                    os.replace(p, out_dir / p.name)
                    written.append(out_dir / p.name)
            except OSError:
                for p in written:
                    p.unlink(missing_ok=True)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    warnings = [*[str(n) for n in notes],
                *[str(_translate(i, mapping, bounds)) for i in dataset.report.warnings]]
    n_labels = dataset.labels.height
    return ImportResult(out_dir, combined.height, n_labels,
                        int(dataset.labels["label"].sum()) if n_labels else 0,
                        [b[0] for b in bounds], extra_columns, warnings, table.name)


def _key_for(column: str | None, table_name: str, mapping: Mapping) -> str:
    if table_name == "labels":
        name = {"label": "label", "typology": "typology", "decided_on": "decided_on"}.get(
            column or "", None)
        return f"labels.{name}" if name else "labels"
    if column and column in mapping.columns:
        return mapping.columns[column].key
    return f"{table_name}.{column}" if column else table_name


def _translate(issue, mapping: Mapping, bounds) -> Problem:
    """A contract problem found in the mapped table, named by mapping key and source file."""
    table_name = issue.file.split(".")[0]
    rows = [_file_rows(bounds, r) for r in issue.rows]
    files = sorted({f for f, _ in rows})
    spec = mapping.columns.get(issue.column or "") if table_name != "labels" else \
        mapping.labels.get(issue.column or "")
    source_column = spec.column if spec is not None else None
    return Problem(_key_for(issue.column, table_name, mapping),
                   f"{issue.severity}: {issue.message} (contract column {issue.column})",
                   file=", ".join(files) if files else None, column=source_column,
                   rows=[r for _, r in rows], count=issue.count, values=issue.values)


def _contract_problems(issues, mapping: Mapping, bounds) -> list[Problem]:
    return [_translate(i, mapping, bounds) for i in issues]
