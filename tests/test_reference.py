"""Reference data: classification against FACTS.md, description patterns, screening lists."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from detector.contract import SCREENING_LIST
from detector.errors import InputError
from detector.reference import (
    SCREENING_LIST_ENV,
    chip_model_expr,
    classify_eccn,
    default_screening_list_path,
    load_reference,
    read_reference,
    read_screening_list,
    reference_directory,
    resolve_screening_list,
)
from detector.tables import write_table

CSL_SAMPLE = Path("/work/shared/reference/csl_sample.csv")


@pytest.fixture(scope="module")
def ref():
    return load_reference()


# ------------------------------------------------------------------ classification


@pytest.mark.parametrize("model, eccn", [
    ("A100", "3A090.a"),
    ("A100 80GB", "3A090.a"),
    ("A800", "3A090.a"),
    ("H100 SXM", "3A090.a"),
    ("H100 PCIe", "3A090.a"),
    ("H800", "3A090.a"),
    ("H200", "3A090.a"),
    ("B200", "3A090.a"),
    ("L40S", "3A090.a"),
    ("L4", "3A090.a"),  # TPP 1936 < 4800, caught by density 6.6 >= 5.92
    ("L20", "not controlled"),  # density 3.14 < 3.2
    ("H20", "not controlled"),  # TPP 2368 < 2400 and density 2.91 < 3.2
    ("RTX 4090", "3A090.a"),  # gaming part at TPP >= 4800 is caught
    ("RTX 4090D", "not controlled"),  # gaming part below 4800 is excluded despite its density
    ("MI250X", "3A090.a"),
    ("MI300X", "3A090.a"),
    ("Gaudi 2", "3A090.a"),
    ("Gaudi 3", "3A090.a"),
    ("HGX H100 8-GPU", "4A090.a"),
    ("DGX A100", "4A090.a"),
])
def test_catalogue_classification_matches_facts(ref, model, eccn):
    row = ref.chip(model)
    assert row["eccn"] == eccn
    assert row["controlled"] == eccn.startswith(("3A090", "4A090"))


def test_catalogue_figures_match_facts_table(ref):
    # TPP and performance density as tabulated in FACTS.md "Accelerators".
    expected = {"A100": (4992, 6.04), "H100 SXM": (15832, 19.4), "H100 PCIe": (12104, 14.9),
                "H20": (2368, 2.91), "L40S": (5864, 9.6), "L4": (1936, 6.6),
                "L20": (1912, 3.14), "RTX 4090": (5285, 8.7)}
    for model, (tpp, density) in expected.items():
        row = ref.chip(model)
        assert row["tpp"] == pytest.approx(tpp, abs=1), model
        assert row["performance_density"] == pytest.approx(density, abs=0.06), model


def test_licence_dates_and_server_units(ref):
    assert str(ref.chip("H20")["extra_licence_from"]) == "2025-04-15"
    assert str(ref.chip("MI308X")["extra_licence_from"]) == "2025-04-15"
    assert ref.chip("H100 SXM")["extra_licence_from"] is None
    server = ref.chip("HGX H100 8-GPU")
    assert server["item_kind"] == "server" and server["gpus_per_unit"] == 8
    assert 250_000 <= server["price_low_usd"] <= server["price_high_usd"] <= 400_000
    assert 60 <= server["unit_weight_kg"] <= 130
    boards = ref.chips.filter(pl.col("item_kind") == "chip")
    assert boards["unit_weight_kg"].max() <= 3.0
    # the catalogue is not only controlled parts
    assert ref.chips.filter(~pl.col("controlled")).height >= 5


@pytest.mark.parametrize("tpp, density, datacenter, kind, eccn", [
    (4800, None, True, "chip", "3A090.a"),
    (4799, 5.92, True, "chip", "3A090.a"),
    (4799, 5.91, True, "chip", "3A090.b"),  # 2400 <= TPP < 4800, 1.6 <= PD < 5.92
    (2400, 1.6, True, "chip", "3A090.b"),
    (2399, 1.6, True, "chip", "not controlled"),
    (1600, 3.2, True, "chip", "3A090.b"),  # TPP >= 1600 with 3.2 <= PD < 5.92
    (1600, 3.19, True, "chip", "not controlled"),
    (1599, 10.0, True, "chip", "not controlled"),
    (4799, 9.0, False, "chip", "not controlled"),  # gaming exclusion
    (4800, 9.0, False, "chip", "3A090.a"),
    (3000, 4.0, True, "server", "4A090.b"),
    (2000, None, True, "chip", "unknown"),  # the density decides and is missing
    (None, 5.0, True, "chip", "unknown"),
])
def test_classify_eccn_thresholds(tpp, density, datacenter, kind, eccn):
    assert classify_eccn(tpp, density, datacenter, kind) == eccn


def test_classify_eccn_rejects_unknown_item_kind():
    with pytest.raises(ValueError, match="item_kind"):
        classify_eccn(5000, 6.0, True, "rack")


# ------------------------------------------------------------------ description patterns

DESCRIPTIONS = [
    ("NVIDIA H100 SXM5 80GB", "H100 SXM"),
    ("H100-SXM5-80G", "H100 SXM"),
    ("Tesla H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 80GB PCIe", "H100 PCIe"),
    ("H100PCIE 80GB", "H100 PCIe"),
    ("NVIDIA H100 NVL 94GB", "H100 NVL"),
    ("HGX H100 8-GPU", "HGX H100 8-GPU"),
    ("Supermicro SYS-821GE-TNHR HGX H100 8-GPU server", "HGX H100 8-GPU"),
    ("GPU server with 8x H100 SXM5 80GB", "HGX H100 8-GPU"),
    ("HGX H100 4-GPU baseboard", "HGX H100 4-GPU"),
    ("NVIDIA DGX H100 system", "DGX H100"),
    ("DGX A100 640GB", "DGX A100"),
    ("HGX A100 8-GPU 80GB", "HGX A100 8-GPU"),
    ("HGX H200 8-GPU 141GB", "HGX H200 8-GPU"),
    ("NVIDIA H200 141GB HBM3e", "H200"),
    ("H200 NVL", "H200"),
    ("NVIDIA H20 96GB", "H20"),
    ("HGX H20", "H20"),
    ("h20-96g accelerator card", "H20"),
    ("NVIDIA H800 SXM5 80GB", "H800"),
    ("A100-PCIE-40GB", "A100 40GB"),
    ("A100 80GB PCIe", "A100 80GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
    ("Tesla A100", "A100"),
    ("nvidia a100 tensor core gpu", "A100"),
    ("NVIDIA A800 80GB PCIe", "A800"),
    ("NVIDIA GB200 NVL72 compute tray", "GB200 (per GPU)"),
    ("NVIDIA B200 180GB", "B200"),
    ("NVIDIA L40S 48GB", "L40S"),
    ("NVIDIA L40 48GB", "L40"),
    ("NVIDIA L4 24GB", "L4"),
    ("NVIDIA L20 48GB", "L20"),
    ("GeForce RTX 4090 24GB", "RTX 4090"),
    ("MSI RTX4090 GAMING X TRIO 24G", "RTX 4090"),
    ("GeForce RTX 4090D 24GB", "RTX 4090D"),
    ("ZOTAC RTX 4090 D", "RTX 4090D"),
    ("AMD Instinct MI300X OAM", "MI300X"),
    ("AMD Instinct MI308X", "MI308X"),
    ("AMD Instinct MI250X", "MI250X"),
    ("Intel Gaudi 3 HL-325L", "Gaudi 3"),
    ("Habana Gaudi2 HL-225H mezzanine", "Gaudi 2"),
    ("NVIDIA Tesla T4 16GB", "T4"),
    ("Tesla V100-SXM2-16GB", "V100"),
    ("NVIDIA DGX H200", "DGX H200"),
    ("Server 8 x NVIDIA H200 141GB", "HGX H200 8-GPU"),
    ("NVIDIA B100", "B100"),
    ("NVIDIA A40 48GB", "A40"),
    ("NVIDIA A10 24GB", "A10"),
    ("GeForce RTX 4080 SUPER 16GB", "RTX 4080"),
    ("GeForce RTX 3090 Ti", "RTX 3090"),
    # no catalogue product named: must not be misread as one
    ("NVIDIA A10G", None),
    ("A4 paper, 40 reams", None),
    ("NVIDIA RTX A1000 8GB", None),
    ("RTX A1000", None),
    ("NVIDIA GH200 Grace Hopper", None),
    ("computer parts", None),
    ("adapters", None),
    ("H2O purification unit", None),
]


@pytest.mark.parametrize("description, model", DESCRIPTIONS)
def test_description_patterns(ref, description, model):
    assert ref.match_chip(description) == model


def test_polars_expression_agrees_with_python_matching(ref):
    frame = pl.DataFrame({"description": [d for d, _ in DESCRIPTIONS] + [None]})
    got = frame.select(chip_model_expr(pl.col("description"), ref.chips)).to_series()
    assert got.to_list() == [m for _, m in DESCRIPTIONS] + [None]


def test_every_catalogue_row_is_reachable(ref):
    # A row shadowed by an earlier, broader pattern could never be matched.
    for model in ref.chips["model"]:
        assert any(ref.match_chip(d) == model for d, m in DESCRIPTIONS if m == model), model


# ------------------------------------------------------------------ reference tables


def test_country_groups_and_licence_countries(ref):
    assert ref.countries("HUB", confirmed_only=True) == ["HK", "ID", "JP", "MY", "SG", "TH", "TW"]
    assert set(ref.countries("HUB")) - set(ref.countries("HUB", confirmed_only=True)) == {
        "AE", "VN", "IN"}
    required = set(ref.licence_required_countries())
    assert {"CN", "HK", "MO", "RU", "VN", "AE", "SA", "KZ"} <= required
    # FACTS.md: SG and TW escape through A:6 (IL too, though in D:4); MY, TH, ID need none.
    assert not required & {"SG", "TW", "IL", "MY", "TH", "ID", "IN", "US", "DE", "JP"}
    with pytest.raises(ValueError, match="unknown country group"):
        ref.countries("D:9")


def test_hs_codes_copied_from_nomenclature(ref):
    hs = ref.hs_codes
    typical = set(hs.filter(pl.col("typical_for_gpus"))["hs6"])
    assert typical == {"847150", "847141", "847149", "847180", "847330", "854231"}
    nomenclature = pl.read_csv("/work/shared/reference/harmonized_system_2022.csv",
                               infer_schema=False)
    joined = hs.join(nomenclature, left_on="hs6", right_on="hscode", how="left")
    assert (joined["description"] == joined["description_right"]).all()


def test_reference_version_changes_with_the_files(tmp_path, ref):
    copy = tmp_path / "ref"
    shutil.copytree(reference_directory(), copy)
    assert read_reference(copy).version == ref.version
    groups = copy / "country_groups.csv"
    groups.write_text(groups.read_text() + "FR,HUB,false,,test\n")
    assert read_reference(copy).version != ref.version


def test_bad_reference_file_names_file_column_line_and_value(tmp_path):
    copy = tmp_path / "ref"
    shutil.copytree(reference_directory(), copy)
    chips = copy / "chips.csv"
    lines = chips.read_text().splitlines()
    lines[3] = lines[3].replace(",4992,", ",lots,", 1)  # DGX A100's TPP
    chips.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        read_reference(copy)
    message = str(err.value)
    assert "chips.csv" in message and "'tpp'" in message and "4" in message
    assert "lots" in message


def test_bad_pattern_is_rejected(tmp_path):
    copy = tmp_path / "ref"
    shutil.copytree(reference_directory(), copy)
    chips = copy / "chips.csv"
    df = pl.read_csv(chips, infer_schema=False)
    df = df.with_columns(pl.when(pl.col("model") == "L4").then(pl.lit(r"(?<=NVIDIA )L4"))
                         .otherwise(pl.col("patterns")).alias("patterns"))
    df.write_csv(chips)
    with pytest.raises(InputError, match="patterns"):
        read_reference(copy)


# ------------------------------------------------------------------ screening lists


def test_csl_sample_reads_intact():
    sl = read_screening_list(CSL_SAMPLE)
    assert sl.schema == SCREENING_LIST.schema
    raw = pl.read_csv(CSL_SAMPLE, infer_schema=False)
    # every name and list name comes through unchanged
    assert set(sl["name"]) == set(raw["name"])
    assert set(sl["list_name"]) == set(raw["source"])
    cetc = sl.filter(pl.col("name").str.starts_with("China Electronics Technology"))
    assert cetc.height == 1  # its '; and' address is one address, not three
    assert cetc["list_name"][0] == "Entity List (EL) - Bureau of Industry and Security"
    assert cetc["country"][0] == "CN"
    assert cetc["address"][0] == raw.filter(pl.col("name") == cetc["name"][0])["addresses"][0]
    assert cetc["alt_names"][0].to_list()[:3] == [
        "Hebei Semiconductor Research Institute", "HSRI", "Hebei Institute of Semiconductors"]
    assert str(cetc["start_date"][0]) == "2018-08-01"
    rim = sl.filter(pl.col("name") == "RIM, Ryong Nam").sort("country")
    assert rim.select("country", "address").rows() == [("CN", "Shenyang, CN"),
                                                       ("KP", "Pyongyang, KP")]
    bank = sl.filter(pl.col("name") == "SME BANK")
    assert bank["alt_names"][0].len() == 5 and bank["country"][0] == "RU"
    # every address of every entry is kept, in order
    for name, addresses in raw.select("name", "addresses").iter_rows():
        got = sl.filter(pl.col("name") == name)["address"].to_list()
        assert "; ".join(a for a in got if a) == (addresses or ""), name


def test_csl_as_parquet(tmp_path):
    path = tmp_path / "csl.parquet"
    pl.read_csv(CSL_SAMPLE, infer_schema=False).write_parquet(path)
    assert read_screening_list(path).equals(read_screening_list(CSL_SAMPLE))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_reduced_shape_round_trip(tmp_path, suffix):
    original = read_screening_list(CSL_SAMPLE)
    path = write_table(original, tmp_path / f"list.{suffix}")
    assert read_screening_list(path).equals(original)


def test_shipped_demo_list(tmp_path):
    demo = read_screening_list(default_screening_list_path())
    assert 25 <= demo.height <= 40
    assert demo["name"].is_not_null().all() and demo["list_name"].is_not_null().all()
    assert {"CN", "HK", "SG", "MY"} <= set(demo["country"].drop_nulls())


@pytest.mark.parametrize("content, match", [
    ("foo,bar\n1,2\n", "not a screening list"),
    ("name,list_name,start_date\nAcme,Entity List,2024-99-01\n", "start_date"),
    ("name,list_name\n,Entity List\n", "required value is empty"),
])
def test_bad_screening_list_is_input_error(tmp_path, content, match):
    path = tmp_path / "list.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as err:
        read_screening_list(path)
    assert "list.csv" in str(err.value)


def test_bad_screening_list_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_screening_list(tmp_path / "missing.csv")
    (tmp_path / "list.txt").write_text("name,list_name\n")
    with pytest.raises(InputError, match=r"\.csv or \.parquet"):
        read_screening_list(tmp_path / "list.txt")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="broken.parquet"):
        read_screening_list(tmp_path / "broken.parquet")


def test_resolve_screening_list_precedence(tmp_path, monkeypatch):
    explicit = write_table(read_screening_list(CSL_SAMPLE).head(2), tmp_path / "explicit.csv")
    env_file = write_table(read_screening_list(CSL_SAMPLE).head(3), tmp_path / "env.csv")
    in_dataset = read_screening_list(CSL_SAMPLE).head(4)
    monkeypatch.setenv(SCREENING_LIST_ENV, str(env_file))

    frame, origin = resolve_screening_list(explicit, in_dataset)
    assert frame.height == 2 and origin.startswith("explicit.csv (2 entries")
    frame, origin = resolve_screening_list(None, in_dataset)
    assert frame.height == 4 and "dataset" in origin
    frame, origin = resolve_screening_list(None, None)
    assert frame.height == 3 and "env.csv" in origin and SCREENING_LIST_ENV in origin
    assert "latest start_date 2023-07-19" in origin

    monkeypatch.delenv(SCREENING_LIST_ENV)
    frame, origin = resolve_screening_list(None, None)
    assert frame.equals(read_screening_list(default_screening_list_path()))
    assert f"({frame.height:,} entries" in origin

    monkeypatch.setenv(SCREENING_LIST_ENV, str(tmp_path / "nowhere.csv"))
    with pytest.raises(InputError, match=SCREENING_LIST_ENV):
        resolve_screening_list(None, None)
