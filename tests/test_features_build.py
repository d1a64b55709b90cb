"""Feature builders on tiny hand-built frames with hand-computed expected values."""

from __future__ import annotations

import json
from datetime import date

import polars as pl
import pytest
from feature_fixtures import (
    FakeReference,
    lease,
    leases,
    parties,
    party,
    screening,
    shipment,
    shipments,
)

from features.build import build_features, fit_feature_stats
from features.registry import FEATURES, RULE_INPUTS, model_feature_names, render_reason
from features.rules import RULES, rule_points
from features.stats import FeatureStats

REF = FakeReference()
NO_PARTIES = parties()
NO_LEASES = leases()


def build(ship=None, lease_rows=None, party_rows=None, screen=None, stats=None):
    return build_features(ship if ship is not None else shipments(),
                          lease_rows if lease_rows is not None else NO_LEASES,
                          party_rows if party_rows is not None else NO_PARTIES,
                          screen, REF, stats)


def row(frame: pl.DataFrame, record_id: str) -> dict:
    return frame.filter(pl.col("record_id") == record_id).row(0, named=True)


# ------------------------------------------------------------------ frame shape


def test_frame_has_key_date_and_every_registry_feature_sorted():
    frame = build(shipments(shipment("S2"), shipment("S1")), leases(lease("L1")))
    assert frame.columns == ["record_kind", "record_id", "record_date", *FEATURES,
                             *RULE_INPUTS]
    assert frame.select("record_kind", "record_id").rows() == [
        ("lease", "L1"), ("shipment", "S1"), ("shipment", "S2")]
    for name in model_feature_names():
        dtype = frame.schema[name]
        assert dtype.is_numeric() or dtype == pl.Boolean, (name, dtype)


def test_empty_inputs_give_empty_typed_frame():
    frame = build(shipments(), leases())
    assert frame.height == 0
    assert set(FEATURES) <= set(frame.columns)


# ------------------------------------------------------------------ product


def test_chip_recognition_counts_server_gpus_and_values_against_market():
    frame = build(shipments(
        shipment("S1", description="NVIDIA H100 SXM5 80GB", quantity=10, value_usd=300_000.0),
        shipment("S2", description="HGX H100 8-GPU server", quantity=2, value_usd=100_000.0,
                 gross_weight_kg=210.0),
        shipment("S3", description="server with 4x H100 SXM", quantity=1, value_usd=50_000.0),
        shipment("S4", description="office chairs", hs_code="940130", quantity=3,
                 value_usd=900.0),
    ))
    s1, s2, s3, s4 = (row(frame, i) for i in ("S1", "S2", "S3", "S4"))
    assert (s1["chip_model"], s1["chip_units"], s1["unit_value_to_market_low"]) == \
        ("H100 SXM", 10.0, pytest.approx(30_000 / 25_000))
    assert (s2["chip_model"], s2["chip_units"]) == ("HGX H100 8-GPU", 16.0)
    assert s2["unit_value_to_market_low"] == pytest.approx(50_000 / 250_000)
    assert s2["weight_to_catalogue"] == pytest.approx(105 / 100)
    # a chip named inside a server description: the stated count times quantity
    assert (s3["chip_model"], s3["chip_units"]) == ("H100 SXM", 4.0)
    assert s3["chip_price_low_usd"] == pytest.approx(4 * 25_000)
    assert s4["chip_model"] is None and s4["chip_units"] is None
    assert s4["vague_description"] is False
    assert s1["total_tpp"] == pytest.approx(10 * 15832)


