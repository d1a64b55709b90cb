"""Company names, addresses and the spelling noise of real filings.

Names are built from country-flavoured stems, an industry word and the country's legal
form. Every party gets a few *filed variants* (upper case, another spelling of the legal
suffix, no suffix, a typo) because that is how names arrive on real export filings.
"""

from __future__ import annotations

import numpy as np

GENERAL_STEMS = ["Apex", "Nova", "Orchid", "Meridian", "Lumen", "Harbor", "Zenith", "Quantum", "Pacific", "Vertex", "Helix", "Cobalt", "Summit", "Aurora", "Crest", "Falcon", "Granite", "Horizon", "Ion", "Juniper", "Keystone", "Lattice", "Magnet", "Nimbus", "Onyx", "Polar", "Prism", "Radiant", "Sierra", "Tandem", "Umbra", "Vector", "Willow", "Xenon", "Yarrow", "Zephyr", "Atlas", "Beacon", "Cascade", "Delta", "Ember", "Fulcrum", "Gemini", "Halcyon", "Indigo", "Kestrel", "Lodestar", "Mosaic", "Northstar", "Optima", "Pinnacle", "Quasar", "Redwood", "Sapphire", "Titan", "Unity", "Vanguard", "Waypoint", "Arcadia", "Bluewave", "Cirrus", "Dynamo", "Everest", "Fathom", "Glacier", "Highpoint", "Ironclad", "Jetstream", "Kinetic", "Luminary", "Monarch", "Neutron", "Oakridge", "Paragon", "Silverline", "Tidewater", "Uplink", "Velocity", "Whitecap", "Axion", "Bright", "Clearpath"]
CHINESE_STEMS = ["Huaxin", "Zhongke", "Xinda", "Jiahe", "Tianrui", "Hengtong", "Ruixin", "Shengda", "Longwei", "Kaiyuan", "Huarui", "Jinpeng", "Hongtai", "Xinhua", "Yuanjing", "Zhiyuan", "Boxin", "Chuangxin", "Dingsheng", "Fuhua", "Guangming", "Haoyun", "Jiaxin", "Kunpeng", "Lianhe", "Mingtai", "Qianhai", "Runda", "Shunfeng", "Taihe", "Wanxiang", "Xinyuan", "Yida", "Zhenghe", "Anxin", "Baida", "Chenguang", "Dahua", "Feiyang", "Hengyu", "Jinghong", "Kaida", "Lixin", "Minghui", "Ningsheng", "Oufei", "Puhua", "Sanhe", "Tongda", "Weilan", "Xingchen", "Yongtai", "Zhongxin", "Jinlong", "Huatai", "Tianyu"]
MALAY_STEMS = ["Maju", "Jaya", "Sinar", "Bintang", "Cahaya", "Gemilang", "Mutiara", "Teguh", "Harapan", "Setia", "Murni", "Bestari"]
THAI_STEMS = ["Siam", "Chao", "Sukhum", "Rattana", "Thai", "Rama", "Srisuk", "Mekong", "Chatu", "Phuket"]
INDIAN_STEMS = ["Bharat", "Shakti", "Vedant", "Aarav", "Sahyadri", "Ganga", "Kaveri", "Surya", "Tata", "Nilgiri", "Indus", "Agni"]
JAPANESE_STEMS = ["Sakura", "Nippon", "Fuji", "Yamato", "Hikari", "Kaze", "Mirai", "Asahi", "Sora", "Kumo", "Tsubasa"]
KOREAN_STEMS = ["Hanil", "Daesung", "Samil", "Hanbit", "Mirae", "Saehan", "Jinwoo", "Kumho", "Dongbang", "Seoul"]
VIET_STEMS = ["Viet", "Saigon", "Hanoi", "Thanh", "Phuong", "Minh", "Long", "Hoa", "Sao", "Dong"]
GULF_STEMS = ["Gulf", "Emirates", "Al-Noor", "Al-Safa", "Falcon", "Oasis", "Crescent", "Najm", "Zayed", "Marina"]
EUROPEAN_STEMS = ["Nord", "Rhein", "Alpen", "Baltic", "Iberia", "Atlantic", "Danube", "Elbe", "Loire", "Tamise", "Helvetia"]

