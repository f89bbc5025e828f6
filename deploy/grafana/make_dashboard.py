#!/usr/bin/env python3
"""Writes deploy/grafana/flexvqa.json, the flexvqa Grafana dashboard, from the panel list below: edit
this file, run it, commit both. `make_dashboard.py --check` fails when the JSON is stale (CI runs it).

Every query selects the variables $job (default flexvqa), $namespace, $pod and $instance; $model
narrows the instances to the replicas serving that model (a cascade, as only flexvqa_model_info carries
the model). `__inputs` makes Grafana's import ask for the Prometheus data source, which becomes the
$datasource variable's default. tests/deploy/metrics_e2e_test.py evaluates every expression against a
real Prometheus.
"""
import argparse
import json
import os
import sys

# Replicas: up{} has no model_info to cascade from (a loading replica has none yet), so not $instance.
SEL_UP = 'job=~"$job", namespace=~"$namespace", pod=~"$pod"'
SEL = SEL_UP + ', instance=~"$instance"'
OK = 'finish_reason=~"stop|length"'  # Calls that ended OK (failures are in the same histogram).
RATE = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}
INPUT = "DS_PROMETHEUS"  # Grafana's import asks for it (__inputs) and puts the choice here.


def q(expr, legend="", **extra):
    target = {"expr": expr, "legendFormat": legend or "__auto", "datasource": DS}
    target.update(extra)
    return target


def quantiles(metric, by="", qs=(0.5, 0.9, 0.99), where=""):
    group = "le" + (", " + by if by else "")
    legend_by = " {{" + by + "}}" if by else ""
    sel = SEL + (", " + where if where else "")
    return [q(f"histogram_quantile({x}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
              f"p{int(x * 100)}{legend_by}") for x in qs]


def mean(metric, legend, by=""):
    b = f" by ({by})" if by else ""
    return q(f"sum{b} (rate({metric}_sum{{{SEL}}}[{RATE}])) / sum{b} (rate({metric}_count{{{SEL}}}[{RATE}]))",
             legend)


