#!/usr/bin/env python3
"""summarize.py OUT: turns OUT/results.jsonl (every `RESULT {json}` line of a scripts/gpu/check.sh run,
tagged with its stage) and OUT/stages.tsv into OUT/results.md: the stages with their time, the parity
checks, and the timings beside the peers measured in the same run, each with its ratio. A ratio is
ours / peer in ms (below 1: we are faster). Missing figures print as '-', never as a guess."""
import json
import os
import sys


def load(out):
    rows = []
    path = os.path.join(out, "results.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def find(rows, **want):
    """The last matching row: a rerun (check.sh --only) supersedes the earlier figure."""
    for r in reversed(rows):
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(ours, peer):
    return "-" if ours is None or peer is None or not peer else f"{ours / peer:.2f}"


def get(r, key):
    return None if r is None else r.get(key)


def main():
    out = sys.argv[1]
    rows = load(out)
    lines = ["# GPU check results", ""]
    dev, lib = find(rows, check="device"), find(rows, check="info")
    if dev or lib:
        lines += [f"Device: {get(dev, 'name') or '-'} ({get(dev, 'memory_gib') or '-'} GiB); Python torch "
                  f"{get(dev, 'python_torch') or '-'}; our LibTorch {get(lib, 'torch') or '-'}, CUDA "
                  f"{'available' if get(lib, 'cuda') else 'not available'}.", ""]
    stages = os.path.join(out, "stages.tsv")
    if os.path.exists(stages):
        lines += ["| stage | status | seconds | budget s |", "|---|---|---|---|"]
        with open(stages) as f:
            for line in f:
                lines.append("| " + " | ".join(line.rstrip("\n").split("\t")) + " |")
        lines.append("")
    parity = [r for r in rows if r.get("check") in ("logits_prompt", "logits_steps", "forced_greedy",
                                                   "engine_vs_cpu")]
    if parity:
        lines += ["## Parity", "", "| what | device | dtype | check | figures | rule | pass |",
                  "|---|---|---|---|---|---|---|"]
        for r in parity:
            if r["check"].startswith("logits"):
                fig = f"max abs diff {r.get('max_abs_diff', float('nan')):.3g}, min cosine {r.get('min_cosine', float('nan')):.6f}"
            elif r["check"] == "forced_greedy":
                fig = (f"{r.get('equal')}/{r.get('steps')} equal, {r.get('decisive_equal')}/{r.get('decisive')} "
                       f"decisive, {len(r.get('near_ties', []))} near-ties")
            else:
                fig = (f"{r.get('tokens_equal_before_divergence')}/{r.get('tokens')} tokens, selections "
                       f"{r.get('selections_equal')}/{r.get('requests')}")
            if r.get("error"):
                fig = "error: " + r["error"]
            what = r.get("fixture") or r.get("mode")
            lines.append(f"| {what} | {r.get('device')} | {r.get('dtype')} | {r['check']} | {fig} | "
                         f"{r.get('rule', '')} | {'yes' if r.get('pass') else 'NO'} |")
        lines.append("")
    ours = [r for r in rows if r.get("check") == "decode_bench"]
    peers = [r for r in rows if r.get("check") == "peer"]
    compiled = [r for r in rows if r.get("peer") == "hf-static-compiled"]
    lines += ["## Decode ms/step, 616-token prompt, 336 px, full", "",
              "| batch | ours | HF compiled | ours/compiled | HF eager | ours/eager | ours tok/s |",
              "|---|---|---|---|---|---|---|"]
    for b in (1, 8, 32, 64):
        o = find(ours, label="full336", batch=b)
        c = find(compiled, batch=b)
        e = find(peers, peer="hf-eager", image_px=336, batch=b)
        lines.append(f"| {b} | {fmt(get(o, 'decode_ms_per_step'))} | {fmt(get(c, 'decode_ms_per_step'))} | "
                     f"{ratio(get(o, 'decode_ms_per_step'), get(c, 'decode_ms_per_step'))} | "
                     f"{fmt(get(e, 'decode_ms_per_step'))} | "
                     f"{ratio(get(o, 'decode_ms_per_step'), get(e, 'decode_ms_per_step'))} | "
                     f"{fmt(get(o, 'tokens_per_s'), 1)} |")
    lines += ["", "## Time to first token (ms), 1008 px", "",
              "| batch | ours full (all HR tokens) | HF eager full | ours/HF | ours flex | flex/full ours | authors' flex |",
              "|---|---|---|---|---|---|---|"]
    anchor = find(rows, anchor="flexattention-reference")
    for b in (1, 8):
        o = find(ours, label="full1008", batch=b)
        e = find(peers, peer="hf-eager", image_px=1008, batch=b)
        x = find(ours, label="flex1008", batch=b)
        a = get(anchor, "ttft_ms") if b == 1 else None
        lines.append(f"| {b} | {fmt(get(o, 'ttft_ms'))} | {fmt(get(e, 'ttft_ms'))} | "
                     f"{ratio(get(o, 'ttft_ms'), get(e, 'ttft_ms'))} | {fmt(get(x, 'ttft_ms'))} | "
                     f"{ratio(get(x, 'ttft_ms'), get(o, 'ttft_ms'))} | {fmt(a)} |")
    lines += ["", "## FlexAttention decode ms/step, 1008 px", "",
              "| batch | ours | authors' code (fp16, eager) | ours/authors' |", "|---|---|---|---|"]
    for b in (1, 8):
        x = find(ours, label="flex1008", batch=b)
        a = get(anchor, "decode_ms_per_step") if b == 1 else None
        lines.append(f"| {b} | {fmt(get(x, 'decode_ms_per_step'))} | {fmt(a)} | {ratio(get(x, 'decode_ms_per_step'), a)} |")
    server = find(rows, check="server_e2e")
    alone = find(ours, label="engine_alone")
    lines += ["", "## Server end to end (gRPC loopback) vs the engine alone", "",
              "| | tokens/s | TTFT p50 ms | inter-token p50 ms |", "|---|---|---|---|"]
    lines.append(f"| server ({get(server, 'mode') or '-'}) | {fmt(get(server, 'tokens_per_s'), 1)} | "
                 f"{fmt((get(server, 'ttft_ms') or {}).get('p50'))} | {fmt((get(server, 'itl_ms') or {}).get('p50'))} |")
    lines.append(f"| engine alone (batch {get(alone, 'batch') or '-'}) | {fmt(get(alone, 'tokens_per_s'), 1)} | "
                 f"{fmt(get(alone, 'ttft_ms'))} | {fmt(get(alone, 'decode_ms_per_step'))} |")
    graphs = [r for r in rows if r.get("check") in ("graph_sampler", "graph_varlen")]
    if graphs:
        lines += ["", "## CUDA graphs per batch bucket (bench/graph_check)", "",
                  "| what | bucket | captured | correct | eager ms | through StepGraphs ms | note |",
                  "|---|---|---|---|---|---|---|"]
        for r in graphs:
            ok = r.get("match") if r["check"] == "graph_sampler" else (
                r.get("ok") and r.get("replay_equal"))
            note = r.get("error") or (f"max abs diff {fmt(r.get('max_abs_diff'), 4)}"
                                      if r["check"] == "graph_varlen" else "")
            lines.append(f"| {r['check'][6:]} | {r.get('bucket')} | {r.get('captured')} | {ok} | "
                         f"{fmt(r.get('eager_ms'), 3)} | {fmt(r.get('graph_ms'), 3)} | {note} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
