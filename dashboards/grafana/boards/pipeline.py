"""Đường ống dữ liệu: is the pipeline keeping up, and is anything lost or late? (Prometheus)

Reads the metrics the worker, the sink and the alert forwarder serve (README, "Metrics").
Counters are read as rates over Grafana's $__rate_interval; a counter that has never moved has
no series, so shares and totals add `or vector(0)` to read 0 rather than "No data".
"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import DataTransformerConfig

from opscentre.settings import Settings

from ..common import (
    PLATFORM,
    Board,
    bar_gauge_panel,
    dashboard,
    prom,
    prometheus_variable,
    rename_field,
    stat_panel,
    steps,
    table_panel,
    timeseries_panel,
    value_texts,
    with_rows,
)
from ..i18n import Texts
from ..thresholds import PIPELINE as LIMITS

UID = "opscentre-pipeline"
WORKER_JOB = "opscentre-worker"
WORKER = 'instance=~"$instance"'
RATE = "$__rate_interval"

# Rejection reasons (streams/processor.py _reason_label) as the wall shows them.
REASONS = {
    "not_json": "Not JSON",
    "missing_field": "Missing field",
    "invalid_field": "Invalid field",
    "unknown_type": "Unknown event type",
    "unknown_province": "Unknown province",
    "future": "Dated in the future",
    "wrong_topic": "Wrong topic",
}

VI = {
    "Data pipeline": "Đường ống dữ liệu",
    "Kafka to ClickHouse: throughput, lag, latency, rejections and the workers' health.":
        "Từ Kafka đến ClickHouse: lưu lượng, độ trễ, dữ liệu bị từ chối và tình trạng các worker.",
    "Worker": "Worker",
    "Overview": "Tổng quan",
    "Workers up": "Worker đang chạy",
    "Worker processes Prometheus reaches (job opscentre-worker).":
        "Số tiến trình worker mà Prometheus thu thập được (job opscentre-worker).",
    "ClickHouse": "ClickHouse",
    "Whether every worker's last write to ClickHouse succeeded.":
        "Lần ghi gần nhất của mọi worker vào ClickHouse có thành công không.",
    "Events in": "Sự kiện vào",
    "Valid events accepted per second.": "Số sự kiện hợp lệ được nhận mỗi giây.",
    "Rows stored": "Dòng đã lưu",
    "Rows written to ClickHouse per second, all tables.": "Số dòng ghi vào ClickHouse mỗi giây, mọi bảng.",
    "Consumer lag": "Độ trễ tiêu thụ",
    "How far behind its partitions' newest record the slowest partition is.":
        "Phân vùng chậm nhất đang chậm bao lâu so với bản ghi mới nhất.",
    "End-to-end p99": "Đầu-cuối p99",
    "From a record produced to its rows stored: 99% of records are faster.":
        "Từ lúc bản ghi được gửi đến khi dữ liệu được lưu: 99% bản ghi nhanh hơn mức này.",
    "Rejected": "Bị từ chối",
    "Share of input sent to the dead-letter topic.": "Tỷ lệ dữ liệu vào bị chuyển sang topic dead-letter.",
    "Internal errors (1 h)": "Lỗi nội bộ (1 giờ)",
    "Records the worker failed on in the last hour (not the input's fault).":
        "Số bản ghi worker xử lý lỗi trong 1 giờ qua (không do dữ liệu vào).",
    "Throughput": "Lưu lượng",
    "Records in per second": "Bản ghi vào mỗi giây",
    "Kafka records consumed, by topic (a record holds one event or a batch).":
        "Bản ghi Kafka đã đọc, theo topic (một bản ghi chứa một sự kiện hoặc một lô).",
    "records per second": "bản ghi mỗi giây",
    "Events accepted per second": "Sự kiện hợp lệ mỗi giây",
    "Valid events, by event type.": "Sự kiện hợp lệ, theo loại sự kiện.",
    "events per second": "sự kiện mỗi giây",
    "Rows stored per second": "Dòng đã lưu mỗi giây",
    "Rows written to ClickHouse, by table.": "Dòng ghi vào ClickHouse, theo bảng.",
    "rows per second": "dòng mỗi giây",
    "Lag": "Độ trễ",
    "Consumer lag (records)": "Độ trễ tiêu thụ (bản ghi)",
    "Records behind each partition's end offset.": "Số bản ghi còn chưa đọc của mỗi phân vùng.",
    "records": "bản ghi",
    "Consumer lag (seconds)": "Độ trễ tiêu thụ (giây)",
    "Age of the oldest record not yet read, per partition.": "Tuổi của bản ghi cũ nhất chưa đọc, theo phân vùng.",
    "seconds": "giây",
    "Watermark delay": "Độ trễ watermark",
    "Wall clock minus each service partition's event-time watermark: overdue alerts fire this late.":
        "Giờ thực trừ watermark thời gian sự kiện của mỗi phân vùng dịch vụ: cảnh báo quá hạn phát muộn chừng này.",
    "Partition {{partition}}": "Phân vùng {{partition}}",
    "Partitions behind": "Phân vùng đang chậm",
    "Lag of each partition now, the slowest first.": "Độ trễ hiện tại của từng phân vùng, chậm nhất trước.",
    "Topic": "Topic",
    "Partition": "Phân vùng",
    "Records behind": "Bản ghi chưa đọc",
    "Seconds behind": "Số giây chậm",
    "Latency": "Thời gian xử lý",
    "End-to-end latency": "Thời gian đầu-cuối",
    "From a record produced to its rows stored in ClickHouse.":
        "Từ lúc bản ghi được gửi đến khi dữ liệu được lưu vào ClickHouse.",
    "ClickHouse insert latency": "Thời gian ghi ClickHouse",
    "One insert into ClickHouse, by table.": "Một lần ghi vào ClickHouse, theo bảng.",
    "Errors": "Lỗi",
    "Rejections by reason": "Dữ liệu bị từ chối theo lý do",
    "Records or items sent to the dead-letter topic, per second.":
        "Bản ghi hoặc mục bị chuyển sang topic dead-letter, mỗi giây.",
    "items per second": "mục mỗi giây",
    "Internal errors and failed writes": "Lỗi nội bộ và lần ghi thất bại",
    "Records the worker failed on, by topic; ClickHouse writes that failed and are retried.":
        "Bản ghi worker xử lý lỗi, theo topic; lần ghi ClickHouse thất bại và được thử lại.",
    "Failed ClickHouse writes": "Ghi ClickHouse thất bại",
    "Duplicates and redeliveries": "Trùng lặp và giao lại",
    "Events dropped as duplicates of an event_id; redelivered records already stored.":
        "Sự kiện bị bỏ vì trùng event_id; bản ghi được giao lại nhưng đã lưu trước đó.",
    "Duplicates dropped": "Bỏ do trùng lặp",
    "Already applied": "Đã áp dụng trước đó",
    "Workers": "Worker",
    "Worker status": "Trạng thái worker",
    "Each worker process Prometheus scrapes.": "Từng tiến trình worker mà Prometheus thu thập.",
    "Partitions per worker": "Phân vùng mỗi worker",
    "Source partitions each worker holds state for.": "Số phân vùng nguồn mỗi worker đang giữ trạng thái.",
    "Open items tracked": "Hồ sơ mở đang theo dõi",
    "Open dossiers and feedback items due within the look-ahead, held in memory.":
        "Hồ sơ và phản ánh chưa xử lý sắp đến hạn, đang giữ trong bộ nhớ.",
    "items": "mục",
    "Overdue alerts": "Cảnh báo quá hạn",
    "Overdue alerts raised per minute": "Cảnh báo quá hạn mỗi phút",
    "Alerts raised by the worker, by type (replays excluded).":
        "Cảnh báo worker phát ra, theo loại (không tính chạy lại).",
    "alerts per minute": "cảnh báo mỗi phút",
    "Alert forwarding": "Chuyển tiếp cảnh báo",
    "Alerts posted to Alertmanager per minute, and posts that failed.":
        "Số cảnh báo gửi đến Alertmanager mỗi phút, và số lần gửi thất bại.",
    "Posted": "Đã gửi",
    "Failed": "Thất bại",
    "Not JSON": "Không phải JSON",
    "Missing field": "Thiếu trường",
    "Invalid field": "Trường không hợp lệ",
    "Unknown event type": "Loại sự kiện không rõ",
    "Unknown province": "Tỉnh không rõ",
    "Dated in the future": "Thời điểm ở tương lai",
    "Wrong topic": "Sai topic",
}


def _rate(metric: str, by: str = "", selector: str = WORKER) -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[{RATE}]))"


def _quantile(q: float, histogram: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{{{WORKER}}}[{RATE}])))"


def _sort_by(field_name: str) -> DataTransformerConfig:
    return DataTransformerConfig(id_val="sortBy", options={"fields": {}, "sort": [{"field": field_name, "desc": True}]})


def build(texts: Texts, settings: Settings):
    per_second, seconds, count = texts.unit("per_second"), texts.unit("seconds"), texts.unit("count")
    rejected = _rate("opscentre_stream_events_rejected_total")
    accepted = _rate("opscentre_stream_events_valid_total")

    overview = [
        stat_panel(
            texts("Workers up"), [prom(f'sum(up{{job="{WORKER_JOB}", {WORKER}}}) or vector(0)')],
            unit=count, thresholds=steps("red", (1, "green")), width=3,
            description=texts("Worker processes Prometheus reaches (job opscentre-worker)."),
        ),
        stat_panel(
            texts("ClickHouse"), [prom(f"min(opscentre_stream_clickhouse_up{{{WORKER}}})")],
            unit=count, thresholds=steps("red", (1, "green")), width=3,
            mappings=value_texts({"0": (texts("Disconnected"), "red"), "1": (texts("Connected"), "green")}),
            description=texts("Whether every worker's last write to ClickHouse succeeded."),
        ),
        stat_panel(texts("Events in"), [prom(accepted)], unit=per_second, width=3, decimals=0,
                   thresholds=steps("blue"), description=texts("Valid events accepted per second.")),
        stat_panel(texts("Rows stored"), [prom(_rate("opscentre_sink_rows_written_total"))], unit=per_second,
                   width=3, decimals=0, thresholds=steps("blue"),
                   description=texts("Rows written to ClickHouse per second, all tables.")),
        stat_panel(
            texts("Consumer lag"), [prom(f"max(opscentre_stream_consumer_lag_seconds{{{WORKER}}})")],
            unit=seconds, width=3,
            thresholds=steps("green", (LIMITS.lag_seconds_warning, "orange"), (LIMITS.lag_seconds_critical, "red")),
            description=texts("How far behind its partitions' newest record the slowest partition is."),
        ),
        stat_panel(
            texts("End-to-end p99"), [prom(_quantile(0.99, "opscentre_stream_end_to_end_seconds"))],
            unit=seconds, width=3,
            thresholds=steps("green", (LIMITS.end_to_end_seconds_warning, "orange"),
                             (LIMITS.end_to_end_seconds_critical, "red")),
            description=texts("From a record produced to its rows stored: 99% of records are faster."),
        ),
        stat_panel(
            # No input at all reads 0, not "No data": nothing was rejected.
            texts("Rejected"), [prom(f"(({rejected} or vector(0)) / (({accepted} or vector(0)) + ({rejected} "
                                     "or vector(0)) > 0)) or vector(0)")],
            unit=texts.unit("share"), width=3, decimals=2,
            thresholds=steps("green", (LIMITS.rejected_share_warning, "orange"),
                             (LIMITS.rejected_share_critical, "red")),
            description=texts("Share of input sent to the dead-letter topic."),
        ),
        stat_panel(
            texts("Internal errors (1 h)"),
            [prom(f"sum(increase(opscentre_stream_internal_errors_total{{{WORKER}}}[1h])) or vector(0)")],
            unit=count, width=3, decimals=0, thresholds=steps("green", (1, "red")),
            description=texts("Records the worker failed on in the last hour (not the input's fault)."),
        ),
    ]

    throughput = [
        timeseries_panel(
            texts("Records in per second"),
            [prom(_rate("opscentre_stream_records_total", by="topic"), "{{topic}}")],
            unit=per_second, axis_label=texts("records per second"), width=8,
            description=texts("Kafka records consumed, by topic (a record holds one event or a batch)."),
        ),
        timeseries_panel(
            texts("Events accepted per second"),
            [prom(_rate("opscentre_stream_events_valid_total", by="event_type"), "{{event_type}}")],
            unit=per_second, axis_label=texts("events per second"), stacked=True, width=8,
            description=texts("Valid events, by event type."),
        ),
        timeseries_panel(
            texts("Rows stored per second"),
            [prom(_rate("opscentre_sink_rows_written_total", by="table"), "{{table}}")],
            unit=per_second, axis_label=texts("rows per second"), stacked=True, width=8,
            description=texts("Rows written to ClickHouse, by table."),
        ),
    ]

    lag_levels = (LIMITS.lag_seconds_warning, "orange"), (LIMITS.lag_seconds_critical, "red")
    lag = [
        timeseries_panel(
            texts("Consumer lag (records)"),
            [prom(f"max by (topic, partition) (opscentre_stream_consumer_lag{{{WORKER}}})",
                  "{{topic}} / {{partition}}")],
            unit=count, axis_label=texts("records"),
            description=texts("Records behind each partition's end offset."),
        ),
        timeseries_panel(
            texts("Consumer lag (seconds)"),
            [prom(f"max by (topic, partition) (opscentre_stream_consumer_lag_seconds{{{WORKER}}})",
                  "{{topic}} / {{partition}}")],
            unit=seconds, axis_label=texts("seconds"), thresholds=steps("green", *lag_levels),
            description=texts("Age of the oldest record not yet read, per partition."),
        ),
        timeseries_panel(
            texts("Watermark delay"),
            [prom(f"time() - (max by (partition) (opscentre_stream_watermark_seconds{{{WORKER}}}) > 0)",
                  texts("Partition {{partition}}"))],
            unit=seconds, axis_label=texts("seconds"),
            thresholds=steps("green", (LIMITS.watermark_delay_seconds_warning, "orange"),
                             (LIMITS.watermark_delay_seconds_critical, "red")),
            description=texts("Wall clock minus each service partition's event-time watermark: "
                              "overdue alerts fire this late."),
        ),
        table_panel(
            texts("Partitions behind"),
            [prom(f"max by (topic, partition) (opscentre_stream_consumer_lag{{{WORKER}}})",
                  instant=True, table_format=True),
             prom(f"max by (topic, partition) (opscentre_stream_consumer_lag_seconds{{{WORKER}}})",
                  instant=True, table_format=True)],
            columns={"topic": texts("Topic"), "partition": texts("Partition"),
                     "Value #A": texts("Records behind"), "Value #B": texts("Seconds behind")},
            transformations=[_sort_by("Value #B")],
            description=texts("Lag of each partition now, the slowest first."),
        ),
    ]

    latency = [
        timeseries_panel(
            texts("End-to-end latency"),
            [prom(_quantile(0.5, "opscentre_stream_end_to_end_seconds"), "p50"),
             prom(_quantile(0.99, "opscentre_stream_end_to_end_seconds"), "p99")],
            unit=seconds, axis_label=texts("seconds"),
            thresholds=steps("green", (LIMITS.end_to_end_seconds_warning, "orange"),
                             (LIMITS.end_to_end_seconds_critical, "red")),
            description=texts("From a record produced to its rows stored in ClickHouse."),
        ),
        timeseries_panel(
            texts("ClickHouse insert latency"),
            [prom(_quantile(0.5, "opscentre_sink_insert_seconds", by="table"), "p50 {{table}}"),
             prom(_quantile(0.99, "opscentre_sink_insert_seconds", by="table"), "p99 {{table}}")],
            unit=seconds, axis_label=texts("seconds"),
            thresholds=steps("green", (LIMITS.insert_seconds_warning, "orange"),
                             (LIMITS.insert_seconds_critical, "red")),
            description=texts("One insert into ClickHouse, by table."),
        ),
    ]

    errors = [
        timeseries_panel(
            texts("Rejections by reason"),
            [prom(_rate("opscentre_stream_events_rejected_total", by="reason"), "{{reason}}")],
            unit=per_second, axis_label=texts("items per second"), stacked=True, width=8,
            description=texts("Records or items sent to the dead-letter topic, per second."),
        ).transformations([rename_field(reason, texts(shown)) for reason, shown in REASONS.items()]),
        timeseries_panel(
            texts("Internal errors and failed writes"),
            [prom(_rate("opscentre_stream_internal_errors_total", by="topic"), "{{topic}}"),
             prom(_rate("opscentre_sink_flush_failures_total"), texts("Failed ClickHouse writes"))],
            unit=per_second, axis_label=texts("records per second"), width=8,
            description=texts("Records the worker failed on, by topic; ClickHouse writes that failed "
                              "and are retried."),
        ),
        timeseries_panel(
            texts("Duplicates and redeliveries"),
            [prom(_rate("opscentre_stream_duplicates_dropped_total"), texts("Duplicates dropped")),
             prom(_rate("opscentre_stream_records_already_applied_total"), texts("Already applied"))],
            unit=per_second, axis_label=texts("events per second"), width=8,
            description=texts("Events dropped as duplicates of an event_id; redelivered records "
                              "already stored."),
        ),
    ]

    workers = [
        stat_panel(
            texts("Worker status"), [prom(f'max by (instance) (up{{job="{WORKER_JOB}", {WORKER}}})',
                                          "{{instance}}")],
            unit=count, thresholds=steps("red", (1, "green")), width=8, height=8,
            mappings=value_texts({"0": (texts("Down"), "red"), "1": (texts("Up"), "green")}),
            description=texts("Each worker process Prometheus scrapes."),
        ),
        bar_gauge_panel(
            texts("Partitions per worker"),
            [prom(f"sum by (instance) (opscentre_stream_partitions_owned{{{WORKER}}})", "{{instance}}")],
            unit=count, thresholds=steps("blue"),
            description=texts("Source partitions each worker holds state for."),
        ),
        timeseries_panel(
            texts("Open items tracked"),
            [prom(f"sum by (instance) (opscentre_stream_open_items_tracked{{{WORKER}}})", "{{instance}}")],
            unit=count, axis_label=texts("items"), width=8,
            description=texts("Open dossiers and feedback items due within the look-ahead, held in memory."),
        ),
    ]

    alerts = [
        timeseries_panel(
            texts("Overdue alerts raised per minute"),
            [prom("60 * " + _rate("opscentre_stream_overdue_alerts_total", by="type",
                                  selector=f'{WORKER}, replayed="false"'), "{{type}}")],
            unit=texts.unit("per_minute"), axis_label=texts("alerts per minute"), stacked=True,
            description=texts("Alerts raised by the worker, by type (replays excluded)."),
        ),
        timeseries_panel(
            texts("Alert forwarding"),
            [prom(f"60 * sum(rate(opscentre_forwarder_alerts_posted_total[{RATE}]))", texts("Posted")),
             prom(f"60 * sum(rate(opscentre_forwarder_post_failures_total[{RATE}]))", texts("Failed"))],
            unit=texts.unit("per_minute"), axis_label=texts("alerts per minute"),
            description=texts("Alerts posted to Alertmanager per minute, and posts that failed."),
        ),
    ]

    board = (
        dashboard(UID, texts("Data pipeline"), texts, time_from="now-3h", tags=["pipeline"],
                  description=texts("Kafka to ClickHouse: throughput, lag, latency, rejections and the "
                                    "workers' health."))
        .with_variable(prometheus_variable("instance", texts("Worker"),
                                           f'label_values(up{{job="{WORKER_JOB}"}}, instance)'))
    )
    return with_rows(board, [
        (texts("Overview"), overview),
        (texts("Throughput"), throughput),
        (texts("Lag"), lag),
        (texts("Latency"), latency),
        (texts("Errors"), errors),
        (texts("Workers"), workers),
        (texts("Overdue alerts"), alerts),
    ])


BOARD = Board(uid=UID, folder=PLATFORM, build=build, catalogue=VI)
