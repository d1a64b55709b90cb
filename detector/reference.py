"""Reference data: the chip catalogue, country groups, HS codes and the screening list.

The values live in the CSV files of the ``data`` package (see data/README.md for their
sources and how to correct them); this module reads, types and checks them. The only
figures kept in code are the ECCN 3A090 thresholds, which are rule constants.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

import polars as pl

from detector.errors import InputError
from detector.settings import SCREENING_LIST_ENV

REFERENCE_FILES = ("chips.csv", "country_groups.csv", "hs_codes.csv")

# ---------------------------------------------------------------- ECCN 3A090 / 4A090
# 15 CFR 774 Supp. 1, ECCN 3A090 as amended by the rule of Oct 2023 (in force Nov 2023);
# figures as summarised in FACTS.md "Control parameters". TPP in TOPS x bit length,
# performance density (PD) = TPP / die area in mm2.
TPP_3A090A = 4800.0  # 3A090.a: TPP >= 4800 ...
TPP_3A090A_DENSE = 1600.0  # ... or TPP >= 1600 with PD >= 5.92
PD_3A090A = 5.92
TPP_3A090B_LOW = 2400.0  # 3A090.b: 2400 <= TPP < 4800 with 1.6 <= PD < 5.92 ...
PD_3A090B_LOW = 1.6
TPP_3A090B_DENSE = 1600.0  # ... or TPP >= 1600 with 3.2 <= PD < 5.92
PD_3A090B_DENSE = 3.2
# Items not designed or marketed for data centres are excluded below this TPP (Note to
# 3A090: gaming parts); at or above it they are caught like any other IC.
TPP_NON_DATACENTRE_EXCLUSION = 4800.0

NOT_CONTROLLED = "not controlled"
UNCLASSIFIED = "unknown"  # the catalogue lacks the figure the rule needs
ITEM_KINDS = ("chip", "server")


def classify_eccn(tpp: float | None, performance_density: float | None, datacenter: bool,
                  item_kind: str) -> str:
    """ECCN of a catalogue item under 3A090 / 4A090.

    ``tpp`` and ``performance_density`` are per GPU; a server (``item_kind="server"``)
    is a 4A090 computer when the GPUs it contains are 3A090 ICs. Returns "3A090.a",
    "3A090.b", "4A090.a", "4A090.b", "not controlled", or "unknown" when the TPP (or a
    density needed to decide) is missing.
    """
    if item_kind not in ITEM_KINDS:
        raise ValueError(f"item_kind must be one of {ITEM_KINDS}, got {item_kind!r}")
    if tpp is None or (isinstance(tpp, float) and math.isnan(tpp)):
        return UNCLASSIFIED
    pd_ = None if performance_density is None or math.isnan(performance_density) \
        else performance_density
    if not datacenter and tpp < TPP_NON_DATACENTRE_EXCLUSION:
        return NOT_CONTROLLED
    if tpp >= TPP_3A090A or (tpp >= TPP_3A090A_DENSE and pd_ is not None and pd_ >= PD_3A090A):
        paragraph = "a"
    elif pd_ is None:
        # Between 1600 and 4800 the density decides; below 1600 nothing is caught.
        return UNCLASSIFIED if tpp >= TPP_3A090B_DENSE else NOT_CONTROLLED
    elif ((TPP_3A090B_LOW <= tpp < TPP_3A090A and PD_3A090B_LOW <= pd_ < PD_3A090A)
          or (tpp >= TPP_3A090B_DENSE and PD_3A090B_DENSE <= pd_ < PD_3A090A)):
        paragraph = "b"
    else:
        return NOT_CONTROLLED
    return ("4A090." if item_kind == "server" else "3A090.") + paragraph


def is_controlled(eccn: str | None) -> bool:
    return eccn is not None and eccn.startswith(("3A090", "4A090"))


# ---------------------------------------------------------------- reading the files

_CHIP_COLUMNS: dict[str, pl.DataType] = {
    "model": pl.String(),
    "vendor": pl.String(),
    "family": pl.String(),
    "item_kind": pl.String(),
    "gpus_per_unit": pl.Int64(),
    "datacenter": pl.Boolean(),
    "tpp": pl.Float64(),
    "die_area_mm2": pl.Float64(),
    "price_low_usd": pl.Float64(),
    "price_high_usd": pl.Float64(),
    "unit_weight_kg": pl.Float64(),
    "release_date": pl.Date(),
    "extra_licence_from": pl.Date(),
    "patterns": pl.String(),
    "source": pl.String(),
}
_CHIP_REQUIRED = ("model", "vendor", "family", "item_kind", "gpus_per_unit", "datacenter",
                  "patterns")

_GROUP_COLUMNS: dict[str, pl.DataType] = {
    "country": pl.String(),
    "group": pl.String(),
    "confirmed": pl.Boolean(),
    "effective_from": pl.Date(),
    "source": pl.String(),
}

_HS_COLUMNS: dict[str, pl.DataType] = {
    "hs6": pl.String(),
    "description": pl.String(),
    "item_role": pl.String(),
    "typical_for_gpus": pl.Boolean(),
}


def _read_typed(path: Path, columns: dict[str, pl.DataType],
                required: tuple[str, ...]) -> pl.DataFrame:
    """Read a reference CSV as text, cast each column, and name every bad cell."""
    name = path.name
    try:
        raw = pl.read_csv(path, infer_schema=False, encoding="utf8")
    except Exception as exc:  # polars raises several kinds for unreadable files
        raise InputError(f"{path}: cannot be read as CSV: {str(exc).splitlines()[0][:200]}")
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; expected {list(columns)}, "
                         f"found {raw.columns}")
    problems: list[str] = []
    exprs = []
    for column, dtype in columns.items():
        text = pl.col(column).str.strip_chars()
        text = pl.when(text.str.len_chars() > 0).then(text)
        if dtype == pl.Boolean:
            low = text.str.to_lowercase()
            typed = pl.when(low == "true").then(True).when(low == "false").then(False)
        elif dtype == pl.Date:
            typed = text.str.to_date("%Y-%m-%d", strict=False)
        else:
            typed = text.cast(dtype, strict=False)
        exprs.append(typed.alias(column))
    typed_df = raw.select(exprs)
    for column, dtype in columns.items():
        text = raw[column].str.strip_chars()
        present = text.is_not_null() & (text.str.len_chars() > 0)
        bad = present & typed_df[column].is_null()
        missing_value = ~present if column in required else pl.Series([False] * raw.height)
        for mask, what in ((bad, f"expected {dtype}"), (missing_value, "required value empty")):
            rows = [i + 2 for i in mask.arg_true().to_list()]  # +2: header is line 1
            if rows:
                values = raw[column].gather([r - 2 for r in rows[:5]]).to_list()
                problems.append(f"{name}, column '{column}': {what} (lines {rows[:5]}"
                                f"{' and more' if len(rows) > 5 else ''}); values: {values}")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))
    return typed_df


def _fail_rows(path: Path, column: str, message: str, mask: pl.Series,
               values: pl.Series) -> None:
    if mask.any():
        rows = [i + 2 for i in mask.arg_true().to_list()]
        shown = values.filter(mask).head(5).to_list()
        raise InputError(f"{path}, column '{column}': {message} (lines {rows[:5]}); "
                         f"values: {shown}")


def _read_chips(path: Path) -> pl.DataFrame:
    chips = _read_typed(path, _CHIP_COLUMNS, _CHIP_REQUIRED)
    _fail_rows(path, "model", "duplicate model", chips["model"].is_duplicated(), chips["model"])
    _fail_rows(path, "item_kind", f"expected one of {ITEM_KINDS}",
               ~chips["item_kind"].is_in(list(ITEM_KINDS)), chips["item_kind"])
    _fail_rows(path, "gpus_per_unit", "expected a count of at least 1",
               chips["gpus_per_unit"] < 1, chips["gpus_per_unit"])
    for column in ("tpp", "die_area_mm2", "price_low_usd", "price_high_usd", "unit_weight_kg"):
        _fail_rows(path, column, "expected a positive number",
                   (chips[column] <= 0).fill_null(False), chips[column])
    _fail_rows(path, "price_high_usd", "price_high_usd is below price_low_usd",
               (chips["price_high_usd"] < chips["price_low_usd"]).fill_null(False),
               chips["price_high_usd"])
    bad_pattern = pl.Series([_pattern_error(p) is not None for p in chips["patterns"]])
    if bad_pattern.any():
        i = bad_pattern.arg_true()[0]
        raise InputError(f"{path}, column 'patterns', line {i + 2}: "
                         f"{_pattern_error(chips['patterns'][i])}")

    density = [t / a if t is not None and a else None
               for t, a in zip(chips["tpp"], chips["die_area_mm2"])]
    eccn = [classify_eccn(t, d, dc, k) for t, d, dc, k in
            zip(chips["tpp"], density, chips["datacenter"], chips["item_kind"])]
    return chips.with_columns(
        pl.Series("performance_density", density, dtype=pl.Float64),
        pl.Series("eccn", eccn, dtype=pl.String),
        pl.Series("controlled", [is_controlled(e) for e in eccn], dtype=pl.Boolean),
    )


def _pattern_error(pattern: str) -> str | None:
    """Why a catalogue pattern is unusable by Python ``re`` or polars (Rust regex), if it is."""
    try:
        re.compile(pattern, re.IGNORECASE)
        pl.Series([""]).str.contains("(?i)" + pattern)
    except Exception as exc:
        return f"pattern {pattern!r} is not a valid regular expression: {exc}"
    if re.search(pattern, "", re.IGNORECASE):
        return f"pattern {pattern!r} matches an empty description"
    return None


def _read_country_groups(path: Path) -> pl.DataFrame:
    from detector.contract import iso_country_codes

    groups = _read_typed(path, _GROUP_COLUMNS, ("country", "group", "confirmed"))
    groups = groups.with_columns(pl.col("country").str.to_uppercase(), pl.col("group"))
    _fail_rows(path, "country", "expected an ISO 3166-1 alpha-2 country code",
               ~groups["country"].is_in(sorted(iso_country_codes())), groups["country"])
    key = pl.struct("country", "group")
    _fail_rows(path, "country", "country listed twice in one group",
               groups.select(key.is_duplicated()).to_series(), groups["country"])
    return groups


def _read_hs_codes(path: Path) -> pl.DataFrame:
    hs = _read_typed(path, _HS_COLUMNS, ("hs6", "item_role", "typical_for_gpus"))
    _fail_rows(path, "hs6", "expected 6 digits", ~hs["hs6"].str.contains(r"^[0-9]{6}$"),
               hs["hs6"])
    _fail_rows(path, "hs6", "duplicate code", hs["hs6"].is_duplicated(), hs["hs6"])
    return hs


@dataclass(frozen=True)
class Reference:
    """The typed reference tables and a version string for provenance."""

    chips: pl.DataFrame  # chips.csv typed + performance_density, eccn, controlled
    country_groups: pl.DataFrame  # country, group, confirmed, effective_from, source
    hs_codes: pl.DataFrame  # hs6, description, item_role, typical_for_gpus
    version: str  # short sha256 of the reference files' bytes

    @property
    def groups(self) -> list[str]:
        return sorted(self.country_groups["group"].unique().to_list())

    def countries(self, group: str, confirmed_only: bool = False,
                  on: date | None = None) -> list[str]:
        """Sorted country codes of ``group`` (optionally only confirmed, or in force ``on``)."""
        if group not in self.groups:
            raise ValueError(f"unknown country group {group!r}; known: {self.groups}")
        rows = self.country_groups.filter(pl.col("group") == group)
        if confirmed_only:
            rows = rows.filter(pl.col("confirmed"))
        if on is not None:
            rows = rows.filter(pl.col("effective_from").is_null()
                               | (pl.col("effective_from") <= on))
        return sorted(set(rows["country"].to_list()))

    def licence_required_countries(self) -> list[str]:
        """Destinations needing a licence for 3A090/4A090 items (FACTS.md, §744.23).

        D:1, D:4 and D:5 unless also in A:5 or A:6, plus Macau and the places treated as
        China (Hong Kong, [U]).
        """
        embargoed = set().union(*(self.countries(g) for g in ("D:1", "D:4", "D:5")))
        exempt = set(self.countries("A:5")) | set(self.countries("A:6"))
        named = set(self.countries("MACAU")) | set(self.countries("TREATED_AS_CN"))
        return sorted((embargoed - exempt) | named)

    def chip(self, model: str) -> dict:
        """One catalogue row as a dict, by model name."""
        row = self.chips.filter(pl.col("model") == model)
        if row.height != 1:
            raise KeyError(f"no chip model {model!r} in the catalogue")
        return row.row(0, named=True)

    def match_chip(self, description: str | None) -> str | None:
        """The catalogue model a free-text description names (first matching row wins)."""
        if description is None:
            return None
        for model, pattern in zip(self.chips["model"], self.chips["patterns"]):
            if re.search(pattern, description, re.IGNORECASE):
                return model
        return None


def chip_model_expr(description: pl.Expr, chips: pl.DataFrame) -> pl.Expr:
    """A polars expression (named ``chip_model``) giving the catalogue model named in
    ``description``, or null.

    Rows are tried in catalogue order and the first match wins, as in
    :meth:`Reference.match_chip`.
    """
    expr = pl.lit(None, pl.String)
    for model, pattern in reversed(list(zip(chips["model"], chips["patterns"]))):
        expr = pl.when(description.str.contains("(?i)" + pattern)).then(pl.lit(model)) \
            .otherwise(expr)
    return expr.alias("chip_model")


def read_reference(directory: Path) -> Reference:
    """Read and check the reference tables in ``directory`` (uncached)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in REFERENCE_FILES:
        path = directory / name
        if not path.is_file():
            raise InputError(f"{path}: reference file missing (expected "
                             f"{', '.join(REFERENCE_FILES)} in {directory})")
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return Reference(
        chips=_read_chips(directory / "chips.csv"),
        country_groups=_read_country_groups(directory / "country_groups.csv"),
        hs_codes=_read_hs_codes(directory / "hs_codes.csv"),
        version=digest.hexdigest()[:12],
    )


