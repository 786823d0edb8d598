#!/usr/bin/env python3
"""Writes prometheus-rules.yaml and grafana-dashboard.json next to this file.

The SLOs (README.md): ReserveTicket availability 99.99 % and p99 <= 100 ms, and the
reserve-to-status-view lag p99 <= 1 s. Alerts are multi-window, multi-burn-rate (Google
SRE workbook, ch. 5): page at 14.4x over 1h/5m and 6x over 6h/30m, ticket at 3x over
1d/2h and 1x over 3d/6h. e2e/tests/metrics.rs checks that every series named here is
one the services really expose. Job labels are the Kubernetes Service names (reservation,
status, ...), as a ServiceMonitor per Service gives them. Needs PyYAML: `python3 k8s/observability/generate.py`.
"""
import json
import pathlib

import yaml

HERE = pathlib.Path(__file__).parent
RESERVE = "parking.v1.TicketReservationService/ReserveTicket"
SERVER_ERRORS = "UNAVAILABLE|INTERNAL|UNKNOWN|DEADLINE_EXCEEDED|DATA_LOSS"
WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
BURNS = [  # severity, long window, short window, burn factor, for
    ("page", "1h", "5m", 14.4, "2m"),
    ("page", "6h", "30m", 6, "15m"),
    ("ticket", "1d", "2h", 3, "15m"),
    ("ticket", "3d", "6h", 1, "15m"),
]
# name, budget (1 - objective), bad-event ratio over a window, summary
SLOS = [
    (
        "reserve_ticket_errors", "ReserveTicketAvailability", "0.0001",
        'sum(rate(rpc_server_calls_total{job="reservation",method="%s",code=~"%s"}[{w}]))'
        ' / sum(rate(rpc_server_calls_total{job="reservation",method="%s"}[{w}]))'
        % (RESERVE, SERVER_ERRORS, RESERVE),
        "ReserveTicket availability below 99.99 %",
    ),
    (
        "reserve_ticket_slow", "ReserveTicketLatency", "0.01",
        # (all - fast) / all: 0/0 is NaN when idle, and NaN never crosses a threshold.
        '(sum(rate(rpc_server_duration_seconds_count{job="reservation",method="%s"}[{w}]))'
        ' - sum(rate(rpc_server_duration_seconds_bucket{job="reservation",method="%s",le="0.1"}[{w}])))'
        ' / sum(rate(rpc_server_duration_seconds_count{job="reservation",method="%s"}[{w}]))'
        % (RESERVE, RESERVE, RESERVE),
        "ReserveTicket p99 above 100 ms",
    ),
    (
        "status_view_late", "StatusViewLag", "0.01",
        '(sum(rate(consumer_lag_seconds_count{job="status",durable="status-reservation"}[{w}]))'
        ' - sum(rate(consumer_lag_seconds_bucket{job="status",durable="status-reservation",le="1.0"}[{w}])))'
        ' / sum(rate(consumer_lag_seconds_count{job="status",durable="status-reservation"}[{w}]))',
        "Reserve-to-status-view lag p99 above 1 s",
    ),
]


def rules():
    records, alerts = [], []
    for slo, name, budget, ratio, summary in SLOS:
        for w in WINDOWS:
            records.append({"record": f"slo:{slo}:ratio_rate{w}", "expr": ratio.replace("{w}", w)})
        for severity, long, short, factor, hold in BURNS:
            alerts.append({
                "alert": f"{name}BudgetBurn",
                "expr": f"slo:{slo}:ratio_rate{long} > ({factor} * {budget})"
                        f" and slo:{slo}:ratio_rate{short} > ({factor} * {budget})",
                "for": hold,
                "labels": {"severity": severity, "slo": name, "long_window": long},
                "annotations": {
                    "summary": summary,
                    "description": f"Error budget burning {factor}x too fast over {long}, still over {short}.",
                },
            })
    alerts += [
        {"alert": "OutboxStuck", "expr": "max by (job) (outbox_oldest_age_seconds) > 60", "for": "5m",
         "labels": {"severity": "page"},
         "annotations": {"summary": "Events are not leaving the outbox",
                         "description": "{{ $labels.job }}: the oldest unsent event is over a minute old (NATS down or the relay stuck)."}},
        {"alert": "ConsumerFallingBehind", "expr": "max by (job, durable) (consumer_pending) > 1000", "for": "10m",
         "labels": {"severity": "ticket"},
         "annotations": {"summary": "A policy is falling behind its stream",
                         "description": "{{ $labels.job }}/{{ $labels.durable }} has over 1000 events waiting."}},
        {"alert": "EventsRedelivered", "expr": "max by (job, durable) (consumer_redelivered) > 100", "for": "10m",
         "labels": {"severity": "ticket"},
         "annotations": {"summary": "Events keep coming back",
                         "description": "{{ $labels.job }}/{{ $labels.durable }}: over 100 redelivered events unacknowledged (a failing handler)."}},
        {"alert": "MeshCircuitOpen", "expr": "max by (job, host) (mesh_circuit_open) == 1", "for": "1m",
         "labels": {"severity": "page"},
         "annotations": {"summary": "A circuit is open",
                         "description": "{{ $labels.job }} -> {{ $labels.host }}: every endpoint ejected, calls fail fast."}},
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "parking-mesh-slos", "labels": {"app.kubernetes.io/part-of": "parking-mesh"}},
        "spec": {"groups": [
            {"name": "parking-mesh-slo-records", "interval": "30s", "rules": records},
            {"name": "parking-mesh-alerts", "rules": alerts},
        ]},
    }


