"""Phản ánh, kiến nghị 1022: citizen feedback of a province. How much comes in, on which channel,
is it resolved on time, are citizens satisfied, what is overdue? (ClickHouse)

Counts are `opscentre kpi`'s feedback keys, shares the feedback indicators of `opscentre
scorecard`, overdue the lifecycle count of feedback items at `to`.
"""

from __future__ import annotations

from opscentre.settings import Settings

from ...config import Config
from .. import kpi_sql, reference
from ..common import (
    OPERATIONS,
    Board,
    dashboard,
    rename_field,
    table_panel,
    timeseries_panel,
    with_rows,
)
from ..i18n import Texts
from ..plugin import Format
from ..thresholds import BUSINESS
from . import shared
from .shared import (
    FEEDBACK_UID,
    ONE_PROVINCE,
    query,
    rising_colours,
    stat,
    target_colours,
)

UID = FEEDBACK_UID
CHANNELS = {"hotline_1022": "Hotline 1022", "portal": "Portal", "app": "Mobile app", "field_report": "Field report"}

VI = {
    **shared.VI,
    "Citizen feedback 1022": "Phản ánh, kiến nghị 1022",
    "Feedback from the 1022 hotline, the portal and the app: received, resolved on time, satisfied, overdue.":
        "Phản ánh, kiến nghị qua tổng đài 1022, cổng thông tin và ứng dụng: tiếp nhận, xử lý đúng hạn, hài lòng, "
        "quá hạn.",
    "Overview": "Tổng quan",
    "Feedback received": "Phản ánh tiếp nhận",
    "Feedback received in the range.": "Số phản ánh, kiến nghị tiếp nhận trong khoảng thời gian.",
    "Feedback resolved": "Phản ánh đã xử lý",
    "Feedback resolved in the range.": "Số phản ánh, kiến nghị đã xử lý trong khoảng thời gian.",
    "Resolved on time": "Xử lý đúng hạn",
    "Share of resolved feedback resolved on or before its due time.":
        "Tỷ lệ phản ánh được xử lý đúng hoặc trước hạn.",
    "Satisfied": "Hài lòng",
    "Share of resolved feedback the citizen was satisfied with.": "Tỷ lệ phản ánh đã xử lý mà người dân hài lòng.",
    "Overdue open": "Quá hạn chưa xử lý",
    "Feedback past its due time and not resolved, now.": "Số phản ánh đã quá hạn mà chưa xử lý, tại thời điểm hiện tại.",
    "Over time": "Theo thời gian",
    "Received by channel": "Tiếp nhận theo kênh",
    "Feedback received per interval, by channel.": "Phản ánh tiếp nhận theo thời gian, theo kênh.",
    "feedback per interval": "phản ánh mỗi khoảng",
    "Hotline 1022": "Tổng đài 1022",
    "Portal": "Cổng thông tin",
    "Mobile app": "Ứng dụng di động",
    "Field report": "Báo cáo hiện trường",
    "Resolved": "Đã xử lý",
    "Resolved and resolved on time": "Đã xử lý và xử lý đúng hạn",
    "Feedback resolved per interval, and of it on time.": "Phản ánh đã xử lý theo thời gian, và số xử lý đúng hạn.",
    "Overdue over time": "Quá hạn theo thời gian",
    "Feedback overdue at the end of each hour, and now.": "Phản ánh quá hạn tại cuối mỗi giờ, và hiện tại.",
    "Overdue": "Quá hạn",
    "By agency": "Theo sở, ngành",
    "Feedback by agency": "Phản ánh theo sở, ngành",
    "Feedback of each agency in the range; a row opens the agency's board.":
        "Phản ánh của từng sở, ngành trong khoảng thời gian; bấm một dòng để mở bảng của sở, ngành.",
}


