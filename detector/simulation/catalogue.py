"""The goods a simulated world ships: accelerators and servers from the chip catalogue
(data/chips.csv) plus the uncontrolled parts that fill most real export filings, each
with the descriptions, HS lines and ECCNs filers actually write.

Control status is the catalogue's (detector.reference classifies every row under the
Oct 2023 rule); a chip with `extra_licence_from` (H20) also counts as controlled here,
because from that date it needs a licence for China.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

# Product categories the legitimate demand is drawn from.
DC_CHIP = 0  # controlled data-centre accelerator boards / modules
DC_SERVER = 1  # servers holding controlled accelerators
UNCONTROLLED_ACCEL = 2  # accelerators below the thresholds (L20, RTX 4090D, ...)
CONSUMER_CONTROLLED = 3  # gaming boards caught by TPP (RTX 4090)
PARTS = 4  # memory, network, storage, power, cooling, CPU-only servers
N_CATEGORIES = 5

# name, HS (Schedule B, 10 digits), ECCN, low, high USD per unit, kg per unit, descriptions
PARTS_CATALOGUE = [
    ("InfiniBand NDR network adapter", "8517620090", "5A992.c", 1200, 2500, 0.5,
     ["InfiniBand NDR 400Gb/s network adapter", "network adapters", "NIC ADAPTER CARD 400G",
      "ConnectX-7 adapter card"]),
    ("400GbE Ethernet switch", "8517620020", "5A992.c", 20000, 45000, 12.0,
     ["64-port 400GbE ethernet switch", "NETWORK SWITCH", "data center switch 51.2T"]),
    ("DDR5 RDIMM 64GB", "8473301100", "EAR99", 250, 600, 0.05,
     ["DDR5 64GB RDIMM server memory", "memory modules", "COMPUTER PARTS - MEMORY MODULES",
      "RDIMM DDR5 4800"]),
    ("NVMe SSD 7.68TB", "8471700000", "5A992.c", 700, 1500, 0.2,
     ["NVMe SSD 7.68TB U.2", "solid state drives", "SSD STORAGE UNITS"]),
    ("Server power supply 3000W", "8504404000", "EAR99", 300, 700, 2.5,
     ["3000W server power supply", "POWER SUPPLY UNIT", "switching power supplies"]),
    ("Chassis fan module", "8414590000", "EAR99", 40, 150, 0.4,
     ["server chassis fan module", "cooling fans", "computer parts - fans"]),
    ("400G optical transceiver", "8517620090", "5A992.c", 500, 1200, 0.05,
     ["QSFP112 400G optical transceiver", "OPTICAL MODULES", "transceivers"]),
    ("400G DAC cable", "8544429000", "EAR99", 60, 200, 0.3,
     ["400G DAC copper cable 2m", "cables", "CABLE ASSEMBLIES"]),
    ("2U dual-CPU rack server", "8471500150", "5A992.c", 8000, 25000, 25.0,
     ["2U rack server dual CPU", "RACK SERVER NO GPU", "computer server", "x86 server"]),
    ("GPU cold plate", "8473301180", "EAR99", 80, 400, 1.0,
     ["liquid cooling cold plate", "heat sinks", "computer parts", "COOLING MODULE"]),
    ("PCIe Gen5 riser card", "8473301180", "EAR99", 50, 250, 0.1,
     ["PCIe riser card", "riser adapters", "computer parts", "adapters"]),
    ("GeForce RTX 4060 graphics card", "8473301180", "EAR99", 280, 400, 1.0,
     ["GeForce RTX 4060 graphics card", "graphics cards", "video cards", "VGA CARD RTX4060"]),
    ("Power distribution unit", "8537109170", "EAR99", 500, 2000, 8.0,
     ["rack power distribution unit", "PDU", "electrical panels"]),
]

# How smugglers described controlled goods in the real cases (FACTS.md): vague words,
# made-up brands, and descriptions of other, uncontrolled parts.
MADE_UP_BRANDS = ["SANDKYAN", "VORTEXA", "KYNOVA", "TELMAX", "ORBITEC", "ZENLINK", "HUNTEQ"]
VAGUE_DESCRIPTIONS = [
    "computer parts", "COMPUTER PARTS", "adapters", "ADAPTERS", "commodity video cards",
    "contactor controllers", "electronic components", "graphics cards", "server parts",
    "PCB assemblies", "computer accessories", "network adapters", "cooling module",
    "parts of ADP machines", "video cards", "GPU parts", "computer server parts",
]
# HS lines a controlled board or server is misfiled under.
MISDECLARED_HS = ["8473301180", "8473301180", "8473305100", "8471800000", "8517620090", "8504404000"]
MISDECLARED_ECCN = ["EAR99", "EAR99", "5A992.c", "5A992", None]

CHIP_TEMPLATES = ["{vendor} {model} GPU", "{model} tensor core GPU", "GPU accelerator {family}",
                  "{vendor} {family} data center GPU", "{family} GPU card",
                  "graphics processing unit {model}", "{model} accelerator module",
                  "{VENDOR} {MODEL}"]
CONSUMER_TEMPLATES = ["{vendor} {model} graphics card", "{family} video card",
                      "graphics card {model}", "{VENDOR} {MODEL} VGA CARD"]
SERVER_TEMPLATES = ["{model} GPU server", "{VENDOR} {model} system",
                    "AI server {gpus}x {family}", "rack server with {gpus} {family} GPUs",
                    "{MODEL} SERVER", "GPU computing system {model}"]
CHIP_HS = ["8473301180", "8473301180", "8471800000", "8471800000", "8542310000", "8542310000",
           "8542310055"]
SERVER_HS = ["8471500150", "8471500150", "8471500150", "8471500150", "8471490000", "8471800000"]


@dataclass
class Products:
    """One row per product; the string tables are flattened with per-product offsets so a
    million rows can pick their filed description with one gather."""

    frame: pl.DataFrame  # name, category, eccn, price_low, price_high, unit_weight, ...
    category: np.ndarray
    price_low: np.ndarray
    price_high: np.ndarray
    unit_weight: np.ndarray
    release_day: np.ndarray  # days since the simulation start (may be negative)
    controlled: np.ndarray  # needs a licence to D:1/D:4/D:5/Macau on some date
    high_end: np.ndarray  # what diverters want: data-centre, controlled, TPP >= 4800
    gpus: np.ndarray  # accelerators per unit (0 for parts)
    descriptions: pl.Series
    description_offset: np.ndarray
    description_count: np.ndarray
    hs_codes: pl.Series
    hs_offset: np.ndarray
    hs_count: np.ndarray
    eccn: pl.Series  # one per product
    lease_names: list[list[str]]  # how a lease contract names the GPU (accelerators only)

    def __len__(self) -> int:
        return len(self.category)


def build_products(chips: pl.DataFrame, start: date) -> Products:
    """Products from the typed catalogue (detector.reference: `eccn` and `controlled`
    columns already derived) plus the parts list. Catalogue rows without a price are
    left out: the simulator cannot value them."""
    rows = []
    priced = chips.filter(pl.col("price_low_usd").is_not_null()
                          | pl.col("price_high_usd").is_not_null())
    for chip in priced.sort("model").iter_rows(named=True):
        server = chip["item_kind"] == "server"
        datacenter = bool(chip["datacenter"])
        tpp = float(chip["tpp"] or 0)
        eccn = chip["eccn"] if bool(chip["controlled"]) else None
        if eccn is None and chip["eccn"] == "unknown":
            continue  # the rule cannot place it; leave it out rather than guess
        controlled = eccn is not None or chip.get("extra_licence_from") is not None
        low = chip["price_low_usd"] if chip["price_low_usd"] is not None else chip["price_high_usd"]
        high = chip["price_high_usd"] if chip["price_high_usd"] is not None else low
        if eccn is not None:
            category = DC_SERVER if server else (DC_CHIP if datacenter else CONSUMER_CONTROLLED)
        else:
            category = UNCONTROLLED_ACCEL
            eccn = "5A992.c" if server else ("3A991.p" if datacenter else "EAR99")
        gpus = int(chip["gpus_per_unit"] or 1)
        fields = {"vendor": chip["vendor"], "VENDOR": str(chip["vendor"]).upper(),
                  "model": chip["model"], "MODEL": str(chip["model"]).upper(),
                  "family": chip["family"], "gpus": gpus}
        templates = SERVER_TEMPLATES if server else (
            CHIP_TEMPLATES if datacenter else CONSUMER_TEMPLATES)
        descriptions = [t.format(**fields) for t in templates]
        descriptions += [d.upper() for d in descriptions[:3]]
        release = _as_date(chip.get("release_date"))
        family = str(chip["family"])
        lease_names = [str(chip["model"]), f"{chip['vendor']} {family}", family,
                       f"{family.lower().replace(' ', '-')}", f"{gpus if server else 8}x {family}"]
        rows.append(dict(
            name=str(chip["model"]), category=category, eccn=eccn, controlled=controlled,
            high_end=controlled and datacenter and tpp >= 4800,
            price_low=float(low), price_high=float(high),
            unit_weight=float(chip["unit_weight_kg"] or (120.0 if server else 1.5)),
            release=release, gpus=gpus, descriptions=descriptions,
            hs=SERVER_HS if server else CHIP_HS, lease_names=lease_names))
    for name, hs, eccn, low, high, weight, descriptions in PARTS_CATALOGUE:
        rows.append(dict(
            name=name, category=PARTS, eccn=eccn, controlled=False, high_end=False,
            price_low=float(low), price_high=float(high), unit_weight=weight, release=None,
            gpus=0, descriptions=descriptions + [d.upper() for d in descriptions[:1]],
            hs=[hs, hs, hs, hs[:6] + "0000" if hs[6:] != "0000" else hs], lease_names=[]))

    def flatten(key: str) -> tuple[pl.Series, np.ndarray, np.ndarray]:
        counts = np.array([len(r[key]) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        values = pl.Series(key, [v for r in rows for v in r[key]], dtype=pl.String)
        return values, offsets, counts

    descriptions, d_off, d_cnt = flatten("descriptions")
    hs_codes, h_off, h_cnt = flatten("hs")
    release_day = np.array([(r["release"] - start).days if r["release"] else -10**6 for r in rows])
    frame = pl.DataFrame({
        "name": [r["name"] for r in rows], "category": [r["category"] for r in rows],
        "eccn": [r["eccn"] for r in rows], "controlled": [r["controlled"] for r in rows],
    })
    return Products(
        frame=frame,
        category=np.array([r["category"] for r in rows], dtype=np.int64),
        price_low=np.array([r["price_low"] for r in rows]),
        price_high=np.array([r["price_high"] for r in rows]),
        unit_weight=np.array([r["unit_weight"] for r in rows]),
        release_day=release_day,
        controlled=np.array([r["controlled"] for r in rows]),
        high_end=np.array([r["high_end"] for r in rows]),
        gpus=np.array([r["gpus"] for r in rows], dtype=np.int64),
        descriptions=descriptions, description_offset=d_off, description_count=d_cnt,
        hs_codes=hs_codes, hs_offset=h_off, hs_count=h_cnt,
        eccn=pl.Series("eccn", [r["eccn"] for r in rows], dtype=pl.String),
        lease_names=[r["lease_names"] for r in rows],
    )


def _as_date(value) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None
