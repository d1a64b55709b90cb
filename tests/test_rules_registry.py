"""Issue #15: rules take their reason wording and thresholds from the feature registry,
so a rule and the reason that names the same feature cannot drift apart."""

from __future__ import annotations

import polars as pl

from features.registry import FEATURES, FLAGGED_WHEN, flag_expression
from features.rules import RULES


def test_each_red_flag_is_worded_once():
    feature_templates = {f.reason for f in FEATURES.values() if f.reason}
    for rule in RULES:
        if rule.feature is not None:
            assert FEATURES[rule.feature].reason, rule.name
            assert rule.reason is None, f"{rule.name} restates {rule.feature}'s reason"
        else:  # its own wording only where no feature states it
            assert rule.reason and rule.reason not in feature_templates, rule.name


def test_rules_and_flags_share_thresholds():
    """Where a rule tests a registry feature's red-flag threshold, the reasons state the
    value as a red flag exactly when the rule hits (this drifted: 2 vs 3 shared-address
    companies, 10 vs more than 10 GPUs per employee)."""
    frame = pl.DataFrame({
        "consignee_address_shared_by": [1, 2, 3, 4, None],
        "gpus_per_lessee_employee": [9.0, 10.0, 10.5, 11.0, None],
        "unit_value_to_market_low": [0.2, 0.49, 0.5, 0.9, None],
        "linked_small_shipments_14d": [1, 2, 3, 4, None],
    })
    rules = {r.name: r for r in RULES}
    for rule_name, feature in [("shared_address", "consignee_address_shared_by"),
                               ("capacity_beyond_size", "gpus_per_lessee_employee"),
                               ("undervalued", "unit_value_to_market_low"),
                               ("splitting", "linked_small_shipments_14d")]:
        assert feature in FLAGGED_WHEN
        hits = frame.select(rules[rule_name].condition.fill_null(False)).to_series()
        flags = frame.select(flag_expression(feature, frame.schema[feature])).to_series()
        assert hits.to_list() == flags.to_list(), rule_name
        assert 0 < hits.sum() < 4  # the threshold falls inside the sample