STEMS_BY_COUNTRY = {
    "CN": CHINESE_STEMS, "HK": CHINESE_STEMS + GENERAL_STEMS[:20], "MO": CHINESE_STEMS,
    "TW": CHINESE_STEMS + GENERAL_STEMS, "SG": GENERAL_STEMS + CHINESE_STEMS,
    "MY": MALAY_STEMS + CHINESE_STEMS + GENERAL_STEMS[:30], "TH": THAI_STEMS + GENERAL_STEMS[:30],
    "IN": INDIAN_STEMS + GENERAL_STEMS[:30], "JP": JAPANESE_STEMS + GENERAL_STEMS[:20],
    "KR": KOREAN_STEMS + GENERAL_STEMS[:20], "VN": VIET_STEMS + GENERAL_STEMS[:20],
    "AE": GULF_STEMS + GENERAL_STEMS[:30], "SA": GULF_STEMS, "DE": EUROPEAN_STEMS + GENERAL_STEMS,
    "FR": EUROPEAN_STEMS + GENERAL_STEMS, "NL": EUROPEAN_STEMS + GENERAL_STEMS,
    "RU": ["Rostek", "Sibir", "Volga", "Neva", "Ural", "Baikal", "Severstal", "Kama", "Oka"],
    "ID": ["Nusantara", "Garuda", "Merapi", "Sumber", "Indo", "Mega", "Surya", "Cipta"] + GENERAL_STEMS[:20],
}

INDUSTRY_WORDS = {
    "cloud_provider": ["Cloud", "Compute", "Cloud Services", "Data Cloud", "Hosting", "Cloud Networks"],
    "data_center": ["Data Centres", "Datacenter", "DC Infrastructure", "Digital Infrastructure"],
    "oem": ["Systems", "Computer", "Technology", "Server Technologies", "Electronics"],
    "manufacturer": ["Manufacturing", "Industries", "Electronics", "Precision", "Motors"],
    "distributor": ["Distribution", "Electronics", "Technology", "Supply", "IT Solutions", "Components"],
    "reseller": ["IT Solutions", "Computer", "Tech", "Digital", "Systems Integration"],
    "logistics": ["Logistics", "Freight", "Express", "Shipping", "Supply Chain", "Forwarding"],
    "trading": ["Trading", "International Trade", "Import & Export", "Commerce", "Realtor",
                "Global Resources", "Holdings", "Enterprise"],
    "research": ["AI Lab", "Research", "Intelligence", "Labs", "AI", "Robotics"],
    "government": ["National Computing Centre", "Defence Science Agency", "Meteorological Service"],
    "other": ["Technologies", "Digital", "Solutions", "Group", "Ventures", "Analytics", "Bank",
              "Media", "Pharma", "Automotive"],
    "unknown": ["Technologies", "Global", "Group"],
}

# canonical legal form first, then spellings seen on filings for the same form
LEGAL_FORMS = {
    "US": [["Inc.", "INC", "Incorporated", "Inc"], ["LLC", "L.L.C.", "Llc"], ["Corp.", "Corporation", "CORP"]],
    "SG": [["Pte. Ltd.", "PTE LTD", "Pte Ltd", "Private Limited", "PTE. LTD"]],
    "MY": [["Sdn. Bhd.", "SDN BHD", "Sdn Bhd", "SDN. BHD."]],
    "CN": [["Co., Ltd.", "CO LTD", "Co. Ltd", "Company Limited", "CO.,LTD"]],
    "TW": [["Co., Ltd.", "CO LTD", "Co. Ltd", "Corporation"]],
    "TH": [["Co., Ltd.", "CO LTD", "Company Limited"], ["Public Company Limited", "PCL", "Public Co. Ltd."]],
    "VN": [["Co., Ltd.", "CO LTD", "Company Limited"], ["JSC", "Joint Stock Company", "J.S.C."]],
    "KR": [["Co., Ltd.", "CO LTD", "Co. Ltd"]],
    "HK": [["Limited", "Ltd", "LTD.", "Ltd."], ["Co., Limited", "CO LIMITED", "Company Limited"]],
    "MO": [["Limitada", "Lda.", "LDA"]],
    "JP": [["K.K.", "KK", "Kabushiki Kaisha", "Co., Ltd."]],
    "DE": [["GmbH", "GMBH", "Gesellschaft mbH"], ["AG", "A.G."]],
    "AT": [["GmbH", "GMBH"]], "CH": [["AG", "A.G.", "SA"]],
    "GB": [["Ltd", "Limited", "LTD."], ["PLC", "plc", "P.L.C."]],
    "IE": [["Limited", "Ltd", "LTD"]],
    "FR": [["SAS", "S.A.S."], ["SA", "S.A."]],
    "NL": [["B.V.", "BV", "B V"]], "BE": [["NV", "N.V."]],
    "IN": [["Pvt. Ltd.", "Private Limited", "PVT LTD", "Pvt Ltd"]],
    "AE": [["FZE", "F.Z.E."], ["FZCO", "FZ-CO", "F.Z.C.O."], ["L.L.C.", "LLC"]],
    "SA": [["Co.", "Company", "CO"]],
    "ID": [["Tbk", "TBK"]],
    "IL": [["Ltd.", "Ltd", "LTD"]], "AU": [["Pty Ltd", "PTY LTD", "Pty. Ltd."]],
    "CA": [["Inc.", "INC", "Ltd."]], "RU": [["LLC", "OOO", "O.O.O."]],
}
DEFAULT_FORMS = [["Ltd.", "Limited", "LTD"]]

