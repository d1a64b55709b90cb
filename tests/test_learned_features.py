"""Inputs learned from the data (unit-value peers, own history, novelty, configured
inputs) and the case memory, on tiny hand-built frames with hand-computed values."""

from __future__ import annotations

import math
from datetime import date

import polars as pl
import pytest
from feature_fixtures import FakeReference, lease, leases, parties, party, shipment, shipments

from detector.errors import InputError
from features import case_memory
from features.build import build_features, fit_feature_stats
from features.learned import fit_inputs, input_names
from features.registry import FAMILIES, model_feature_names, render_reason
from features.stats import FeatureStats

REF = FakeReference()


def build(ship, stats=None, labels=None, memory_out=None):
    return build_features(ship, leases(), parties(), None, REF, stats, labels=labels,
                          memory_out=memory_out)


def row(frame, record_id):
    return frame.filter(pl.col("record_id") == record_id).row(0, named=True)


def labels(*rows, kind="shipment"):
    return pl.DataFrame(
        [{"record_kind": kind, "record_id": r, "label": y, "typology": None,
          "decided_on": d} for r, y, d in rows],
        schema={"record_kind": pl.String, "record_id": pl.String, "label": pl.Int64,
                "typology": pl.String, "decided_on": pl.Date})


# ------------------------------------------------------------------ unit value


def _peer_world():
    # five priced lines of HS 847330 at 100, 200, 300, 400, 500 $/kg (median 300)
    rows = [shipment(f"P{i}", hs_code="847330", value_usd=v, gross_weight_kg=1.0,
                     quantity=1, description="computer parts", consignee_name=f"C{i} Ltd",
                     export_date=date(2024, 1, 1 + i))
            for i, v in enumerate([100.0, 200.0, 300.0, 400.0, 500.0])]
    return shipments(*rows)


def test_unit_value_against_learned_hs6_peers_with_hs4_and_hs2_fallback():
    stats = fit_feature_stats(_peer_world(), leases(), parties(), REF)
    peers = stats.unit_value_peers["per_kg"]
    median, spread, n = peers["hs6"]["847330"]
    assert math.exp(median) == pytest.approx(300.0)
    assert spread == pytest.approx(math.log(400) - math.log(200))
    assert n == 5 and "8473" in peers["hs4"] and "84" in peers["hs2"]
    scored = shipments(
        shipment("A", hs_code="847330", value_usd=30.0, gross_weight_kg=1.0, quantity=1),
        shipment("B", hs_code="847399", value_usd=600.0, gross_weight_kg=2.0, quantity=1),
        shipment("C", hs_code="850000", value_usd=600.0, gross_weight_kg=2.0, quantity=1),
        shipment("D", hs_code="847330", value_usd=0.0, gross_weight_kg=0.0, quantity=0))
    frame = build(scored, stats)
    a, b, c, d = (row(frame, k) for k in "ABCD")
    assert a["unit_value_per_kg_to_peer_median"] == pytest.approx(0.1)  # 30 vs 300
    assert a["unit_value_per_kg_peer_z"] == pytest.approx(math.log(0.1) / spread)
    assert a["unit_value_peer_hs_digits"] == 6
    assert b["unit_value_peer_hs_digits"] == 4  # 847399 unknown: HS-4 8473 peers
    assert b["unit_value_per_kg_to_peer_median"] == pytest.approx(1.0)
    assert c["unit_value_peer_hs_digits"] is None  # no peers for 85
    assert c["unit_value_per_kg_to_peer_median"] is None
    # zero value, weight and quantity: no unit value at all, never inf
    assert d["unit_value_per_kg_usd"] is None and d["unit_value_per_unit_usd"] is None
    assert d["unit_value_per_kg_peer_z"] is None


def test_unit_value_against_own_history_looks_strictly_back():
    ship = shipments(
        shipment("S1", export_date=date(2024, 1, 1), value_usd=100.0, gross_weight_kg=1.0),
        shipment("S2", export_date=date(2024, 1, 1), value_usd=400.0, gross_weight_kg=1.0),
        shipment("S3", export_date=date(2024, 2, 1), value_usd=20.0, gross_weight_kg=1.0))
    frame = build(ship)
    assert row(frame, "S1")["unit_value_per_kg_to_consignee_history"] is None  # same day
    expected = math.log(20.0) - (math.log(100.0) + math.log(400.0)) / 2
    assert row(frame, "S3")["unit_value_per_kg_to_consignee_history"] == pytest.approx(expected)
    assert row(frame, "S3")["unit_value_per_kg_to_exporter_history"] == pytest.approx(expected)