def test_misdeclaration_flags():
    frame = build(shipments(
        shipment("EAR99", destination_country="CN", consignee_country="CN", eccn="EAR99"),
        shipment("NLR", destination_country="HK", consignee_country="HK", license_type="nlr"),
        shipment("OK_SG", destination_country="SG", eccn="EAR99", license_type="nlr"),
        shipment("PARTS", hs_code="8473.30.1180", description="computer parts", quantity=5,
                 value_usd=100_000.0),
        shipment("H20_OLD", description="NVIDIA H20", destination_country="CN",
                 export_date=date(2025, 1, 1), license_type="nlr", eccn="EAR99"),
        shipment("H20_NEW", description="NVIDIA H20", destination_country="CN",
                 export_date=date(2025, 5, 1), license_type="nlr", eccn="EAR99"),
        shipment("UNK", destination_country="CN", license_type="unknown", eccn=None),
    ))
    assert row(frame, "EAR99")["misdeclared_to_licence_destination"] is True
    assert row(frame, "EAR99")["controlled_declared_low_eccn"] is True
    assert row(frame, "NLR")["misdeclared_to_licence_destination"] is True
    # SG is not a licence destination: a low ECCN is still flagged, the licence part is not
    ok = row(frame, "OK_SG")
    assert ok["misdeclared_to_licence_destination"] is False
    assert ok["controlled_declared_low_eccn"] is True
    parts = row(frame, "PARTS")
    assert parts["parts_hs_for_gpu_priced_item"] is True
    assert parts["vague_description"] is True and parts["chip_model"] is None
    # H20 needs a licence to China only from 2025-04-15
    assert row(frame, "H20_OLD")["licence_required_for_item"] is False
    assert row(frame, "H20_NEW")["misdeclared_to_licence_destination"] is True
    unk = row(frame, "UNK")
    assert unk["no_licence_for_licence_destination"] is True
    assert unk["misdeclared_to_licence_destination"] is False


# ------------------------------------------------------------------ parties


PARTY_ROWS = parties(
    party("TOP", "Dragon Holdings Co., Ltd.", "CN"),
    party("MID", "Dragon Intl Ltd", "HK", parent_party_id="TOP"),
    party("P1", "Front Tech Pte. Ltd.", "SG", parent_party_id="MID",
          incorporation_date=date(2024, 3, 1), employees=3, industry="trading",
          address="10 Anson Road, #05-01", aliases=["FT Singapore"]),
    party("P2", "Other Shell Pte Ltd", "SG", address="10 ANSON ROAD #05-01"),
    party("P3", "Third Shell", "SG", address="10 anson road 05 01"),
    party("LOOP1", "Loop A", "SG", parent_party_id="LOOP2"),
    party("LOOP2", "Loop B", "SG", parent_party_id="LOOP1"),
)


def test_consignee_resolution_by_id_name_suffix_alias_fuzzy_and_unresolvable():
    frame = build(shipments(
        shipment("ID", consignee_party_id="P1", consignee_name="whatever"),
        shipment("NAME", consignee_name="FRONT TECH PTE LTD"),
        shipment("ALIAS", consignee_name="FT Singapore"),
        shipment("FUZZY", consignee_name="Front Tech Pte Ltd."),
        shipment("TYPO", consignee_name="Frnt Tech"),
        shipment("FAR_NAME", consignee_name="Frontline Techs"),
        shipment("OTHER_COUNTRY", consignee_name="Front Tech", consignee_country="MY"),
        shipment("NOBODY", consignee_name="Unknown Buyer LLC"),
        shipment("DANGLING", consignee_party_id="NOPE", consignee_name="Front Tech"),
    ), party_rows=PARTY_ROWS)
    for rid in ("ID", "NAME", "ALIAS", "FUZZY", "TYPO", "DANGLING"):
        r = row(frame, rid)
        assert r["consignee_resolved"] is True, rid
        assert r["consignee_age_days"] == (date(2024, 6, 1) - date(2024, 3, 1)).days
        assert r["ultimate_parent_name"] == "Dragon Holdings Co., Ltd."
    for rid in ("FAR_NAME", "OTHER_COUNTRY", "NOBODY"):
        r = row(frame, rid)
        assert r["consignee_resolved"] is False, rid
        assert r["consignee_age_days"] is None and r["ultimate_parent_in_d5_or_macau"] is None
    r = row(frame, "ID")
    assert r["ownership_depth"] == 2
    assert r["ultimate_parent_country"] == "CN"
    assert r["ultimate_parent_in_d5_or_macau"] is True
    assert r["consignee_industry_misfit"] is True
    assert r["consignee_employees"] == 3.0
    # two other registered parties share the normalised address
    assert r["consignee_address_shared_by"] == 2


