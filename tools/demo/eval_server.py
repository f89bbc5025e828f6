#!/usr/bin/python3
"""Scores a generated question file (make_split.py) through a running flexvqa server over gRPC: the
table of docs/demo_model.md. Greedy, one request per question, --concurrency at a time; an answer is
right when the streamed text, trimmed, equals the expected one. Prints accuracy, GFLOPs (the server's
count, GenerateFinal.flops) and selected high-resolution tokens per question, per kind, and with --json
one JSON object. Start the server with --encoder_cache_bytes=0 so that every question pays for its image
(the three questions of a scene share it otherwise).

    PYTHONPATH=build/client/python/gen /usr/bin/python3 tools/demo/eval_server.py \
        --server 127.0.0.1:50051 --questions build/demo-heldout/questions.tsv [--threshold 255]
"""
import argparse
import concurrent.futures
import json
import os
import sys

import grpc

from flexvqa.v1 import vqa_pb2, vqa_pb2_grpc


def ask(stub, directory, line, threshold, timeout):
    image, kind, question, answer = line
    request = vqa_pb2.GenerateRequest(question=question, request_id=f"{image}:{kind}")
    with open(os.path.join(directory, image), "rb") as f:
        request.images.add(data=f.read(), mime_type="image/png")
    request.sampling.max_new_tokens = 4
    request.sampling.temperature = 0.0
    if threshold is not None:
        request.selection_threshold = threshold
    text, final = "", None
    for reply in stub.Generate(request, timeout=timeout):
        if reply.HasField("delta"):
            text += reply.delta.text
        if reply.HasField("final"):
            final = reply.final
    return kind, text.strip() == answer, final


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--questions", required=True)
    ap.add_argument("--threshold", type=int, help="selection threshold (255: low resolution only)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    directory = os.path.dirname(os.path.abspath(args.questions))
    with open(args.questions) as f:
        lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    stub = vqa_pb2_grpc.VqaServiceStub(grpc.insecure_channel(args.server))
    tally = {}
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for kind, right, final in pool.map(lambda ln: ask(stub, directory, ln, args.threshold, args.timeout), lines):
            t = tally.setdefault(kind, dict(right=0, total=0, gflops=0.0, selected=0))
            t["right"] += int(right)
            t["total"] += 1
            t["gflops"] += final.flops / 1e9
            t["selected"] += final.usage.selected_hr_tokens
    rows = {k: dict(accuracy=t["right"] / t["total"], questions=t["total"], gflops=t["gflops"] / t["total"],
                    selected_hr_tokens=t["selected"] / t["total"]) for k, t in sorted(tally.items())}
    if args.json:
        print(json.dumps(dict(threshold=args.threshold, kinds=rows)))
    else:
        for k, r in rows.items():
            print(f"{k}\t{r['accuracy']:.3f}\t({r['questions']} questions)\t{r['gflops']:.3f} GFLOPs/question\t"
                  f"{r['selected_hr_tokens']:.0f} HR tokens/question")
    return 0


if __name__ == "__main__":
    sys.exit(main())