def test_novelty_flags_are_backward():
    ship = shipments(
        shipment("S1", export_date=date(2024, 1, 1), forwarder_name="Fast Freight"),
        shipment("S2", export_date=date(2024, 2, 1), forwarder_name="fast  freight"),
        shipment("S3", export_date=date(2024, 3, 1), forwarder_name="Other Forwarding",
                 hs_code="847330", exporter_country="TW", exporter_name="New Exporter"),
        shipment("S4", export_date=date(2024, 4, 1)))
    frame = build(ship)
    s1, s2, s3, s4 = (row(frame, k) for k in ("S1", "S2", "S3", "S4"))
    assert s1["first_exporter_consignee_pair"] and s1["first_forwarder_for_consignee"]
    assert not s2["first_exporter_consignee_pair"] and not s2["first_forwarder_for_consignee"]
    assert s3["first_exporter_consignee_pair"] and s3["first_forwarder_for_consignee"]
    assert s3["first_hs4_for_consignee"] and s3["first_origin_for_hs6"]
    assert not s4["first_hs4_for_consignee"] and not s4["first_origin_for_hs6"]
    assert s4["first_forwarder_for_consignee"] is None  # none declared


# ------------------------------------------------------------------ configured inputs


def test_configured_inputs_unseen_category_is_missing_and_missing_column_refused():
    train = shipments(shipment("S1"), shipment("S2")).with_columns(
        office_id=pl.Series(["30", "40"]), tax_rate=pl.Series(["8.0", "n/a"]))
    stats = fit_feature_stats(train, leases(), parties(), REF, categorical=["office_id"],
                              numeric=["tax_rate"])
    assert stats.inputs == {"categorical": {"office_id": {"30": 0, "40": 1}},
                            "numeric": ["tax_rate"]}
    assert input_names(stats.inputs) == ["input_office_id", "input_tax_rate"]
    batch = shipments(shipment("S3"), shipment("S4")).with_columns(
        office_id=pl.Series(["40", "99"]), tax_rate=pl.Series(["5.5", "inf"]))
    frame = build(batch, FeatureStats.from_dict(stats.to_dict()))
    assert row(frame, "S3")["input_office_id"] == 1.0
    assert row(frame, "S4")["input_office_id"] is None  # unseen in training: missing
    assert row(frame, "S3")["input_tax_rate"] == 5.5
    assert row(frame, "S4")["input_tax_rate"] is None  # not finite: missing
    with pytest.raises(InputError, match=r"\['office_id'\]"):
        build(batch.drop("office_id"), stats)
    with pytest.raises(InputError, match="tax_rate"):
        fit_inputs(train.drop("tax_rate"), ["office_id"], ["tax_rate"])


def test_families_can_be_left_out():
    full = model_feature_names()
    without = model_feature_names(["case_memory", "unit_value"])
    assert set(full) - set(without) == set(FAMILIES["case_memory"]) | set(FAMILIES["unit_value"])
    assert "consignee_confirmed_rate" in FAMILIES["case_memory"]
    with pytest.raises(ValueError, match="unknown feature families"):
        model_feature_names(["nonsense"])


# ------------------------------------------------------------------ case memory


def _memory_world():
    return shipments(
        shipment("S1", export_date=date(2024, 1, 1)),
        shipment("S2", export_date=date(2024, 1, 10)),
        shipment("S3", export_date=date(2024, 2, 1)),
        shipment("S4", export_date=date(2024, 2, 1)),
        shipment("S5", export_date=date(2025, 1, 15)),
        shipment("X1", export_date=date(2024, 2, 1), consignee_name="Elsewhere Ltd",
                 consignee_country="JP", destination_country="JP"))


