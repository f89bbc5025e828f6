#!/usr/bin/env python3
"""Metrics, dashboard and alerts against a real server and a real Prometheus, all on loopback.

Starts flexvqa_server (on a tiny flex checkpoint written by make_tiny_llava, or its default model) and
Debian's prometheus with deploy/prometheus/prometheus.yml adjusted to the test (1 s scrapes, the server's
metrics port, the alert rules with every `for` shortened to 0s), then:
  - promtool check config / check rules on the shipped files;
  - sends one long request and sees the token and FLOP counters take values between its start and its
    end while it streams (they are counted per worker step, not at completion);
  - sends good requests (with and without images), a burst of bad ones and a flood beyond the queue;
  - checks the metric values against what the clients received: calls by status, token sums, FLOPs by
    phase equal to the sum of the final messages' figures, histogram counts, calls by finish reason;
    the newer series (decode time, lengths, tokens per step, KV capacity and usage) and that their
    buckets resolve the values the clients saw;
  - evaluates every PromQL expression of every panel of deploy/grafana/flexvqa.json (template variables
    substituted) and the KEDA trigger's query, failing on an error or on no data;
  - checks every alert rule evaluates without error, sees FlexvqaHighErrorRatio and FlexvqaQueueSaturated
    fire, then stops the server (SIGTERM: exit 0) and sees FlexvqaDown fire.
Bounded: everything ends within --timeout seconds (default 100) and the processes are stopped.

    metrics_e2e_test.py --server_bin BIN --stubs DIR --deploy_dir deploy [--make_model BIN]
"""
import argparse
import concurrent.futures
import copy
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import yaml  # python3-yaml

FAILURES = []
CHECKS = [0]
START = time.monotonic()
START_WALL = time.time()


def check(condition, what):
    CHECKS[0] += 1
    print("%s %6.1fs %s" % ("ok  " if condition else "FAIL", time.monotonic() - START, what), flush=True)
    if not condition:
        FAILURES.append(what)
    return condition


def png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    rows = b"".join(b"\0" + b"".join(bytes([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 90])
                                       for x in range(width)) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Prometheus:
    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            return json.load(e)
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError) as e:
            return {"status": "error", "error": str(e)}

    def query(self, expr):
        """(result list or None, error)."""
        reply = self.get("/api/v1/query", query=expr)
        if reply.get("status") != "success":
            return None, reply.get("error", "no reply")
        return reply["data"]["result"], None

    def value(self, expr):
        result, error = self.query(expr)
        if error or not result:
            return None
        return float(result[0]["value"][1])

    def ready(self):
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False


def shorten_rules(rules):
    test_rules = copy.deepcopy(rules)
    for group in test_rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    return test_rules


