"""The data contract (../shared/contract/DATA_CONTRACT.md) in one module.

Every table's columns, types, requirements and enums are declared here once; reading,
normalising, validating, quarantining and writing (detector.tables) all work from these
declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import polars as pl

# Column kinds. Each maps to one polars dtype after reading.
STRING = "string"
DATE = "date"
INT = "integer"
FLOAT = "float"
BOOL = "bool"
COUNTRY = "country"
ENUM = "enum"
COUNTRY_LIST = "list of country"
STRING_LIST = "list of string"

POLARS_TYPES: dict[str, pl.DataType] = {
    STRING: pl.String(),
    DATE: pl.Date(),
    INT: pl.Int64(),
    FLOAT: pl.Float64(),
    BOOL: pl.Boolean(),
    COUNTRY: pl.String(),
    ENUM: pl.String(),
    COUNTRY_LIST: pl.List(pl.String()),
    STRING_LIST: pl.List(pl.String()),
}

UNKNOWN = "unknown"
LIST_SEPARATOR = ";"
MAX_ROWS_SHOWN = 5
MAX_VALUES_SHOWN = 5


def rows_and_values(rows: list, count: int, values: list) -> str:
    """" (rows 2, 7 and 3 more; 5 in all); values: 'x'" — the tail of a problem message
    (validation and import say rows and values the same way)."""
    text = ""
    if count:
        shown = ", ".join(str(r) for r in rows[:MAX_ROWS_SHOWN])
        more = f" and {count - MAX_ROWS_SHOWN} more" if count > MAX_ROWS_SHOWN else ""
        text += f" (rows {shown}{more}; {count} in all)"
    if values:
        text += "; values: " + ", ".join(repr(v) for v in values[:MAX_VALUES_SHOWN])
    return text


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    required: bool = False
    values: tuple[str, ...] = ()  # the allowed values of an enum
    pattern: str | None = None  # a regular expression the text must match (hs_code)
    pattern_hint: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    id_column: str | None = None
    date_column: str | None = None
    required: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return {c.name: POLARS_TYPES[c.kind] for c in self.columns}


def _enum(name: str, *values: str) -> Column:
    return Column(name, ENUM, values=values)


SHIPMENTS = Table(
    "shipments",
    (
        Column("shipment_id", STRING, True),
        Column("export_date", DATE, True),
        Column("exporter_name", STRING, True),
        Column("exporter_country", COUNTRY, True),
        Column("consignee_name", STRING, True),
        Column("consignee_country", COUNTRY, True),
        Column("consignee_address", STRING),
        _enum("consignee_type", "direct_consumer", "government", "reseller", "other", UNKNOWN),
        Column("consignee_party_id", STRING),
        Column("intermediate_consignee_name", STRING),
        Column("intermediate_consignee_country", COUNTRY),
        Column("forwarder_name", STRING),
        Column("destination_country", COUNTRY, True),
        Column("transit_countries", COUNTRY_LIST),
        _enum("transport_mode", "air", "vessel", "truck", "rail", "courier", "mail", "other",
              UNKNOWN),
        Column("hs_code", STRING, True, pattern=r"^[0-9]{6,10}$",
               pattern_hint="6 to 10 digits, dots allowed"),
        Column("eccn", STRING),
        _enum("license_type", "license", "nlr", "exception", UNKNOWN),
        Column("description", STRING, True),
        Column("quantity", INT, True),
        Column("value_usd", FLOAT, True),
        Column("gross_weight_kg", FLOAT),
        Column("incoterm", STRING),
        Column("routed_export", BOOL),
        Column("related_party", BOOL),
        Column("payer_name", STRING),
        Column("payer_country", COUNTRY),
        _enum("payment_method", "wire", "letter_of_credit", "open_account", "cash", "crypto",
              "third_party", UNKNOWN),
        Column("declared_end_use", STRING),
    ),
    id_column="shipment_id",
    date_column="export_date",
    required=True,
)

PARTIES = Table(
    "parties",
    (
        Column("party_id", STRING, True),
        Column("name", STRING, True),
        Column("aliases", STRING_LIST),
        Column("country", COUNTRY, True),
        Column("address", STRING),
        Column("incorporation_date", DATE),
        Column("parent_party_id", STRING),
        _enum("industry", "cloud_provider", "data_center", "oem", "distributor", "reseller",
              "logistics", "trading", "university", "research", "manufacturer", "government",
              "other", UNKNOWN),
        Column("employees", INT),
        Column("registration_id", STRING),
    ),
    id_column="party_id",
)

LEASES = Table(
    "leases",
    (
        Column("lease_id", STRING, True),
        Column("provider_name", STRING, True),
        Column("provider_party_id", STRING),
        Column("datacenter_country", COUNTRY, True),
        Column("lessee_name", STRING, True),
        Column("lessee_party_id", STRING),
        Column("lessee_country", COUNTRY, True),
        Column("gpu_model", STRING, True),
        Column("gpu_count", INT, True),
        Column("start_date", DATE, True),
        Column("term_months", INT),
        Column("value_usd", FLOAT),
        Column("payer_country", COUNTRY),
        _enum("access_type", "bare_metal", "dedicated_vm", "shared_vm", "managed_service",
              UNKNOWN),
    ),
    id_column="lease_id",
    date_column="start_date",
)

LABELS = Table(
    "labels",
    (
        Column("record_kind", ENUM, True, values=("shipment", "lease")),
        Column("record_id", STRING, True),
        Column("label", INT, True),
        Column("typology", STRING),
        Column("decided_on", DATE),
    ),
)

SCREENING_LIST = Table(
    "screening_list",
    (
        Column("name", STRING, True),
        Column("alt_names", STRING_LIST),
        Column("country", COUNTRY),
        Column("address", STRING),
        Column("list_name", STRING, True),
        Column("start_date", DATE),
    ),
)

SCORES = Table(
    "scores",
    (
        Column("record_kind", STRING, True),
        Column("record_id", STRING, True),
        Column("risk_score", FLOAT, True),
        Column("rank", INT, True),
        Column("reasons", STRING, True),
        Column("model", STRING, True),
        # v2 (after `model`, in this order; may be null)
        _enum("likely_scheme", "transshipment", "shell_company", "restricted_parent",
              "cloud_lease", "misdeclaration", "splitting", "screening_evasion", "unclear"),
        Column("scheme_confidence", FLOAT),
        _enum("queue_reason", "risk", "explore"),
        Column("record_date", DATE),
        Column("counterparty", STRING),
        Column("destination", COUNTRY),
        Column("goods", STRING),
        Column("quantity", INT),
        Column("value_usd", FLOAT),
    ),
)

INPUT_TABLES: dict[str, Table] = {
    t.name: t for t in (SHIPMENTS, PARTIES, LEASES, LABELS, SCREENING_LIST)
}
RECORD_TABLES = {"shipment": SHIPMENTS, "lease": LEASES}


@cache
def iso_country_codes() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes (pycountry's copy of the standard)."""
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries)


# Text rules of the contract's files (applied by detector.tables)
# Spreadsheets run a cell that starts with one of these as a formula (OWASP CSV injection).
FORMULA_STARTS = "=+-@\t\r"
FORMULA_PREFIX = "'"
# Bidirectional controls reorder how text is shown (a name can display as another);
# in CSV they are written as visible escapes such as \u202e.
BIDI_CONTROLS = ("\u061c", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d",
                 "\u202e", "\u2066", "\u2067", "\u2068", "\u2069")
