"""What the ClickHouse boards share: the province and agency variables and their filters, the
colours of a share against its target, the links between boards."""

from __future__ import annotations

from opscentre.settings import Settings

from .. import reference
from ..common import (
    board_url,
    clickhouse,
    custom_variable,
    link,
    stat_panel,
    steps,
    with_options,
)
from ..i18n import Texts
from ..plugin import Format
from ..thresholds import BUSINESS

PROVINCE_UID = "opscentre-province"
AGENCY_UID = "opscentre-agency"
FEEDBACK_UID = "opscentre-feedback"
SECURITY_UID = "opscentre-security"
NATIONAL_UID = "opscentre-national"

# The browser inserts a single value as it is: quoted with :singlequote (a code from an operator's
# file may hold anything). All on the agency variable reads every agency ($__conditionalAll).
ONE_PROVINCE = "province = ${province:singlequote}"
PROVINCES = "$__conditionalAll(province IN (${province:singlequote}), $province)"
AGENCIES = "$__conditionalAll(agency IN (${agency:singlequote}), $agency)"

VI = {
    "Province": "Tỉnh, thành phố",
    "Agency": "Sở, ngành",
    "Agency board": "Bảng sở, ngành",
    "Open this agency's board": "Mở bảng của sở, ngành này",
    "Province board": "Bảng tổng quan tỉnh",
    "Open this province's board": "Mở bảng tổng quan của tỉnh này",
    "Whole province": "Toàn tỉnh",
    "Code": "Mã",
    "Received": "Tiếp nhận",
    "Completed": "Đã giải quyết",
    "Completed on time": "Giải quyết đúng hạn",
    "On time": "Đúng hạn",
    "Overdue now": "Quá hạn hiện tại",
    "dossiers": "hồ sơ",
    "items": "phản ánh",
    "alerts": "cảnh báo",
    "hours": "giờ",
}


def province_variable(texts: Texts, settings: Settings, *, include_all: bool = False, multi: bool = False):
    """The province list of the settings (OPSCENTRE_PROVINCES_FILE), opening on
    OPSCENTRE_DASHBOARD_PROVINCE."""
    return custom_variable("province", texts("Province"), reference.provinces(settings),
                           default=reference.default_province(settings), include_all=include_all, multi=multi)


def target_colours(target: float):
    """Green at or above the target, orange just below it, red further below."""
    return steps("red", (round(max(target - BUSINESS.near_target, 0.0), 6), "orange"), (target, "green"))


def rising_colours(warning: float, critical: float):
    """Green below `warning`, orange from it, red from `critical` (counts that should be zero)."""
    return steps("green", (warning, "orange"), (critical, "red"))


def query(sql: str, format_val: Format = Format.TABLE):
    return clickhouse(sql, format_val)


def stat(texts: Texts, title: str, sql: str, *, unit: str, colours=None, description: str = "", width: int = 3,
         decimals: int | None = None, links=(), time_from: str | None = None):
    panel = stat_panel(title, [query(sql)], unit=unit, thresholds=colours if colours is not None else steps("blue"),
                       description=description, width=width, decimals=decimals)
    return with_options(panel, links=links, time_from=time_from)


def to_agency_board(texts: Texts):
    return link(texts("Agency board"), board_url(AGENCY_UID, carry=["province"]))


def to_this_agency(texts: Texts):
    return link(texts("Open this agency's board"),
                board_url(AGENCY_UID, carry=["province"], set_values={"agency": "${__data.fields.agency}"}))


def to_this_province(texts: Texts):
    return link(texts("Open this province's board"),
                board_url(PROVINCE_UID, set_values={"province": "${__data.fields.province}"}))