def build(texts: Texts, settings: Settings):
    c = Config.from_settings(settings)
    count, share = texts.unit("count"), texts.unit("share")
    where = ONE_PROVINCE

    def named(key: str) -> str:
        return f"feedback.{key}"

    overview = [
        stat(texts, texts("Feedback received"), kpi_sql.count(named("received"), "feedback_received", where=where),
             unit=count, width=4, description=texts("Feedback received in the range.")),
        stat(texts, texts("Feedback resolved"), kpi_sql.count(named("resolved"), "feedback_resolved", where=where),
             unit=count, width=5, description=texts("Feedback resolved in the range.")),
        stat(texts, texts("Resolved on time"),
             kpi_sql.ratio(named("on_time_share"), "feedback_resolved_on_time", "feedback_resolved", where=where),
             unit=share, decimals=1, width=5, colours=target_colours(c.target_feedback_on_time),
             description=texts("Share of resolved feedback resolved on or before its due time.")),
        stat(texts, texts("Satisfied"),
             kpi_sql.ratio(named("satisfied_share"), "feedback_satisfied", "feedback_resolved", where=where),
             unit=share, decimals=1, width=5, colours=target_colours(c.target_satisfied),
             description=texts("Share of resolved feedback the citizen was satisfied with.")),
        stat(texts, texts("Overdue open"),
             kpi_sql.count(named("overdue_open"), "feedback_overdue_open", where=where), unit=count, width=5,
             colours=rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical),
             description=texts("Feedback past its due time and not resolved, now.")),
    ]

    channels = timeseries_panel(
        texts("Received by channel"),
        [query(kpi_sql.raw_series(named("by_channel"), "service_events",
                                  {channel: f"countIf(channel = '{channel}')" for channel in CHANNELS},
                                  f"event_type = 'feedback.received' AND {where}"), Format.TIME_SERIES)],
        unit=count, axis_label=texts("feedback per interval"), stacked=True, width=8,
        description=texts("Feedback received per interval, by channel."),
    ).transformations([rename_field(channel, texts(shown)) for channel, shown in CHANNELS.items()])
    resolved = timeseries_panel(
        texts("Resolved and resolved on time"),
        [query(kpi_sql.bucket_series(named("resolved_series"), "service",
                                     {"resolved": "sum(feedback_resolved)",
                                      "on_time": "sum(feedback_resolved_on_time)"}, where), Format.TIME_SERIES)],
        unit=count, axis_label=texts("feedback per interval"), width=8,
        description=texts("Feedback resolved per interval, and of it on time."),
    ).transformations([rename_field("resolved", texts("Resolved")), rename_field("on_time", texts("Resolved on time"))])
    overdue = timeseries_panel(
        texts("Overdue over time"),
        [query(kpi_sql.backlog(named("overdue_series"), where, {"overdue": "feedback_overdue"}), Format.TIME_SERIES)],
        unit=count, axis_label=texts("items"), width=8,
        description=texts("Feedback overdue at the end of each hour, and now."),
    ).transformations([rename_field("overdue", texts("Overdue"))])

    agencies = table_panel(
        texts("Feedback by agency"),
        [query(kpi_sql.feedback_by_agency(named("agencies"), where, reference.agency_name_sql(settings)))],
        columns={"agency": texts("Code"), "agency_name": texts("Agency"), "received": texts("Received"),
                 "resolved": texts("Resolved"), "on_time_share": texts("Resolved on time"),
                 "satisfied_share": texts("Satisfied"), "overdue_open": texts("Overdue now")},
        units={"received": count, "resolved": count, "on_time_share": share, "satisfied_share": share,
               "overdue_open": count},
        decimals={"on_time_share": 1, "satisfied_share": 1},
        colours={"on_time_share": target_colours(c.target_feedback_on_time),
                 "satisfied_share": target_colours(c.target_satisfied),
                 "overdue_open": rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical)},
        data_links=[shared.to_this_agency(texts)], width=24,
        description=texts("Feedback of each agency in the range; a row opens the agency's board."),
    )

    board = (
        dashboard(UID, texts("Citizen feedback 1022"), texts, time_from="now-7d", tags=["kpi"],
                  description=texts("Feedback from the 1022 hotline, the portal and the app: received, resolved on "
                                    "time, satisfied, overdue."))
        .with_variable(shared.province_variable(texts, settings))
    )
    return with_rows(board, [
        (texts("Overview"), overview),
        (texts("Over time"), [channels, resolved, overdue]),
        (texts("By agency"), [agencies]),
    ])


BOARD = Board(uid=UID, folder=OPERATIONS, build=build, catalogue=VI)
