#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <fstream>
#include <utility>
#include <vector>

#include "server/heap.h"
#include "server/logging.h"
#include "server/metrics_endpoint.h"

#ifndef FLEXVQA_VERSION
#define FLEXVQA_VERSION "unknown"
#endif
#ifndef FLEXVQA_GIT_REVISION
#define FLEXVQA_GIT_REVISION "unknown"
#endif

namespace flexvqa {

namespace {

using prometheus::Histogram;
using Buckets = Histogram::BucketBoundaries;

// Latency buckets, seconds. Each histogram's range runs from what the tiny model does on a CPU to
// what a 7B model does on a loaded GPU (gpu.md: TTFT 30-600 ms, decode 5-90 ms per step).
const Buckets kQueueBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                               0.5,   1,      2.5,   5,    10,    30,   60};
const Buckets kPreprocessBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,   0.25,   0.5,   1,    2.5};
const Buckets kVisionBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
const Buckets kPrefillBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25,  0.5,    1,     2.5,  5,     10};
const Buckets kFirstTokenBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                    1,     2.5,  5,     10,   20,  30,   60};
// Up to 30 s: a decode step can wait behind a long prefill or a device stall, and those are the
// gaps worth seeing.
const Buckets kInterTokenBuckets = {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                                    0.075, 0.1,    0.2,   0.5,    1,    2.5,   5,    10,   30};
// Decode time of one request: up to max_new_tokens (1024) steps of up to ~90 ms, and beyond.
const Buckets kDecodeBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                5,    10,    20,   30,  60,   120, 300};
const Buckets kDurationBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                  5,    10,    20,   30,  60,   120, 300};
// Sequences per step: powers of two up to well past any KV-slot count we run.
const Buckets kBatchBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};
// Selected HR tokens summed over FA layers and steps: 64 per 8x8 block (72x72 grid, 81 blocks),
// times up to 30 FA layers and hundreds of steps. 1-1.5-2-3-5-7 per decade: a quantile is off by
// at most half a bucket (+-25%), where powers of 4 read 163,840 for values of 103k-125k.
const Buckets kSelectedTokenBuckets = {0,     100, 150,   200, 300,   500, 700,   1e3, 1.5e3, 2e3,
                                       3e3,   5e3, 7e3,   1e4, 1.5e4, 2e4, 3e4,   5e4, 7e4,   1e5,
                                       1.5e5, 2e5, 3e5,   5e5, 7e5,   1e6, 1.5e6, 2e6, 3e6,   5e6,
                                       7e6,   1e7, 1.5e7, 2e7, 3e7,   5e7, 7e7};
// Prompt tokens per request: a LLaVA-1.5 image is 576 tokens, text adds tens to hundreds; the
// context is 4096.
const Buckets kPromptTokenBuckets = {16,  32,   64,   128,  256,  512,  576, 640,
                                     768, 1024, 1536, 2048, 3072, 4096, 8192};
const Buckets kGenerationTokenBuckets = {1,   2,   4,   8,   16,   32,   64,
                                         128, 256, 512, 768, 1024, 2048, 4096};