SERVER_ERRORS = "UNKNOWN|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"

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
         "Share of calls that ended with a server-side error (client errors and cancellations excluded): "
         "the FlexvqaHighErrorRatio alert's ratio.",
         [q(f'sum(rate(flexvqa_requests_total{{{SEL}, code=~"{SERVER_ERRORS}"}}[{RATE}])) / '
            f"sum(rate(flexvqa_requests_total{{{SEL}}}[{RATE}]))", "server-side error ratio")], {}),
        ("Calls by finish reason", "reqps",
         "Calls that reached the scheduler per second, by how they ended: stop (end of sequence or a stop "
         "string), length (max_new_tokens), cancelled, error.",
         [q(f"sum by (finish_reason) (rate(flexvqa_request_duration_seconds_count{{{SEL}}}[{RATE}]))",
            "{{finish_reason}}")], {}),
        ("Prompt and generation length", "short",
         "Quantiles of the prompt (image tokens included) and generated tokens per request.",
         quantiles("flexvqa_request_prompt_tokens", qs=(0.5, 0.99))
         + [dict(t, legendFormat="generated " + t["legendFormat"])
            for t in quantiles("flexvqa_request_generation_tokens", qs=(0.5, 0.99))], {}),
    ]),
    ("Latency", [
        ("Time to first token", "s", "Quantiles of the time from a call's arrival to its first token.",
         quantiles("flexvqa_time_to_first_token_seconds"), {}),
        ("Inter-token latency", "s", "Quantiles of the gap between consecutive tokens of a sequence.",
         quantiles("flexvqa_inter_token_latency_seconds"), {}),
        ("End-to-end latency (answered calls)", "s",
         "Quantiles of the time from a call's arrival to its final message, calls that ended OK (stop or "
         "length); failures are in the next panel.",
         quantiles("flexvqa_request_duration_seconds", where=OK), {}),
        ("Duration of failed and cancelled calls", "s",
         "Median time from arrival to the final message of calls that ended in an error or were cancelled.",
         quantiles("flexvqa_request_duration_seconds", by="finish_reason", qs=(0.5,),
                   where='finish_reason=~"error|cancelled"'), {}),
        ("p99 time to first token by replica", "s", "The 99th percentile of the time to first token, per replica.",
         quantiles("flexvqa_time_to_first_token_seconds", by="instance", qs=(0.99,)), {}),
        ("p99 end-to-end latency by replica", "s", "The 99th percentile of answered calls' latency, per replica.",
         quantiles("flexvqa_request_duration_seconds", by="instance", qs=(0.99,), where=OK), {}),
        ("Decode time", "s", "Quantiles of the time from a request's first token to its last.",
         quantiles("flexvqa_request_decode_seconds"), {}),
        ("Where the time goes (mean per request)", "s",
         "Mean queue wait, preprocessing, vision encoding, prefill and decode per answered request.",
         [mean("flexvqa_request_queue_seconds", "queue"),
          mean("flexvqa_request_preprocess_seconds", "preprocess"),
          mean("flexvqa_request_vision_seconds", "vision"),
          mean("flexvqa_request_prefill_seconds", "prefill"),
          mean("flexvqa_request_decode_seconds", "decode")], {}),
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
        ("Tokens per step", "short",
         "Mean and p90 tokens one worker step processed (prompts prefilled plus tokens generated).",
         [mean("flexvqa_step_tokens", "mean")] + quantiles("flexvqa_step_tokens", qs=(0.9,)), {}),
        ("KV cache usage", "percentunit",
         "Per replica: the fraction of the KV-cache pool holding sequences' positions, and the fraction of "
         "its slots (--max_sequences) taken.",
         [q(f"max by (instance) (flexvqa_kv_cache_usage_ratio{{{SEL}}})", "memory {{instance}}"),
          q(f"1 - max by (instance) (flexvqa_kv_cache_free_slots{{{SEL}}}) / "
            f"max by (instance) (flexvqa_kv_cache_slots{{{SEL}}})", "slots {{instance}}")], {}),
        ("Utilisation (the autoscaler's metric)", "short",
         "(running + waiting) / --max_running over the replicas, in replicas' worth of load: KEDA adds "
         "replicas above 0.8 per replica (deploy/k8s/components/keda).",
         [q(f"sum(flexvqa_requests_running{{{SEL}}} + flexvqa_requests_waiting{{{SEL}}}) / "
            f"max(flexvqa_max_running_requests{{{SEL}}})", "load"),
          q(f"count(flexvqa_max_running_requests{{{SEL}}})", "replicas")], {}),
        ("Replicas up and draining", "short",
         "Replicas scraped successfully, and replicas draining after SIGTERM.",
         [q(f"sum(up{{{SEL_UP}}})", "up"), q(f"sum(flexvqa_draining{{{SEL}}})", "draining")], {}),
    ]),
    ("Compute", [
        ("Achieved FLOP/s by phase", "flops",
         "FLOPs the engine counted per second (a multiply-add is 2), by phase.",
         [q(f"sum by (phase) (rate(flexvqa_flops_total{{{SEL}}}[{RATE}]))", "{{phase}}")], {}),
        ("Achieved FLOP/s by component", "flops", "The same by component of the model.",
         [q(f"sum by (component) (rate(flexvqa_flops_total{{{SEL}}}[{RATE}]))", "{{component}}")], {}),
        ("FLOPs per request by mode", "short",
         "FLOPs per request that reached the model, by attention mode (full or flex): what the "
         "high-resolution selection saves. All such requests' FLOPs over all such requests (failed ones "
         "spend FLOPs too); FLOPs are counted per step, requests when they end, so over a window much "
         "longer than a request.",
         [q(f"sum by (mode) (rate(flexvqa_flops_total{{{SEL}}}[{RATE}])) / "
            f"sum by (mode) (rate(flexvqa_request_prompt_tokens_count{{{SEL}}}[{RATE}]))", "{{mode}}")], {}),
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
         "KV-cache pool and the part of it in use, high-resolution cache in use, the encoder cache's "
         "entries (--encoder_cache_bytes bounds them), and the server's resident host memory "
         "(process_resident_memory_bytes).",
         [q(f"sum by (instance) (flexvqa_kv_cache_capacity_bytes{{{SEL}}})", "KV pool {{instance}}"),
          q(f"sum by (instance) (flexvqa_kv_cache_memory_bytes{{{SEL}}})", "KV cache {{instance}}"),
          q(f"sum by (instance) (flexvqa_hr_cache_memory_bytes{{{SEL}}})", "HR cache {{instance}}"),
          q(f"sum by (instance) (flexvqa_encoder_cache_memory_bytes{{{SEL}}})", "encoder cache {{instance}}"),
          q(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "host RSS {{instance}}")],
         {}),
        ("Encoder cache hit ratio", "percentunit",
         "Images whose vision-tower output came from the encoder cache, over all images of requests that "
         "ended (flexvqa_encoder_cache_lookups_total): a conversation about one picture hits from its second "
         "turn on. Low with repeated images: the cache is too small for the images in flight.",
         [q(f'sum by (instance) (rate(flexvqa_encoder_cache_lookups_total{{{SEL}, result="hit"}}[{RATE}])) / '
            f"sum by (instance) (rate(flexvqa_encoder_cache_lookups_total{{{SEL}}}[{RATE}]))",
            "{{instance}}")], {}),
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
    def variable(name, label, query, all_value=".*"):
        v = {"name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
             "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "includeAll": True, "multi": True, "current": {}, "hide": 0, "refresh": 2, "sort": 1,
             "regex": "", "options": []}
        if all_value:
            v["allValue"] = all_value
        return v

    scope = 'job=~"$job", namespace=~"$namespace"'
    return {
        "__inputs": [{"name": INPUT, "label": "Prometheus", "description": "The Prometheus that scrapes flexvqa",
                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "heatmap", "name": "Heatmap", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
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
             "current": {"selected": False, "text": "${" + INPUT + "}", "value": "${" + INPUT + "}"},
             "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "job", "label": "Job", "type": "textbox", "query": "flexvqa",
             "current": {"text": "flexvqa", "value": "flexvqa"}, "hide": 0, "options": []},
            variable("namespace", "Namespace", 'label_values(flexvqa_build_info{job=~"$job"}, namespace)'),
            variable("model", "Model", f"label_values(flexvqa_model_info{{{scope}}}, model)"),
            variable("pod", "Pod", f'label_values(flexvqa_model_info{{{scope}, model=~"$model"}}, pod)'),
            # No allValue: "All" is the instances the model and pod select, not every instance.
            variable("instance", "Instance",
                     f'label_values(flexvqa_model_info{{{scope}, model=~"$model", pod=~"$pod"}}, instance)',
                     all_value=None),
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