CITIES = {
    "US": ["San Jose, CA 95134", "Austin, TX 78701", "Fremont, CA 94538", "Santa Clara, CA 95054",
           "Seattle, WA 98109", "Ashburn, VA 20147", "Newark, NJ 07102", "Los Angeles, CA 90021",
           "Miami, FL 33166", "Chicago, IL 60607", "Houston, TX 77032", "Boston, MA 02110"],
    "SG": ["Singapore 018989", "Singapore 068897", "Singapore 609434", "Singapore 819663",
           "Singapore 138567", "Singapore 417943"],
    "MY": ["50450 Kuala Lumpur", "81200 Johor Bahru", "47800 Petaling Jaya", "63000 Cyberjaya",
           "11900 Bayan Lepas, Penang", "40150 Shah Alam"],
    "TH": ["Bangkok 10110", "Bangkok 10500", "Chonburi 20230", "Samut Prakan 10540"],
    "HK": ["Kwun Tong, Kowloon", "Tsim Sha Tsui, Kowloon", "Wan Chai", "Kwai Chung, New Territories",
           "Sheung Wan", "Mong Kok, Kowloon"],
    "CN": ["Shenzhen, Guangdong", "Shanghai", "Beijing", "Hangzhou, Zhejiang", "Chengdu, Sichuan",
           "Suzhou, Jiangsu", "Guangzhou, Guangdong"],
    "MO": ["Macau"], "TW": ["Taipei", "Hsinchu", "Taoyuan", "Kaohsiung", "New Taipei City"],
    "JP": ["Minato-ku, Tokyo", "Chiyoda-ku, Tokyo", "Osaka", "Yokohama", "Fukuoka"],
    "KR": ["Seoul", "Seongnam, Gyeonggi-do", "Busan", "Incheon"],
    "VN": ["Ho Chi Minh City", "Hanoi", "Da Nang", "Bac Ninh"],
    "AE": ["Jebel Ali Free Zone, Dubai", "Dubai Silicon Oasis", "Abu Dhabi", "Sharjah"],
    "IN": ["Bengaluru 560066", "Mumbai 400093", "Hyderabad 500081", "Chennai 600096", "Noida 201301"],
    "ID": ["Jakarta 12950", "Batam", "Bekasi", "Surabaya"],
    "DE": ["60311 Frankfurt am Main", "80331 Munich", "10115 Berlin", "70173 Stuttgart"],
    "GB": ["London EC2A 4NE", "Cambridge CB4 0WS", "Manchester M1 1AD", "Slough SL1 4AX"],
    "FR": ["75008 Paris", "69002 Lyon", "31000 Toulouse"], "NL": ["1101 Amsterdam", "5611 Eindhoven"],
}
STREETS = {
    "SG": ["{n} Anson Road #{a}-{b}", "{n} Ubi Avenue {k} #{a}-{b}", "{n} Jurong West Street {k}",
           "{n} Changi South Lane", "{n} Science Park Road #{a}-{b}"],
    "MY": ["No. {n}, Jalan {w} {k}", "Lot {n}, Jalan Teknologi {k}", "Level {a}, Menara {w}"],
    "HK": ["Unit {a}{b}, {n}/F, {w} Centre, {n} Hoi Bun Road", "Room {a}{b}, {n}/F, {w} Building",
           "Flat {a}, {n}/F, {w} Industrial Building"],
    "CN": ["Room {a}{b}, Building {k}, {w} Science Park", "No. {n} {w} Road, {k}F"],
    "JP": ["{k}-{a}-{b} {w}"], "TH": ["{n}/{k} Moo {a}, {w} Road"],
    "AE": ["Warehouse {n}, Plot {a}-{b}", "Office {a}{b}, {w} Tower"],
}
DEFAULT_STREETS = ["{n} {w} Road", "{n} {w} Street, Suite {a}{b}", "{n} {w} Avenue",
                   "{n} {w} Drive, Building {k}"]


def _stems(country: str) -> list[str]:
    return STEMS_BY_COUNTRY.get(country, GENERAL_STEMS)


def legal_forms(country: str) -> list[list[str]]:
    return LEGAL_FORMS.get(country, DEFAULT_FORMS)


def company_core(rng: np.random.Generator, country: str, industry: str) -> str:
    """The distinctive part of a name, without the legal form."""
    stems = _stems(country)
    words = INDUSTRY_WORDS.get(industry, INDUSTRY_WORDS["other"])
    first = stems[rng.integers(len(stems))]
    if rng.random() < 0.35:
        second = stems[rng.integers(len(stems))]
        if second != first:
            first = f"{first} {second}" if rng.random() < 0.5 else f"{first}{second.lower()}"
    if industry == "university":
        city = _city_word(rng, country)
        return [f"University of {city}", f"{first} Institute of Technology",
                f"{city} {first} University", f"National {first} University"][rng.integers(4)]
    if industry == "government":
        return f"{words[rng.integers(len(words))]} of {country}" if rng.random() < 0.3 else (
            f"National {first} {words[rng.integers(len(words))]}")
    return f"{first} {words[rng.integers(len(words))]}"


