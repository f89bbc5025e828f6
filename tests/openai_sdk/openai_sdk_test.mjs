// The official OpenAI client (npm `openai`, pinned in package-lock.json) against flexvqa_server on
// its default model, on loopback: streamed and non-streamed greedy answers equal the gRPC
// answers (flexvqa_client) for the same request, refusals arrive as the SDK's typed errors, and a
// stream the client aborts frees its slot (seen in /metrics, waited on with a bounded timeout).
//
//   node openai_sdk_test.mjs --server-bin BIN --client-bin BIN --image PNG [--timeout S]
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

let OpenAI;
try {
  OpenAI = (await import("openai")).default;
} catch (e) {
  console.log(`FAIL the npm package openai is missing (${e.message}): run deploy/install_test_deps.sh`);
  process.exit(1);
}

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
const timeoutMs = Number(args.timeout ?? 120) * 1000;
const started = Date.now();
const work = fs.mkdtempSync(path.join(os.tmpdir(), "flexvqa-openai-"));
const token = "openai-sdk-test-token-0123456789";
fs.writeFileSync(path.join(work, "tokens.txt"), `${token} sdk\n`);
fs.writeFileSync(path.join(work, "token"), token);
const portFile = path.join(work, "ports");

let failures = 0;
function check(ok, what) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures++;
}