def reference_directory() -> Path:
    import data

    return Path(str(data.path("chips.csv"))).parent


@cache
def load_reference() -> Reference:
    """The reference data shipped in the ``data`` package (read once per process)."""
    return read_reference(reference_directory())


# ---------------------------------------------------------------- screening lists

# Columns that identify the official Consolidated Screening List download.
_CSL_COLUMNS = ("name", "alt_names", "addresses", "source", "start_date")


def default_screening_list_path() -> Path:
    """The small demo list shipped with the package (data/screening_list.csv)."""
    return reference_directory() / "screening_list.csv"


def _header(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        return list(pl.read_parquet_schema(path).keys())
    return list(pl.scan_csv(path, infer_schema=False, encoding="utf8", n_rows=0)
                .collect_schema().names())


def read_screening_list(path: str | Path) -> pl.DataFrame:
    """A screening list in the contract's reduced shape, from either accepted form.

    Accepts the contract's reduced shape (name, alt_names, country, address, list_name,
    start_date) or the US Consolidated Screening List as downloaded from trade.gov (its
    29 columns; ``source`` becomes ``list_name``). A CSL entry with several addresses
    becomes one row per address, each with the country code that ends it; an entry
    without an address becomes one row without one. CSV or Parquet.
    """
    from detector.contract import SCREENING_LIST
    from detector.tables import ValidationReport, read_table

    path = Path(path)
    expected = ("the contract's screening list (name, alt_names, country, address, list_name, "
                "start_date) or the US Consolidated Screening List download (name, alt_names, "
                "addresses, source, start_date, ...)")
    if not path.is_file():
        raise InputError(f"{path}: screening list not found (expected a CSV or Parquet file: "
                         f"{expected})")
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"{path}: screening list must be a .csv or .parquet file")
    try:
        header = _header(path)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{path}: cannot be read as {path.suffix[1:].upper()}: {first}; "
                         f"expected {expected}") from None
    keys = {h.strip().lower().lstrip("\ufeff") for h in header}
    if {"name", "list_name"} <= keys:
        report = ValidationReport()
        read = read_table(path, SCREENING_LIST, report, label=str(path))
        if not report.ok or not read.readable:
            raise InputError(report.text())
        return read.data
    if set(_CSL_COLUMNS) <= keys:
        return _read_csl(path, header)
    raise InputError(f"{path}: not a screening list: expected {expected}; "
                     f"found columns {header[:12]}")


