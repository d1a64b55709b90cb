"""The diversion schemes the simulator plays, one small function each, by typology.

`SCHEMES` is the registry `World.plan_schemes` draws from: each function adds one
scheme's records to the world (shipments through `World.add_row` / `World.inbound`,
leases to `World.div_leases`), using the world's parties and random generator only, so
the same seed gives the same bytes. docs/typologies.md says what each scheme is based on
(FACTS.md) and the traces it leaves.
"""

from __future__ import annotations

import numpy as np

import detector.simulation.names as names
from detector.simulation.world import (
    SHADY_DC_COUNTRIES,
    TYPOLOGIES,
    SchemeFunction,
    World,
    pick,
)


def transshipment(world: World, rng: np.random.Generator, scheme: int) -> None:
    """A consignee in a hub (a recent shell, an established-looking front distributor, or a
    subsidiary of a restricted parent) takes controlled chips and re-exports most of them
    to HK/CN within weeks (FACTS.md: the Singapore and Malaysia transshipment cases)."""
    span = int(rng.integers(30, 180))
    day0 = world.scheme_start(rng)
    roll = rng.random()
    if roll < 0.45:
        cons = world.shell(rng, day0)
    elif roll < 0.8:  # an established-looking front distributor ("Singapore fraud case")
        country = pick(rng, {"SG": 3, "MY": 2, "TH": 1, "TW": 1, "JP": 0.7, "AE": 0.5,
                              "VN": 0.5, "IN": 0.3})
        cons = world.book.add(country, pick(rng, {"distributor": 2, "reseller": 2,
                                                  "data_center": 1}), "front",
                             inc_day=day0 - int(rng.uniform(1, 12) * 365),
                             employees=int(rng.integers(5, 400)),
                             in_registry=rng.random() < 0.85)
    else:
        cons = world.cn_subsidiary(rng, day0)
    world.inbound(rng, "transshipment", scheme, cons, int(rng.integers(1, 7)), day0, span,
                  misdeclare_p=0.2, payer_p=0.6, reexport_p=0.9, shady=0.6)


def shell_company(world: World, rng: np.random.Generator, scheme: int) -> None:
    """A recently formed company with no trade history, often at a shared address and paid
    by a third party, imports controlled chips; some are re-exported."""
    span = int(rng.integers(20, 150))
    day0 = world.scheme_start(rng)
    cons = world.shell(rng, day0)
    world.inbound(rng, "shell_company", scheme, cons, int(rng.integers(1, 7)), day0, span,
                  misdeclare_p=0.3, payer_p=0.75, reexport_p=0.35, shady=0.75)


def restricted_parent(world: World, rng: np.random.Generator, scheme: int) -> None:
    """A foreign subsidiary of a restricted (D:5 / Entity List) parent imports controlled
    chips under its own name; some are billed to the parent chain."""
    span = int(rng.integers(30, 240))
    day0 = world.scheme_start(rng)
    cons = world.cn_subsidiary(rng, day0)
    payer = world.book.cols["parent"][cons]
    k = int(rng.integers(1, 9))
    world.inbound(rng, "restricted_parent", scheme, cons, k, day0, span, misdeclare_p=0.05,
                  payer_p=0.0, reexport_p=0.1, shady=0.2, license_mode=1,
                  related=rng.random() < 0.3)
    if rng.random() < 0.4:  # billed to the parent chain
        start = len(world.div_rows["payer"]) - k
        for i in range(max(0, start), len(world.div_rows["payer"])):
            if world.div_rows["scheme"][i] == scheme and world.div_rows["cons"][i] == cons:
                world.div_rows["payer"][i] = payer


def misdeclaration(world: World, rng: np.random.Generator, scheme: int) -> None:
    """Controlled chips declared as parts or uncontrolled goods (HS code, ECCN and value
    understated) to a shell, a HK/CN receiver or a hub distributor."""
    span = int(rng.integers(10, 120))
    day0 = world.scheme_start(rng)
    roll = rng.random()
    if roll < 0.4:
        cons = world.shell(rng, day0)
    elif roll < 0.65:
        cons = world.new_receiver(rng)  # straight to HK/CN, papers say parts
    else:
        pool = world.hub_distributors or world.exporters
        cons = pool[rng.integers(len(pool))]
    world.inbound(rng, "misdeclaration", scheme, cons, int(rng.integers(1, 6)), day0, span,
                  misdeclare_p=1.0, payer_p=0.5, reexport_p=0.2, shady=0.6)


