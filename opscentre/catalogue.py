"""Reference data: the agencies and procedures of a province (OPSCENTRE_CATALOGUE_FILE).

Events name agencies by code. Codes not in the catalogue are accepted and
counted (a new agency, a typo in a source system), and reported by
`opscentre kpi` and the worker's `opscentre_stream_unknown_agency_events_total`
so an operator can fix the source or the catalogue.

The operator's CSV has one row per procedure (or per agency, procedure columns
empty), with a header naming its columns:

    province,agency_code,agency_name,procedure_code,procedure_name,service_level
    01,STP,Sở Tư pháp,1.004227,Cấp Phiếu lý lịch tư pháp,full_online

`province` may be left empty (the row holds for every province) or the
column left out; `service_level` is full_online, partial_online or offline.
Without a file, the catalogue is the usual agencies of a province since the
2025 reorganisation, with no procedures.
"""

from __future__ import annotations

import csv
import dataclasses

from .events import SERVICE_LEVELS

DEFAULT_AGENCIES = {
    "UBND-TINH": "Ủy ban nhân dân tỉnh",
    "TTPVHCC": "Trung tâm Phục vụ hành chính công",
    "CAT": "Công an tỉnh",
    "UBND-XA": "Ủy ban nhân dân cấp xã",
    "STP": "Sở Tư pháp",
    "SXD": "Sở Xây dựng",
    "SNNMT": "Sở Nông nghiệp và Môi trường",
    "STC": "Sở Tài chính",
    "SYT": "Sở Y tế",
    "SGDDT": "Sở Giáo dục và Đào tạo",
    "SCT": "Sở Công Thương",
    "SNV": "Sở Nội vụ",
    "SVHTTDL": "Sở Văn hóa, Thể thao và Du lịch",
    "SKHCN": "Sở Khoa học và Công nghệ",
    "SDTTG": "Sở Dân tộc và Tôn giáo",
    "SNGV": "Sở Ngoại vụ",
    "STTTT-SOC": "Trung tâm giám sát an toàn thông tin (SOC)",
}


class CatalogueError(ValueError):
    """The catalogue file cannot be used; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Procedure:
    code: str
    name: str
    agency: str
    service_level: str


class Catalogue:
    def __init__(self, agencies: dict[tuple[str, str], str], procedures: dict[tuple[str, str], Procedure]):
        # Keyed by (province, code); province "" holds for every province.
        self.agencies = agencies
        self.procedures = procedures
        # agency code -> True (in every province) or the provinces that have it: the worker asks per event.
        self._provinces_of: dict = {}
        for province, agency in agencies:
            if not province:
                self._provinces_of[agency] = True
            elif self._provinces_of.get(agency) is not True:
                self._provinces_of[agency] = self._provinces_of.get(agency, frozenset()) | {province}

    def knows_agency(self, province: str, agency: str) -> bool:
        known = self._provinces_of.get(agency)
        return known is True or (known is not None and province in known)

    def agency_name(self, province: str, agency: str) -> str | None:
        return self.agencies.get((province, agency)) or self.agencies.get(("", agency))

    def procedures_of(self, province: str) -> list[Procedure]:
        own = {code: p for (where, code), p in self.procedures.items() if where == province}
        shared = {code: p for (where, code), p in self.procedures.items() if where == "" and code not in own}
        return sorted([*own.values(), *shared.values()], key=lambda p: (p.agency, p.code))


def default_catalogue() -> Catalogue:
    return Catalogue({("", code): name for code, name in DEFAULT_AGENCIES.items()}, {})


def load_catalogue(path: str | None) -> Catalogue:
    """The operator's catalogue from CSV, or the default one when `path` is empty."""
    if not path:
        return default_catalogue()
    agencies: dict[tuple[str, str], str] = {}
    procedures: dict[tuple[str, str], Procedure] = {}
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CatalogueError(f"catalogue {path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        if "agency_code" not in (reader.fieldnames or ()):
            raise CatalogueError(f"catalogue {path}: no 'agency_code' column (header: {reader.fieldnames})")
        for row in reader:
            line = reader.line_num
            value = lambda column: (row.get(column) or "").strip()  # noqa: E731
            province, agency = value("province"), value("agency_code")
            if not agency:
                raise CatalogueError(f"catalogue {path}, line {line}: empty agency_code")
            agencies[(province, agency)] = value("agency_name") or agencies.get((province, agency)) or agency
            code = value("procedure_code")
            if not code:
                continue
            level = value("service_level")
            if level not in SERVICE_LEVELS:
                raise CatalogueError(f"catalogue {path}, line {line}: service_level {level!r} is not one of "
                                     f"{', '.join(SERVICE_LEVELS)}")
            procedures[(province, code)] = Procedure(code, value("procedure_name") or code, agency, level)
    if not agencies:
        raise CatalogueError(f"catalogue {path}: no agencies")
    return Catalogue(agencies, procedures)