def substitute(expr, instance_regex):
    """A panel's expression as Grafana sends it: $job's default, every other variable "All"."""
    for variable, value in (("$__rate_interval", "30s"), ("$instance", instance_regex), ("$job", "flexvqa"),
                            ("$namespace", ".*"), ("$pod", ".*"), ("$model", ".*")):
        expr = expr.replace(variable, value)
    return expr


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server_bin", required=True)
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--deploy_dir", required=True)
    parser.add_argument("--make_model", help="make_tiny_llava: serve a tiny flex checkpoint")
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    parser.add_argument("--promtool", default="/usr/bin/promtool")
    parser.add_argument("--timeout", type=float, default=100)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc  # noqa: E402  (python3-grpcio)
    from flexvqa.v1 import vqa_pb2, vqa_pb2_grpc  # noqa: E402

    deadline = START + args.timeout
    left = lambda: max(0.5, deadline - time.monotonic())  # noqa: E731
    prom_dir = os.path.join(args.deploy_dir, "prometheus")

    # --- The shipped files pass promtool. ---
    def promtool(*argv):
        return subprocess.run([args.promtool] + list(argv), capture_output=True, text=True, timeout=30)
    r = promtool("check", "rules", os.path.join(prom_dir, "flexvqa-alerts.yml"))
    check(r.returncode == 0, "promtool check rules flexvqa-alerts.yml" + ("" if r.returncode == 0 else ": " + r.stdout + r.stderr))
    r = promtool("check", "config", os.path.join(prom_dir, "prometheus.yml"))
    check(r.returncode == 0, "promtool check config prometheus.yml" + ("" if r.returncode == 0 else ": " + r.stdout + r.stderr))
    r = promtool("check", "config", os.path.join(prom_dir, "prometheus-kubernetes.yml"))
    if r.returncode != 0 and "kubernetes_sd_configs not found" in r.stdout + r.stderr:
        print("skip promtool check config prometheus-kubernetes.yml: this promtool is built without Kubernetes discovery")
    else:
        check(r.returncode == 0, "promtool check config prometheus-kubernetes.yml" + ("" if r.returncode == 0 else ": " + r.stdout + r.stderr))

    with open(os.path.join(prom_dir, "flexvqa-alerts.yml")) as f:
        rules = yaml.safe_load(f)
    with open(os.path.join(prom_dir, "prometheus.yml")) as f:
        prom_config = yaml.safe_load(f)
    with open(os.path.join(args.deploy_dir, "grafana", "flexvqa.json")) as f:
        dashboard = json.load(f)
    with open(os.path.join(args.deploy_dir, "k8s", "components", "keda", "scaledobject.yaml")) as f:
        scaled_object = yaml.safe_load(f)

    tmp = tempfile.mkdtemp(prefix="flexvqa_metrics_e2e_")
    processes = []
    try:
        # --- The server. ---
        server_args = [args.server_bin, "--listen_address=127.0.0.1:0", "--port_file=" + os.path.join(tmp, "port"),
                       "--max_sequences=2", "--max_running=2", "--max_queued=6", "--preprocess_threads=2",
                       "--log_level=warn"]
        if args.make_model:
            model_dir = os.path.join(tmp, "tiny-flex")
            r = subprocess.run([args.make_model, "--mode", "flex", "--out", model_dir], capture_output=True,
                               text=True, timeout=left())
            if not check(r.returncode == 0, "make_tiny_llava --mode flex" + ("" if r.returncode == 0 else ": " + r.stderr)):
                return 1
            server_args.append("--model_dir=" + model_dir)
        # Port 0 for both: the server publishes what it bound (no race with other tests for a port).
        server_args.append("--metrics_listen_address=127.0.0.1:0")
        server = subprocess.Popen(server_args)
        processes.append(server)
        port_file = os.path.join(tmp, "port")
        started = wait_until(lambda: os.path.exists(port_file) or server.poll() is not None, min(left(), 60), 0.05)
        if not check(started and server.poll() is None, "server started and published its port"):
            return 1
        grpc_port, metrics_port = (int(x) for x in open(port_file).read().split())
        if not check(metrics_port > 0, "metrics endpoint bound"):
            return 1
        address = "127.0.0.1:%d" % grpc_port

        # --- Prometheus with our config, adjusted to the test. ---
        test_config = copy.deepcopy(prom_config)
        test_config["global"]["scrape_interval"] = "1s"
        test_config["global"]["evaluation_interval"] = "1s"
        job = next(j for j in test_config["scrape_configs"] if j["job_name"] == "flexvqa")
        # 250 ms on the server: several scrapes during the long request below, whatever the CPU speed.
        job["scrape_interval"] = "250ms"
        job["scrape_timeout"] = "250ms"
        job["static_configs"] = [{"targets": ["127.0.0.1:%d" % metrics_port]}]
        test_config["rule_files"] = [os.path.join(tmp, "rules.yml")]
        with open(os.path.join(tmp, "rules.yml"), "w") as f:
            yaml.safe_dump(shorten_rules(rules), f)
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            yaml.safe_dump(test_config, f)
        r = promtool("check", "config", os.path.join(tmp, "prometheus.yml"))
        check(r.returncode == 0, "promtool check config on the test's copy" + ("" if r.returncode == 0 else ": " + r.stdout))
        prom_log = open(os.path.join(tmp, "prometheus.log"), "w")
        # Prometheus cannot report a port it picked: take a free one, and take another if a concurrent
        # test grabbed it first (Prometheus then exits at once).
        for attempt in range(3):
            prom_port = free_port()
            prometheus = subprocess.Popen(
                [args.prometheus, "--config.file=" + os.path.join(tmp, "prometheus.yml"),
                 "--storage.tsdb.path=" + os.path.join(tmp, "data"),
                 "--web.listen-address=127.0.0.1:%d" % prom_port, "--log.level=warn"],
                stdout=prom_log, stderr=subprocess.STDOUT)
            processes.append(prometheus)
            prom = Prometheus(prom_port)
            ready = wait_until(lambda: prom.ready() or prometheus.poll() is not None, min(left(), 30))
            if ready and prometheus.poll() is None:
                break
        if not check(prometheus.poll() is None and prom.ready(), "prometheus ready on 127.0.0.1:%d" % prom_port):
            return 1
        check(wait_until(lambda: prom.value('up{job="flexvqa"}') == 1, min(left(), 20)), "prometheus scrapes the server: up == 1")

        # --- Traffic. ---
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        channel = grpc.insecure_channel(address, options=options)
        stub = vqa_pb2_grpc.VqaServiceStub(channel)
        info = stub.ModelInfo(vqa_pb2.ModelInfoRequest(), timeout=10)
        image = png(48, 40)

        def generate(request):
            """(status code name, final message or None) as the client saw them."""
            final = None
            try:
                for response in stub.Generate(request, timeout=min(left(), 60)):
                    if response.HasField("final"):
                        final = response.final
                return "OK", final
            except grpc.RpcError as e:
                return e.code().name, final

        def good(i):
            request = vqa_pb2.GenerateRequest(question="what is shown here, number %d?" % i)
            if i % 2 == 0:
                request.images.add(data=image, mime_type="image/png")
            request.sampling.max_new_tokens = 4 + i % 5
            request.sampling.seed = i
            return request

        def bad(i):
            kinds = [
                vqa_pb2.GenerateRequest(question=""),
                vqa_pb2.GenerateRequest(question="q", sampling=vqa_pb2.SamplingParams(temperature=-1)),
                vqa_pb2.GenerateRequest(question="q", sampling=vqa_pb2.SamplingParams(max_new_tokens=0)),
                vqa_pb2.GenerateRequest(question="q", images=[vqa_pb2.Image(data=b"not an image", mime_type="image/png")]),
                vqa_pb2.GenerateRequest(question="q", images=[vqa_pb2.Image(data=image[:40], mime_type="image/png")]),
            ]
            return kinds[i % len(kinds)]

        def flood(i):
            request = vqa_pb2.GenerateRequest(question="keep talking %d" % i)
            if i % 3 == 0:
                request.images.add(data=image, mime_type="image/png")
            request.sampling.max_new_tokens = 48
            request.sampling.ignore_eos = True
            return request

        # --- One long request: the counters move while it streams, not only when it ends. ---
        def samples(expr, since, until):
            """Raw samples of one series scraped in [since, until] (Unix seconds)."""
            result, _ = prom.query("%s[%ds]" % (expr, int(time.time() - since) + 2))
            return [float(v) for t, v in (result[0]["values"] if result else []) if since <= float(t) <= until]
        generated_expr = 'flexvqa_generated_tokens_total{job="flexvqa"}'
        decode_expr = 'flexvqa_flops_total{job="flexvqa", phase="decode", component="mlp"}'
        before = {e: prom.value(e) or 0.0 for e in (generated_expr, decode_expr)}
        long_tokens = max(64, min(info.limits.max_new_tokens, info.context_length // 2))
        long_request = vqa_pb2.GenerateRequest(question="tell a long story")
        long_request.sampling.max_new_tokens = long_tokens
        long_request.sampling.ignore_eos = True
        started = time.time()
        long_result = generate(long_request)
        ended = time.time()
        check(long_result[0] == "OK" and long_result[1] is not None and
              long_result[1].usage.generated_tokens == long_tokens,
              "one long request: %d tokens in %.2f s" % (long_tokens, ended - started))
        # A scrape after it ended, so that the final values are in too.
        after_scrape = wait_until(lambda: prom.value(generated_expr) == before[generated_expr] + long_tokens,
                                  min(left(), 10))
        check(after_scrape, "flexvqa_generated_tokens_total rose by the long request's %d tokens" % long_tokens)
        for expr in (generated_expr, decode_expr):
            during = samples(expr, started + 0.05, ended - 0.05)
            final = prom.value(expr)
            between = [v for v in during if before[expr] < v < final]
            check(len(between) >= 1, "%s took values between %s and %s while the request streamed "
                  "(%d scrapes in %.2f s: %s)" % (expr, before[expr], final, len(during), ended - started,
                                                  ", ".join("%.6g" % v for v in during[:8])))

        results = [long_result]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # Within the queue limit.
            results += list(pool.map(generate, [good(i) for i in range(12)]))
        check(all(code == "OK" for code, _ in results),
              "12 good requests, 4 at a time, answered OK (%s)" % sorted({c for c, _ in results}))
        # Bad requests within the queue limit (--max_queued 6): on a loaded machine a wider burst would
        # meet RESOURCE_EXHAUSTED before validation.
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            bad_results = list(pool.map(generate, [bad(i) for i in range(25)]))
        check(all(code == "INVALID_ARGUMENT" for code, _ in bad_results),
              "25 bad requests got INVALID_ARGUMENT (%s)" % sorted({c for c, _ in bad_results}))
        results += bad_results
        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            flood_results = list(pool.map(generate, [flood(i) for i in range(40)]))
            check(any(code == "RESOURCE_EXHAUSTED" for code, _ in flood_results) and
                  any(code == "OK" for code, _ in flood_results),
                  "a flood of 40 beyond the queue: some OK, some RESOURCE_EXHAUSTED (%s)" %
                  {c: sum(1 for x, _ in flood_results if x == c) for c, _ in flood_results})
            results += flood_results
        codes = {}
        for code, _ in results:
            codes[code] = codes.get(code, 0) + 1
        finals = [final for _, final in results if final is not None]

        # --- Values against what the clients saw. ---
        total = len(results)
        check(wait_until(lambda: prom.value('sum(flexvqa_requests_total{job="flexvqa"})') == total, min(left(), 10)),
              "Prometheus has all %d calls in flexvqa_requests_total" % total)
        for code, count in sorted(codes.items()):
            got = prom.value('sum(flexvqa_requests_total{job="flexvqa", method="Generate", code="%s"})' % code)
            check(got == count, "flexvqa_requests_total{code=%s} = %s (clients saw %d)" % (code, got, count))
        got_mode = prom.query('flexvqa_model_info{job="flexvqa"}')[0]
        check(bool(got_mode) and got_mode[0]["metric"].get("mode") == info.mode and
              got_mode[0]["metric"].get("dtype") == info.dtype and got_mode[0]["metric"].get("device") == info.device,
              "flexvqa_model_info{mode=%s, dtype=%s, device=%s} as ModelInfo says" % (info.mode, info.dtype, info.device))
        check(prom.value('count(flexvqa_build_info{job="flexvqa"})') == 1, "flexvqa_build_info present")

        def close(a, b):
            return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
        sums = {
            "flexvqa_prompt_tokens_total": sum(f.usage.prompt_tokens for f in finals),
            "flexvqa_image_tokens_total": sum(f.usage.image_tokens for f in finals),
            "flexvqa_generated_tokens_total": sum(f.usage.generated_tokens for f in finals),
            "flexvqa_selected_hr_tokens_total": sum(f.usage.selected_hr_tokens for f in finals),
        }
        for name, expected in sums.items():
            got = prom.value('sum(%s{job="flexvqa"})' % name)
            check(close(got, expected), "%s = %s, the sum over the %d final messages: %s" % (name, got, len(finals), expected))
        for phase in ("vision", "projector", "prefill", "decode"):
            expected = sum(getattr(f.flops_by_phase, phase) for f in finals)
            got = prom.value('sum(flexvqa_flops_total{job="flexvqa", phase="%s"})' % phase)
            check(close(got, expected), "flexvqa_flops_total{phase=%s} = %s, the final messages' sum %s" % (phase, got, expected))
        got = prom.value('sum(flexvqa_flops_total{job="flexvqa"})')
        check(close(got, sum(f.flops for f in finals)), "flexvqa_flops_total = the sum of GenerateFinal.flops (%s)" % got)
        # The server's default encoder cache is on and the good requests repeat one image.
        hits = sum(1 for f in finals if f.usage.encoder_cache_hit)
        check(hits > 0 and all(f.flops_by_phase.vision == 0 for f in finals if f.usage.encoder_cache_hit) and
              prom.value('flexvqa_encoder_cache_lookups_total{job="flexvqa", result="hit"}') == hits,
              "flexvqa_encoder_cache_lookups_total{result=hit} = the %d final messages with a hit" % hits)
        with_tokens = sum(1 for f in finals if f.usage.generated_tokens > 0)
        check(prom.value('flexvqa_time_to_first_token_seconds_count{job="flexvqa"}') == with_tokens,
              "one time-to-first-token observation per request with a token (%d)" % with_tokens)
        check(prom.value('flexvqa_inter_token_latency_seconds_count{job="flexvqa"}') ==
              sum(f.usage.generated_tokens - 1 for f in finals if f.usage.generated_tokens > 0),
              "one inter-token observation per token after the first")
        check(prom.value('sum(flexvqa_batch_size_sequences_sum{job="flexvqa", phase="prefill"})') == len(finals),
              "every admitted request was prefilled once (batch size sums)")
        # Failures apart: answered calls by finish reason, as the clients saw them.
        for reason, number in (("stop", vqa_pb2.FINISH_REASON_STOP), ("length", vqa_pb2.FINISH_REASON_LENGTH)):
            expected = sum(1 for code, f in results if code == "OK" and f is not None and f.finish_reason == number)
            got = prom.value('sum(flexvqa_request_duration_seconds_count{job="flexvqa", finish_reason="%s"})' % reason)
            check(got == expected, "flexvqa_request_duration_seconds{finish_reason=%s} counts %s calls (clients: %d)" %
                  (reason, got, expected))
        # Calls the service rejects before the scheduler (unparseable, queue full at Submit) are not in it.
        failed = total - codes.get("OK", 0)
        got = prom.value('sum(flexvqa_request_duration_seconds_count{job="flexvqa", finish_reason="error"})')
        check(got is not None and 0 < got <= failed,
              "failed calls that reached the scheduler are in finish_reason=error (%s of %d failed)" % (got, failed))
        answered = sum(1 for code, f in results if code == "OK" and f is not None)
        check(prom.value('flexvqa_request_queue_seconds_count{job="flexvqa"}') == answered,
              "the queue-time histogram counts the %d answered calls only, not the failures" % answered)
        check(prom.value('flexvqa_request_decode_seconds_count{job="flexvqa"}') == with_tokens,
              "one decode-time observation per answered request (%d)" % with_tokens)
        for name, field in (("flexvqa_request_prompt_tokens", "prompt_tokens"),
                            ("flexvqa_request_generation_tokens", "generated_tokens")):
            values = [getattr(f.usage, field) for f in finals]
            check(prom.value('sum(%s_count{job="flexvqa"})' % name) == len(values) and
                  close(prom.value('sum(%s_sum{job="flexvqa"})' % name), sum(values)),
                  "%s: %d requests, %d tokens" % (name, len(values), sum(values)))
        check(close(prom.value('sum(flexvqa_step_tokens_sum{job="flexvqa"})'),
                    sums["flexvqa_prompt_tokens_total"] + sums["flexvqa_generated_tokens_total"]),
              "flexvqa_step_tokens sums to the prompt plus generated tokens")
        check(prom.value('flexvqa_kv_cache_slots{job="flexvqa"}') == 2, "flexvqa_kv_cache_slots = --max_sequences (2)")
        check((prom.value('flexvqa_kv_cache_capacity_bytes{job="flexvqa"}') or 0) > 0, "the KV-cache pool's bytes are exported")
        usage = samples('flexvqa_kv_cache_usage_ratio{job="flexvqa"}', START_WALL, time.time())
        check(usage and max(usage) > 0 and all(0 <= v <= 1 for v in usage),
              "flexvqa_kv_cache_usage_ratio is a fraction that rose under load (max %s)" % (max(usage) if usage else None))
        for name in ("process_resident_memory_bytes", "process_start_time_seconds"):
            check((prom.value('%s{job="flexvqa"}' % name) or 0) > 0, "the standard %s is exported" % name)
        result, _ = prom.query('{job="flexvqa", __name__=~"flexvqa_process_.*|flexvqa_device_memory_used_bytes"}')
        check(result == [], "no flexvqa_process_* duplicates, no always-0 device memory gauge")
        le = {r["metric"]["le"] for r in prom.query('flexvqa_inter_token_latency_seconds_bucket{job="flexvqa"}')[0] or []}
        check("30" in le and "2.5" in le, "inter-token buckets reach 30 s (a step stalled behind a long prefill)")
        if info.mode == "flex":
            # The buckets resolve the values: the estimated median lies within the bucket step (x1.5) of
            # the real one (powers of 4 read 163,840 for values of 103k-125k).
            selected = sorted(f.usage.selected_hr_tokens for f in finals if f.usage.image_tokens > 0)
            estimate = prom.value('histogram_quantile(0.5, sum by (le) (flexvqa_request_selected_hr_tokens_bucket{job="flexvqa"}))')
            real = selected[len(selected) // 2] if selected else None
            check(real and estimate and real / 1.5 <= estimate <= real * 1.5,
                  "selected HR tokens p50 from the buckets %s vs the clients' median %s" % (estimate, real))
            with_image = sum(1 for f in finals if f.usage.image_tokens > 0)
            check(prom.value('flexvqa_request_selected_hr_ratio_count{job="flexvqa"}') == with_image,
                  "one selected-fraction observation per flex request with an image (%d)" % with_image)

        # --- Every panel's expressions return data. ---
        instances = prom.get("/api/v1/label/instance/values", **{"match[]": 'flexvqa_model_info{job="flexvqa"}'})
        check(instances.get("status") == "success" and len(instances["data"]) == 1,
              "the $instance variable's query (label_values(flexvqa_model_info, instance)) finds the server")
        instance_regex = instances["data"][0].replace(".", "\\\\.") if instances.get("data") else ".*"
        panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        check(variables.get("datasource", {}).get("type") == "datasource" and
              {"job", "namespace", "pod", "model", "instance"} <= set(variables),
              "the dashboard has datasource, job, namespace, pod, model and instance variables")
        check([i["name"] for i in dashboard.get("__inputs", [])] == ["DS_PROMETHEUS"] and
              variables["datasource"]["current"].get("value") == "${DS_PROMETHEUS}",
              "__inputs asks for the data source at import and makes it $datasource's default")
        for p in panels:
            for target in p.get("targets", []):
                check('job="flexvqa"' not in target["expr"], "panel '%s' %s has no hard-coded job" % (p["title"], target["refId"]))
        expressions = 0
        for p in panels:
            for target in p.get("targets", []):
                expressions += 1
                for regex in (".*", instance_regex):
                    expr = substitute(target["expr"], regex)
                    result, error = prom.query(expr)
                    # NaN everywhere (a quantile of an empty histogram) is no data too.
                    numbers = [float(r["value"][1]) for r in result or []]
                    has_data = any(not math.isnan(v) for v in numbers)
                    check(error is None and has_data, "panel '%s' %s (instance=~%s): %s" % (
                        p["title"], target["refId"], regex, error or ("%d series, values %s" % (
                            len(numbers), ", ".join("%.4g" % v for v in numbers[:4])))))
        check(expressions >= 30, "%d panel expressions evaluated" % expressions)
        for trigger in scaled_object["spec"]["triggers"]:
            result, error = prom.query(trigger["metadata"]["query"])
            check(error is None and bool(result), "KEDA trigger query returns data: %s" % (error or result[0]["value"][1]))

        # --- Alert rules: all evaluate; the provoked ones fire. ---
        for group in rules["groups"]:
            for rule in group["rules"]:
                _, error = prom.query(rule["expr"])
                check(error is None, "rule %s's expression evaluates" % rule["alert"])

        def rule_health():
            reply = prom.get("/api/v1/rules")
            found = {r["name"]: r for g in reply.get("data", {}).get("groups", []) for r in g["rules"]}
            done = len(found) == sum(len(g["rules"]) for g in rules["groups"]) and all(
                r.get("lastEvaluation", "").startswith("2") and not r["lastEvaluation"].startswith("0001") for r in found.values())
            return found if done else None
        found = wait_until(rule_health, min(left(), 10), 0.2) or {}
        for name, rule in sorted(found.items()):
            check(rule.get("health") == "ok", "Prometheus evaluated %s: health %s %s" % (name, rule.get("health"), rule.get("lastError", "")))

        def firing(names):
            def now_firing():
                alerts = prom.get("/api/v1/alerts").get("data", {}).get("alerts", [])
                on = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
                return on if names <= on else None
            return now_firing
        on = wait_until(firing({"FlexvqaHighErrorRatio", "FlexvqaQueueSaturated"}), min(left(), 15), 0.2)
        check(on is not None, "FlexvqaHighErrorRatio and FlexvqaQueueSaturated fire (firing: %s)" % on)
        healthy = {"FlexvqaInternalErrors", "FlexvqaModelNotLoaded", "FlexvqaRestarting", "FlexvqaNoReplicaUp",
                   "FlexvqaDown", "FlexvqaDrainStuck"}
        check(on is not None and not (on & healthy),
              "nothing that did not happen fires (no INTERNAL, model loaded, no restart, up, not draining): %s" %
              sorted((on or set()) & healthy))
        check(prom.value('sum(flexvqa_draining{job="flexvqa"})') == 0, "not draining while serving")

        channel.close()
        server.send_signal(signal.SIGTERM)
        check(server.wait(timeout=min(left(), 30)) == 0, "SIGTERM: the server drained and exited 0")
        on = wait_until(firing({"FlexvqaDown"}), min(left(), 15), 0.2)
        check(on is not None, "FlexvqaDown fires once the server is gone")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if FAILURES:
            log = os.path.join(tmp, "prometheus.log")
            if os.path.exists(log):
                print("--- prometheus.log ---\n" + open(log).read()[-3000:])
        subprocess.run(["rm", "-rf", tmp])
    check(time.monotonic() - START < args.timeout, "finished within %.0f s" % args.timeout)
    print("%d passed, %d failed" % (CHECKS[0] - len(FAILURES), len(FAILURES)))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