// Tokens one worker step processed (prompts prefilled plus tokens generated).
const Buckets kStepTokenBuckets = {1,   2,   4,    8,    16,   32,   64,    128,
                                   256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
const Buckets kFractionBuckets = {0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                                  0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1};

// The finish_reason label of flexvqa_request_duration_seconds: a bounded set.
enum FinishLabel { kFinishStop, kFinishLength, kFinishCancelled, kFinishError, kNumFinishLabels };
const char* const kFinishLabelNames[kNumFinishLabels] = {"stop", "length", "cancelled", "error"};

FinishLabel FinishLabelFor(StatusCode code, FinishReason reason) {
  if (code == StatusCode::kCancelled) return kFinishCancelled;
  if (code != StatusCode::kOk) return kFinishError;
  return reason == FinishReason::kLength ? kFinishLength : kFinishStop;
}

const char* PhaseName(int phase) {
  switch (phase) {
    case FlopCount::kVision:
      return "vision";
    case FlopCount::kProjector:
      return "projector";
    case FlopCount::kPrefill:
      return "prefill";
    default:
      return "decode";
  }
}

const char* ComponentName(int component) {
  switch (component) {
    case FlopCount::kProjections:
      return "projections";
    case FlopCount::kAttention:
      return "attention";
    case FlopCount::kMlp:
      return "mlp";
    case FlopCount::kLmHead:
      return "lm_head";
    case FlopCount::kHighResProjections:
      return "high_res_projections";
    default:
      return "other";
  }
}

double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0;
  long pages_resident = 0;
  if (!(statm >> pages_total >> pages_resident)) return 0;
  return static_cast<double>(pages_resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

}  // namespace

const char* ProtocolName(Protocol protocol) {
  return protocol == Protocol::kOpenAi ? "openai" : "grpc";
}

// References into the registry (which owns the metrics); the mode-labelled children are made once
// the mode is known (SetModel).
struct ServerMetrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests(
            prometheus::BuildCounter()
                .Name("flexvqa_requests_total")
                .Help("Requests by API method, protocol (grpc, openai), attention mode and final "
                      "status code (gRPC's names)")
                .Register(r)),
        prompt_tokens(
            prometheus::BuildCounter()
                .Name("flexvqa_prompt_tokens_total")
                .Help("Prompt tokens (image tokens included) of requests that reached the model")
                .Register(r)),
        image_tokens(prometheus::BuildCounter()
                         .Name("flexvqa_image_tokens_total")
                         .Help("Image tokens in the prompts of requests that reached the model")
                         .Register(r)),
        selected_hr_tokens(
            prometheus::BuildCounter()
                .Name("flexvqa_selected_hr_tokens_total")
                .Help("High-resolution tokens selected (flex), summed over FA layers and steps")
                .Register(r)),
        generated_tokens(prometheus::BuildCounter()
                             .Name("flexvqa_generated_tokens_total")
                             .Help("Generated tokens, the stop token included")
                             .Register(r)),
        flops(
            prometheus::BuildCounter()
                .Name("flexvqa_flops_total")
                .Help(
                    "Floating-point operations the engine counted (a multiply-add is 2), by phase "
                    "and component")
                .Register(r)),
        queue(prometheus::BuildHistogram()
                  .Name("flexvqa_request_queue_seconds")
                  .Help("Wait for a preprocessing thread and then for a batch slot")
                  .Register(r)
                  .Add({}, kQueueBuckets)),
        preprocess(
            prometheus::BuildHistogram()
                .Name("flexvqa_request_preprocess_seconds")
                .Help("Validation, tokenisation, image decoding and preprocessing (CPU pool)")
                .Register(r)
                .Add({}, kPreprocessBuckets)),
        vision(
            prometheus::BuildHistogram()
                .Name("flexvqa_request_vision_seconds")
                .Help(
                    "Vision tower and projector of the prefill step a request with an image joined")
                .Register(r)
                .Add({}, kVisionBuckets)),
        prefill(prometheus::BuildHistogram()
                    .Name("flexvqa_request_prefill_seconds")
                    .Help("Prompt forward of the prefill step a request joined (vision excluded)")
                    .Register(r)
                    .Add({}, kPrefillBuckets)),
        first_token(prometheus::BuildHistogram()
                        .Name("flexvqa_time_to_first_token_seconds")
                        .Help("From a call's arrival to its first token")
                        .Register(r)
                        .Add({}, kFirstTokenBuckets)),
        inter_token(prometheus::BuildHistogram()
                        .Name("flexvqa_inter_token_latency_seconds")
                        .Help("Gap between two consecutive tokens of one sequence")
                        .Register(r)
                        .Add({}, kInterTokenBuckets)),
        decode(prometheus::BuildHistogram()
                   .Name("flexvqa_request_decode_seconds")
                   .Help("From a call's first token to its last (calls that ended OK)")
                   .Register(r)
                   .Add({}, kDecodeBuckets)),
        duration(prometheus::BuildHistogram()
                     .Name("flexvqa_request_duration_seconds")
                     .Help("From a call's arrival to its final message, by finish reason (stop, "
                           "length, cancelled, error; calls that reached the scheduler)")
                     .Register(r)),
        prompt_length(prometheus::BuildHistogram()
                          .Name("flexvqa_request_prompt_tokens")
                          .Help("Prompt tokens (image tokens included) per request that reached "
                                "the model")
                          .Register(r)),
        generation_length(prometheus::BuildHistogram()
                              .Name("flexvqa_request_generation_tokens")
                              .Help("Generated tokens per request that reached the model")
                              .Register(r)),
        step_tokens(prometheus::BuildHistogram()
                        .Name("flexvqa_step_tokens")
                        .Help("Tokens one worker step processed: prompts prefilled plus tokens "
                              "generated")
                        .Register(r)
                        .Add({}, kStepTokenBuckets)),
        batch_family(prometheus::BuildHistogram()
                         .Name("flexvqa_batch_size_sequences")
                         .Help("Sequences in one worker step, by phase (prefill, decode)")
                         .Register(r)),
        prefill_batch(batch_family.Add({{"phase", "prefill"}}, kBatchBuckets)),
        decode_batch(batch_family.Add({{"phase", "decode"}}, kBatchBuckets)),
        selected_per_request(
            prometheus::BuildHistogram()
                .Name("flexvqa_request_selected_hr_tokens")
                .Help("Selected high-resolution tokens per flex request with an image, "
                      "summed over FA layers and steps")
                .Register(r)
                .Add({}, kSelectedTokenBuckets)),
        selected_ratio(
            prometheus::BuildHistogram()
                .Name("flexvqa_request_selected_hr_ratio")
                .Help("Fraction of the high-resolution tokens a flex request selected, over "
                      "FA layers and steps")
                .Register(r)
                .Add({}, kFractionBuckets)),
        running(Gauge(r, "flexvqa_requests_running", "Sequences holding a KV-cache slot")),
        waiting(
            Gauge(r, "flexvqa_requests_waiting",
                  "Requests accepted but not running: being preprocessed or waiting for a slot")),
        max_queued(
            Gauge(r, "flexvqa_max_queued_requests",
                  "Waiting requests beyond which new ones get RESOURCE_EXHAUSTED (--max_queued)")),
        max_running(
            Gauge(r, "flexvqa_max_running_requests", "Sequences decoded together (--max_running)")),
        free_slots(
            Gauge(r, "flexvqa_kv_cache_free_slots", "KV-cache slots free after the last step")),
        slots(Gauge(r, "flexvqa_kv_cache_slots",
                    "KV-cache slots: sequences resident at once (--max_sequences)")),
        kv_cache_bytes(
            Gauge(r, "flexvqa_kv_cache_memory_bytes",
                  "KV-cache memory holding resident sequences' positions, after the last step")),
        kv_cache_capacity_bytes(Gauge(r, "flexvqa_kv_cache_capacity_bytes",
                                      "The KV-cache pool, allocated once at load")),
        kv_cache_usage(Gauge(r, "flexvqa_kv_cache_usage_ratio",
                             "Fraction (0-1) of the KV-cache pool holding resident sequences' "
                             "positions, after the last step")),
        hr_cache_bytes(
            Gauge(r, "flexvqa_hr_cache_memory_bytes",
                  "High-resolution features and keys/values held by requests (flex, xattn), "
                  "after the last step")),
        encoder_cache_bytes(Gauge(r, "flexvqa_encoder_cache_memory_bytes",
                                  "Vision-tower outputs held by the encoder cache, after the last "
                                  "step (--encoder_cache_bytes bounds it)")),
        encoder_cache_lookups(prometheus::BuildCounter()
                                  .Name("flexvqa_encoder_cache_lookups_total")
                                  .Help("Images of requests that ended, by whether their "
                                        "vision-tower output came from the encoder cache")
                                  .Register(r)),
        encoder_cache_hits(encoder_cache_lookups.Add({{"result", "hit"}})),
        encoder_cache_misses(encoder_cache_lookups.Add({{"result", "miss"}})),
        // The standard process_* names (Prometheus' client libraries export them; prometheus-cpp
        // does not), so that the usual dashboards and restart alerts apply.
        resident_bytes(Gauge(r, "process_resident_memory_bytes", "Resident memory size in bytes")),
        heap_in_use_bytes(Gauge(r, "flexvqa_heap_in_use_bytes",
                                "Bytes of live heap allocations (malloc's own count); resident "
                                "memory above it is what the allocator keeps")),
        draining(Gauge(r, "flexvqa_draining", "1 while the server drains (SIGTERM received)")),
        start_time(Gauge(r, "process_start_time_seconds",
                         "Start time of the process since unix epoch in seconds")),
        model_info(prometheus::BuildGauge()
                       .Name("flexvqa_model_info")
                       .Help("The model served (value 1): name, attention mode, dtype, device")
                       .Register(r)) {
    prometheus::BuildGauge()
        .Name("flexvqa_build_info")
        .Help("The server build (value 1)")
        .Register(r)
        .Add({{"version", FLEXVQA_VERSION},
              {"revision", FLEXVQA_GIT_REVISION},
              {"compiler", __VERSION__}})
        .Set(1);
  }

  static prometheus::Gauge& Gauge(prometheus::Registry& r, const char* name, const char* help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  }

  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& prompt_tokens;
  prometheus::Family<prometheus::Counter>& image_tokens;
  prometheus::Family<prometheus::Counter>& selected_hr_tokens;
  prometheus::Family<prometheus::Counter>& generated_tokens;
  prometheus::Family<prometheus::Counter>& flops;
  Histogram& queue;
  Histogram& preprocess;
  Histogram& vision;
  Histogram& prefill;
  Histogram& first_token;
  Histogram& inter_token;
  Histogram& decode;
  prometheus::Family<Histogram>& duration;
  prometheus::Family<Histogram>& prompt_length;
  prometheus::Family<Histogram>& generation_length;
  Histogram& step_tokens;
  prometheus::Family<Histogram>& batch_family;
  Histogram& prefill_batch;
  Histogram& decode_batch;
  Histogram& selected_per_request;
  Histogram& selected_ratio;
  prometheus::Gauge& running;
  prometheus::Gauge& waiting;
  prometheus::Gauge& max_queued;
  prometheus::Gauge& max_running;
  prometheus::Gauge& free_slots;
  prometheus::Gauge& slots;
  prometheus::Gauge& kv_cache_bytes;
  prometheus::Gauge& kv_cache_capacity_bytes;
  prometheus::Gauge& kv_cache_usage;
  prometheus::Gauge& hr_cache_bytes;
  prometheus::Gauge& encoder_cache_bytes;
  prometheus::Family<prometheus::Counter>& encoder_cache_lookups;
  prometheus::Counter& encoder_cache_hits;
  prometheus::Counter& encoder_cache_misses;
  prometheus::Gauge& resident_bytes;
  prometheus::Gauge& heap_in_use_bytes;
  prometheus::Gauge& draining;
  prometheus::Gauge& start_time;
  prometheus::Family<prometheus::Gauge>& model_info;

  Histogram* duration_by_finish[kNumFinishLabels] = {};  // Made with the family.
  // Made by SetModel; null before.
  Histogram* prompt_length_mode = nullptr;
  Histogram* generation_length_mode = nullptr;
  prometheus::Counter* prompt_tokens_mode = nullptr;
  prometheus::Counter* image_tokens_mode = nullptr;
  prometheus::Counter* selected_hr_tokens_mode = nullptr;
  prometheus::Counter* generated_tokens_mode = nullptr;
  prometheus::Counter* flops_mode[FlopCount::kNumPhases][FlopCount::kNumComponents] = {};
};

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      f_(std::make_unique<Families>(*registry_)) {
  // Every finish reason exists from the start, as the request counters do.
  for (int i = 0; i < kNumFinishLabels; ++i) {
    f_->duration_by_finish[i] =
        &f_->duration.Add({{"finish_reason", kFinishLabelNames[i]}}, kDurationBuckets);
  }
  f_->start_time.Set(
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
}

ServerMetrics::~ServerMetrics() = default;

Status ServerMetrics::StartEndpoint(const MetricsConfig& config) {
  auto log = Logger("metrics");
  if (config.listen_address.empty()) {
    log->info("no metrics endpoint (--metrics_listen_address is empty)");
    return Status::Ok();
  }
  StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start(config.listen_address, [this] { return Serialize(); });
  if (!endpoint.ok()) {
    log->error("{}; serving without a metrics endpoint", endpoint.status().ToString());
    return endpoint.status();
  }
  endpoint_ = std::move(endpoint).value();
  port_ = endpoint_->port();
  const std::string host = config.listen_address.substr(0, config.listen_address.rfind(':'));
  log->info("metrics on http://{}:{}/metrics", host, port_);
  return Status::Ok();
}

void ServerMetrics::SetModel(const ModelInfo& info, int max_queued, int max_running) {
  mode_ = info.mode.empty() ? "unknown" : info.mode;
  f_->model_info
      .Add({{"model", info.name}, {"mode", mode_}, {"dtype", info.dtype}, {"device", info.device}})
      .Set(1);
  f_->max_queued.Set(max_queued);
  f_->max_running.Set(max_running);
  f_->free_slots.Set(info.max_sequences);
  f_->slots.Set(info.max_sequences);
  const prometheus::Labels mode{{"mode", mode_}};
  f_->prompt_length_mode = &f_->prompt_length.Add(mode, kPromptTokenBuckets);
  f_->generation_length_mode = &f_->generation_length.Add(mode, kGenerationTokenBuckets);
  f_->prompt_tokens_mode = &f_->prompt_tokens.Add(mode);
  f_->image_tokens_mode = &f_->image_tokens.Add(mode);
  f_->selected_hr_tokens_mode = &f_->selected_hr_tokens.Add(mode);
  f_->generated_tokens_mode = &f_->generated_tokens.Add(mode);
  for (int p = 0; p < FlopCount::kNumPhases; ++p) {
    for (int c = 0; c < FlopCount::kNumComponents; ++c) {
      f_->flops_mode[p][c] = &f_->flops.Add(
          {{"mode", mode_}, {"phase", PhaseName(p)}, {"component", ComponentName(c)}});
    }
  }
  // Every (method, code) series exists from the start at 0, so that rate() sees a first error (a
  // series born at 1 has no increase to see) and the ratios dashboards and alerts divide by exist.
  const std::pair<Protocol, const char*> methods[] = {{Protocol::kGrpc, "Generate"},
                                                      {Protocol::kGrpc, "Answer"},
                                                      {Protocol::kOpenAi, "chat_completions"}};
  for (const auto& [protocol, method] : methods) {
    for (int code = 0; code <= static_cast<int>(StatusCode::kUnauthenticated); ++code) {
      f_->requests.Add({{"method", method},
                        {"protocol", ProtocolName(protocol)},
                        {"mode", mode_},
                        {"code", StatusCodeName(static_cast<StatusCode>(code))}});
    }
  }
}

void ServerMetrics::SetStatsSource(std::function<SchedulerStats()> source) {
  std::lock_guard<std::mutex> lock(source_mu_);
  stats_source_ = std::move(source);
}

void ServerMetrics::ObserveRequest(const std::string& method, StatusCode code,
                                   const StreamItem* final_item, Protocol protocol) {
  f_->requests
      .Add({{"method", method},
            {"protocol", ProtocolName(protocol)},
            {"mode", mode_},
            {"code", StatusCodeName(code)}})
      .Increment();
  if (final_item == nullptr) return;
  const RequestTimings& t = final_item->timings;
  const RequestUsage& u = final_item->usage;
  if (u.encoder_cache == EncoderCacheUse::kHit) f_->encoder_cache_hits.Increment();
  if (u.encoder_cache == EncoderCacheUse::kMiss) f_->encoder_cache_misses.Increment();
  f_->duration_by_finish[FinishLabelFor(code, final_item->reason)]->Observe(t.total_ms / 1e3);
  if (final_item->reached_model && f_->prompt_length_mode != nullptr) {
    f_->prompt_length_mode->Observe(u.prompt_tokens);
    f_->generation_length_mode->Observe(u.generated_tokens);
  }
  if (code != StatusCode::kOk) return;  // Failures stay out of the phase latencies.
  f_->queue.Observe(t.queue_ms / 1e3);
  f_->preprocess.Observe(t.preprocess_ms / 1e3);
  if (!final_item->reached_model) return;
  if (u.image_tokens > 0 && t.vision_ms > 0) f_->vision.Observe(t.vision_ms / 1e3);
  if (u.generated_tokens > 0) {
    f_->prefill.Observe(t.prefill_ms / 1e3);
    f_->first_token.Observe(t.first_token_ms / 1e3);
    f_->decode.Observe(t.decode_ms / 1e3);
  }
}

void ServerMetrics::ObserveStep(const StepUsage& step) {
  if (step.prefill_sequences > 0) f_->prefill_batch.Observe(step.prefill_sequences);
  if (step.decode_sequences > 0) f_->decode_batch.Observe(step.decode_sequences);
  const int64_t tokens = step.prompt_tokens + step.generated_tokens;
  if (tokens > 0) f_->step_tokens.Observe(static_cast<double>(tokens));
  if (f_->prompt_tokens_mode == nullptr) return;  // No model yet: nothing can have run.
  f_->prompt_tokens_mode->Increment(static_cast<double>(step.prompt_tokens));
  f_->image_tokens_mode->Increment(static_cast<double>(step.image_tokens));
  f_->selected_hr_tokens_mode->Increment(static_cast<double>(step.selected_hr_tokens));
  f_->generated_tokens_mode->Increment(static_cast<double>(step.generated_tokens));
  for (int p = 0; p < FlopCount::kNumPhases; ++p) {
    for (int c = 0; c < FlopCount::kNumComponents; ++c) {
      const double flops = step.flops.flops[p][c];
      if (flops > 0) f_->flops_mode[p][c]->Increment(flops);
    }
  }
}

void ServerMetrics::ObserveInterToken(double seconds) { f_->inter_token.Observe(seconds); }

void ServerMetrics::ObserveSelection(const SelectionTrace& trace) {
  const double available =
      static_cast<double>(trace.hr_side) * trace.hr_side * trace.num_fa_layers * trace.num_steps;
  if (available <= 0) return;
  double selected = 0;
  for (int32_t tokens : trace.selected_tokens) selected += tokens;
  f_->selected_per_request.Observe(selected);
  f_->selected_ratio.Observe(selected / available);
}

void ServerMetrics::SetMemory(const EngineMemory& memory) {
  const double pool = static_cast<double>(memory.kv_cache_pool_bytes);
  const double used = static_cast<double>(memory.kv_cache_used_bytes);
  f_->kv_cache_bytes.Set(used);
  f_->kv_cache_capacity_bytes.Set(pool);
  f_->kv_cache_usage.Set(pool > 0 ? used / pool : 0);
  f_->hr_cache_bytes.Set(static_cast<double>(memory.hr_cache_bytes));
  f_->encoder_cache_bytes.Set(static_cast<double>(memory.encoder_cache_bytes));
}

void ServerMetrics::Refresh() const {
  f_->resident_bytes.Set(ResidentBytes());
  f_->heap_in_use_bytes.Set(HeapInUseBytes());
  std::lock_guard<std::mutex> lock(source_mu_);
  if (!stats_source_) return;
  const SchedulerStats stats = stats_source_();
  f_->running.Set(stats.running);
  f_->waiting.Set(stats.queued + stats.preparing);
  f_->free_slots.Set(stats.free_slots);
  f_->draining.Set(stats.draining ? 1 : 0);
}

std::string ServerMetrics::Serialize() const {
  Refresh();
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace flexvqa
