"""The world simulator: contract-valid, deterministic, and each typology leaves its traces."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.errors import UsageError
from detector.simulation import TYPOLOGIES, simulate
from detector.tables import read_dataset

FILES = ("shipments.csv", "parties.csv", "leases.csv", "labels.csv", "screening_list.csv",
         "truth.parquet")
HUBS = ["SG", "MY", "TH", "AE", "VN", "IN", "TW", "ID"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = simulate(out, seed=7, shipments=20000)
    dataset = read_dataset(out)
    truth = pl.read_parquet(out / "truth.parquet")
    ship = dataset.shipments.join(
        truth.filter(pl.col("record_kind") == "shipment")
        .select(pl.col("record_id").alias("shipment_id"), "label", "typology", "mechanisms"),
        on="shipment_id", how="left", maintain_order="left")
    leases = dataset.leases.join(
        truth.filter(pl.col("record_kind") == "lease")
        .select(pl.col("record_id").alias("lease_id"), "label", "typology", "mechanisms"),
        on="lease_id", how="left", maintain_order="left")
    parties = dataset.parties
    return dict(out=out, summary=summary, dataset=dataset, truth=truth, ship=ship,
                leases=leases, parties=parties)


def _ultimate_country(parties: pl.DataFrame) -> dict[str, str]:
    parent = dict(zip(parties["party_id"], parties["parent_party_id"]))
    country = dict(zip(parties["party_id"], parties["country"]))
    out = {}
    for pid in parties["party_id"]:
        top, seen = pid, 0
        while parent.get(top) is not None and seen < 10:
            top, seen = parent[top], seen + 1
        out[pid] = country.get(top)
    return out


def test_output_validates_and_has_requested_size(world):
    ds, summary = world["dataset"], world["summary"]
    assert not ds.report.errors
    assert ds.shipments.height == 20000
    assert 0.02 * 20000 <= ds.leases.height <= 0.05 * 20000
    assert ds.screening_list is not None and ds.screening_list.height > 0
    assert ds.parties.height > 100
    assert summary.diversion_shipments / 20000 == pytest.approx(0.02, abs=0.01)


def test_truth_covers_every_record_exactly_once(world):
    truth, ds = world["truth"], world["dataset"]
    assert truth.columns == ["record_kind", "record_id", "label", "typology", "mechanisms"]
    assert not truth.select("record_kind", "record_id").is_duplicated().any()
    assert sorted(truth.filter(pl.col("record_kind") == "shipment")["record_id"]) == \
        sorted(ds.shipments["shipment_id"])
    assert sorted(truth.filter(pl.col("record_kind") == "lease")["record_id"]) == \
        sorted(ds.leases["lease_id"])
    diverted = truth.filter(pl.col("label") == 1)
    assert diverted["typology"].null_count() == 0
    assert set(diverted["typology"]) == set(TYPOLOGIES)
    assert truth.filter(pl.col("label") == 0)["typology"].null_count() == \
        truth.filter(pl.col("label") == 0).height


def test_mechanisms_name_the_typology_first_then_what_else_the_record_shows(world):
    """truth.mechanisms: the scheme's typology, then every other scheme the simulator
    played on the record, each checked here against what the written record shows."""
    ship, leases, parties = world["ship"], world["leases"], world["parties"]
    truth = world["truth"]
    assert truth.filter(pl.col("label") == 0)["mechanisms"].null_count() == \
        truth.filter(pl.col("label") == 0).height
    diverted = truth.filter(pl.col("label") == 1)
    listed = diverted["mechanisms"].str.split(", ")
    assert (listed.list.first() == diverted["typology"]).all()
    assert set(listed.explode()) <= set(TYPOLOGIES)
    assert (listed.list.len() == listed.list.unique().list.len()).all()

    def has(scheme: str) -> pl.Expr:
        return pl.col("mechanisms").str.split(", ").list.contains(scheme)

    # the simulated world mixes methods, as real schemes do: every typology's records
    # carry another scheme's mechanism somewhere, and most records of some carry none
    assert (diverted["mechanisms"].str.contains(",")).mean() > 0.3
    bad = ship.filter(pl.col("label") == 1)
    onward = (pl.col("exporter_country") != "US") & pl.col("consignee_country").is_in(
        ["HK", "CN", "MO"])
    # a re-export from the hub company is the transshipment leg of whatever scheme it serves
    assert bad.filter(onward).height > 0
    assert bad.filter(onward)["mechanisms"].str.contains("transshipment").all()
    assert bad.filter(onward & (pl.col("typology") != "transshipment")).height > 0
    # lines received by the hub company whose goods it sent on carry it too
    assert bad.filter(~onward & has("transshipment")
                      & (pl.col("typology") != "transshipment")).height > 0
    # misdeclared: described as parts or vaguely, or declared far below its value
    vague = pl.col("description").str.contains(
        "(?i)parts|adapter|video card|graphics (cards|module)|components|accessor|controller"
        "|cooling|PCB")
    mis = bad.filter(has("misdeclaration") & ~onward)
    assert mis.height > 0 and mis.filter(vague).height / mis.height > 0.9
    # shell company: a young, small party (the consignee, or the exporter on an onward leg)
    shells = bad.filter(has("shell_company") & ~onward & (pl.col("typology") != "shell_company")
                        ).join(parties, left_on="consignee_party_id", right_on="party_id")
    assert shells.height > 0
    age = (shells["export_date"] - shells["incorporation_date"]).dt.total_days().drop_nulls()
    assert age.max() <= 600 and shells["employees"].drop_nulls().max() < 15
    # restricted parent: the party's ultimate parent is in CN/HK/MO
    top = _ultimate_country(parties)
    owned = bad.filter(has("restricted_parent") & ~onward & pl.col("consignee_party_id")
                       .is_not_null() & (pl.col("typology") != "restricted_parent"))
    assert owned.height > 0
    assert {top[p] for p in owned["consignee_party_id"]} <= {"CN", "HK", "MO"}
    # a lease is a cloud lease first
    assert (leases.filter(pl.col("label") == 1)["mechanisms"].str.starts_with("cloud_lease")).all()


def test_labels_are_partial_biased_and_decided_later(world):
    ds, truth, ship = world["dataset"], world["truth"], world["ship"]
    labels = ds.labels.join(truth.rename({"label": "true", "typology": "true_typology"}),
                            on=["record_kind", "record_id"])
    confirmed = labels.filter(pl.col("label") == 1)
    assert (confirmed["true"] == 1).all()
    assert (confirmed["typology"] == confirmed["true_typology"]).all()
    assert (labels.filter(pl.col("label") == 0)["true"] == 0).all()
    share = confirmed.height / truth.filter(pl.col("label") == 1).height
    assert 0.2 <= share <= 0.6, share  # unlabelled diversions exist
    assert labels.filter(pl.col("label") == 0).height > 50
    dated = ship.join(ds.labels.filter(pl.col("record_kind") == "shipment")
                      .select(pl.col("record_id").alias("shipment_id"), "decided_on"),
                      on="shipment_id")
    assert (dated["decided_on"] > dated["export_date"]).all()
    # reviewed-and-cleared records lean to the suspicious-looking: more hub consignees
    cleared_ids = ds.labels.filter((pl.col("label") == 0) & (pl.col("record_kind") == "shipment"))
    cleared = ship.filter(pl.col("shipment_id").is_in(cleared_ids["record_id"].implode()))
    legit = ship.filter(pl.col("label") == 0)
    hub = pl.col("consignee_country").is_in(HUBS)
    assert cleared.filter(hub).height / cleared.height > legit.filter(hub).height / legit.height


def test_transshipment_re_exports_follow_later_to_hk_cn_mo(world):
    ship = world["ship"]
    trans = ship.filter(pl.col("typology") == "transshipment")
    re_exports = trans.filter(pl.col("exporter_country") != "US")
    assert re_exports.height > 0
    assert set(re_exports["consignee_country"]) <= {"HK", "CN", "MO"}
    inbound = trans.filter(pl.col("exporter_country") == "US")
    # each re-exporter received goods from the US earlier
    first_in = inbound.group_by("consignee_country").agg(pl.col("export_date").min())
    assert first_in.height > 0
    assert re_exports["export_date"].min() > inbound["export_date"].min()
    # legitimate re-exports exist too, so exporter_country alone does not separate
    assert ship.filter((pl.col("label") == 0) & (pl.col("exporter_country") != "US")).height > 50


def test_shells_are_young_and_small(world):
    ship, parties = world["ship"], world["parties"]
    shell_ids = ship.filter((pl.col("typology") == "shell_company")
                            & (pl.col("exporter_country") == "US"))
    joined = shell_ids.join(parties, left_on="consignee_party_id", right_on="party_id")
    assert joined.height > 0
    age_days = (joined["export_date"] - joined["incorporation_date"]).dt.total_days().drop_nulls()
    assert age_days.max() <= 600
    assert joined["employees"].drop_nulls().max() < 15
    # legitimate young companies exist
    legit = ship.filter(pl.col("label") == 0).join(parties, left_on="consignee_party_id",
                                                    right_on="party_id")
    young = legit.filter((pl.col("export_date") - pl.col("incorporation_date")).dt.total_days()
                         < 730)
    assert young.height > 20


def test_restricted_parent_consignees_have_d5_ultimate_parent(world):
    ship, parties = world["ship"], world["parties"]
    top = _ultimate_country(parties)
    rp = ship.filter((pl.col("typology") == "restricted_parent")
                     & pl.col("consignee_party_id").is_not_null()
                     & (pl.col("exporter_country") == "US"))
    assert rp.height > 0
    assert {top[p] for p in rp["consignee_party_id"]} <= {"CN", "HK", "MO"}
    assert set(rp["consignee_country"]) - {"CN", "HK", "MO"}
    # hard negative: legitimate subsidiaries of Chinese parents buying uncontrolled goods
    legit = ship.filter((pl.col("label") == 0) & pl.col("consignee_party_id").is_not_null()
                        & ~pl.col("consignee_country").is_in(["CN", "HK", "MO"]))
    cn_owned = legit.filter(pl.col("consignee_party_id")
                            .replace_strict(top, default=None).is_in(["CN", "HK", "MO"]))
    assert cn_owned.height > 10
    assert not cn_owned["eccn"].drop_nulls().str.contains("(?i)^[34]A090").any()


def test_cloud_lease_diversions_are_big_bare_metal_leases_with_legit_overlap(world):
    leases = world["leases"]
    bad = leases.filter(pl.col("typology") == "cloud_lease")
    assert bad.height > 0 and (bad["label"] == 1).all()
    assert bad["gpu_count"].min() >= 256
    assert (bad["access_type"] == "bare_metal").mean() > 0.5
    assert set(bad["datacenter_country"]) <= {"MY", "ID", "SG", "TH", "JP"}
    legit_big = leases.filter((pl.col("label") == 0) & (pl.col("gpu_count") >= 256))
    assert legit_big.height > 0
    assert world["ship"].filter(pl.col("typology") == "cloud_lease").height == 0


def test_misdeclaration_shows_in_description_hs_or_value(world):
    ship = world["ship"]
    mis = ship.filter(pl.col("typology") == "misdeclaration")
    assert mis.height > 0
    vague = pl.col("description").str.contains(
        "(?i)parts|adapter|video card|graphics (cards|module)|components|accessor|controller"
        "|cooling|PCB")
    parts_hs = pl.col("hs_code").str.starts_with("8473") | pl.col("hs_code").str.starts_with("8517")
    uncontrolled_eccn = pl.col("eccn").is_null() | ~pl.col("eccn").str.contains("(?i)A090")
    assert mis.filter(vague | parts_hs).height / mis.height > 0.9
    assert mis.filter(uncontrolled_eccn).height / mis.height > 0.7
    # hard negative: legitimate low-value parts with the same words and HS lines
    legit_parts = ship.filter((pl.col("label") == 0) & vague & parts_hs
                              & (pl.col("value_usd") < 50000))
    assert legit_parts.height > 50


def test_splitting_makes_bursts_just_under_thresholds(world):
    ship = world["ship"]
    split = ship.filter(pl.col("typology") == "splitting")
    assert split.height > 0
    bursts = split.group_by("consignee_country", "exporter_name").agg(
        pl.len(), (pl.col("export_date").max() - pl.col("export_date").min()).dt.total_days()
        .alias("span"))
    assert bursts["len"].max() >= 5
    assert bursts.filter(pl.col("len") >= 5)["span"].max() <= 30
    assert (split["value_usd"] <= 10000).all()


def test_screening_evasion_names_or_addresses_echo_listed_entries(world):
    from rapidfuzz import fuzz, process

    ds, ship = world["dataset"], world["ship"]
    ev = ship.filter(pl.col("typology") == "screening_evasion")
    assert ev.height > 0
    listed = ds.screening_list
    listed_names = listed["name"].to_list()
    listed_addresses = set(listed["address"].drop_nulls().str.to_uppercase())
    hits = 0
    for name, address in zip(ev["consignee_name"], ev["consignee_address"]):
        best = process.extractOne(name, listed_names, scorer=fuzz.token_set_ratio)
        if best[1] >= 70 or (address and address.upper() in listed_addresses):
            hits += 1
    assert hits / ev.height > 0.6


def test_hard_negatives_exist_in_the_legitimate_world(world):
    ship, leases = world["ship"], world["leases"]
    legit = ship.filter(pl.col("label") == 0)
    controlled = pl.col("eccn").str.contains("(?i)A090").fill_null(False)
    assert legit.filter(pl.col("consignee_country").is_in(HUBS) & controlled).height > 100
    assert legit.filter(pl.col("payer_country").is_not_null()
                        & (pl.col("payer_country") != pl.col("consignee_country"))).height > 20
    assert legit.filter(pl.col("incoterm") == "EXW").height > 100
    assert legit.filter(pl.col("routed_export").fill_null(False)).height > 50
    assert legit.filter(pl.col("intermediate_consignee_name").is_not_null()).height > 50
    assert legit.filter(pl.col("consignee_party_id").is_null()).height > 1000
    assert legit.filter(pl.col("consignee_party_id").is_not_null()).height > 1000
    # no single field separates: diverted value ranges overlap the legitimate ones
    bad = ship.filter(pl.col("label") == 1)
    assert bad["value_usd"].median() < legit["value_usd"].quantile(0.99)
    assert bad["value_usd"].median() > legit["value_usd"].quantile(0.05)
    assert leases.filter(pl.col("label") == 0).height > 0


def test_name_noise_and_legal_suffix_variants(world):
    names = world["ship"]["consignee_name"]
    assert names.str.contains("Pte. Ltd.").any() and names.str.contains("PTE LTD").any()
    assert names.str.contains("(?i)sdn\\.? bhd").any()


def test_diversion_dates_are_spread_over_the_period(world):
    ship = world["ship"]
    months = lambda df: df["export_date"].dt.strftime("%Y-%m").n_unique()
    assert months(ship.filter(pl.col("label") == 1)) >= 15


def _monthly_diversion_rate(out) -> list[float]:
    truth = pl.read_parquet(out / "truth.parquet").filter(pl.col("record_kind") == "shipment")
    dates = pl.read_csv(out / "shipments.csv", columns=["shipment_id", "export_date"])
    joined = truth.join(dates.rename({"shipment_id": "record_id"}), on="record_id")
    return joined.group_by(pl.col("export_date").str.slice(0, 7).alias("month")).agg(
        pl.col("label").mean()).sort("month")["label"].to_list()


def test_schemes_go_on_to_the_last_month(world, tmp_path):
    """Diversion does not stop because the data ends (issue #12: the demo's latest month
    had none): every month after the first has diversions, and over several worlds the
    last two months run at the rate of the middle of the period. One world is lumpy (a
    scheme is 1-20 records), so the rate is averaged over seeds."""
    ship = world["ship"].with_columns(month=pl.col("export_date").dt.strftime("%Y-%m"))
    per_month = ship.group_by("month").agg(pl.col("label").sum()).sort("month")
    assert per_month.height == 24 and min(per_month["label"][1:]) >= 1, per_month
    ratios = []
    for seed in range(8):
        simulate(tmp_path / str(seed), seed=seed, shipments=8000)
        rates = _monthly_diversion_rate(tmp_path / str(seed))
        ratios.append((rates[-1] + rates[-2]) / 2 / (sum(rates[6:18]) / 12))
    assert sum(ratios) / len(ratios) >= 0.7, ratios
    leases = world["leases"].filter(pl.col("label") == 1)
    assert leases["start_date"].max() >= date(2025, 11, 1)


def test_ids_do_not_encode_the_class(world):
    ship = world["ship"]
    assert ship["shipment_id"].str.contains("^SHP-[0-9A-Z]{12}$").all()
    first = ship.with_columns(pl.col("shipment_id").str.slice(4, 1).alias("c"))
    share = first.group_by("c").agg(pl.col("label").mean())["label"]
    assert share.max() < 0.2


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate(a, seed=11, shipments=5000, start=date(2023, 6, 1), months=12)
    simulate(b, seed=11, shipments=5000, start=date(2023, 6, 1), months=12)
    simulate(c, seed=12, shipments=5000, start=date(2023, 6, 1), months=12)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "shipments.csv").read_bytes() != (c / "shipments.csv").read_bytes()
    dates = pl.read_csv(a / "shipments.csv", columns=["export_date"], try_parse_dates=True)
    assert dates["export_date"].min() >= date(2023, 6, 1)
    assert dates["export_date"].max() < date(2024, 6, 1)


def test_cli_simulate_then_validate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["simulate", str(out), "--shipments", "3000", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "3000 shipments" in result.stdout
    for name in FILES:
        assert (out / name).is_file()
    result = runner.invoke(app, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["simulate", str(tmp_path / "x"), "--start", "2024-02-30"])
    assert bad.exit_code == 2


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        simulate(tmp_path, shipments=0)
    with pytest.raises(UsageError):
        simulate(tmp_path, months=0)