def test_ownership_cycle_terminates():
    frame = build(shipments(shipment("S", consignee_party_id="LOOP1")), party_rows=PARTY_ROWS)
    # the chain stops where it would return to the party itself
    assert row(frame, "S")["ownership_depth"] == 1
    assert row(frame, "S")["ultimate_parent_name"] == "Loop B"


def test_screening_match_on_alias_and_address_keeps_entry_and_list():
    screen = screening(
        {"name": "Shady Components Limited", "alt_names": ["SC Trading"],
         "list_name": "Entity List", "address": "Room 5, 8 Nathan Road, Kowloon"},
        {"name": "Unrelated Bureau", "list_name": "SDN"})
    frame = build(shipments(
        shipment("ALIAS", consignee_name="S.C. Trading Co., Ltd."),
        shipment("ADDR", consignee_name="Innocent Name", consignee_address="room 5 8 nathan rd kowloon"),
        shipment("CLEAN", consignee_name="Legit Cloud"),
    ), screen=screen)
    alias = row(frame, "ALIAS")
    assert alias["screening_name_score"] == 100.0
    assert alias["screening_match_name"] == "Shady Components Limited"
    assert alias["screening_match_list"] == "Entity List"
    addr = row(frame, "ADDR")
    assert addr["screening_address_score"] > addr["screening_name_score"]
    assert addr["screening_match_score"] == addr["screening_address_score"] >= 80
    assert addr["screening_match_list"] == "Entity List"
    assert row(frame, "CLEAN")["screening_match_score"] < 90
    # without a list the scores are unknown, not zero
    assert build(shipments(shipment("S")))["screening_match_score"].to_list() == [None]


def test_an_onward_legs_exporter_is_profiled_as_a_party_and_screened():
    """The hub company re-exporting (the exporter of an onward leg) resolves to its party:
    age, staff, address sharing, parent and closest listed name, as context."""
    party_rows = parties(
        party("HOLD", "Sanhe Holdings Co., Ltd.", "CN"),
        party("HUB", "Kestrel Trading Trading Pte Ltd", "SG", parent_party_id="HOLD",
              incorporation_date=date(2024, 1, 1), employees=3, industry="trading",
              address="1 Raffles Place #10-01"),
        party("NEST1", "Other One Pte Ltd", "SG", address="1 Raffles Place #10-01"),
        party("NEST2", "Other Two Pte Ltd", "SG", address="1 raffles place 10 01"))
    screen = screening({"name": "Kestrel Trading Ltd.", "list_name": "Entity List"})
    frame = build(shipments(
        shipment("ONWARD", exporter_name="KESTREL TRADING TRADING PTE. LTD.",
                 exporter_country="SG", consignee_name="Dahua Trading Limited",
                 consignee_country="HK", destination_country="HK"),
        shipment("PLAIN")), party_rows=party_rows, screen=screen)
    onward = row(frame, "ONWARD")
    assert onward["exporter_party"] == "HUB"
    assert onward["exporter_name"] == "KESTREL TRADING TRADING PTE. LTD."
    assert onward["exporter_age_days"] == (date(2024, 6, 1) - date(2024, 1, 1)).days
    assert onward["exporter_employees"] == 3.0
    assert onward["exporter_industry"] == "trading"
    assert onward["exporter_address_shared_by"] == 2
    assert (onward["exporter_parent_name"], onward["exporter_parent_country"],
            onward["exporter_ownership_depth"]) == ("Sanhe Holdings Co., Ltd.", "CN", 1)
    assert onward["exporter_parent_in_d5_or_macau"] is True
    assert 75 <= onward["exporter_screening_score"] < 100
    assert (onward["exporter_screening_name"], onward["exporter_screening_list"]) == (
        "Kestrel Trading Ltd.", "Entity List")
    plain = row(frame, "PLAIN")  # an exporter not in the registry: no profile
    assert plain["exporter_party"] is None and plain["exporter_age_days"] is None
    profile = ["exporter_name", "exporter_party", "exporter_age_days", "exporter_employees",
               "exporter_industry", "exporter_address_shared_by", "exporter_parent_name",
               "exporter_parent_country", "exporter_ownership_depth",
               "exporter_parent_in_d5_or_macau", "exporter_screening_score",
               "exporter_screening_name", "exporter_screening_list"]
    assert not any(FEATURES[n].model_input for n in profile)  # context: no risk reads them