def _read_csl(path: Path, header: list[str]) -> pl.DataFrame:
    from detector.contract import SCREENING_LIST, iso_country_codes

    try:
        if path.suffix.lower() == ".parquet":
            raw = pl.read_parquet(path)
            raw = raw.select(pl.col(c).cast(pl.String) for c in raw.columns)
        else:
            raw = pl.read_csv(path, infer_schema=False, encoding="utf8")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{path}: cannot be read as a Consolidated Screening List: "
                         f"{first}") from None
    raw = raw.rename({h: h.strip().lower().lstrip("\ufeff") for h in header})

    def text(column: str) -> list[str | None]:
        values = raw[column].str.strip_chars().to_list()
        return [v if v else None for v in values]

    names, alts, addresses = text("name"), raw["alt_names"].to_list(), raw["addresses"].to_list()
    sources, starts = text("source"), text("start_date")
    _csl_require(path, "name", names)
    _csl_require(path, "source", sources)
    parsed = pl.Series(starts, dtype=pl.String).str.to_date("%Y-%m-%d", strict=False)
    bad = [i + 2 for i, (s, d) in enumerate(zip(starts, parsed)) if s is not None and d is None]
    if bad:
        raise InputError(f"{path}, column 'start_date': expected a date YYYY-MM-DD (lines "
                         f"{bad[:5]}); values: {[starts[i - 2] for i in bad[:5]]}")
    codes = iso_country_codes()
    out: dict[str, list] = {c: [] for c in SCREENING_LIST.column_names}
    for name, alt, addr, source, start in zip(names, alts, addresses, sources, parsed):
        alt_list = [a.strip() for a in (alt or "").split(";") if a.strip()]
        for address, country in _split_addresses(addr, codes) or [(None, None)]:
            out["name"].append(name)
            out["alt_names"].append(alt_list or None)  # empty cell = null, as in the contract
            out["country"].append(country)
            out["address"].append(address)
            out["list_name"].append(source)
            out["start_date"].append(start)
    return pl.DataFrame(out, schema=SCREENING_LIST.schema)