def splitting(world: World, rng: np.random.Generator, scheme: int) -> None:
    """A burst of small shipments of one controlled chip, each declared just under a value
    threshold, to one consignee within days."""
    span = int(rng.integers(3, 22))
    day0 = world.scheme_start(rng)
    cons = world.shell(rng, day0) if rng.random() < 0.6 else world.new_receiver(rng)
    threshold = [2500.0, 5000.0, 10000.0][rng.integers(3)]
    prod = world.controlled_product(rng, day0, servers_ok=False)
    mid = (world.products.price_low[prod] + world.products.price_high[prod]) / 2
    payer = world.third_party_payer(rng) if rng.random() < 0.6 else -1
    exp = world.exporter(rng)
    for day in np.sort(day0 + rng.integers(0, span, size=int(rng.integers(5, 21)))):
        qty = max(1, int(threshold * 0.97 // mid))
        # declared just under the threshold, whatever the goods are worth
        factor = threshold * rng.uniform(0.85, 0.995) / (qty * mid)
        world.add_row("splitting", scheme, int(day), cons, exp, prod, qty,
                  price_factor=min(factor, 1.0), misdeclared=factor < 0.6 and rng.random() < 0.5,
                  payer=payer, shady=0.6)


def screening_evasion(world: World, rng: np.random.Generator, scheme: int) -> None:
    """A consignee whose name is a look-alike of a screening-list entry, or who sits at a
    listed entity's address, imports controlled chips."""
    span = int(rng.integers(10, 150))
    day0 = world.scheme_start(rng)
    entry = world.listed[rng.integers(len(world.listed))]
    country = entry["country"] or "HK"
    if country not in ("HK", "CN", "MO") or rng.random() < 0.4:
        country = pick(rng, {"HK": 3, "SG": 1, "MY": 1, "AE": 1, "TH": 0.5})
    if rng.random() < 0.6:
        name, address = names.name_lookalike(rng, entry["name"]), None
    else:
        name, address = None, entry["address"]
    cons = world.book.add(country, pick(rng, {"trading": 2, "distributor": 1, "research": 1,
                                              "other": 1}), "evader",
                         inc_day=day0 - int(rng.uniform(0.2, 6) * 365), name=name,
                         address=address, employees=None, in_registry=rng.random() < 0.3)
    world.inbound(rng, "screening_evasion", scheme, cons, int(rng.integers(1, 5)), day0, span,
                  misdeclare_p=0.25, payer_p=0.5, reexport_p=0.2, shady=0.5)


def cloud_lease(world: World, rng: np.random.Generator, scheme: int) -> None:
    """Remote access instead of hardware: a HK/CN receiver, a restricted parent's
    subsidiary or a shell leases large bare-metal GPU clusters in a data centre of a
    nearby country, often paid from HK/CN."""
    day0 = world.scheme_start(rng)
    roll = rng.random()
    if roll < 0.25:
        lessee = world.new_receiver(rng)
    elif roll < 0.65:
        lessee = world.cn_subsidiary(rng, day0)
    else:
        lessee = world.shell(rng, day0, pick(rng, {"SG": 3, "MY": 2, "HK": 1}))
    dc_country = pick(rng, SHADY_DC_COUNTRIES)
    provider = world.provider_in(rng, dc_country, day0)
    payer_country = pick(rng, {"HK": 3, "CN": 2}) if rng.random() < 0.65 else None
    for day in np.sort(day0 + rng.integers(0, 180, size=int(rng.integers(1, 5)))):
        if day >= world.cal.n_days:  # after the simulated period
            continue
        prod = world.controlled_product(rng, int(day))
        d = world.div_leases
        for key, value in (("day", int(day)), ("lessee", lessee),
                           ("provider", provider), ("dc_country", dc_country), ("prod", prod),
                           ("gpu_count", 8 * int(rng.integers(32, 513))),
                           ("term", int(rng.choice([6, 12, 12, 24, 36]))),
                           ("access", "bare_metal" if rng.random() < 0.75 else "dedicated_vm"),
                           ("payer_country", payer_country), ("typology", "cloud_lease"),
                           ("scheme", scheme)):
            d[key].append(value)


SCHEMES: dict[str, SchemeFunction] = {
    "transshipment": transshipment,
    "shell_company": shell_company,
    "restricted_parent": restricted_parent,
    "cloud_lease": cloud_lease,
    "misdeclaration": misdeclaration,
    "splitting": splitting,
    "screening_evasion": screening_evasion,
}
assert tuple(SCHEMES) == TYPOLOGIES, "every typology has exactly one scheme function"