# ------------------------------------------------------------------ route and money


def test_route_and_money_features_with_unknown_enums_and_nulls():
    frame = build(shipments(
        shipment("R", consignee_name="Speedy Freight Forwarding", transit_countries=["TW", "hk"],
                 intermediate_consignee_name="Agent", incoterm="exw", routed_export=True,
                 payer_country="HK", payment_method="crypto", payer_name="Someone Else"),
        shipment("N", payer_country=None, payment_method="unknown", transit_countries=None,
                 incoterm=None),
    ))
    r, n = row(frame, "R"), row(frame, "N")
    assert r["transit_via_hk_or_mo"] is True and r["transit_country_count"] == 2
    assert r["consignee_is_logistics"] is True and r["incoterm_exw"] is True
    assert r["intermediate_consignee_present"] is True and r["routed_export"] is True
    assert r["payer_country_mismatch"] is True and r["payer_in_d5_hk_or_mo"] is True
    assert r["unusual_payment_method"] is True and r["payer_is_other_party"] is True
    assert r["destination_is_hub"] is True and r["destination_licence_required"] is False
    assert n["payer_country_mismatch"] is None and n["unusual_payment_method"] is False
    assert n["transit_via_hk_or_mo"] is False and n["incoterm_exw"] is None
    assert n["payment_method_code"] == 6  # the contract's 'unknown' is the 7th value


# ------------------------------------------------------------------ behaviour


def _history_rows():
    return [
        shipment("A1", export_date=date(2024, 1, 1), value_usd=100_000.0),
        shipment("A2", export_date=date(2024, 2, 15), value_usd=100_000.0),
        shipment("A3", export_date=date(2024, 3, 1), value_usd=200_000.0),
        shipment("A4", export_date=date(2024, 3, 1), value_usd=800_000.0),
    ]


def test_backward_windows_hand_computed():
    frame = build(shipments(*_history_rows()))
    a1, a2, a3, a4 = (row(frame, f"A{i}") for i in range(1, 5))
    assert a1["first_shipment_to_consignee"] is True and a1["consignee_shipments_90d"] == 0
    assert a2["consignee_prior_shipments"] == 1 and a2["days_since_first_shipment"] == 45
    assert a2["consignee_shipments_30d"] == 0 and a2["consignee_shipments_90d"] == 1
    # same-day rows see each other in windows, not in "prior"
    assert a4["consignee_prior_shipments"] == 2
    assert a4["consignee_shipments_30d"] == 2  # A2 (15 days back) and A3 (same day)
    assert a4["consignee_value_30d_usd"] == 300_000.0
    assert a4["consignee_shipments_90d"] == 3
    assert a4["value_to_consignee_history_mean"] == pytest.approx(800_000 / 100_000)
    assert a3["value_to_consignee_history_mean"] == pytest.approx(2.0)


def test_backward_windows_do_not_see_the_future():
    before = build(shipments(*_history_rows()))
    later = shipment("A5", export_date=date(2024, 3, 20), value_usd=5_000.0,
                     description="H100 PCIe card")
    after = build(shipments(*_history_rows(), later)).filter(pl.col("record_id") != "A5")
    backward = ["consignee_prior_shipments", "first_shipment_to_consignee",
                "days_since_first_shipment", "consignee_shipments_30d", "consignee_value_30d_usd",
                "consignee_shipments_90d", "consignee_value_90d_usd",
                "value_to_consignee_history_mean", "linked_small_shipments_14d",
                "linked_small_value_14d_usd"]
    assert before.select(backward).equals(after.select(backward))


