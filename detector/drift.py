"""Drift: how a batch differs from the data the model was trained on.

At training, `training_profile` stores compact distributions in the bundle (JSON inside
``bundle.json``, under ``provenance["training_profile"]``):

- per model input (features, rule and anomaly scores) and for the risk score: decile
  edges of a sample of the training records and the share of records in each bin (and
  of missing values): a quantile sketch;
- category frequencies: destination countries (shipment destinations and lease data
  centres) and HS codes (first six digits);
- 48-bit hashes of the parties seen (consignee and lessee names, normalised) and of the
  wordings of descriptions in which no catalogue chip was recognised.

For a batch, `drift_report` computes the population stability index (PSI) of every
input and of the risk score, and the shares of records with a destination, an HS code,
a party or a chip-less description wording never seen in training. Figures above the
thresholds (`detector.config.DriftSettings`, in the training config's ``[drift]``
section and stored with the model) are alerts.

PSI = sum over bins of (batch share - training share) x ln(batch share / training share),
shares floored at 0.0001. Rule of thumb: below 0.1 stable, 0.1 to 0.25 a moderate shift,
above 0.25 a major one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from features.registry import FAMILIES

PROFILE_KEY = "training_profile"
PROFILE_FORMAT = 1
SKETCH_ROWS = 50_000  # training records sampled for the quantile sketches
KNOWN_CAP = 200_000  # most hashes kept per set (parties, description wordings)
FLOOR = 1e-4  # smallest share in the PSI (an empty bin would make it infinite)
_DECILES = np.linspace(0.1, 0.9, 9)
# Inputs that grow with the amount of history behind a record (counts since the first
# shipment, ages): a later batch shifts them by construction, so their PSI is shown but
# raises no alert.
ACCUMULATING = frozenset({"days_since_first_shipment", "consignee_prior_shipments",
                          "consignee_age_days", "lessee_age_days",
                          # earlier decisions: the store only grows
                          *FAMILIES["case_memory"]})


# ----------------------------------------------------------------------------- sketches


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _as_float(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64, strict=False).to_numpy().astype(np.float64, copy=False)


def sketch(values: np.ndarray) -> dict:
    """Decile edges of the non-missing values and the share in each bin (+ missing)."""
    finite = _finite(values)
    edges = np.unique(np.round(np.quantile(finite, _DECILES), 9)) if len(finite) else \
        np.array([])
    counts = bin_counts(values, edges)
    total = max(len(values), 1)
    return {"edges": [float(e) for e in edges],
            "shares": [round(c / total, 6) for c in counts]}


def bin_counts(values: np.ndarray, edges) -> np.ndarray:
    """Counts per bin: (-inf, e1), [e1, e2), ..., [ek, inf), then missing (NaN, ±inf).

    From the count of finite values at or above each edge (``edges`` ascending, as
    `sketch` stores them): one comparison pass per edge, instead of a binary search per
    value (a quarter of the CPU over a million rows); the same integer counts."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    finite = int(np.count_nonzero(np.isfinite(values)))
    above = int(np.count_nonzero(values == np.inf))  # +inf passes every ">=" below
    at_least = [finite, *(int(np.count_nonzero(values >= e)) - above for e in edges), 0]
    counts = np.array([at_least[j] - at_least[j + 1] for j in range(len(edges) + 1)],
                      dtype=np.float64)
    return np.append(counts, len(values) - finite)


def psi(expected_shares, actual_counts) -> float:
    actual = np.asarray(actual_counts, dtype=np.float64)
    if actual.sum() == 0:
        return float("nan")
    p = np.maximum(actual / actual.sum(), FLOOR)
    q = np.maximum(np.asarray(expected_shares, dtype=np.float64), FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=6).hexdigest()


