#!/usr/bin/env python3
"""Writes deploy/grafana/flexvqa.json, the flexvqa Grafana dashboard, from the panel list below: edit
this file, run it, commit both. `make_dashboard.py --check` fails when the JSON is stale (CI runs it).

Every query selects job="flexvqa" and instance=~"$instance"; $datasource picks the Prometheus data
source at import. tests/deploy/metrics_e2e_test.py evaluates every expression against a real Prometheus.
"""
import argparse
import json
import os
import sys

SEL = 'job="flexvqa", instance=~"$instance"'
RATE = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}


def q(expr, legend="", **extra):
    target = {"expr": expr, "legendFormat": legend or "__auto", "datasource": DS}
    target.update(extra)
    return target


def quantiles(metric, by="", qs=(0.5, 0.9, 0.99)):
    group = "le" + (", " + by if by else "")
    legend_by = " {{" + by + "}}" if by else ""
    return [q(f"histogram_quantile({x}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
              f"p{int(x * 100)}{legend_by}") for x in qs]


def mean(metric, legend, by=""):
    b = f" by ({by})" if by else ""
    return q(f"sum{b} (rate({metric}_sum{{{SEL}}}[{RATE}])) / sum{b} (rate({metric}_count{{{SEL}}}[{RATE}]))",
             legend)


# (row title, [(panel title, unit, description, targets, options)])
ROWS = [
    ("Traffic", [
        ("Requests per second by status", "reqps",
         "Finished calls per second by gRPC status code (flexvqa_requests_total).",
         [q(f"sum by (code) (rate(flexvqa_requests_total{{{SEL}}}[{RATE}]))", "{{code}}")], {}),
        ("Tokens per second", "short",
         "Generated, prompt (image tokens included) and image tokens per second.",
         [q(f"sum(rate(flexvqa_generated_tokens_total{{{SEL}}}[{RATE}]))", "generated"),
          q(f"sum(rate(flexvqa_prompt_tokens_total{{{SEL}}}[{RATE}]))", "prompt"),
          q(f"sum(rate(flexvqa_image_tokens_total{{{SEL}}}[{RATE}]))", "image")], {}),
        ("Errors by status", "reqps",
         "Calls per second that did not end OK, by status code. INVALID_ARGUMENT: clients; "
         "RESOURCE_EXHAUSTED: queue full or device memory; DEADLINE_EXCEEDED: latency; UNAVAILABLE: draining.",
         [q(f'sum by (code) (rate(flexvqa_requests_total{{{SEL}, code!="OK"}}[{RATE}]))', "{{code}}")], {}),
        ("Error ratio", "percentunit",
         "Share of calls that ended with an error (cancellations excluded): the FlexvqaHighErrorRatio alert's "
         "expression.",
         [q(f'sum(rate(flexvqa_requests_total{{{SEL}, code!~"OK|CANCELLED"}}[{RATE}])) / '
            f"sum(rate(flexvqa_requests_total{{{SEL}}}[{RATE}]))", "error ratio")], {}),
    ]),
    ("Latency", [
        ("Time to first token", "s", "Quantiles of the time from a call's arrival to its first token.",
         quantiles("flexvqa_time_to_first_token_seconds"), {}),
        ("Inter-token latency", "s", "Quantiles of the gap between consecutive tokens of a sequence.",
         quantiles("flexvqa_inter_token_latency_seconds"), {}),
        ("End-to-end latency", "s", "Quantiles of the time from a call's arrival to its final message.",
         quantiles("flexvqa_request_duration_seconds"), {}),
        ("Where the time goes (mean per request)", "s",
         "Mean queue wait, preprocessing, vision encoding and prefill per request.",
         [mean("flexvqa_request_queue_seconds", "queue"),
          mean("flexvqa_request_preprocess_seconds", "preprocess"),
          mean("flexvqa_request_vision_seconds", "vision"),
          mean("flexvqa_request_prefill_seconds", "prefill")], {}),
        ("Prefill and vision time", "s", "Quantiles of the prefill (prompt forward) and vision encoding time.",
         quantiles("flexvqa_request_prefill_seconds", qs=(0.5, 0.99))
         + [dict(t, legendFormat="vision " + t["legendFormat"])
            for t in quantiles("flexvqa_request_vision_seconds", qs=(0.5, 0.99))], {}),
        ("Queue time", "s", "Quantiles of the wait for a preprocessing thread and a batch slot.",
         quantiles("flexvqa_request_queue_seconds"), {}),
    ]),
    ("Queue and batching", [
        ("Running and waiting requests", "short",
         "Sequences holding a KV slot, requests waiting (preprocessing or for a slot) and the queue limit "
         "(--max_queued) beyond which requests get RESOURCE_EXHAUSTED.",
         [q(f"sum(flexvqa_requests_running{{{SEL}}})", "running"),
          q(f"sum(flexvqa_requests_waiting{{{SEL}}})", "waiting"),
          q(f"sum(flexvqa_max_queued_requests{{{SEL}}})", "queue limit"),
          q(f"sum(flexvqa_kv_cache_free_slots{{{SEL}}})", "free KV slots")], {}),
        ("Batch size per step", "short",
         "Mean and p90 sequences per worker step, prefill and decode.",
         [mean("flexvqa_batch_size_sequences", "mean {{phase}}", by="phase")]
         + quantiles("flexvqa_batch_size_sequences", by="phase", qs=(0.9,)), {}),
        ("Replicas up and draining", "short",
         "Replicas scraped successfully, and replicas draining after SIGTERM.",
         [q(f"sum(up{{{SEL}}})", "up"), q(f"sum(flexvqa_draining{{{SEL}}})", "draining")], {}),
    ]),
    ("Compute", [
        ("Achieved FLOP/s by phase", "flops",
         "FLOPs the engine counted per second (a multiply-add is 2), by phase.",
         [q(f"sum by (phase) (rate(flexvqa_flops_total{{{SEL}}}[{RATE}]))", "{{phase}}")], {}),
        ("Achieved FLOP/s by component", "flops", "The same by component of the model.",
         [q(f"sum by (component) (rate(flexvqa_flops_total{{{SEL}}}[{RATE}]))", "{{component}}")], {}),
        ("FLOPs per request by mode", "short",
         "FLOPs per successful request, by attention mode (full or flex): what the high-resolution "
         "selection saves.",
         [q(f"sum by (mode) (rate(flexvqa_flops_total{{{SEL}}}[{RATE}])) / "
            f'sum by (mode) (rate(flexvqa_requests_total{{{SEL}, code="OK"}}[{RATE}]))', "{{mode}}")], {}),
    ]),
    ("High-resolution selection (flex)", [
        ("Selected HR tokens per request", "short",
         "Quantiles of the high-resolution tokens a flex request selected, summed over FA layers and steps.",
         quantiles("flexvqa_request_selected_hr_tokens"), {}),
        ("Selected fraction distribution", "short",
         "Requests per fraction of the high-resolution tokens they selected (heatmap of the histogram).",
         [q(f"sum by (le) (increase(flexvqa_request_selected_hr_ratio_bucket{{{SEL}}}[{RATE}]))",
            "{{le}}", format="heatmap")], {"type": "heatmap"}),
        ("Selected fraction", "percentunit", "Mean and median fraction of high-resolution tokens selected.",
         [mean("flexvqa_request_selected_hr_ratio", "mean")]
         + quantiles("flexvqa_request_selected_hr_ratio", qs=(0.5,)), {}),
        ("Selected HR tokens per second", "short", "Selected high-resolution tokens per second.",
         [q(f"sum(rate(flexvqa_selected_hr_tokens_total{{{SEL}}}[{RATE}]))", "selected")], {}),
    ]),
    ("Memory", [
        ("Memory", "bytes",
         "KV cache and high-resolution cache in use and device memory (0 until the engine reports them), "
         "and the server's resident host memory.",
         [q(f"sum by (instance) (flexvqa_kv_cache_memory_bytes{{{SEL}}})", "KV cache {{instance}}"),
          q(f"sum by (instance) (flexvqa_hr_cache_memory_bytes{{{SEL}}})", "HR cache {{instance}}"),
          q(f"sum by (instance) (flexvqa_device_memory_used_bytes{{{SEL}}})", "device {{instance}}"),
          q(f"sum by (instance) (flexvqa_process_resident_memory_bytes{{{SEL}}})", "host RSS {{instance}}")],
         {}),
        ("Model and build", "short", "What each replica serves (flexvqa_model_info, flexvqa_build_info).",
         [q(f"flexvqa_model_info{{{SEL}}}", "{{instance}} {{model}} {{mode}} {{dtype}} {{device}}",
            format="table", instant=True),
          q(f"flexvqa_build_info{{{SEL}}}", "{{instance}} {{version}} {{revision}}",
            format="table", instant=True)], {"type": "table"}),
    ]),
]