def test_case_memory_counts_only_decisions_dated_before_the_record():
    decided = labels(("S1", 1, date(2024, 1, 5)),   # before S2
                     ("S2", 0, None),               # undated: dated at its record (Jan 10)
                     ("S3", 1, date(2024, 1, 20)),  # decided before its own record: dated at it
                     ("S4", 1, date(2024, 3, 1)))   # after S3/S4's date
    memory = {}
    frame = build(_memory_world(), labels=decided, memory_out=memory)
    s1, s2, s3, s5 = (row(frame, k) for k in ("S1", "S2", "S3", "S5"))
    assert (s1["consignee_confirmed_before"], s1["consignee_cleared_before"]) == (0, 0)
    assert (s2["consignee_confirmed_before"], s2["consignee_cleared_before"]) == (1, 0)
    # S3 sees S1 (1) and S2 (0), never its own label nor S4's (decided later)
    assert (s3["consignee_confirmed_before"], s3["consignee_cleared_before"]) == (1, 1)
    assert (s5["consignee_confirmed_before"], s5["consignee_cleared_before"]) == (3, 1)
    prior = 3 / 4
    assert s3["consignee_confirmed_rate"] == pytest.approx((1 + 10 * prior) / (2 + 10))
    # 12 months: S5 (2025-01-15) sees S3 and S4 (2024-02/03), not S1 (2024-01-05)
    assert s5["consignee_confirmed_12m"] == 2
    # other entities: same route and HS-4 for the US→SG lines; X1 goes elsewhere
    assert s3["route_confirmed_before"] == 1 and s3["hs4_confirmed_before"] == 1
    x1 = row(frame, "X1")
    assert x1["consignee_confirmed_before"] == 0 and x1["route_confirmed_before"] == 0
    assert x1["exporter_confirmed_before"] == 1  # same exporter
    assert memory["case_memory"]["cutoff"] == "2024-03-01"
    assert memory["case_memory"]["decisions"] == 4 and memory["case_memory"]["prior"] == prior
    reason = render_reason("consignee_confirmed_12m", s5)
    assert reason == "consignee had 2 confirmed diversions in the previous 12 months"


def test_stored_case_memory_is_used_at_scoring_and_merges_with_history_labels():
    decided = labels(("S1", 1, date(2024, 1, 5)), ("S2", 1, date(2024, 1, 12)))
    memory = {}
    build(_memory_world(), labels=decided, memory_out=memory)
    stats = FeatureStats.from_dict({"case_memory": memory["case_memory"]})
    events, prior = case_memory.events_from_dict(stats.case_memory)
    assert events.height == 2 and prior == 1.0
    # scoring a later batch: only the stored decisions (none of its own labels)
    later = shipments(shipment("S9", export_date=date(2024, 6, 1)))
    history = _memory_world()
    frame = build(pl.concat([later, history]), stats)
    assert row(frame, "S9")["consignee_confirmed_before"] == 2
    # plus a history label the model never saw; a stored one repeated counts once
    more = labels(("S3", 0, date(2024, 2, 2)), ("S1", 1, date(2024, 1, 5)))
    frame = build(pl.concat([later, history]), stats, labels=more)
    assert (row(frame, "S9")["consignee_confirmed_before"],
            row(frame, "S9")["consignee_cleared_before"]) == (2, 1)


def _lease_world():
    """Leases of one lessee (L1-L3), of a subsidiary of its owner (L4) and of an
    unrelated lessee elsewhere (L5); shipments to the lessee and to the subsidiary."""
    owners = parties(party("TOP", "Dragon Holdings Co., Ltd.", "CN"),
                     party("PA", "Tiny AI Sdn Bhd", "MY", parent_party_id="TOP"),
                     party("PB", "Other Compute Ltd", "HK", parent_party_id="TOP"))
    rented = leases(
        lease("L1", start_date=date(2024, 7, 1)),
        lease("L2", start_date=date(2024, 7, 20)),  # before L1's decision
        lease("L3", start_date=date(2024, 9, 1)),   # after it
        lease("L4", start_date=date(2024, 9, 1), lessee_name="Other Compute Ltd",
              lessee_country="HK", provider_name="Far Cloud", datacenter_country="SG"),
        lease("L5", start_date=date(2024, 9, 1), lessee_name="Unrelated Labs GmbH",
              lessee_country="DE", provider_name="Euro Cloud", datacenter_country="DE"))
    shipped = shipments(
        shipment("S1", export_date=date(2024, 6, 1), consignee_name="Other Compute Ltd",
                 consignee_country="HK", destination_country="HK"),
        shipment("S2", export_date=date(2024, 10, 1), consignee_name="Tiny AI Sdn Bhd",
                 consignee_country="MY", destination_country="MY"))
    return shipped, rented, owners