def test_splitting_counts_small_lines_to_linked_consignees():
    owners = parties(party("OWN", "Holding", "SG"),
                     party("C1", "Buyer One", "SG", parent_party_id="OWN"),
                     party("C2", "Buyer Two", "SG", parent_party_id="OWN"))
    rows = [shipment(f"X{i}", consignee_name="Buyer One" if i % 2 else "Buyer Two",
                     export_date=date(2024, 5, 1 + i), quantity=1, value_usd=30_000.0)
            for i in range(4)]
    rows.append(shipment("BIG", consignee_name="Buyer One", export_date=date(2024, 5, 3),
                         value_usd=900_000.0))
    rows.append(shipment("FAR", consignee_name="Buyer Two", export_date=date(2024, 6, 30),
                         quantity=1, value_usd=30_000.0))
    frame = build(shipments(*rows), party_rows=owners)
    assert [row(frame, f"X{i}")["linked_small_shipments_14d"] for i in range(4)] == [1, 2, 3, 4]
    assert row(frame, "X3")["linked_small_value_14d_usd"] == 120_000.0
    assert row(frame, "BIG")["linked_small_shipments_14d"] == 3  # X0..X2 up to its date
    assert row(frame, "FAR")["linked_small_shipments_14d"] == 1


def test_reexport_linkage_looks_forward_by_normalised_name_and_country():
    frame = build(shipments(
        shipment("IN", consignee_name="Hub Trading Sdn. Bhd.", consignee_country="MY",
                 destination_country="MY", quantity=10, value_usd=300_000.0),
        shipment("OUT", exporter_name="HUB TRADING SDN BHD", exporter_country="MY",
                 consignee_name="End User", consignee_country="CN", destination_country="CN",
                 export_date=date(2024, 6, 21), description="graphics cards", hs_code="847330",
                 quantity=6, value_usd=200_000.0),
        shipment("OUT_LATE", exporter_name="Hub Trading", exporter_country="MY",
                 consignee_name="End User", consignee_country="CN", destination_country="HK",
                 export_date=date(2024, 12, 1), quantity=4, value_usd=100_000.0),
        shipment("OTHER", consignee_name="Hub Trading", consignee_country="SG"),
    ))
    r = row(frame, "IN")
    assert r["later_reexported_to_d5_hk_mo"] is True
    assert r["days_until_reexport"] == 20 and r["reexport_destination"] == "CN"
    assert r["reexported_unit_share_90d"] == pytest.approx(6 / 10)
    assert row(frame, "OTHER")["later_reexported_to_d5_hk_mo"] is False


# ------------------------------------------------------------------ leases


def test_lease_features():
    owners = parties(party("PARENT", "Beijing Compute", "CN"),
                     party("LS", "Tiny AI Sdn Bhd", "MY", parent_party_id="PARENT",
                           incorporation_date=date(2024, 1, 1), employees=4))
    frame = build(lease_rows=leases(
        lease("L1", access_type="bare_metal", payer_country="HK"),
        lease("L2", lessee_name="Nobody Known", gpu_model="mystery accelerator", term_months=None),
    ), party_rows=owners)
    l1, l2 = row(frame, "L1"), row(frame, "L2")
    assert l1["lessee_age_days"] == 152 and l1["ultimate_parent_in_d5_or_macau"] is True
    assert l1["bare_metal_access"] is True and l1["datacenter_in_hub"] is True
    assert l1["gpus_per_lessee_employee"] == pytest.approx(64 / 4)
    assert l1["price_per_gpu_month_usd"] == pytest.approx(2000.0)
    assert l1["lease_price_to_market"] == pytest.approx(2000 / (25_000 / 36))
    assert l1["payer_in_d5_hk_or_mo"] is True and l1["payer_country_mismatch"] is True
    assert l1["consignee_age_days"] is None  # shipment-only features are null on leases
    assert l2["chip_model"] is None and l2["price_per_gpu_month_usd"] is None
    assert l2["gpus_per_lessee_employee"] is None and l2["lessee_resolved"] is False
    hits = rule_points(frame).filter(pl.col("record_id") == "L1")["rule_hits"].to_list()[0]
    assert {"bare_metal_d5_lessee", "capacity_beyond_size"} <= set(hits)


# ------------------------------------------------------------------ stats


