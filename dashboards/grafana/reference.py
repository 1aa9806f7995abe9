"""The reference data the ClickHouse boards show: provinces (the province variable), agency and
procedure names (written into the queries: ClickHouse holds codes only).

Read from the same settings the worker reads (OPSCENTRE_PROVINCES_FILE, OPSCENTRE_CATALOGUE_FILE),
at build time: a new agency in the catalogue needs a `dashboards build` (or `push`). Names are
data, shown as the catalogue writes them in either language.
"""

from __future__ import annotations

from opscentre.catalogue import load_catalogue
from opscentre.clickhouse import quote
from opscentre.provinces import load_provinces
from opscentre.settings import Settings, SettingsError


def provinces(settings: Settings) -> dict[str, str]:
    """{code: name} of the province list."""
    return load_provinces(settings.provinces_file)


def default_province(settings: Settings) -> str:
    known = provinces(settings)
    if settings.dashboard_province not in known:
        raise SettingsError(f"OPSCENTRE_DASHBOARD_PROVINCE: {settings.dashboard_province!r} is not a code of the "
                            f"province list ({', '.join(list(known)[:5])}, ...)")
    return settings.dashboard_province


def _array(values) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def _transform(expression: str, mapping: dict[str, str], default: str) -> str:
    if not mapping:  # an empty array literal has no type on 18.16
        return default
    return f"transform({expression}, {_array(mapping)}, {_array(mapping.values())}, {default})"


def province_name_sql(settings: Settings, column: str = "province") -> str:
    """The province's name for a code column (the code when it is not in the list)."""
    return _transform(column, provinces(settings), column)


def agency_name_sql(settings: Settings, province: str = "province", agency: str = "agency") -> str:
    """The agency's name from the catalogue: the province's own entry, else the one for every
    province, else the code."""
    catalogue = load_catalogue(settings.catalogue_file)
    shared = {code: name for (where, code), name in catalogue.agencies.items() if not where}
    own = {f"{where}|{code}": name for (where, code), name in catalogue.agencies.items() if where}
    return _transform(f"concat({province}, '|', {agency})", own, _transform(agency, shared, agency))


def procedure_name_sql(settings: Settings, province: str = "province", procedure: str = "procedure_code") -> str:
    catalogue = load_catalogue(settings.catalogue_file)
    shared = {code: p.name for (where, code), p in catalogue.procedures.items() if not where}
    own = {f"{where}|{code}": p.name for (where, code), p in catalogue.procedures.items() if where}
    return _transform(f"concat({province}, '|', {procedure})", own, _transform(procedure, shared, procedure))