def _csl_require(path: Path, column: str, values: list[str | None]) -> None:
    empty = [i + 2 for i, v in enumerate(values) if v is None]
    if empty:
        raise InputError(f"{path}, column '{column}': required value is empty (lines "
                         f"{empty[:5]}{' and more' if len(empty) > 5 else ''}; "
                         f"{len(empty)} in all)")


def _split_addresses(addresses: str | None,
                     codes: frozenset[str]) -> list[tuple[str, str | None]]:
    """CSL ``addresses`` → (address, country) pairs.

    The CSL joins addresses with '; ' and ends each with its ISO country code, but an
    address's own text may contain '; and ...' (Entity List wording): segments are
    joined until one ends with a country code, so such an address stays whole.
    """
    result: list[tuple[str, str | None]] = []
    pending: list[str] = []
    for raw_segment in (addresses or "").split(";"):
        segment = raw_segment.strip()
        if not segment:
            continue
        pending.append(segment)
        last = segment.rsplit(",", 1)[-1].strip()
        if last in codes:
            result.append(("; ".join(pending), last))
            pending = []
    if pending:
        result.append(("; ".join(pending), None))
    return result


def resolve_screening_list(explicit: Path | None,
                           dataset_screening_list: pl.DataFrame | None
                           ) -> tuple[pl.DataFrame, str]:
    """The screening list to use and a line saying where it came from (CLI.md precedence).

    An explicit ``--screening-list`` path; else the dataset's own screening_list table;
    else the file named by ``DETECTOR_SCREENING_LIST``; else the shipped demo list.
    """
    if explicit is not None:
        frame, origin = read_screening_list(explicit), Path(explicit).name
    elif dataset_screening_list is not None:
        frame, origin = dataset_screening_list, "the dataset's screening_list table"
    elif os.environ.get(SCREENING_LIST_ENV, "").strip():
        env_path = Path(os.environ[SCREENING_LIST_ENV].strip())
        try:
            frame = read_screening_list(env_path)
        except InputError as exc:
            raise InputError(f"{SCREENING_LIST_ENV}={env_path}: {exc}") from None
        origin = f"{env_path.name} (from {SCREENING_LIST_ENV})"
    else:
        frame = read_screening_list(default_screening_list_path())
        origin = "screening_list.csv (demo list shipped with the package)"
    latest = frame["start_date"].max() if frame.height else None
    dated = f"latest start_date {latest}" if latest is not None else "no start dates"
    return frame, f"{origin} ({frame.height:,} entries, {dated})"
