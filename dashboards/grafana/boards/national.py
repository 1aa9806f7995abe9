"""Toàn quốc: every province, for the ministries. Which provinces are below the national targets?
(ClickHouse)

The table is `opscentre kpi --province all` for the range, one row per province seen; the stats
are its sums. A row opens that province's board.
"""

from __future__ import annotations

from opscentre.settings import Settings

from ...config import Config
from .. import kpi_sql, reference
from ..common import OPERATIONS, Board, dashboard, table_panel, with_rows
from ..i18n import Texts
from ..thresholds import BUSINESS
from . import shared
from .shared import NATIONAL_UID, query, rising_colours, stat, target_colours

UID = NATIONAL_UID

VI = {
    **shared.VI,
    "Nationwide": "Toàn quốc",
    "Every province against the national targets: online service, timeliness, payments, feedback.":
        "Các tỉnh, thành phố so với chỉ tiêu quốc gia: dịch vụ trực tuyến, đúng hạn, thanh toán, phản ánh.",
    "Country": "Cả nước",
    "Dossiers received": "Hồ sơ tiếp nhận",
    "Dossiers received in every province in the range.": "Số hồ sơ tiếp nhận của mọi tỉnh trong khoảng thời gian.",
    "Fully online": "Toàn trình",
    "Share of dossiers received fully online, against the national target.":
        "Tỷ lệ hồ sơ tiếp nhận trực tuyến toàn trình, so với chỉ tiêu quốc gia.",
    "On-time rate": "Tỷ lệ đúng hạn",
    "Share of completions on or before their due time.": "Tỷ lệ hồ sơ giải quyết đúng hoặc trước hạn.",
    "Paid online": "Thanh toán trực tuyến",
    "Share of payments made online.": "Tỷ lệ thanh toán trực tuyến trên tổng số thanh toán.",
    "Overdue open": "Quá hạn chưa giải quyết",
    "Dossiers overdue now, every province.": "Số hồ sơ đang quá hạn của mọi tỉnh.",
    "Feedback on time": "Phản ánh đúng hạn",
    "Share of citizen feedback resolved on time.": "Tỷ lệ phản ánh kiến nghị được xử lý đúng hạn.",
    "Provinces": "Các tỉnh, thành phố",
    "Provinces against the targets": "Các tỉnh so với chỉ tiêu",
    "Every province seen in the range, lowest on-time rate first; a row opens the province's board.":
        "Mọi tỉnh có dữ liệu trong khoảng thời gian, tỷ lệ đúng hạn thấp nhất trước; bấm một dòng để mở bảng của tỉnh.",
    "Security (high+)": "ATTT (cao trở lên)",
}


def build(texts: Texts, settings: Settings):
    c = Config.from_settings(settings)
    count, share = texts.unit("count"), texts.unit("share")

    def named(key: str) -> str:
        return f"national.{key}"

    country = [
        stat(texts, texts("Dossiers received"), kpi_sql.count(named("received"), "dossiers_received"),
             unit=count, width=4, description=texts("Dossiers received in every province in the range.")),
        stat(texts, texts("Fully online"),
             kpi_sql.ratio(named("full_online_rate"), "dossiers_received_full_online", "dossiers_received"),
             unit=share, decimals=1, width=4, colours=target_colours(c.target_full_online_national),
             description=texts("Share of dossiers received fully online, against the national target.")),
        stat(texts, texts("On-time rate"),
             kpi_sql.ratio(named("on_time_rate"), "dossiers_completed_on_time", "dossiers_completed"),
             unit=share, decimals=1, width=4, colours=target_colours(c.target_on_time),
             description=texts("Share of completions on or before their due time.")),
        stat(texts, texts("Paid online"), kpi_sql.ratio(named("online_payment_rate"), "payments_online",
                                                        "payments_total"),
             unit=share, decimals=1, width=4, colours=target_colours(c.target_online_payment),
             description=texts("Share of payments made online.")),
        stat(texts, texts("Feedback on time"),
             kpi_sql.ratio(named("feedback_on_time_share"), "feedback_resolved_on_time", "feedback_resolved"),
             unit=share, decimals=1, width=4, colours=target_colours(c.target_feedback_on_time),
             description=texts("Share of citizen feedback resolved on time.")),
        stat(texts, texts("Overdue open"), kpi_sql.count(named("overdue_open"), "dossiers_overdue_open"),
             unit=count, width=4,
             colours=rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical),
             description=texts("Dossiers overdue now, every province.")),
    ]
    provinces = table_panel(
        texts("Provinces against the targets"),
        [query(kpi_sql.provinces_ranked(named("provinces"), reference.province_name_sql(settings)))],
        columns={"province": texts("Code"), "province_name": texts("Province"), "received": texts("Received"),
                 "full_online_rate": texts("Fully online"), "on_time_rate": texts("On-time rate"),
                 "online_payment_rate": texts("Paid online"), "feedback_on_time_share": texts("Feedback on time"),
                 "overdue_open": texts("Overdue now"), "security_high": texts("Security (high+)")},
        units={"received": count, "full_online_rate": share, "on_time_rate": share, "online_payment_rate": share,
               "feedback_on_time_share": share, "overdue_open": count, "security_high": count},
        decimals=dict.fromkeys(("full_online_rate", "on_time_rate", "online_payment_rate", "feedback_on_time_share"),
                               1),
        colours={"full_online_rate": target_colours(c.target_full_online_national),
                 "on_time_rate": target_colours(c.target_on_time),
                 "online_payment_rate": target_colours(c.target_online_payment),
                 "feedback_on_time_share": target_colours(c.target_feedback_on_time),
                 "overdue_open": rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical)},
        data_links=[shared.to_this_province(texts)], width=24, height=14,
        description=texts("Every province seen in the range, lowest on-time rate first; a row opens the province's "
                          "board."),
    )
    board = dashboard(UID, texts("Nationwide"), texts, time_from="now/d", tags=["kpi"],
                      description=texts("Every province against the national targets: online service, timeliness, "
                                        "payments, feedback."))
    return with_rows(board, [(texts("Country"), country), (texts("Provinces"), [provinces])])


BOARD = Board(uid=UID, folder=OPERATIONS, build=build, catalogue=VI)