def _city_word(rng: np.random.Generator, country: str) -> str:
    cities = CITIES.get(country, ["Central"])
    city = cities[rng.integers(len(cities))]
    return "".join(ch for ch in city.split(",")[0] if not ch.isdigit()).strip() or "Central"


def company_name(rng: np.random.Generator, country: str, industry: str) -> tuple[str, int]:
    """(registered name, index of its legal form) for a new company."""
    core = company_core(rng, country, industry)
    if industry in ("university", "government", "research") and rng.random() < (
            0.9 if industry != "research" else 0.2):
        return core, -1
    forms = legal_forms(country)
    form = int(rng.integers(len(forms)))
    if country == "ID":
        return f"PT {core} {forms[form][0]}" if rng.random() < 0.3 else f"PT {core}", form
    return f"{core} {forms[form][0]}", form


def filed_variants(rng: np.random.Generator, name: str, country: str, form: int) -> list[str]:
    """Four spellings of ``name`` as filers type it: as registered, upper case, another
    spelling of the legal form, and one with no legal form or with a typo."""
    forms = legal_forms(country)
    core, suffix = name, ""
    if form >= 0:
        canonical = forms[form][0]
        if name.endswith(" " + canonical):
            core, suffix = name[: -len(canonical) - 1], canonical
    alternatives = forms[form][1:] if form >= 0 else []
    alt = f"{core} {alternatives[rng.integers(len(alternatives))]}" if alternatives else name.lower().title()
    if rng.random() < 0.5 or not suffix:
        last = _typo(rng, name)
    else:
        last = core
    upper = name.upper()
    if rng.random() < 0.3:
        upper = upper.replace(",", "").replace(".", "")
    return [name, upper, alt, last]


def _typo(rng: np.random.Generator, text: str) -> str:
    letters = [i for i in range(1, len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha()]
    if not letters:
        return text
    i = letters[rng.integers(len(letters))]
    kind = rng.integers(3)
    if kind == 0:  # swapped neighbours
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if kind == 1:  # dropped letter
        return text[:i] + text[i + 1:]
    return text[:i] + text[i] + text[i:]  # doubled letter


def address(rng: np.random.Generator, country: str) -> str:
    streets = STREETS.get(country, DEFAULT_STREETS)
    template = streets[rng.integers(len(streets))]
    word = _stems(country)[rng.integers(len(_stems(country)))]
    street = template.format(n=int(rng.integers(1, 400)), a=int(rng.integers(1, 40)),
                             b=f"{int(rng.integers(1, 99)):02d}", k=int(rng.integers(1, 12)), w=word)
    cities = CITIES.get(country)
    city = cities[rng.integers(len(cities))] if cities else _generic_city(rng, country)
    return f"{street}, {city}"


def _generic_city(rng: np.random.Generator, country: str) -> str:
    return f"{['North', 'South', 'East', 'West', 'Central'][rng.integers(5)]} District, {country}"


def registration_id(rng: np.random.Generator, country: str, year: int) -> str:
    if country == "SG":
        return f"{year}{int(rng.integers(0, 999999)):06d}{'ACDEGHKMNRWZ'[rng.integers(12)]}"
    if country == "MY":
        return f"{year}01{int(rng.integers(0, 99999999)):08d}"
    if country in ("CN", "HK", "MO"):
        return f"91{int(rng.integers(110000, 659999))}{int(rng.integers(0, 10**9)):09d}X"[:18]
    if country == "US":
        return f"{int(rng.integers(10, 99))}-{int(rng.integers(0, 9999999)):07d}"
    return f"{country}{int(rng.integers(0, 10**9)):09d}"


def name_lookalike(rng: np.random.Generator, name: str) -> str:
    """A name an evader files instead of a listed one: reordered, abbreviated or re-suffixed."""
    words = name.replace(",", "").split()
    kind = rng.integers(5)
    if kind == 0 and len(words) > 2:
        return " ".join([words[1], words[0], *words[2:]])
    if kind == 1:
        return _typo(rng, name)
    if kind == 2:
        return " ".join(words[:-2] if len(words) > 3 else words[:-1]) + " Trading Limited"
    if kind == 3:
        return name.upper().replace(" CO., LTD.", " CO LTD").replace("LIMITED", "LTD")
    return " ".join(words[: max(1, len(words) - 2)]) + " (HK) Technology Co., Limited"