def panel(id_, title, targets, x, y, unit="short", w=12, h=8):
    return {
        "id": id_, "title": title, "type": "timeseries", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l} for i, (e, l) in enumerate(targets)],
    }


def row(id_, title, y):
    # No queries of its own; "targets" stays so every panel has the key.
    return {"id": id_, "title": title, "type": "row", "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": [], "targets": []}


def dashboard():
    panels = [
        panel(1, "Calls per second by service", [
            ('sum by (job) (rate(rpc_server_calls_total[5m]))', "{{job}}")], 0, 0, "reqps"),
        panel(2, "Errors per second by service and code", [
            ('sum by (job, code) (rate(rpc_server_calls_total{code!="OK"}[5m]))', "{{job}} {{code}}")], 12, 0, "reqps"),
        panel(3, "p99 latency by method", [
            ('histogram_quantile(0.99, sum by (job, method, le) (rate(rpc_server_duration_seconds_bucket[5m])))',
             "{{job}} {{method}}")], 0, 8, "s"),
        panel(4, "Event lag p99 by consumer", [
            ('histogram_quantile(0.99, sum by (job, durable, le) (rate(consumer_lag_seconds_bucket[5m])))',
             "{{job}}/{{durable}}")], 12, 8, "s"),
        panel(5, "Outbox backlog", [
            ("max by (job) (outbox_backlog)", "{{job}} unsent"),
            ("max by (job) (outbox_oldest_age_seconds)", "{{job}} oldest (s)")], 0, 16),
        panel(6, "Consumers: pending and redelivered", [
            ("max by (job, durable) (consumer_pending)", "{{durable}} pending"),
            ("max by (job, durable) (consumer_redelivered)", "{{durable}} redelivered")], 12, 16),
        panel(7, "Mesh: circuit state and ejected endpoints", [
            ("max by (job, host) (mesh_circuit_open)", "{{job}}->{{host}} open"),
            ("max by (job, host) (mesh_ejected_endpoints)", "{{job}}->{{host}} ejected"),
            ("sum by (job, host) (rate(mesh_retries_total[5m]))", "{{job}}->{{host}} retries/s")], 0, 24),
        panel(8, "Quota used per date", [
            ("max by (date) (parking_quota_occupied)", "{{date}} occupied"),
            ("max by (date) (parking_quota_capacity)", "{{date}} capacity")], 12, 24),
        panel(9, "SLO: ReserveTicket error and slow ratios (1h)", [
            ("slo:reserve_ticket_errors:ratio_rate1h", "errors"),
            ("slo:reserve_ticket_slow:ratio_rate1h", "slower than 100 ms"),
            ("slo:status_view_late:ratio_rate1h", "status view later than 1 s")], 0, 32, "percentunit", w=24),
        # Falling behind: what GET /status summarises (degraded above STATUS_BACKLOG_DEGRADED
        # events pending or a 5 s old waiting event), over time and per durable.
        row(10, "Pipeline backlog", 40),
        panel(11, "Pending events per durable (waiting + unacknowledged)", [
            ("max by (job, durable) (consumer_pending)", "{{job}}/{{durable}} waiting"),
            ("max by (job, durable) (consumer_ack_pending)", "{{job}}/{{durable}} unacknowledged")], 0, 41),
        panel(12, "Outbox backlog per service", [
            # Replicas share their database, so each reports the same count: max, not sum.
            ("max by (job) (outbox_backlog)", "{{job}} unsent")], 12, 41),
        panel(13, "Event lag p50 / p99 per durable", [
            ('histogram_quantile(0.5, sum by (job, durable, le) (rate(consumer_lag_seconds_bucket[5m])))',
             "{{job}}/{{durable}} p50"),
            ('histogram_quantile(0.99, sum by (job, durable, le) (rate(consumer_lag_seconds_bucket[5m])))',
             "{{job}}/{{durable}} p99")], 0, 49, "s"),
        panel(14, "Events handled per second per durable, by outcome", [
            ("sum by (job, durable, outcome) (rate(consumer_events_total[5m]))",
             "{{job}}/{{durable}} {{outcome}}")], 12, 49, "ops"),
    ]
    return {
        "title": "parking-mesh", "uid": "parking-mesh", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "tags": ["parking-mesh"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    header = "# Generated by generate.py; edit that, not this.\n"
    (HERE / "prometheus-rules.yaml").write_text(header + yaml.safe_dump(rules(), sort_keys=False, width=200))
    (HERE / "grafana-dashboard.json").write_text(json.dumps(dashboard(), indent=2) + "\n")