def test_a_lease_has_case_memory_of_its_lessee_provider_owner_and_route():
    shipped, rented, owners = _lease_world()
    decided = pl.concat([labels(("L1", 1, date(2024, 7, 31)), kind="lease"),
                         labels(("S1", 1, date(2024, 6, 30)))])
    memory = {}
    frame = build_features(shipped, rented, owners, None, REF, None, labels=decided,
                           memory_out=memory)
    l1, l2, l3, l4, l5 = (row(frame, k) for k in ("L1", "L2", "L3", "L4", "L5"))
    # its own decision never counts; L2 starts before L1 was decided
    assert l1["consignee_confirmed_before"] == 0
    assert l2["consignee_confirmed_before"] == 0
    # L3: the lessee's confirmed lease, same provider, same data-centre → lessee route
    assert (l3["consignee_confirmed_before"], l3["exporter_confirmed_before"],
            l3["route_confirmed_before"]) == (1, 1, 1)
    assert l3["consignee_confirmed_12m"] == 1
    # linked parties: the owner's two subsidiaries, across kinds (L1 lease, S1 shipment)
    assert l3["linked_confirmed_before"] == 2
    # L4: another subsidiary of the same owner (its own shipment S1, and L1)
    assert l4["consignee_confirmed_before"] == 1 and l4["linked_confirmed_before"] == 2
    assert l4["route_confirmed_before"] == 0 and l4["exporter_confirmed_before"] == 0
    # an unrelated lessee elsewhere has decisions known (a rate) but none of its own
    assert (l5["consignee_confirmed_before"], l5["linked_confirmed_before"],
            l5["route_confirmed_before"]) == (0, 0, 0)
    assert l5["consignee_confirmed_rate"] == pytest.approx(1.0)
    # a shipment to the lessee after the lease was decided counts the lease
    assert row(frame, "S2")["consignee_confirmed_before"] == 1
    # no forwarder or HS-4 heading for a lease
    assert l3["forwarder_confirmed_before"] is None and l3["hs4_confirmed_before"] is None
    assert memory["case_memory"]["decisions"] == 2
    assert set(memory["case_memory"]["events"]["record_kind"]) == {"shipment", "lease"}
    from features.registry import render_reason
    assert render_reason("consignee_confirmed_12m", l3) == \
        "lessee had 1 confirmed diversion in the previous 12 months"


def test_a_lease_decision_stored_with_the_model_counts_at_scoring():
    shipped, rented, owners = _lease_world()
    memory = {}
    build_features(shipped, rented, owners, None, REF, None,
                   labels=labels(("L1", 1, date(2024, 7, 31)), kind="lease"),
                   memory_out=memory)
    stats = FeatureStats.from_dict({"case_memory": memory["case_memory"]})
    frame = build_features(shipped, rented, owners, None, REF, stats)
    assert row(frame, "L3")["consignee_confirmed_before"] == 1
    # a model stored before leases had a case memory: its events are shipments
    old = dict(memory["case_memory"], events={
        k: v for k, v in memory["case_memory"]["events"].items() if k != "record_kind"})
    events, _ = case_memory.events_from_dict(old)
    assert events["record_kind"].to_list() == ["shipment"]


def test_without_any_decision_counts_are_zero_and_rates_missing():
    frame = build(_memory_world())
    s5 = row(frame, "S5")
    assert s5["consignee_confirmed_before"] == 0 and s5["consignee_confirmed_rate"] is None


def test_inputs_config_is_validated(tmp_path):
    from detector.config import load_config

    good = tmp_path / "good.toml"
    good.write_text('[inputs]\ncategorical = ["office_id"]\nnumeric = ["tax_rate"]\n'
                    'without = ["case_memory"]\n[lightgbm]\nscale_pos_weight = 1.0\n')
    config = load_config(good)
    assert config.inputs.categorical == ("office_id",) and config.inputs.without == (
        "case_memory",)
    assert config.lightgbm_params()["scale_pos_weight"] == 1.0
    assert "scale_pos_weight" not in load_config(None).lightgbm_params()  # automatic
    for text, fragment in [('[inputs]\nwithout = ["nonsense"]', "unknown feature families"),
                           ('[inputs]\ncategorical = [1]', "list of column names"),
                           ('[inputs]\ncategorical = ["a"]\nnumeric = ["a"]',
                            "both categorical and numeric"),
                           ('[inputs]\ncolumns = ["a"]', "unknown setting")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text + "\n")
        with pytest.raises(InputError, match=fragment):
            load_config(bad)


def test_configured_class_weight_is_respected():
    import numpy as np

    from detector.models.supervised import SupervisedModel

    y = np.array([0, 0, 0, 1.0])
    assert SupervisedModel(["f"]).training_params(y)["scale_pos_weight"] == 3.0
    assert SupervisedModel(["f"], {"scale_pos_weight": 1.0}).training_params(y)[
        "scale_pos_weight"] == 1.0