// Polls `condition` (async) until it holds or the test's time is up.
async function waitFor(condition, what) {
  while (Date.now() - started < timeoutMs) {
    const value = await condition();
    if (value) return value;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const server = spawn(args["server-bin"], [
  "--listen_address=127.0.0.1:0", "--metrics_listen_address=127.0.0.1:0",
  "--openai_listen_address=127.0.0.1:0", `--port_file=${portFile}`,
  `--auth_token_file=${path.join(work, "tokens.txt")}`, "--max_sequences=4",
  "--max_calls_per_client=1", "--log_level=warn",
], { stdio: ["ignore", "inherit", "inherit"] });
const exited = new Promise((resolve) => server.on("exit", (code, signal) => resolve(code ?? signal)));

try {
  const [grpcPort, metricsPort, openaiPort] = await waitFor(() => {
    if (server.exitCode !== null) throw new Error(`the server exited with ${server.exitCode}`);
    const lines = fs.existsSync(portFile) ? fs.readFileSync(portFile, "utf8").trim().split("\n") : [];
    return lines.length === 3 ? lines.map(Number) : null;
  }, "the port file");
  const metrics = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const series = (text, name) => {
    const line = text.split("\n").find(
      (l) => l.startsWith(name + " ") || (!name.includes("{") && l.startsWith(name + "{")));
    return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(" ") + 1));
  };
  const baseURL = `http://127.0.0.1:${openaiPort}/v1`;
  const client = new OpenAI({ apiKey: token, baseURL, maxRetries: 0 });
  const model = (await client.models.list()).data[0].id;
  check(typeof model === "string" && model.length > 0, `GET /v1/models serves ${model}`);

  const question = "What is in the picture?";
  const maxTokens = 24;
  const grpcAnswer = execFileSync(args["client-bin"], [
    `--server=127.0.0.1:${grpcPort}`, `--token_file=${path.join(work, "token")}`,
    `--max_new_tokens=${maxTokens}`, "--temperature=0", args.image, question,
  ], { encoding: "utf8" }).replace(/\n$/, "");
  check(grpcAnswer.length > 0, `gRPC answer: ${JSON.stringify(grpcAnswer)}`);

  const imageUrl = `data:image/png;base64,${fs.readFileSync(args.image).toString("base64")}`;
  const request = {
    model, temperature: 0, max_tokens: maxTokens,
    messages: [{ role: "user", content: [
      { type: "image_url", image_url: { url: imageUrl } }, { type: "text", text: question }] }],
  };
  const completion = await client.chat.completions.create(request);
  check(completion.choices[0].message.content === grpcAnswer,
        `non-streamed answer equals gRPC's: ${JSON.stringify(completion.choices[0].message.content)}`);
  check(["stop", "length"].includes(completion.choices[0].finish_reason), "finish_reason stop/length");
  check(completion.usage.completion_tokens > 0 &&
        completion.usage.total_tokens === completion.usage.prompt_tokens + completion.usage.completion_tokens,
        "usage adds up");
  // The gRPC call above encoded the same image, so the server's encoder cache (on by default) serves
  // this one: vision FLOPs 0 and the hit reported; prefill FLOPs are counted either way.
  const figures = completion.flexvqa ?? {};
  check(figures.flops_by_phase?.prefill > 0 &&
        (figures.encoder_cache_hit === true ? figures.flops_by_phase.vision === 0
                                            : figures.flops_by_phase?.vision > 0),
        `our figures ride along (prefill FLOPs > 0; vision FLOPs 0 exactly on a cache hit): ${JSON.stringify(figures)}`);

  let streamed = "";
  let usage = null;
  let finish = null;
  for await (const chunk of await client.chat.completions.create(
      { ...request, stream: true, stream_options: { include_usage: true } })) {
    if (chunk.choices.length > 0) {
      streamed += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  check(streamed === grpcAnswer, `streamed answer equals gRPC's: ${JSON.stringify(streamed)}`);
  check(finish === completion.choices[0].finish_reason, "the stream's finish_reason");
  check(usage?.completion_tokens === completion.usage.completion_tokens, "the stream's usage chunk");

  async function expectError(promise, type, what) {
    try {
      await promise;
      check(false, `${what}: no error`);
    } catch (e) {
      check(e instanceof type, `${what}: ${e.constructor.name} ${e.status} ${e.message}`);
      return e;
    }
  }
  const n2 = await expectError(client.chat.completions.create({ ...request, n: 2 }),
                               OpenAI.BadRequestError, "n=2");
  check(n2?.param === "n", "the error names the field n");
  const remote = await expectError(client.chat.completions.create({ ...request, messages: [
    { role: "user", content: [{ type: "image_url", image_url: { url: "http://169.254.169.254/" } },
                              { type: "text", text: question }] }] }),
    OpenAI.BadRequestError, "a remote image URL");
  check(remote?.param === "messages[0].content[0].image_url", "the error names the image part");
  await expectError(client.chat.completions.create({ ...request, model: "gpt-4o" }),
                    OpenAI.BadRequestError, "an unknown model");
  await expectError(client.chat.completions.create({ ...request, max_tokens: 100000 }),
                    OpenAI.BadRequestError, "max_tokens over the limit");
  await expectError(new OpenAI({ apiKey: "wrong-token-0123456789", baseURL, maxRetries: 0 })
                      .chat.completions.create(request), OpenAI.AuthenticationError, "a wrong token");

  // A long stream, aborted after its first chunk; meanwhile this client's one call is in flight
  // (--max_calls_per_client=1), so a second call is refused as gRPC refuses it.
  // Whatever the default model's mode (the label), and a length its 512-token context holds.
  const cancelled = (text) => [...text.matchAll(
    /^flexvqa_requests_total\{code="CANCELLED",method="chat_completions",mode="[a-z]+",protocol="openai"\} (\d+)/gm)]
    .reduce((sum, m) => sum + Number(m[1]), 0);
  const cancelledBefore = cancelled(await metrics());
  const long = await client.chat.completions.create(
    { ...request, stream: true, max_tokens: 256, ignore_eos: true });
  const iterator = long[Symbol.asyncIterator]();
  await iterator.next();
  check(series(await metrics(), "flexvqa_requests_running") === 1, "the long stream holds a slot");
  await expectError(client.chat.completions.create(request), OpenAI.RateLimitError,
                    "a second call beyond the client's share");
  long.controller.abort();
  await waitFor(async () => {
    const text = await metrics();
    return series(text, "flexvqa_requests_running") === 0 &&
      cancelled(text) === cancelledBefore + 1;
  }, "the aborted stream's slot");
  check(true, "the aborted stream ended CANCELLED and freed its slot");
  const after = await client.chat.completions.create(request);
  check(after.choices[0].message.content === grpcAnswer, "the next call is served");
} catch (e) {
  check(false, `${e.stack ?? e}`);
} finally {
  server.kill("SIGTERM");
  const code = await exited;
  check(code === 0, `the server drained and exited (${code})`);
  fs.rmSync(work, { recursive: true, force: true });
}
console.log(failures === 0 ? "PASS" : `${failures} FAILED`);
process.exit(failures === 0 ? 0 : 1);
