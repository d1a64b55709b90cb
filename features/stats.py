"""Statistics learned from training data and applied as literals at scoring time.

A batch being scored never changes these numbers: they are fitted once
(`features.build.fit_feature_stats`), stored with the model as a JSON-able dict, and
written into the feature expressions as constants.

Neutral defaults (``FeatureStats.default()``, used when ``stats=None``):
- no learned medians: `unit_value_to_learned_median` is null and the lease price is
  compared with the catalogue reference (price_low / 36 months) only;
- category codes: every ISO 3166 country in alphabetical order, and each contract enum
  in the contract's order (so codes are stable without any training data);
- the splitting threshold: a line worth less than $50,000 is "sub-threshold";
- no unit-value peers (peer features null), no configured inputs, no stored decisions
  (case memory counts 0, rates null).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from detector.contract import LEASES, PARTIES, SHIPMENTS, iso_country_codes

STATS_VERSION = 1
DEFAULT_SMALL_SHIPMENT_VALUE_USD = 50_000.0
# Months over which a catalogue purchase price is spread as a rough market lease price.
MARKET_LEASE_MONTHS = 36.0

UNKNOWN_CODE = -1  # a category value not in the map


def _enum_codes(table, column: str) -> dict[str, int]:
    return {v: i for i, v in enumerate(table.column(column).values)}


def default_category_maps() -> dict[str, dict[str, int]]:
    countries = {c: i for i, c in enumerate(sorted(iso_country_codes()))}
    return {
        "country": countries,
        "payment_method": _enum_codes(SHIPMENTS, "payment_method"),
        "transport_mode": _enum_codes(SHIPMENTS, "transport_mode"),
        "consignee_type": _enum_codes(SHIPMENTS, "consignee_type"),
        "license_type": _enum_codes(SHIPMENTS, "license_type"),
        "industry": _enum_codes(PARTIES, "industry"),
        "access_type": _enum_codes(LEASES, "access_type"),
        "chip_model": {},
    }


@dataclass(frozen=True)
class FeatureStats:
    """Learned statistics; see the module docstring for what each default means."""

    median_value_per_gpu_by_model: dict[str, float] = field(default_factory=dict)
    median_price_per_gpu_month_by_model: dict[str, float] = field(default_factory=dict)
    category_maps: dict[str, dict[str, int]] = field(default_factory=default_category_maps)
    small_shipment_value_usd: float = DEFAULT_SMALL_SHIPMENT_VALUE_USD
    fitted_rows: int = 0
    # features.learned: {basis: {level: {hs code: [median, spread, lines]}}}
    unit_value_peers: dict = field(default_factory=dict)
    # features.learned: {"categorical": {column: {value: code}}, "numeric": [column, ...]}
    inputs: dict = field(default_factory=dict)
    # features.case_memory: the decisions known at training, with their cut-off date
    case_memory: dict = field(default_factory=dict)
    version: int = STATS_VERSION

    @classmethod
    def default(cls) -> FeatureStats:
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureStats:
        version = data.get("version", STATS_VERSION)
        if version != STATS_VERSION:
            raise ValueError(f"feature stats version {version}: expected {STATS_VERSION}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"feature stats: unexpected keys {sorted(unknown)}; "
                             f"expected some of {sorted(known)}")
        maps = default_category_maps()
        maps.update({k: {str(a): int(b) for a, b in v.items()}
                     for k, v in data.get("category_maps", {}).items()})
        return cls(
            median_value_per_gpu_by_model={str(k): float(v) for k, v in
                                           data.get("median_value_per_gpu_by_model", {}).items()},
            median_price_per_gpu_month_by_model={
                str(k): float(v) for k, v in
                data.get("median_price_per_gpu_month_by_model", {}).items()},
            category_maps=maps,
            small_shipment_value_usd=float(data.get("small_shipment_value_usd",
                                                    DEFAULT_SMALL_SHIPMENT_VALUE_USD)),
            fitted_rows=int(data.get("fitted_rows", 0)),
            unit_value_peers=dict(data.get("unit_value_peers") or {}),
            inputs=dict(data.get("inputs") or {}),
            case_memory=dict(data.get("case_memory") or {}),
            version=version,
        )
