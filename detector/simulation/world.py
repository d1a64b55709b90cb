"""The simulated world: parties, legitimate trade, leases, labels and truth, and the
building blocks the diversion schemes use (detector.simulation.schemes plays them).

Generation is vectorised over rows (numpy / polars); Python loops run only over parties
and schemes (thousands). Every random draw comes from generators seeded by ``seed`` and
a fixed component number, and every table is sorted by its random-looking id before it
is written, so the same arguments give the same bytes.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Mapping
from datetime import date, timedelta

import numpy as np
import polars as pl

import detector.simulation.names as names
from detector.contract import SCREENING_LIST, SHIPMENTS
from detector.simulation.catalogue import (
    CONSUMER_CONTROLLED,
    DC_CHIP,
    DC_SERVER,
    MADE_UP_BRANDS,
    MISDECLARED_ECCN,
    MISDECLARED_HS,
    N_CATEGORIES,
    PARTS,
    UNCONTROLLED_ACCEL,
    VAGUE_DESCRIPTIONS,
    Products,
    build_products,
)

TYPOLOGIES = ("transshipment", "shell_company", "restricted_parent", "cloud_lease",
              "misdeclaration", "splitting", "screening_evasion")
SHIPMENT_TYPOLOGY_WEIGHTS = {"transshipment": 0.30, "shell_company": 0.20,
                             "restricted_parent": 0.15, "misdeclaration": 0.15,
                             "splitting": 0.12, "screening_evasion": 0.08}
# plays one scheme in the world: (world, its random generator, the scheme's number)
SchemeFunction = Callable[["World", np.random.Generator, int], None]

DIVERSION_SHARE_SHIPMENTS = 0.02
DIVERSION_SHARE_LEASES = 0.05
LEASES_PER_SHIPMENT = (0.025, 0.045)
SCHEME_CONFIRMED = 0.42  # investigations confirm a scheme ...
RECORD_LABELLED_IN_CONFIRMED = 0.85  # ... and label most of its records
BENIGN_REVIEWED = 0.012  # share of legitimate records reviewed and cleared

FILED_NAME_VARIANT_P = [0.55, 0.2, 0.15, 0.1]  # registered, upper, alt suffix, typo/no suffix
PARTY_ID_PRESENT = 0.62

GENERAL_COUNTRIES = {
    "GB": 6, "DE": 6, "JP": 7, "KR": 5, "FR": 4, "NL": 4, "CA": 5, "AU": 3, "IN": 5, "TW": 6,
    "SG": 8, "MY": 5, "TH": 2, "AE": 3, "VN": 2, "ID": 2, "IL": 3, "IE": 2, "SE": 1.5, "CH": 1.5,
    "IT": 1.5, "ES": 1.5, "BR": 1.5, "MX": 2, "SA": 1.5, "PH": 1, "PL": 1, "FI": 1, "NO": 0.7,
    "DK": 0.7, "BE": 0.7, "AT": 0.5, "NZ": 0.5, "TR": 0.5, "ZA": 0.5, "CL": 0.3, "AR": 0.3,
}
HUB_HEAVY = {"SG": 10, "MY": 7, "HK": 6, "TW": 6, "AE": 4, "TH": 3, "VN": 2, "IN": 4, "NL": 3,
             "JP": 3, "DE": 2, "GB": 2, "KR": 2, "ID": 2}
SHELL_COUNTRIES = {"MY": 3, "SG": 3, "TH": 2, "VN": 1, "AE": 1, "ID": 1, "TW": 0.7, "IN": 0.5,
                   "HK": 0.8}
CN_SUB_COUNTRIES = {"SG": 4, "MY": 3, "TH": 1.5, "ID": 1.5, "VN": 1, "DE": 1, "JP": 1, "NL": 1,
                    "AE": 1, "KR": 0.5, "IN": 0.5, "GB": 0.5}
RESTRICTED_RECEIVERS = {"HK": 0.55, "CN": 0.35, "MO": 0.10}

# segment: industries, countries, employees (log-uniform range), age in years, share of
# young firms, demand mix over the product categories, base quantity, share paid by parent
SEGMENTS = {
    "regional_cloud": dict(share=0.10, industries={"cloud_provider": 3, "data_center": 2},
                           countries={**GENERAL_COUNTRIES, "MY": 8, "ID": 5, "SG": 10, "AE": 5},
                           employees=(30, 3000), age=(2, 25), young=0.1,
                           mix=[0.3, 0.3, 0.07, 0.03, 0.3], qty=24),
    "university": dict(share=0.12, industries={"university": 1}, countries=GENERAL_COUNTRIES,
                       employees=(1000, 30000), age=(30, 150), young=0.0,
                       mix=[0.35, 0.12, 0.08, 0.2, 0.25], qty=4),
    "startup": dict(share=0.08, industries={"research": 3, "other": 1},
                    countries={**GENERAL_COUNTRIES, "SG": 10, "GB": 8},
                    employees=(3, 150), age=(0.3, 6), young=0.7,
                    mix=[0.35, 0.2, 0.05, 0.15, 0.25], qty=8),
    "research_lab": dict(share=0.04, industries={"research": 3, "government": 1},
                         countries=GENERAL_COUNTRIES, employees=(50, 5000), age=(5, 70),
                         young=0.0, mix=[0.35, 0.25, 0.05, 0.05, 0.3], qty=8),
    "oem": dict(share=0.12, industries={"oem": 3, "manufacturer": 2},
                countries={**GENERAL_COUNTRIES, "TW": 14, "MX": 5, "MY": 7},
                employees=(100, 50000), age=(5, 60), young=0.0,
                mix=[0.25, 0.1, 0.05, 0.05, 0.55], qty=32),
    "distributor": dict(share=0.14, industries={"distributor": 3, "reseller": 2},
                        countries=HUB_HEAVY, employees=(10, 2000), age=(2, 40), young=0.08,
                        mix=[0.25, 0.1, 0.1, 0.15, 0.4], qty=20),
    "enterprise": dict(share=0.14, industries={"other": 3, "manufacturer": 1},
                       countries=GENERAL_COUNTRIES, employees=(200, 100000), age=(10, 100),
                       young=0.0, mix=[0.2, 0.25, 0.05, 0.05, 0.45], qty=6),
    "cn_domestic": dict(share=0.08, industries={"distributor": 2, "manufacturer": 2,
                                                "cloud_provider": 1, "oem": 1, "research": 1},
                        countries={"CN": 6, "HK": 4}, employees=(20, 20000), age=(2, 40),
                        young=0.05, mix=[0, 0, 0.35, 0, 0.65], qty=20),
    "trading": dict(share=0.06, industries={"trading": 3, "reseller": 1, "logistics": 1},
                    countries=HUB_HEAVY, employees=(2, 200), age=(0.5, 30), young=0.3,
                    mix=[0.03, 0.0, 0.12, 0.15, 0.7], qty=10),
    "government": dict(share=0.02, industries={"government": 1}, countries=GENERAL_COUNTRIES,
                       employees=(100, 10000), age=(20, 80), young=0.0,
                       mix=[0.35, 0.3, 0.05, 0.0, 0.3], qty=8),
}
HYPERSCALE_MIX = [0.25, 0.45, 0.03, 0.0, 0.27]
CN_SUB_MIX = [0, 0, 0.3, 0, 0.7]
CATEGORY_QTY_FACTOR = np.array([1.0, 0.125, 1.0, 0.5, 3.0])

CONSIGNEE_TYPE = {"cloud_provider": "direct_consumer", "data_center": "direct_consumer",
                  "oem": "direct_consumer", "manufacturer": "direct_consumer",
                  "distributor": "reseller", "reseller": "reseller", "logistics": "reseller",
                  "trading": "reseller", "university": "direct_consumer",
                  "research": "direct_consumer", "government": "government",
                  "other": "direct_consumer", "unknown": "other"}
INCOTERMS = ["EXW", "FCA", "FAS", "FOB", "CFR", "CIF", "CPT", "CIP", "DAP", "DPU", "DDP"]
INCOTERM_LEGIT = [0.12, 0.25, 0.01, 0.08, 0.02, 0.05, 0.08, 0.1, 0.19, 0.0, 0.1]
INCOTERM_SHADY = [0.35, 0.3, 0.0, 0.1, 0.0, 0.03, 0.03, 0.02, 0.15, 0.0, 0.02]
PAYMENT = ["wire", "open_account", "letter_of_credit", "third_party", "cash", "crypto"]
PAYMENT_LEGIT = [0.5, 0.3, 0.12, 0.025, 0.003, 0.0]
PAYMENT_SHADY = [0.52, 0.1, 0.03, 0.22, 0.08, 0.05]
END_USE_LEGIT = ["AI training cluster", "cloud computing services", "academic research",
                 "high performance computing", "data centre expansion", "resale to end users",
                 "internal R&D", "3D rendering", "inference services", "spare parts",
                 "server assembly", "AI research"]
END_USE_SHADY = ["resale", "general use", "trading", "computer assembly", "AI research",
                 "stock", "data centre expansion", "resale to end users"]
TRANSIT_LEGIT = ["JP", "KR", "SG", "HK", "DE", "NL", "AE", "SG;MY"]
TRANSIT_LEGIT_P = [0.15, 0.1, 0.25, 0.15, 0.1, 0.1, 0.1, 0.05]
TRANSIT_SHADY = ["HK", "SG", "TW;JP", "MY", "SG;MY", "AE", "JP"]
TRANSIT_SHADY_P = [0.3, 0.2, 0.1, 0.15, 0.1, 0.1, 0.05]
FORWARDER_COUNTRIES = {"US": 10, "SG": 3, "HK": 3, "NL": 2, "AE": 2, "JP": 1, "DE": 1, "MY": 1}
INTERMEDIATE_COUNTRIES = {"SG": 4, "HK": 3, "NL": 2, "AE": 2, "MY": 1, "JP": 1}
LIST_NAMES = ["Entity List", "Military End User List", "Unverified List", "SDN"]
LIST_NAME_P = [0.7, 0.1, 0.12, 0.08]
SCREENED_COUNTRIES = {"CN": 6, "HK": 3, "RU": 2, "IR": 1, "AE": 0.7, "SG": 0.4, "MY": 0.3,
                      "TR": 0.3, "BY": 0.3, "MO": 0.2}
LEASE_DC_COUNTRIES = {"US": 8, "SG": 3, "MY": 3, "ID": 2, "JP": 2, "IE": 1, "DE": 2, "IN": 2,
                      "GB": 2, "TH": 1, "AE": 1, "NL": 1, "KR": 1}
SHADY_DC_COUNTRIES = {"MY": 4, "ID": 2, "SG": 2, "TH": 1, "JP": 0.5}

SHIPMENT_COLUMNS = SHIPMENTS.column_names


def add_months(start: date, months: int) -> date:
    month = start.month - 1 + months
    year = start.year + month // 12
    month = month % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def pick(rng: np.random.Generator, weights: dict[str, float], n: int | None = None):
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    chosen = rng.choice(len(keys), size=n, p=p / p.sum())
    if n is None:
        return keys[int(chosen)]
    return np.array(keys, dtype=object)[chosen]


def random_ids(rng: np.random.Generator, prefix: str, n: int, length: int = 12) -> list[str]:
    """Unique, random-looking ids (nothing about the record is encoded in them)."""
    alphabet = np.frombuffer(b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ", dtype=np.uint8)
    out = np.empty(0, dtype=f"U{length}")
    while out.size < n:
        need = n - out.size
        codes = alphabet[rng.integers(0, alphabet.size, size=(need, length))]
        fresh = codes.copy().view(f"S{length}").ravel().astype(f"U{length}")
        out = np.concatenate([out, fresh])
        _, first = np.unique(out, return_index=True)
        out = out[np.sort(first)]
    return [prefix + s for s in out[:n].tolist()]


class Calendar:
    """Daily trading intensity: growth over the months, seasonality, quiet weekends."""

    def __init__(self, start: date, months: int):
        self.start = start
        self.end = add_months(start, months)
        self.n_days = (self.end - start).days
        dates = [start + timedelta(days=int(d)) for d in range(self.n_days)]
        month_index = np.array([(d.year - start.year) * 12 + d.month - start.month for d in dates])
        month_of_year = np.array([d.month for d in dates])
        weekday = np.array([d.weekday() for d in dates])
        season = np.array([0.9, 0.8, 1.0, 1.0, 1.0, 1.05, 0.95, 0.95, 1.05, 1.1, 1.15, 1.2])
        weight = np.exp(0.025 * month_index) * season[month_of_year - 1]
        weight = weight * np.where(weekday >= 5, 0.15, 1.0)
        self.cdf = np.concatenate([[0.0], np.cumsum(weight) / weight.sum()])

    def sample(self, rng: np.random.Generator, n: int, lo=0, hi=None) -> np.ndarray:
        """``n`` day offsets in [lo, hi) drawn by trading intensity; lo/hi may be arrays."""
        lo = np.clip(np.asarray(lo), 0, self.n_days - 1)
        hi = np.clip(np.asarray(self.n_days if hi is None else hi), lo + 1, self.n_days)
        u = rng.uniform(self.cdf[lo], self.cdf[hi], size=n)
        return np.clip(np.searchsorted(self.cdf, u, side="right") - 1, lo, hi - 1)

    def to_dates(self, days: np.ndarray) -> pl.Series:
        return pl.Series(np.datetime64(self.start, "D") + np.asarray(days).astype("timedelta64[D]"),
                         dtype=pl.Date)


class PartyBook:
    """Every actor of the world; `in_registry` ones make up parties.csv."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.cols: dict[str, list] = {k: [] for k in (
            "name", "variants", "country", "address", "inc_day", "parent", "industry",
            "employees", "registration", "aliases", "in_registry", "weight", "segment",
            "active_from", "qty_scale")}

    def __len__(self) -> int:
        return len(self.cols["name"])

    def add(self, country: str, industry: str, segment: str, *, inc_day: int, employees,
            weight: float = 0.0, parent: int = -1, in_registry: bool = True,
            address: str | None = None, name: str | None = None, active_from: int = 0,
            aliases: str | None = None) -> int:
        rng = self.rng
        if name is None:
            name, form = names.company_name(rng, country, industry)
        else:
            form = _form_of(name, country)
        self.cols["name"].append(name)
        self.cols["variants"].append(names.filed_variants(rng, name, country, form))
        self.cols["country"].append(country)
        self.cols["address"].append(address or names.address(rng, country))
        self.cols["inc_day"].append(int(inc_day))
        self.cols["parent"].append(parent)
        self.cols["industry"].append(industry)
        self.cols["employees"].append(None if employees is None else int(employees))
        year = 2000 + max(0, min(30, int(24 + inc_day / 365.25)))
        self.cols["registration"].append(
            names.registration_id(rng, country, year) if rng.random() < 0.7 else None)
        self.cols["aliases"].append(aliases)
        self.cols["in_registry"].append(in_registry)
        self.cols["weight"].append(weight)
        self.cols["segment"].append(segment)
        self.cols["active_from"].append(int(active_from))
        self.cols["qty_scale"].append(float(rng.lognormal(0.0, 0.5)))
        return len(self) - 1

    def arrays(self) -> None:
        """Freeze the columns into numpy arrays / polars series for row-wise gathers."""
        c = self.cols
        self.country = np.array(c["country"], dtype=object)
        self.industry = np.array(c["industry"], dtype=object)
        self.parent = np.array(c["parent"], dtype=np.int64)
        self.inc_day = np.array(c["inc_day"], dtype=np.int64)
        self.in_registry = np.array(c["in_registry"], dtype=bool)
        self.weight = np.array(c["weight"], dtype=float)
        self.segment = np.array(c["segment"], dtype=object)
        self.active_from = np.array(c["active_from"], dtype=np.int64)
        self.qty_scale = np.array(c["qty_scale"], dtype=float)
        self.employees = np.array([-1 if e is None else e for e in c["employees"]], dtype=np.int64)
        self.variant_series = _series([v for vs in c["variants"] for v in vs])
        self.country_series = _series(c["country"])
        self.address_series = _series(c["address"])
        self.industry_series = _series(c["industry"])
        self.name_series = _series(c["name"])
        # ultimate parent: follow the chain (a few levels at most)
        top = np.arange(len(self))
        for _ in range(6):
            up = self.parent[top]
            top = np.where(up >= 0, up, top)
        self.ultimate = top