def panel(panel_id, title, unit, description, targets, options, x, y):
    kind = options.get("type", "timeseries")
    p = {
        "id": panel_id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}}
    elif kind == "heatmap":
        p["options"] = {"calculate": False, "yAxis": {"unit": "percentunit"}, "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Oranges"}}
    return p


def dashboard():
    panels = []
    next_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        for i, (title, unit, description, targets, options) in enumerate(row_panels):
            panels.append(panel(next_id, title, unit, description, targets, options, 12 * (i % 2), y + 8 * (i // 2)))
            next_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "title": "flexvqa",
        "uid": "flexvqa",
        "description": "flexvqa VQA service: traffic, latency, queue, batching, FLOPs, high-resolution "
                       "selection and memory (deploy/README.md).",
        "tags": ["flexvqa", "llm", "inference"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
             "definition": 'label_values(flexvqa_build_info{job="flexvqa"}, instance)',
             "query": {"query": 'label_values(flexvqa_build_info{job="flexvqa"}, instance)',
                       "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0,
             "refresh": 2, "sort": 1, "regex": "", "options": []},
        ]},
        "panels": panels,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail when flexvqa.json is not up to date")
    args = parser.parse_args()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flexvqa.json")
    text = json.dumps(dashboard(), indent=2) + "\n"
    if args.check:
        with open(path) as f:
            if f.read() != text:
                sys.exit(f"{path} is stale: run {sys.argv[0]}")
        print("flexvqa.json is up to date")
        return
    with open(path, "w") as f:
        f.write(text)
    print("wrote", path)


if __name__ == "__main__":
    main()
