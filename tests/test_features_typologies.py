"""On a simulated world, each typology's defining features are elevated for its records
compared with legitimate records (truth comes from the simulator, never from features)."""

from __future__ import annotations

import polars as pl
import pytest

from detector.reference import load_reference
from detector.simulation import simulate
from detector.tables import read_dataset
from features.build import build_features

# typology -> features whose mean must be higher for its records than for legitimate ones
DEFINING = {
    "transshipment": ["later_reexported_to_d5_hk_mo"],
    "shell_company": ["consignee_address_shared_by"],
    "restricted_parent": ["ultimate_parent_in_d5_or_macau"],
    "cloud_lease": ["bare_metal_access"],
    "misdeclaration": ["vague_description", "parts_hs_for_gpu_priced_item"],
    "splitting": ["linked_small_shipments_14d"],
    "screening_evasion": ["screening_match_score"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    # a world with at least 10 records of every typology (schemes are drawn at random, and
    # some seeds give one typology a single short scheme: seed 3 gave screening evasion
    # one record); seed 1 gives 25-115 of each
    simulate(out, seed=1, shipments=20_000)
    ds = read_dataset(out)
    frame = build_features(ds.shipments, ds.leases, ds.parties, ds.screening_list,
                           load_reference())
    truth = pl.read_parquet(out / "truth.parquet")
    return frame.join(truth, on=["record_kind", "record_id"], how="left")


@pytest.mark.parametrize("typology", sorted(DEFINING))
def test_typology_features_are_elevated(world, typology):
    rows = world.filter(pl.col("typology") == typology)
    assert rows.height >= 10, f"the simulated world has {rows.height} {typology} records"
    kinds = rows["record_kind"].unique().to_list()
    legit = world.filter((pl.col("label").fill_null(0) == 0) & pl.col("typology").is_null()
                         & pl.col("record_kind").is_in(kinds))
    for feature in DEFINING[typology]:
        bad = rows[feature].cast(pl.Float64).fill_null(0).mean()
        good = legit[feature].cast(pl.Float64).fill_null(0).mean()
        assert bad > good, f"{typology}: mean {feature} {bad:.3f} vs legitimate {good:.3f}"