def test_stats_are_literals_and_round_trip_through_json():
    train = shipments(shipment("T1", value_usd=200_000.0), shipment("T2", value_usd=400_000.0))
    stats = fit_feature_stats(train, leases(lease("TL")), NO_PARTIES, REF)
    assert stats.median_value_per_gpu_by_model == {"H100 SXM": 30_000.0}
    assert stats.median_price_per_gpu_month_by_model == {"H100 SXM": 2000.0}
    restored = FeatureStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats
    target = shipment("S", value_usd=150_000.0, destination_country="VN")
    alone = build(shipments(target), stats=restored)
    crowd = build(shipments(target, *[shipment(f"O{i}", value_usd=1e6, consignee_name=f"C{i}")
                                      for i in range(5)]), stats=restored)
    cols = ["unit_value_to_learned_median", "destination_country_code", "chip_model_code"]
    assert row(alone, "S")["unit_value_to_learned_median"] == pytest.approx(15_000 / 30_000)
    assert row(alone, "S")["destination_country_code"] == -1  # unseen in training
    assert {c: row(alone, "S")[c] for c in cols} == {c: row(crowd, "S")[c] for c in cols}


def test_stats_reject_unknown_keys():
    with pytest.raises(ValueError, match="unexpected keys"):
        FeatureStats.from_dict({"median_unit_value": {}})


# ------------------------------------------------------------------ registry and rules


def test_render_reason_fills_templates_and_returns_none_on_nulls():
    r = {"consignee_age_days": 42.0}
    assert render_reason("consignee_age_days", r) == \
        "consignee incorporated 42 days before the shipment"
    assert render_reason("consignee_age_days", {"consignee_age_days": None}) is None
    assert render_reason("chip_units", r) is None


def test_every_rule_reads_only_feature_frame_columns():
    frame = build(shipments(shipment("S")), leases(lease("L")))
    for rule in RULES:
        missing = set(rule.condition.meta.root_names()) - set(frame.columns)
        assert not missing, (rule.name, missing)
    points = rule_points(frame)
    assert points.columns == ["record_kind", "record_id", "rule_points", "rule_hits"]


def test_rules_fire_on_a_misdeclared_shipment():
    frame = build(shipments(shipment("BAD", destination_country="CN", consignee_country="SG",
                                     eccn="EAR99", license_type="nlr", payer_country="CN",
                                     payment_method="cash", value_usd=50_000.0)))
    result = rule_points(frame).row(0, named=True)
    assert {"misdeclared_classification", "undervalued", "china_payer",
            "unusual_payment"} <= set(result["rule_hits"])
    assert result["rule_points"] >= 35 + 20 + 20 + 10


def test_china_hong_kong_and_macau_come_from_the_reference_groups():
    """Issue #15: China, Hong Kong and Macau come from the reference's groups (CN,
    TREATED_AS_CN, MACAU), not a list in the code: a place the data treats as China is a
    China payer, a re-export destination and a transit like Hong Kong's; one it does not
    is none of these."""
    from features.refview import china_sphere, view

    class MoreAsChina(FakeReference):
        def countries(self, group, confirmed_only=False):
            extra = ["TW"] if group == "TREATED_AS_CN" else []
            return sorted([*super().countries(group, confirmed_only), *extra])

    assert china_sphere(REF) == ("CN", "HK", "MO")
    assert china_sphere(MoreAsChina()) == ("CN", "HK", "MO", "TW")
    assert "TW" in view(MoreAsChina()).d5_hk_mo and "TW" not in view(REF).d5_hk_mo
    assert view(REF).hk_mo == ("HK", "MO") and view(MoreAsChina()).hk_mo == ("HK", "MO", "TW")
    routed = shipments(*[shipment(c, transit_countries=[c]) for c in ("TW", "HK", "MO", "SG")])
    for reference, through in ((REF, [True, True, False, False]),
                               (MoreAsChina(), [True, True, False, True])):
        frame = build_features(routed, NO_LEASES, NO_PARTIES, None, reference, None)
        assert frame["transit_via_hk_or_mo"].to_list() == through  # HK, MO, SG, TW
    paid = shipments(shipment("TW", payer_country="TW"), shipment("HK", payer_country="HK"),
                     shipment("DE", payer_country="DE"))
    for reference, china in ((REF, {"HK"}), (MoreAsChina(), {"HK", "TW"})):
        frame = build_features(paid, NO_LEASES, NO_PARTIES, None, reference, None)
        hits = dict(zip(frame["record_id"], rule_points(frame)["rule_hits"].to_list()))
        assert {r for r, h in hits.items() if "china_payer" in h} == china