def _norm_text(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def _per_distinct(values: pl.Series, expr: pl.Expr) -> pl.Series:
    """``expr`` (a function of one value, over ``pl.col("v")``) of each of ``values``,
    computed once per distinct value and lined up row for row (a batch repeats its
    names and descriptions: 1M shipments hold about 90,000 consignee names)."""
    frame = values.alias("v").to_frame()
    distinct = frame.unique().with_columns(expr.alias("__out"))
    return frame.join(distinct, on="v", how="left", nulls_equal=True,
                      maintain_order="left")["__out"]


def _parties(shipments: pl.DataFrame, leases: pl.DataFrame) -> pl.Series:
    """Normalised consignee and lessee names, one per record (empty names dropped)."""
    from features.names import normalise_name

    names = pl.concat([shipments["consignee_name"], leases["lessee_name"]])
    normalised = _per_distinct(names, normalise_name(pl.col("v"))).alias("n")
    return normalised.filter(normalised.is_not_null() & (normalised.str.len_chars() > 0))


def _destinations(shipments: pl.DataFrame, leases: pl.DataFrame) -> pl.Series:
    return pl.concat([shipments["destination_country"],
                      leases["datacenter_country"]]).drop_nulls()


def _hs6(shipments: pl.DataFrame) -> pl.Series:
    return shipments["hs_code"].drop_nulls().str.slice(0, 6)


def _chipless_wordings(shipments: pl.DataFrame, chip_model: pl.Series | None) -> pl.Series:
    """Normalised descriptions of the shipments in which no catalogue chip was recognised
    (``chip_model`` aligned with ``shipments``; None: recognise here). Each distinct
    description is normalised and matched once."""
    descriptions = shipments["description"]
    if chip_model is None:
        distinct = descriptions.unique()
        chips = recognised_chips(distinct.to_frame())
        chip_model = descriptions.alias("v").to_frame().join(
            pl.DataFrame({"v": distinct, "chip": chips}), on="v", how="left",
            nulls_equal=True, maintain_order="left")["chip"]
    frame = pl.DataFrame({"d": _per_distinct(descriptions, _norm_text(pl.col("v"))),
                          "chip": chip_model})
    return frame.filter(pl.col("chip").is_null() & pl.col("d").is_not_null())["d"]


def recognised_chips(shipments: pl.DataFrame) -> pl.Series:
    """The catalogue model recognised in each shipment's description (null: none)."""
    from detector.reference import load_reference
    from features.product import recognise_chips
    from features.refview import view

    lf = shipments.select(pl.col("description")).with_row_index("__i").lazy()
    out = recognise_chips(lf, "description", view(load_reference())).collect()
    return out.sort("__i")["chip_model"] if "chip_model" in out.columns else \
        pl.Series([None] * shipments.height, dtype=pl.String)


def _frequencies(values: pl.Series) -> dict[str, float]:
    if not len(values):
        return {}
    counts = values.alias("value").value_counts(sort=True, name="n")
    total = counts["n"].sum()
    return {str(v): round(n / total, 6) for v, n in counts.iter_rows()}


def _known(values: pl.Series) -> list[str]:
    distinct = values.unique().sort().to_list()
    return sorted({_hash(v) for v in distinct})[:KNOWN_CAP]


def training_profile(layered_sample: pl.DataFrame, inputs: list[str], risk: np.ndarray,
                     shipments: pl.DataFrame, leases: pl.DataFrame) -> dict:
    """The compact training distributions stored with a model (module docstring).

    ``layered_sample``: a sample of the training records with every model input;
    ``risk``: the model's risk for those rows; ``shipments``/``leases``: the raw
    training records (dataset and history)."""
    return {
        "format": PROFILE_FORMAT,
        "records": layered_sample.height,
        "inputs": {name: sketch(_as_float(layered_sample[name])) for name in inputs
                   if name in layered_sample.columns},
        "risk": sketch(np.asarray(risk, dtype=np.float64)),
        "destinations": _frequencies(_destinations(shipments, leases)),
        "hs_codes": _frequencies(_hs6(shipments)),
        "parties": _known(_parties(shipments, leases)),
        "chipless_wordings": _known(_chipless_wordings(shipments, None)),
    }


# ----------------------------------------------------------------------------- batches


class InputCounts:
    """Bin counts of a batch's model inputs and risk, added part by part while scoring."""

    def __init__(self, profile: dict):
        self.profile = profile
        self.counts = {name: np.zeros(len(s["shares"])) for name, s in
                       profile["inputs"].items()}
        self.risk = np.zeros(len(profile["risk"]["shares"]))
        self.records = 0

    def add(self, layered: pl.DataFrame) -> None:
        """One scored part: the model inputs and ``risk_score``."""
        for name, s in self.profile["inputs"].items():
            if name in layered.columns:
                self.counts[name] += bin_counts(_as_float(layered[name]), s["edges"])
        self.risk += bin_counts(_as_float(layered["risk_score"]), self.profile["risk"]["edges"])
        self.records += layered.height


@dataclass
class DriftFigure:
    kind: str  # input, risk, unseen
    name: str
    value: float
    threshold: float
    detail: str = ""

    @property
    def alert(self) -> bool:
        return self.value == self.value and self.value > self.threshold


@dataclass
class DriftReport:
    records: int
    figures: list[DriftFigure] = field(default_factory=list)
    note: str = ""
    logged_run: str | None = None  # the MLflow run holding the figures, if logged

    @property
    def alerts(self) -> list[DriftFigure]:
        return [f for f in self.figures if f.alert]

    def metrics(self) -> dict[str, float]:
        """Figures as MLflow metrics (``psi.<input>``, ``risk_psi``, ``unseen.<what>``)."""
        out = {"records": float(self.records), "alerts": float(len(self.alerts))}
        for f in self.figures:
            key = {"input": f"psi.{f.name}", "risk": "risk_psi"}.get(f.kind, f"unseen.{f.name}")
            out[key] = f.value
        return out

    def alert_lines(self) -> list[str]:
        return [f"drift: {_describe(f)}" for f in self.alerts]

    def table(self) -> str:
        """Every figure, alerts first, then the largest PSI."""
        if self.note and not self.figures:
            return self.note
        lines = [f"{self.records} records compared with the model's training data; "
                 f"{len(self.alerts)} alert(s)", "",
                 f"{'':<2}{'figure':<44} {'value':>8} {'threshold':>9}  detail"]
        order = sorted(self.figures, key=lambda f: (not f.alert, f.kind == "input",
                                                    -(f.value if f.value == f.value else -1)))
        for f in order:
            label = {"input": f"PSI {f.name}", "risk": "PSI risk score"}.get(
                f.kind, f"unseen {f.name} (share)")
            value = "-" if f.value != f.value else f"{f.value:.3f}"
            lines.append(f"{'!' if f.alert else ' ':<2}{label[:44]:<44} {value:>8} "
                         f"{f.threshold:>9.3f}  {f.detail}")
        if self.note:
            lines += ["", self.note]
        if self.logged_run:
            lines += ["", f"figures logged to MLflow: run {self.logged_run}"]
        return "\n".join(lines)


UNSEEN_LABELS = {
    "destinations": "records to a destination country never seen in training",
    "hs_codes": "shipments under an HS code (6 digits) never seen in training",
    "chipless_wordings": "shipments whose description names no known chip, in a wording "
                         "never seen in training",
    "parties": "records whose consignee or lessee was never seen in training",
}


def _describe(f: DriftFigure) -> str:
    if f.kind == "input":
        return (f"model input {f.name} shifted: PSI {f.value:.3f} above {f.threshold:.3f}"
                + (f" ({f.detail})" if f.detail else ""))
    if f.kind == "risk":
        return f"risk score distribution shifted: PSI {f.value:.3f} above {f.threshold:.3f}"
    return (f"{f.value:.1%} of {UNSEEN_LABELS[f.name]} (threshold {f.threshold:.1%})"
            + (f": {f.detail}" if f.detail else ""))


def _top_decile(sketched: dict, counts: np.ndarray) -> str:
    """How many of the batch's records score above the training's top-decile edge, beside
    the training share there (about 10%)."""
    edges, shares = sketched["edges"], sketched["shares"]
    total = float(np.sum(counts))
    if not edges or not total:
        return ""
    return (f"{counts[len(edges)] / total:.1%} of records score above {edges[-1]:.3f}, "
            f"the top decile in training ({shares[len(edges)]:.1%} there)")


def band(value: float) -> str:
    """The PSI rule of thumb in words (module docstring)."""
    if value != value:
        return "not measured"
    return "stable" if value < 0.1 else "a moderate shift" if value <= 0.25 else \
        "a major shift"


def input_label(name: str) -> str:
    """What a model input is, in words: the feature registry's description, or the
    layer it comes from."""
    from features.registry import FEATURES

    if name in FEATURES:
        return FEATURES[name].description
    if name == "rule_points":
        return "points from the red-flag rules"
    if name == "unsupervised_score":
        return "how unusual the record is to the unsupervised detectors (their mean)"
    if name.startswith("unsupervised_"):
        return f"how unusual the record is to the {name.removeprefix('unsupervised_')} " \
               "detector"
    return name.replace("_", " ")


def plain(f: DriftFigure) -> str:
    """One figure as a sentence for a reader who does not know what PSI is."""
    if f.kind == "input":
        return (f"The model input {f.name} ({input_label(f.name)}) is distributed "
                f"differently from training: {band(f.value)} (PSI {f.value:.2f}; alert "
                f"above {f.threshold:.2f}).")
    if f.kind == "risk":
        return (f"The risk scores are distributed differently from training: "
                f"{band(f.value)} (PSI {f.value:.2f}; alert above {f.threshold:.2f})"
                + (f"; {f.detail}" if f.detail else "") + ".")
    return (f"{f.value:.1%} of {UNSEEN_LABELS[f.name]} (alert above {f.threshold:.1%})"
            + (f"; most frequent: {f.detail}" if f.detail else "") + ".")


def _unseen(values: pl.Series, known: set[str], hashed: bool) -> tuple[float, str]:
    """Share of values not in ``known``, and the most frequent of them."""
    if not len(values):
        return float("nan"), ""
    if hashed:  # each distinct value hashed once (a batch repeats its parties' names)
        distinct = values.unique()
        keys = distinct.map_elements(_hash, return_dtype=pl.String)
        new = values.filter(values.is_in(distinct.filter(~keys.is_in(list(known))).implode()))
    else:
        new = values.filter(~values.is_in(list(known)))
    top = new.alias("value").value_counts(sort=True, name="n").head(3)
    detail = ", ".join(f"{v!s} ({n})" for v, n in top.iter_rows())
    return new.len() / values.len(), detail


def drift_report(profile: dict | None, counts: InputCounts | None,
                 shipments: pl.DataFrame, leases: pl.DataFrame, settings,
                 chip_model: pl.Series | None = None) -> DriftReport:
    """Compare a batch (its own records) with the training profile.

    ``counts``: the batch's model inputs and risk, binned while scoring; ``shipments`` /
    ``leases``: the batch's raw records; ``settings``: `detector.config.DriftSettings`;
    ``chip_model``: the recognised chip per shipment, if already computed.
    """
    records = shipments.height + leases.height
    if not profile:
        return DriftReport(records, note="the model stores no training distributions "
                                         "(trained before drift checks existed): retrain it")
    report = DriftReport(records)
    small = records < settings.min_records
    if counts is not None:
        for name, s in profile["inputs"].items():
            value = psi(s["shares"], counts.counts[name])
            if name in ACCUMULATING:
                report.figures.append(DriftFigure("input", name, value, float("inf"),
                                                  "grows with history: not alerted"))
            else:
                report.figures.append(DriftFigure("input", name, value, settings.psi))
        report.figures.append(DriftFigure("risk", "risk_score",
                                          psi(profile["risk"]["shares"], counts.risk),
                                          settings.risk_psi, _top_decile(profile["risk"],
                                                                         counts.risk)))
    # each figure's values made when it is taken and let go after (10M shipments: each
    # is a text per record)
    unseen = [
        ("destinations", lambda: _destinations(shipments, leases),
         set(profile["destinations"]), False, settings.unseen_destination),
        ("hs_codes", lambda: _hs6(shipments), set(profile["hs_codes"]), False,
         settings.unseen_hs_code),
        ("chipless_wordings", lambda: _chipless_wordings(shipments, chip_model),
         set(profile["chipless_wordings"]), True, settings.unseen_description),
        ("parties", lambda: _parties(shipments, leases), set(profile["parties"]), True,
         settings.unseen_party),
    ]
    for name, make, known, hashed, threshold in unseen:
        values = make()
        share, detail = _unseen(values, known, hashed)
        if name == "chipless_wordings" and len(values):
            share = share * len(values) / max(shipments.height, 1)  # of all shipments
        report.figures.append(DriftFigure("unseen", name, share, threshold, detail))
        del values
    if small:
        for f in report.figures:  # too few records: figures shown, never alerts
            f.threshold = float("inf")
        report.note = (f"only {records} records (fewer than {settings.min_records}, the "
                       "[drift] min_records setting): figures shown, no alerts raised")
    return report


def _eager(frame, columns: list[str]) -> pl.DataFrame:
    """The columns drift needs, in memory (a large batch's shipments may wait on disk)."""
    frame = frame.select(columns)
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def check_batch(batch, model, counts: InputCounts | None, *, frame_chips: pl.Series | None
                = None, log: Callable[[str], None] = lambda _: None,
                log_to_mlflow: bool = True) -> DriftReport:
    """The drift report of a scored batch; alerts on stderr (``log``), figures to MLflow
    when the model came from the tracking store."""
    from detector.config import drift_settings

    bundle = model.bundle
    profile = (bundle.provenance or {}).get(PROFILE_KEY) if bundle is not None else None
    shipments, leases = (_eager(batch.dataset.shipments, ["consignee_name",
                                                           "destination_country", "hs_code",
                                                           "description"]),
                         _eager(batch.dataset.leases, ["datacenter_country", "lessee_name"]))
    report = drift_report(profile, counts, shipments, leases,
                          drift_settings(bundle.config if bundle is not None else {}),
                          frame_chips)
    for line in report.alert_lines():
        log(line)
    if log_to_mlflow and profile and model.info.get("run_id"):
        from detector import tracking

        name = model.info.get("name") or tracking.DEFAULT_MODEL_NAME
        report.logged_run = tracking.log_figures(
            experiment=f"{name}-drift", run_name=f"drift {batch.provenance.get('dataset')}",
            metrics=report.metrics(),
            tags={"model": model.label, "model_run_id": model.info.get("run_id"),
                  "dataset": batch.provenance.get("dataset"),
                  "data_fingerprint": batch.provenance.get("data_fingerprint"),
                  "alerts": "; ".join(report.alert_lines())[:5000]})
    return report