def _form_of(name: str, country: str) -> int:
    for i, spellings in enumerate(names.legal_forms(country)):
        if name.endswith(" " + spellings[0]):
            return i
    return -1


class World:
    def __init__(self, seed: int, n_shipments: int, start: date, months: int, reference):
        self.seed = seed
        self.n_shipments = n_shipments
        self.cal = Calendar(start, months)
        self.ref = reference
        self.products: Products = build_products(reference.chips, start)
        self.hubs = set(reference.countries("HUB"))
        self.licence_countries = set(reference.licence_required_countries())
        restricted = set(reference.countries("D:5")) | set(reference.countries("MACAU"))
        if "TREATED_AS_CN" in reference.groups:
            restricted |= set(reference.countries("TREATED_AS_CN"))
        self.restricted_hq = restricted
        self.book = PartyBook(self._rng(1))
        self.listed: list[dict] = []
        self.late_scheme: str | None = None  # this typology starts at late_from_day
        self.late_from_day = 0
        self._window_floor = 0
        self.div_rows: dict[str, list] = {k: [] for k in (
            "day", "cons", "exp", "prod", "qty", "price_factor", "misdeclared", "payer", "inter",
            "transit", "license_mode", "shady", "typology", "scheme", "related", "onward",
            "sent_on")}
        self.div_leases: dict[str, list] = {k: [] for k in (
            "day", "lessee", "provider", "dc_country", "prod", "gpu_count", "term", "access",
            "payer_country", "typology", "scheme")}
        self.n_schemes = 0

    def _rng(self, component: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, component])

    # ------------------------------------------------------------------ parties

    def build_legit_parties(self) -> None:
        rng = self.book.rng
        n = self.n_shipments
        n_cons = int(np.clip(n // 30, 150, 30000))
        book = self.book
        self.exporters = [book.add("US", pick(rng, {"oem": 2, "distributor": 3, "manufacturer": 1}),
                                   "exporter", inc_day=-int(rng.uniform(3, 40) * 365),
                                   employees=int(np.exp(rng.uniform(np.log(20), np.log(20000)))),
                                   weight=float(rng.lognormal(0, 1.2)))
                          for _ in range(int(np.clip(n // 3000, 25, 400)))]
        self.forwarders = [book.add(pick(rng, FORWARDER_COUNTRIES), "logistics", "forwarder",
                                    inc_day=-int(rng.uniform(2, 40) * 365),
                                    employees=int(rng.integers(20, 5000)),
                                    weight=float(rng.lognormal(0, 1.0)))
                           for _ in range(int(np.clip(n // 5000, 15, 200)))]
        self.intermediates = [book.add(pick(rng, INTERMEDIATE_COUNTRIES), "logistics",
                                       "intermediate", inc_day=-int(rng.uniform(2, 40) * 365),
                                       employees=int(rng.integers(10, 3000)),
                                       weight=float(rng.lognormal(0, 1.0)))
                              for _ in range(int(np.clip(n // 8000, 10, 150)))]
        # registered-agent addresses: shared by shells and, legitimately, by small firms
        self.nests = {c: [names.address(rng, c) for _ in range(int(np.clip(n // 20000, 3, 40)))]
                      for c in sorted(set(SHELL_COUNTRIES) | set(HUB_HEAVY))}

        # hyperscale groups: parents abroad, subsidiaries in many countries, billed centrally
        self.hyperscale_subs = []
        for _ in range(int(np.clip(n // 50000, 5, 12))):
            hq = pick(rng, {"US": 6, "IE": 1, "JP": 1, "KR": 1, "GB": 1, "SG": 1})
            parent = book.add(hq, "cloud_provider", "hyperscale_parent",
                              inc_day=-int(rng.uniform(15, 40) * 365),
                              employees=int(rng.integers(20000, 200000)))
            core = book.cols["name"][parent].rsplit(" ", 1)[0]
            for country in rng.choice(sorted(GENERAL_COUNTRIES), size=int(rng.integers(5, 16)),
                                      replace=False):
                forms = names.legal_forms(country)
                sub_name = f"{core} {country} {forms[0][0]}" if rng.random() < 0.5 else (
                    f"{core} {forms[0][0]}")
                self.hyperscale_subs.append(book.add(
                    str(country), "cloud_provider", "hyperscale", parent=parent,
                    inc_day=-int(rng.uniform(3, 15) * 365), name=sub_name,
                    employees=int(rng.integers(200, 20000)), weight=float(rng.lognormal(3.0, 0.8))))

        # Chinese groups: HQ in CN (sometimes via an HK holding) with subsidiaries abroad
        # that legitimately buy uncontrolled goods; diversion schemes reuse some of them.
        self.cn_groups: list[tuple[int, list[int]]] = []
        for _ in range(int(np.clip(n // 4000, 6, 120))):
            parent = book.add(pick(rng, {"CN": 8, "HK": 1.5, "MO": 0.5}),
                              pick(rng, {"manufacturer": 2, "cloud_provider": 2, "oem": 1,
                                          "research": 1, "distributor": 1}),
                              "cn_parent", inc_day=-int(rng.uniform(5, 30) * 365),
                              employees=int(rng.integers(300, 100000)))
            holder = parent
            if rng.random() < 0.5:
                holder = book.add("HK", "trading", "cn_holding", parent=parent,
                                  inc_day=-int(rng.uniform(2, 20) * 365),
                                  employees=int(rng.integers(2, 40)))
            subs = []
            for _ in range(int(rng.integers(1, 4))):
                country = pick(rng, CN_SUB_COUNTRIES)
                subs.append(book.add(country, pick(rng, {"distributor": 2, "manufacturer": 2,
                                                          "cloud_provider": 1, "research": 1,
                                                          "data_center": 1}),
                                     "cn_parent_sub", parent=holder,
                                     inc_day=-int(rng.uniform(0.5, 15) * 365),
                                     employees=int(np.exp(rng.uniform(np.log(5), np.log(3000)))),
                                     weight=float(rng.lognormal(0, 1.0))))
            self.cn_groups.append((parent, subs))

        shares = np.array([s["share"] for s in SEGMENTS.values()])
        counts = rng.multinomial(n_cons, shares / shares.sum())
        for (segment, spec), count in zip(SEGMENTS.items(), counts):
            for _ in range(int(count)):
                country = pick(rng, spec["countries"])
                young = rng.random() < spec["young"]
                age_days = int((rng.uniform(0.2, 2.5) if young else rng.uniform(*spec["age"]))
                               * 365)
                inc_day = int(rng.integers(0, max(1, self.cal.n_days // 2))) - age_days \
                    if young else -age_days
                lo, hi = spec["employees"]
                employees = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
                if young:
                    employees = min(employees, int(rng.integers(2, 60)))
                address = None
                if (young or segment == "trading") and country in self.nests and rng.random() < 0.15:
                    nest = self.nests[country]
                    address = nest[rng.integers(len(nest))]
                book.add(country, pick(rng, spec["industries"]), segment, inc_day=inc_day,
                         employees=employees if rng.random() < 0.8 else None,
                         weight=float(rng.lognormal(0, 1.3)), address=address,
                         active_from=max(0, inc_day + int(rng.integers(30, 200))))
        self.hub_distributors = [i for i, (seg, c) in enumerate(
            zip(book.cols["segment"], book.cols["country"]))
            if seg == "distributor" and c in ("SG", "MY", "HK", "TW", "AE", "NL", "JP")]

    def new_receiver(self, rng) -> int:
        """An HK/CN/MO trading or logistics firm at the end of a diversion chain."""
        if self.receivers and rng.random() < 0.6:
            return self.receivers[rng.integers(len(self.receivers))]
        country = pick(rng, RESTRICTED_RECEIVERS)
        idx = self.book.add(country, pick(rng, {"trading": 3, "logistics": 2, "distributor": 2,
                                                 "other": 1}), "receiver",
                            inc_day=-int(rng.uniform(0.5, 12) * 365),
                            employees=int(rng.integers(2, 80)) if rng.random() < 0.5 else None,
                            in_registry=rng.random() < 0.35)
        self.receivers.append(idx)
        return idx

    def third_party_payer(self, rng) -> int:
        if self.payers and rng.random() < 0.7:
            return self.payers[rng.integers(len(self.payers))]
        idx = self.book.add(pick(rng, {"HK": 3, "CN": 2}), pick(rng, {"trading": 3, "other": 1}),
                            "payer", inc_day=-int(rng.uniform(0.5, 10) * 365),
                            employees=None, in_registry=rng.random() < 0.2)
        self.payers.append(idx)
        return idx

    def shell(self, rng, day0: int, country: str | None = None) -> int:
        country = country or pick(rng, SHELL_COUNTRIES)
        age = int(rng.uniform(30, 540))
        nest = self.nests.get(country)
        address = nest[rng.integers(len(nest))] if nest and rng.random() < 0.6 else None
        industry = pick(rng, {"trading": 4, "other": 1.5, "reseller": 1.5, "logistics": 1,
                               "unknown": 0.5})
        name = None
        if rng.random() < 0.25:  # "Janford Realtor": a name with no link to computing
            core = names.company_core(rng, country, "other").split()[0]
            forms = names.legal_forms(country)
            name = f"{core} {['Realtor', 'Properties', 'Global Resources', 'Consulting'][rng.integers(4)]} {forms[0][0]}"
        return self.book.add(country, industry, "shell", inc_day=day0 - age,
                             employees=int(rng.integers(1, 12)) if rng.random() < 0.6 else None,
                             address=address, in_registry=rng.random() < 0.7, name=name)

    # ------------------------------------------------------------------ screening list

    def build_screening_list(self) -> None:
        rng = self._rng(2)
        n_filler = int(np.clip(self.n_shipments // 400, 40, 3000))
        for _ in range(n_filler):
            country = pick(rng, SCREENED_COUNTRIES)
            industry = pick(rng, {"research": 2, "manufacturer": 2, "trading": 2, "other": 1,
                                   "oem": 1, "logistics": 1, "government": 0.5})
            name, _ = names.company_name(rng, country, industry)
            self._list_entry(rng, name, country, names.address(rng, country))
        for parent, _subs in self.cn_groups:  # some parents are themselves listed
            if rng.random() < 0.3:
                c = self.book.cols
                self._list_entry(rng, c["name"][parent], c["country"][parent], c["address"][parent])

    def _list_entry(self, rng, name: str, country: str, address: str) -> dict:
        alt = None
        if rng.random() < 0.4:
            alt = ";".join(sorted({names.name_lookalike(rng, name)
                                   for _ in range(int(rng.integers(1, 3)))}))
        entry = dict(name=name, alt_names=alt, country=country if rng.random() < 0.95 else None,
                     address=address if rng.random() < 0.85 else None,
                     list_name=LIST_NAMES[rng.choice(4, p=LIST_NAME_P)],
                     start_date=date(2018, 1, 1) + timedelta(days=int(rng.integers(0, 2900))))
        self.listed.append(entry)
        return entry

    # ------------------------------------------------------------------ schemes

    def plan_schemes(self, schemes: Mapping[str, SchemeFunction]) -> None:
        """Draw diversion schemes until they make the diversion share of shipments and
        leases; ``schemes`` maps each typology to the function that plays one scheme
        (detector.simulation.schemes.SCHEMES)."""
        rng = self._rng(3)
        self.receivers: list[int] = []
        self.payers: list[int] = []
        self.high_end = np.flatnonzero(self.products.high_end)
        target = int(round(self.n_shipments * DIVERSION_SHARE_SHIPMENTS))
        kinds = list(SHIPMENT_TYPOLOGY_WEIGHTS)
        p = np.array([SHIPMENT_TYPOLOGY_WEIGHTS[k] for k in kinds])
        while len(self.div_rows["day"]) < target and self.n_shipments >= 50:
            typology = kinds[rng.choice(len(kinds), p=p / p.sum())]
            self._window_floor = self.late_from_day if typology == self.late_scheme else 0
            schemes[typology](self, rng, self.n_schemes)
            self.n_schemes += 1
        for key in self.div_rows:
            self.div_rows[key] = self.div_rows[key][: max(0, min(target, self.n_shipments))] \
                if len(self.div_rows[key]) > target else self.div_rows[key]
        self.n_leases = max(1, int(round(self.n_shipments * rng.uniform(*LEASES_PER_SHIPMENT))))
        lease_target = int(round(self.n_leases * DIVERSION_SHARE_LEASES))
        self._window_floor = self.late_from_day if self.late_scheme == "cloud_lease" else 0
        while len(self.div_leases["day"]) < lease_target:
            schemes["cloud_lease"](self, rng, self.n_schemes)
            self.n_schemes += 1
        for key in self.div_leases:
            self.div_leases[key] = self.div_leases[key][:lease_target]
        self.book.arrays()

    def controlled_product(self, rng, day: int, servers_ok: bool = True) -> int:
        p = self.products
        ok = self.high_end[(p.release_day[self.high_end] <= day)
                           & (servers_ok | (p.category[self.high_end] != DC_SERVER))]
        if ok.size == 0:
            ok = self.high_end
        return int(ok[rng.integers(ok.size)])

    def scheme_start(self, rng) -> int:
        """A scheme's first day, drawn by trading intensity over the whole period (a late
        scheme: no earlier than its floor). Schemes started late run past the period's end
        (rows after the last day are not written, as they have not happened yet), so
        diversion goes on at a steady rate to the last day."""
        lo = min(self._window_floor, self.cal.n_days - 1)
        return int(self.cal.sample(rng, 1, lo, self.cal.n_days)[0])

    def add_row(self, typology: str, scheme: int, day: int, cons: int, exp: int, prod: int,
                qty: int, *, price_factor: float = 1.0, misdeclared: bool = False,
                payer: int = -1, inter: int = -1, transit: str | None = None,
                license_mode: int = 1, shady: float = 0.6, related: bool = False,
                onward: bool = False) -> int:
        """One diversion shipment of scheme ``scheme`` (written with the legitimate rows
        by `shipments_frame`); a day after the simulated period is dropped. ``onward``: the
        row is a re-export by the hub company ``exp`` of goods it received. Returns the
        row's index among the diversion rows (-1 when dropped)."""
        if day >= self.cal.n_days:  # after the simulated period: not (yet) in the data
            return -1
        r = self.div_rows
        for key, value in (("day", day), ("cons", cons), ("exp", exp),
                           ("prod", prod), ("qty", max(1, int(qty))),
                           ("price_factor", price_factor), ("misdeclared", misdeclared),
                           ("payer", payer), ("inter", inter), ("transit", transit),
                           ("license_mode", license_mode), ("shady", shady),
                           ("typology", typology), ("scheme", scheme), ("related", related),
                           ("onward", onward), ("sent_on", False)):
            r[key].append(value)
        return len(r["day"]) - 1

    def exporter(self, rng) -> int:
        w = np.array([self.book.cols["weight"][i] for i in self.exporters])
        return self.exporters[rng.choice(len(self.exporters), p=w / w.sum())]

    def inbound(self, rng, typology, scheme, cons, k, day0, span, *, misdeclare_p, payer_p,
                 reexport_p, shady, license_mode=1, related=False):
        days = np.sort(day0 + rng.integers(0, max(1, span), size=k))
        payer = self.third_party_payer(rng) if rng.random() < payer_p else -1
        exp = self.exporter(rng)
        inter = self.intermediates[rng.integers(len(self.intermediates))] \
            if rng.random() < 0.25 else -1
        for day in days:
            prod = self.controlled_product(rng, int(day))
            qty = self.quantity(rng, prod)
            misdeclared = rng.random() < misdeclare_p
            factor = rng.uniform(0.08, 0.45) if misdeclared else rng.uniform(0.95, 1.4)
            line = self.add_row(typology, scheme, int(day), cons, exp if rng.random() < 0.7 else
                      self.exporter(rng), prod, qty, price_factor=factor,
                      misdeclared=misdeclared, payer=payer, inter=inter,
                      transit=pick(rng, dict(zip(TRANSIT_SHADY, TRANSIT_SHADY_P)))
                      if rng.random() < 0.3 else None,
                      license_mode=license_mode, shady=shady, related=related)
            if rng.random() < reexport_p:
                receiver = self.new_receiver(rng)
                parts = 1 if rng.random() < 0.75 else 2
                for share in np.array_split(np.arange(qty), parts):
                    if share.size == 0:
                        continue
                    re_mis = misdeclared or rng.random() < 0.35
                    leg = self.add_row(typology, scheme, int(day + rng.integers(4, 46)), receiver,
                              cons, prod, share.size,
                              price_factor=rng.uniform(0.1, 0.5) if re_mis else rng.uniform(0.9, 1.3),
                              misdeclared=re_mis, payer=-1 if rng.random() < 0.6 else payer,
                              transit=None if rng.random() < 0.7 else "HK",
                              license_mode=2 if rng.random() < 0.5 else 1, shady=shady,
                              onward=True)
                    if leg >= 0 and line >= 0:  # the line's goods were sent on, in the data
                        self.div_rows["sent_on"][line] = True

    def quantity(self, rng, prod: int) -> int:
        if self.products.category[prod] == DC_SERVER:
            return int(np.clip(rng.lognormal(np.log(4), 0.9), 1, 200))
        return int(np.clip(rng.lognormal(np.log(40), 1.0), 1, 3000))

    def cn_subsidiary(self, rng, day0: int) -> int:
        group = self.cn_groups[rng.integers(len(self.cn_groups))]
        if rng.random() < 0.5 and group[1]:
            return group[1][rng.integers(len(group[1]))]
        parent = group[0]
        if rng.random() < 0.5:
            parent = self.book.add("HK", "trading", "cn_holding", parent=group[0],
                                   inc_day=day0 - int(rng.uniform(1, 10) * 365),
                                   employees=int(rng.integers(2, 30)), in_registry=True)
        return self.book.add(pick(rng, CN_SUB_COUNTRIES), pick(rng, {
            "cloud_provider": 2, "data_center": 2, "research": 1, "distributor": 1}),
            "cn_sub_diverter", parent=parent, inc_day=day0 - int(rng.uniform(0.3, 8) * 365),
            employees=int(np.exp(rng.uniform(np.log(5), np.log(800)))), in_registry=True)

    def provider_in(self, rng, country: str, day0: int) -> int:
        c = self.book.cols
        found = [i for i in self.hyperscale_subs if c["country"][i] == country]
        found += [i for i in range(len(c["name"])) if c["segment"][i] == "regional_cloud"
                  and c["country"][i] == country][:50]
        if found and rng.random() < 0.8:
            return found[rng.integers(len(found))]
        return self.book.add(country, "data_center", "regional_cloud",
                             inc_day=day0 - int(rng.uniform(0.5, 10) * 365),
                             employees=int(rng.integers(10, 500)),
                             weight=float(rng.lognormal(0, 1.3)))

    # ------------------------------------------------------------------ shipments

    def _legit_rows(self, n: int) -> dict[str, np.ndarray]:
        rng = self._rng(4)
        book = self.book
        consignee_pool = np.flatnonzero(book.weight > 0)
        consignee_pool = consignee_pool[~np.isin(book.segment[consignee_pool],
                                                 ["exporter", "forwarder", "intermediate"])]
        w = book.weight[consignee_pool]
        cons = consignee_pool[rng.choice(consignee_pool.size, size=n, p=w / w.sum())]
        day = self.cal.sample(rng, n, book.active_from[cons])

        # what they buy: by segment, never controlled goods for restricted buyers
        category = np.full(n, PARTS)
        segments = book.segment[cons]
        for segment in sorted(set(segments.tolist())):
            mask = segments == segment
            mix = {"hyperscale": HYPERSCALE_MIX, "cn_parent_sub": CN_SUB_MIX}.get(
                segment, SEGMENTS.get(segment, {}).get("mix", [0.2, 0.1, 0.1, 0.1, 0.5]))
            mix = np.array(mix, dtype=float)
            category[mask] = rng.choice(N_CATEGORIES, size=int(mask.sum()), p=mix / mix.sum())
        restricted = np.isin(book.country[book.ultimate[cons]], sorted(self.restricted_hq)) | \
            np.isin(book.country[cons], sorted(self.restricted_hq))
        controlled_cat = np.isin(category, [DC_CHIP, DC_SERVER, CONSUMER_CONTROLLED])
        category = np.where(restricted & controlled_cat,
                            np.where(rng.random(n) < 0.4, UNCONTROLLED_ACCEL, PARTS), category)
        prod = self._choose_products(rng, category, day, restricted)

        # legitimate re-exports: hub distributors forwarding stock within their region
        exp_w = book.weight[self.exporters]
        exp = np.array(self.exporters)[rng.choice(len(self.exporters), size=n, p=exp_w / exp_w.sum())]
        if self.hub_distributors:
            hubs = np.array(self.hub_distributors)
            re = (rng.random(n) < 0.03) & ~np.isin(book.segment[cons], ["distributor"])
            chosen = hubs[rng.integers(hubs.size, size=n)]
            re &= book.country[chosen] != book.country[cons]
            exp = np.where(re, chosen, exp)

        qty_base = np.array([SEGMENTS.get(s, {}).get("qty", 128 if s == "hyperscale" else 10)
                             for s in segments], dtype=float)
        qty = np.clip(np.ceil(rng.lognormal(np.log(qty_base * CATEGORY_QTY_FACTOR[category]
                                                    * book.qty_scale[cons]), 1.0)), 1, 20000)
        price_factor = np.where(qty > 100, rng.uniform(0.85, 1.0, n), rng.uniform(0.95, 1.1, n))

        parent = book.parent[cons]
        payer_parent = (parent >= 0) & (rng.random(n) < np.where(
            segments == "hyperscale", 0.4, np.where(segments == "cn_parent_sub", 0.25, 0.1)))
        payer = np.where(payer_parent, parent, -1)
        inter = np.where(rng.random(n) < 0.07,
                         np.array(self.intermediates)[rng.integers(len(self.intermediates), size=n)], -1)
        related = (payer_parent & (rng.random(n) < 0.3)) | (rng.random(n) < 0.05)
        # legitimate trading firms look a little like the shady ones
        shady = np.where(segments == "trading", 0.15, 0.0)
        return dict(day=day, cons=cons, exp=exp, prod=prod, qty=qty.astype(np.int64),
                    price_factor=price_factor, misdeclared=np.zeros(n, dtype=bool), payer=payer,
                    inter=inter, transit=np.full(n, None, dtype=object),
                    license_mode=np.zeros(n, dtype=np.int64), shady=shady,
                    typology=np.full(n, None, dtype=object), scheme=np.full(n, -1),
                    related=related, onward=np.zeros(n, dtype=bool),
                    sent_on=np.zeros(n, dtype=bool))

    def _choose_products(self, rng, category, day, restricted) -> np.ndarray:
        prods = self.products
        prod = np.zeros(category.size, dtype=np.int64)
        month = day // 30
        for c in range(N_CATEGORIES):
            in_cat = np.flatnonzero(prods.category == c)
            if c == UNCONTROLLED_ACCEL:
                # licence-needing for China at some date (H20): keep off restricted buyers
                in_cat_free = in_cat[~prods.controlled[in_cat]]
            for m in np.unique(month[category == c]):
                rows = np.flatnonzero((category == c) & (month == m))
                ok = in_cat[prods.release_day[in_cat] <= m * 30 + 15]
                if ok.size == 0:
                    ok = np.flatnonzero(prods.category == PARTS)
                weights = np.where(prods.high_end[ok], 1.5, 1.0)
                prod[rows] = ok[rng.choice(ok.size, size=rows.size, p=weights / weights.sum())]
                if c == UNCONTROLLED_ACCEL and in_cat_free.size:
                    fix = rows[restricted[rows] & prods.controlled[prod[rows]]]
                    prod[fix] = in_cat_free[rng.integers(in_cat_free.size, size=fix.size)]
        return prod

    def shipments_frame(self) -> pl.DataFrame:
        n_div = len(self.div_rows["day"])
        n_legit = self.n_shipments - n_div
        legit = self._legit_rows(n_legit)
        div = {k: np.array(v, dtype=legit[k].dtype if k not in ("transit", "typology") else object)
               for k, v in self.div_rows.items()}
        rows = {k: np.concatenate([legit[k], div[k]]) for k in legit}
        return self._build_shipments(rows)

    def _build_shipments(self, r: dict[str, np.ndarray]) -> pl.DataFrame:
        rng = self._rng(5)
        book, prods = self.book, self.products
        n = r["day"].size
        cons, exp, prod = r["cons"], r["exp"], r["prod"]
        shady = r["shady"]
        is_shady = rng.random(n) < shady

        def variant(parties: np.ndarray) -> pl.Series:
            pick = rng.choice(4, size=parties.size, p=FILED_NAME_VARIANT_P)
            return book.variant_series.gather(parties * 4 + pick)

        def null_where(series: pl.Series, mask: np.ndarray) -> pl.Series:
            return pl.select(pl.when(pl.lit(pl.Series(mask))).then(None)
                             .otherwise(pl.lit(series))).to_series()

        def choose(options: list, p_legit: list, p_shady: list) -> pl.Series:
            a = rng.choice(len(options), size=n, p=np.array(p_legit) / sum(p_legit))
            b = rng.choice(len(options), size=n, p=np.array(p_shady) / sum(p_shady))
            return _series(np.array(options, dtype=object)[np.where(is_shady, b, a)])

        cons_country = book.country[cons]
        exp_country = book.country[exp]
        # description, HS and ECCN as filed
        cat = prods.category[prod]
        desc_idx = prods.description_offset[prod] + (rng.random(n) * prods.description_count[prod]).astype(np.int64)
        description = prods.descriptions.gather(desc_idx)
        vague = _series(VAGUE_DESCRIPTIONS + [f"{b} graphics module" for b in MADE_UP_BRANDS]
                          + [f"{b} video card" for b in MADE_UP_BRANDS])
        mis = r["misdeclared"]
        description = pl.select(pl.when(pl.lit(pl.Series(mis)))
                                .then(pl.lit(vague.gather(rng.integers(vague.len(), size=n))))
                                .otherwise(pl.lit(description))).to_series()
        hs_idx = prods.hs_offset[prod] + (rng.random(n) * prods.hs_count[prod]).astype(np.int64)
        hs = prods.hs_codes.gather(hs_idx).to_numpy().astype(object)
        mis_hs = np.array(MISDECLARED_HS, dtype=object)[rng.integers(len(MISDECLARED_HS), size=n)]
        hs = np.where(mis, mis_hs, hs).astype(str)
        hs_code = _format_hs(rng, hs)

        eccn = prods.eccn.gather(prod).to_numpy().astype(object)
        style = rng.random(n)
        eccn = np.where(style < 0.05, np.char.lower(eccn.astype(str)).astype(object), eccn)
        eccn_series = _series(eccn)
        eccn_series = pl.select(pl.when(pl.lit(pl.Series((style > 0.05) & (style < 0.13))))
                                .then(pl.lit(eccn_series).str.replace(r"\.[a-z]$", ""))
                                .otherwise(pl.lit(eccn_series))).to_series()
        mis_eccn = _series(np.array(MISDECLARED_ECCN, dtype=object)[
            rng.integers(len(MISDECLARED_ECCN), size=n)])
        eccn_series = pl.select(pl.when(pl.lit(pl.Series(mis))).then(pl.lit(mis_eccn))
                                .otherwise(pl.lit(eccn_series))).to_series()
        eccn_series = null_where(eccn_series, rng.random(n) < 0.15)

        # licence: what the rules asked for (legit) or a false "no licence required"
        needs = prods.controlled[prod] & (np.isin(cons_country, sorted(self.licence_countries))
                                          | np.isin(book.country[book.ultimate[cons]],
                                                    sorted(self.restricted_hq)))
        lic_legit = np.where(needs, "license",
                             np.where(rng.random(n) < 0.03, "exception", "nlr"))
        lic = np.where(r["license_mode"] == 0, lic_legit,
                       np.where(r["license_mode"] == 1, "nlr", None)).astype(object)
        license_type = null_where(_series(lic), rng.random(n) < 0.08)

        unit = rng.uniform(prods.price_low[prod], prods.price_high[prod]) * \
            np.clip(1 + 0.06 * rng.standard_normal(n), 0.8, 1.2)
        value = np.round(r["qty"] * unit * r["price_factor"], 2)
        weight = np.round(r["qty"] * prods.unit_weight[prod] * rng.uniform(1.05, 1.35, n), 1)

        payer = np.where(r["payer"] >= 0, r["payer"], cons)
        own_payer = r["payer"] < 0
        payer_name = null_where(variant(payer), own_payer & (rng.random(n) < 0.3))
        payer_country = null_where(book.country_series.gather(payer), rng.random(n) < 0.1)

        inter = r["inter"]
        has_inter = inter >= 0
        inter_name = null_where(variant(np.where(has_inter, inter, 0)), ~has_inter)
        inter_country = null_where(book.country_series.gather(np.where(has_inter, inter, 0)),
                                   ~has_inter)
        fwd = np.array(self.forwarders)[rng.integers(len(self.forwarders), size=n)]
        forwarder = null_where(variant(fwd), rng.random(n) > np.where(is_shady, 0.5, 0.65))

        transit_generated = _series(np.array(TRANSIT_LEGIT, dtype=object)[
            rng.choice(len(TRANSIT_LEGIT), size=n, p=TRANSIT_LEGIT_P)])
        transit_shady = _series(np.array(TRANSIT_SHADY, dtype=object)[
            rng.choice(len(TRANSIT_SHADY), size=n, p=TRANSIT_SHADY_P)])
        transit = pl.select(pl.when(pl.lit(pl.Series(is_shady))).then(pl.lit(transit_shady))
                            .otherwise(pl.lit(transit_generated))).to_series()
        transit = null_where(transit, rng.random(n) > np.where(is_shady, 0.3, 0.1))
        fixed = _series(r["transit"])
        transit = pl.select(pl.when(pl.lit(fixed).is_not_null()).then(pl.lit(fixed))
                            .otherwise(pl.lit(transit))).to_series()
        # a transit stop in the destination itself is not a transit
        transit = pl.select(pl.when(pl.lit(transit).str.contains(
            pl.lit(pl.Series(cons_country.astype(str))))).then(None)
            .otherwise(pl.lit(transit))).to_series()

        server = cat == DC_SERVER
        modes = np.array(["air", "vessel", "truck", "courier", "mail"], dtype=object)
        mode = np.where(server, rng.choice(5, size=n, p=[0.62, 0.3, 0.05, 0.03, 0.0]),
                        rng.choice(5, size=n, p=[0.62, 0.12, 0.03, 0.22, 0.01]))
        mode = np.where(np.isin(cons_country, ["CA", "MX"]) & (rng.random(n) < 0.6), 2, mode)
        transport = null_where(_series(modes[mode]), rng.random(n) < 0.05)

        incoterm = null_where(choose(INCOTERMS, INCOTERM_LEGIT, INCOTERM_SHADY),
                              rng.random(n) < 0.03)
        ex_fca = incoterm.is_in(["EXW", "FCA"]).fill_null(False).to_numpy()
        routed = ex_fca & (rng.random(n) < np.where(is_shady, 0.6, 0.35))
        routed_s = null_where(pl.Series(routed), rng.random(n) < 0.2)
        payment = null_where(choose(PAYMENT, PAYMENT_LEGIT, PAYMENT_SHADY), rng.random(n) < 0.08)
        end_use = null_where(choose(END_USE_LEGIT + END_USE_SHADY,
                                    [1] * len(END_USE_LEGIT) + [0] * len(END_USE_SHADY),
                                    [0] * len(END_USE_LEGIT) + [1] * len(END_USE_SHADY)),
                             rng.random(n) < np.where(is_shady, 0.55, 0.3))

        ctype = np.array([CONSIGNEE_TYPE[i] for i in book.industry], dtype=object)[cons]
        noise = rng.random(n)
        ctype = np.where(noise < 0.1, None, np.where(noise < 0.13, "other", ctype))
        address = book.address_series.gather(cons)
        address = pl.select(pl.when(pl.lit(pl.Series(rng.random(n) < 0.15)))
                            .then(pl.lit(address).str.to_uppercase())
                            .otherwise(pl.lit(address))).to_series()
        address = null_where(address, rng.random(n) < 0.15)

        pids = _series(self.party_ids)
        party_id = null_where(pids.gather(cons),
                              ~(book.in_registry[cons] & (rng.random(n) < PARTY_ID_PRESENT)))
        ids = random_ids(self._rng(6), "SHP-", n)
        df = pl.DataFrame({
            "shipment_id": ids,
            "export_date": self.cal.to_dates(r["day"]),
            "exporter_name": variant(exp),
            "exporter_country": pl.Series(exp_country.astype(str)),
            "consignee_name": variant(cons),
            "consignee_country": pl.Series(cons_country.astype(str)),
            "consignee_address": address,
            "consignee_type": _series(ctype),
            "consignee_party_id": party_id,
            "intermediate_consignee_name": inter_name,
            "intermediate_consignee_country": inter_country,
            "forwarder_name": forwarder,
            "destination_country": pl.Series(cons_country.astype(str)),
            "transit_countries": transit,
            "transport_mode": transport,
            "hs_code": hs_code,
            "eccn": eccn_series,
            "license_type": license_type,
            "description": description,
            "quantity": r["qty"].astype(np.int64),
            "value_usd": value,
            "gross_weight_kg": null_where(pl.Series(weight), rng.random(n) < 0.1),
            "incoterm": incoterm,
            "routed_export": routed_s,
            "related_party": pl.Series(r["related"].astype(bool)),
            "payer_name": payer_name,
            "payer_country": payer_country,
            "payment_method": payment,
            "declared_end_use": end_use,
            "__day": r["day"],
            "__typology": _series(r["typology"]),
            "__mechanisms": self._mechanisms(r["typology"], np.where(r["onward"], exp, cons),
                                             r["misdeclared"], r["onward"] | r["sent_on"]),
            "__scheme": r["scheme"].astype(np.int64),
            "__suspicion": self._suspicion(r, prod, cons, cons_country, unit, is_shady),
        })
        df = df.with_columns(pl.col("transit_countries").str.split(";"))
        return df

    def _mechanisms(self, typology: np.ndarray, party: np.ndarray, misdeclared: np.ndarray,
                    reexported: np.ndarray) -> pl.Series:
        """Every scheme whose mechanism the simulator played on each diversion record, the
        scheme's own typology first, then in TYPOLOGIES order, joined by ", " (null for
        legitimate records). ``party`` is the company whose profile the record shows: the
        consignee (lessee), or on an onward leg the hub company re-exporting the goods.
        A scheme's typology names its primary method; its records also carry a newly
        formed shell company (`World.shell`), a look-alike of a listed party, a parent
        headquartered in a restricted place, a misdeclared filing, or goods re-exported to
        HK/CN/MO (the onward leg, and the line whose units it sent on), whichever of them
        the scheme generated on that record. Read from the world's own state: no draw."""
        book = self.book
        seg = book.segment[party]
        restricted_parent = (book.parent[party] >= 0) & np.isin(
            book.country[book.ultimate[party]], sorted(self.restricted_hq))
        extra = {"transshipment": reexported, "shell_company": seg == "shell",
                 "restricted_parent": restricted_parent, "misdeclaration": misdeclared,
                 "screening_evasion": seg == "evader"}
        out: list[str | None] = [None] * len(typology)
        for i in np.flatnonzero(_series(typology).is_not_null().to_numpy()):
            primary = typology[i]
            more = [t for t in TYPOLOGIES if t != primary and t in extra and extra[t][i]]
            out[i] = ", ".join([primary, *more])
        return _series(out)

    def _suspicion(self, r, prod, cons, cons_country, unit, is_shady) -> np.ndarray:
        """How suspicious a record looks to an analyst (drives which benign ones get reviewed)."""
        book, prods = self.book, self.products
        hub = np.isin(cons_country, sorted(self.hubs))
        young = (r["day"] - book.inc_day[cons]) < 730
        trading = np.isin(book.industry[cons], ["trading", "logistics", "unknown"])
        cn_parent = np.isin(book.country[book.ultimate[cons]], sorted(self.restricted_hq))
        cheap = r["price_factor"] < 0.6
        return (1.0 * hub + 1.2 * young + 1.2 * trading + 1.0 * cn_parent + 0.8 * cheap
                + 0.8 * is_shady + 0.8 * prods.high_end[prod] + 0.6 * (r["payer"] >= 0))

    # ------------------------------------------------------------------ leases

    def leases_frame(self) -> pl.DataFrame:
        rng = self._rng(7)
        book, prods = self.book, self.products
        n_div = len(self.div_leases["day"])
        n = max(0, self.n_leases - n_div)
        providers = np.array(self.hyperscale_subs + [i for i in range(len(book)) if
                             book.segment[i] == "regional_cloud"
                             and book.industry[i] in ("cloud_provider", "data_center")])
        pw = book.weight[providers]
        provider = providers[rng.choice(providers.size, size=n, p=pw / pw.sum())]
        lessee_pool = np.flatnonzero(np.isin(book.segment, ["startup", "research_lab", "university",
                                                            "enterprise", "oem", "cn_parent_sub",
                                                            "government", "regional_cloud"])
                                     & (book.weight > 0))
        lw = book.weight[lessee_pool]
        lessee = lessee_pool[rng.choice(lessee_pool.size, size=n, p=lw / lw.sum())]
        day = self.cal.sample(rng, n, book.active_from[lessee])
        dc_choice = pick(rng, LEASE_DC_COUNTRIES, n)
        dc_country = np.where(rng.random(n) < 0.7, book.country[provider], dc_choice)
        restricted = np.isin(book.country[book.ultimate[lessee]], sorted(self.restricted_hq))
        accel = np.flatnonzero(np.isin(prods.category, [DC_CHIP, DC_SERVER, UNCONTROLLED_ACCEL])
                               & (prods.gpus > 0))
        free = accel[~prods.controlled[accel]]
        prod = accel[rng.integers(accel.size, size=n)]
        fallback = free[rng.integers(free.size, size=n)] if free.size else prod
        prod = np.where(restricted, fallback, prod)
        big = rng.random(n) < 0.06  # legitimate large leases (labs, funded young firms)
        count = np.where(big, 8 * rng.integers(32, 1025, size=n),
                         8 * np.ceil(rng.lognormal(np.log(2), 1.2, size=n)).astype(np.int64))
        access = np.where(rng.random(n) < np.where(big, 0.45, 0.18), "bare_metal",
                          np.array(["dedicated_vm", "shared_vm", "managed_service"], dtype=object)[
                              rng.choice(3, size=n, p=[0.4, 0.45, 0.15])])
        term = rng.choice([1, 3, 6, 12, 24, 36], size=n, p=[0.1, 0.15, 0.2, 0.3, 0.15, 0.1])
        parent = book.parent[lessee]
        payer_country = np.where((parent >= 0) & (rng.random(n) < 0.3),
                                 book.country[np.maximum(parent, 0)], book.country[lessee])
        d = self.div_leases
        all_day = np.concatenate([day, np.array(d["day"], dtype=np.int64)])
        all_lessee = np.concatenate([lessee, np.array(d["lessee"], dtype=np.int64)])
        all_provider = np.concatenate([provider, np.array(d["provider"], dtype=np.int64)])
        all_dc = np.concatenate([dc_country.astype(object), np.array(d["dc_country"], dtype=object)])
        all_prod = np.concatenate([prod, np.array(d["prod"], dtype=np.int64)])
        all_count = np.concatenate([count, np.array(d["gpu_count"], dtype=np.int64)])
        all_term = np.concatenate([term, np.array(d["term"], dtype=np.int64)])
        all_access = np.concatenate([access.astype(object), np.array(d["access"], dtype=object)])
        div_payer = np.array([pc if pc is not None else book.country[l]
                              for pc, l in zip(d["payer_country"], d["lessee"])], dtype=object)
        all_payer = np.concatenate([payer_country.astype(object), div_payer])
        typology = np.concatenate([np.full(n, None, dtype=object), np.array(d["typology"], dtype=object)])
        scheme = np.concatenate([np.full(n, -1), np.array(d["scheme"], dtype=np.int64)])
        m = all_day.size

        per_gpu = (prods.price_low[all_prod] + prods.price_high[all_prod]) / 2 / np.maximum(
            prods.gpus[all_prod], 1)
        rate = per_gpu / rng.uniform(11000, 14000, m)
        value = np.round(all_count * rate * 730 * all_term * rng.uniform(0.8, 1.1, m), 2)
        names_flat = [s for p in range(len(prods)) for s in (prods.lease_names[p] or [""])]
        offsets = np.cumsum([0] + [len(prods.lease_names[p] or [""]) for p in range(len(prods))])
        counts = np.diff(offsets)
        gpu_model = _series(names_flat).gather(
            offsets[all_prod] + (rng.random(m) * counts[all_prod]).astype(np.int64))

        def variant(parties):
            pick = rng.choice(4, size=parties.size, p=FILED_NAME_VARIANT_P)
            return book.variant_series.gather(parties * 4 + pick)

        def null_where(series, mask):
            return pl.select(pl.when(pl.lit(pl.Series(mask))).then(None)
                             .otherwise(pl.lit(series))).to_series()

        pids = _series(self.party_ids)
        return pl.DataFrame({
            "lease_id": random_ids(self._rng(8), "LSE-", m),
            "provider_name": variant(all_provider),
            "provider_party_id": null_where(pids.gather(all_provider), ~(
                book.in_registry[all_provider] & (rng.random(m) < 0.7))),
            "datacenter_country": pl.Series(all_dc.astype(str)),
            "lessee_name": variant(all_lessee),
            "lessee_party_id": null_where(pids.gather(all_lessee), ~(
                book.in_registry[all_lessee] & (rng.random(m) < PARTY_ID_PRESENT))),
            "lessee_country": pl.Series(book.country[all_lessee].astype(str)),
            "gpu_model": gpu_model,
            "gpu_count": all_count.astype(np.int64),
            "start_date": self.cal.to_dates(all_day),
            "term_months": null_where(pl.Series(all_term.astype(np.int64)), rng.random(m) < 0.05),
            "value_usd": null_where(pl.Series(value), rng.random(m) < 0.08),
            "payer_country": null_where(_series(all_payer), rng.random(m) < 0.15),
            "access_type": null_where(_series(all_access), rng.random(m) < 0.05),
            "__day": all_day,
            "__typology": _series(typology),
            "__mechanisms": self._mechanisms(typology, all_lessee, np.zeros(m, dtype=bool),
                                             np.zeros(m, dtype=bool)),
            "__scheme": scheme,
            "__suspicion": (1.5 * (all_access == "bare_metal") + 1.0 * (all_count >= 256)
                            + 1.0 * np.isin(all_dc, sorted(SHADY_DC_COUNTRIES))
                            + 1.0 * np.isin(all_payer, ["HK", "CN", "MO"])).astype(float),
        })

    # ------------------------------------------------------------------ labels and truth

    @property
    def party_ids(self) -> list[str]:
        if not hasattr(self, "_party_ids"):
            self._party_ids = random_ids(self._rng(9), "PTY-", len(self.book), 10)
        return self._party_ids

    def labels_and_truth(self, shipments: pl.DataFrame, leases: pl.DataFrame):
        rng = self._rng(10)
        confirmed_scheme = rng.random(max(1, self.n_schemes)) < SCHEME_CONFIRMED
        labels, truth = [], []
        for kind, df, id_col in (("shipment", shipments, "shipment_id"),
                                 ("lease", leases, "lease_id")):
            n = df.height
            typology = df["__typology"]
            diverted = typology.is_not_null().to_numpy()
            scheme = df["__scheme"].to_numpy()
            day = df["__day"].to_numpy()
            in_confirmed = diverted & confirmed_scheme[np.maximum(scheme, 0)]
            label1 = (in_confirmed & (rng.random(n) < RECORD_LABELLED_IN_CONFIRMED)) | (
                diverted & ~in_confirmed & (rng.random(n) < 0.04))
            # benign reviews: a small share, biased toward what looks suspicious
            n_benign = int(round((~diverted).sum() * BENIGN_REVIEWED * (1.5 if kind == "lease" else 1)))
            keys = df["__suspicion"].to_numpy() * 0.9 + rng.gumbel(size=n)
            keys[diverted] = -np.inf
            label0 = np.zeros(n, dtype=bool)
            if n_benign:
                label0[np.argpartition(-keys, n_benign - 1)[:n_benign]] = True
            delay = np.where(label1, rng.integers(45, 420, size=n), rng.integers(10, 200, size=n))
            ids = df[id_col]
            chosen = label1 | label0
            labels.append(pl.DataFrame({
                "record_kind": _series([kind] * int(chosen.sum())),
                "record_id": ids.filter(pl.Series(chosen)),
                "label": label1[chosen].astype(np.int64),
                "typology": _series(np.where(label1, typology.to_numpy(), None)[chosen]),
                "decided_on": self.cal.to_dates(day[chosen] + delay[chosen]),
            }))
            truth.append(pl.DataFrame({
                "record_kind": _series([kind] * n),
                "record_id": ids,
                "label": diverted.astype(np.int64),
                "typology": typology,
                "mechanisms": df["__mechanisms"],
            }))
        return pl.concat(labels), pl.concat(truth)

    # ------------------------------------------------------------------ registries

    def parties_frame(self) -> pl.DataFrame:
        book = self.book
        keep = np.flatnonzero(book.in_registry)
        c = book.cols
        pids = np.array(self.party_ids, dtype=object)
        parent = book.parent[keep]
        inc = book.inc_day[keep]
        rng = self._rng(11)
        inc_known = rng.random(keep.size) < 0.85
        return pl.DataFrame({
            "party_id": _series(pids[keep]),
            "name": book.name_series.gather(keep),
            "aliases": _series([c["aliases"][i] for i in keep]).str.split(";"),
            "country": book.country_series.gather(keep),
            "address": book.address_series.gather(keep),
            "incorporation_date": pl.select(pl.when(pl.lit(pl.Series(inc_known)))
                                            .then(pl.lit(self.cal.to_dates(inc)))).to_series(),
            "parent_party_id": _series(np.where(parent >= 0, pids[np.maximum(parent, 0)], None)),
            "industry": book.industry_series.gather(keep),
            "employees": pl.Series([c["employees"][i] for i in keep], dtype=pl.Int64),
            "registration_id": _series([c["registration"][i] for i in keep]),
        })

    def screening_frame(self) -> pl.DataFrame:
        return pl.DataFrame({
            "name": [e["name"] for e in self.listed],
            "alt_names": pl.Series([e["alt_names"] for e in self.listed]).str.split(";"),
            "country": _series([e["country"] for e in self.listed]),
            "address": _series([e["address"] for e in self.listed]),
            "list_name": [e["list_name"] for e in self.listed],
            "start_date": pl.Series([e["start_date"] for e in self.listed], dtype=pl.Date),
        }, schema=SCREENING_LIST.schema)


def _series(values) -> pl.Series:
    """A String series from a list or an object array (None stays null)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return pl.Series(values, dtype=pl.String)


def _format_hs(rng: np.random.Generator, codes: np.ndarray) -> pl.Series:
    """Schedule B numbers as filers write them: dotted, plain, 6-digit or 4.2 dotted."""
    s = _series(codes)
    style = pl.Series(rng.choice(4, size=codes.size, p=[0.45, 0.3, 0.15, 0.1]))
    return pl.select(
        pl.when(pl.lit(style) == 0).then(pl.concat_str([
            pl.lit(s).str.slice(0, 4), pl.lit("."), pl.lit(s).str.slice(4, 2), pl.lit("."),
            pl.lit(s).str.slice(6, 4)]))
        .when(pl.lit(style) == 1).then(pl.lit(s))
        .when(pl.lit(style) == 2).then(pl.lit(s).str.slice(0, 6))
        .otherwise(pl.concat_str([pl.lit(s).str.slice(0, 4), pl.lit("."),
                                  pl.lit(s).str.slice(4, 2)]))
    ).to_series()
