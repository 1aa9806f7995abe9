"""Province reference list (CONTRACT appendix A) and operator-supplied lists."""

from __future__ import annotations

import csv

# Two-digit codes of the 34 provincial units in force since 2025-07-01
# (Quyết định 19/2025/QĐ-TTg), with 2024 population in thousands: the
# simulator weights traffic by it.
DEFAULT_PROVINCES: dict[str, tuple[str, int]] = {
    "01": ("Hà Nội", 8719),
    "04": ("Cao Bằng", 1295),
    "08": ("Tuyên Quang", 1866),
    "11": ("Điện Biên", 641),
    "12": ("Lai Châu", 494),
    "14": ("Sơn La", 1328),
    "15": ("Lào Cai", 1779),
    "19": ("Thái Nguyên", 1800),
    "20": ("Lạng Sơn", 813),
    "22": ("Quảng Ninh", 1393),
    "24": ("Bắc Ninh", 3510),
    "25": ("Phú Thọ", 4047),
    "31": ("Hải Phòng", 4665),
    "33": ("Hưng Yên", 3568),
    "37": ("Ninh Bình", 4413),
    "38": ("Thanh Hóa", 4300),
    "40": ("Nghệ An", 3832),
    "42": ("Hà Tĩnh", 1623),
    "44": ("Quảng Trị", 1870),
    "46": ("Huế", 1433),
    "48": ("Đà Nẵng", 3065),
    "51": ("Quảng Ngãi", 2161),
    "52": ("Gia Lai", 3583),
    "56": ("Khánh Hòa", 2243),
    "66": ("Đắk Lắk", 3347),
    "68": ("Lâm Đồng", 3872),
    "75": ("Đồng Nai", 4491),
    "79": ("Hồ Chí Minh", 14002),
    "80": ("Tây Ninh", 3254),
    "82": ("Đồng Tháp", 4370),
    "86": ("Vĩnh Long", 4257),
    "91": ("An Giang", 4952),
    "92": ("Cần Thơ", 4199),
    "96": ("Cà Mau", 2606),
}


def load_provinces(path: str | None) -> dict[str, str]:
    """Return {code: name}: the default list, or an operator's CSV (columns code,name)."""
    if not path:
        return {code: name for code, (name, _) in DEFAULT_PROVINCES.items()}
    provinces: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            code = (row.get("code") or "").strip()
            if code:
                provinces[code] = (row.get("name") or code).strip()
    if not provinces:
        raise ValueError(f"{path}: no provinces found (expected CSV columns 'code,name')")
    return provinces
