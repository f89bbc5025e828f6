#include "server/config.h"

namespace flexvqa {

EngineOptions ServerEngineOptions() {
  EngineOptions options;
  options.encoder_cache_bytes = int64_t{512} << 20;
  return options;
}

void AddServerFlags(ServerConfig* c, FlagSet* f) {
  f->Add("listen_address", "host:port to serve on; port 0 picks a free one",
         &c->server.listen_address);
  f->Add("max_message_bytes", "largest gRPC message (request with its image), bytes",
         &c->server.max_message_bytes);
  f->Add("drain_ms", "on SIGTERM/SIGINT/SIGHUP: time accepted requests get to finish, ms",
         &c->server.drain_time);

  f->Add("tls_cert", "PEM certificate chain of the server; with tls_key: TLS (empty: plaintext)",
         &c->server.tls.cert_file);
  f->Add("tls_key", "PEM private key of tls_cert", &c->server.tls.key_file);
  f->Add("tls_client_ca",
         "PEM CA bundle that signs client certificates: mutual TLS, every client must present one",
         &c->server.tls.client_ca_file);
  f->Add("tls_reload_s", "how often the TLS files are re-read (a renewed Secret), seconds",
         &c->server.tls.reload_interval_s);
  f->Add("auth_token_file",
         "bearer tokens, one per line with an optional name; empty: no authentication",
         &c->server.auth_token_file);
  f->Add("max_calls_per_client",
         "Generate/Answer calls one client (token, certificate CN or address) may have in flight",
         &c->server.max_calls_per_client);
  f->Add("max_connections",
         "open gRPC connections at once; more are closed as they arrive (lowered to what the "
         "file-descriptor limit allows)",
         &c->server.connections.max_connections);
  f->Add("max_concurrent_streams", "concurrent calls on one HTTP/2 connection",
         &c->server.connections.max_concurrent_streams);
  f->Add("max_connection_idle_ms", "a connection without a call this long is closed, ms",
         &c->server.connections.max_idle);
  f->Add("max_connection_age_ms", "connections are closed after this long (rebalancing), ms",
         &c->server.connections.max_age);
  f->Add("max_connection_age_grace_ms", "calls in flight on an aged connection get this long, ms",
         &c->server.connections.max_age_grace);
  f->Add("handshake_timeout_ms", "a connection must finish its HTTP/2 and TLS handshake within, ms",
         &c->server.connections.handshake_timeout);
  f->Add("health_listen_address",
         "host:port of a plaintext HTTP /healthz and /readyz (Kubernetes probes under TLS); empty: "
         "none",
         &c->server.health_listen_address);
  f->Add("openai_listen_address",
         "host:port of the OpenAI-compatible HTTP endpoint (/v1/chat/completions, /v1/models, "
         "/health; plaintext); port 0 picks a free one; empty: none",
         &c->server.openai.listen_address);
  f->Add("openai_threads",
         "requests and keep-alive connections the OpenAI endpoint serves at once (above "
         "max_queued + max_running)",
         &c->server.openai.threads);
  f->Add("openai_max_body_bytes",
         "largest OpenAI request body (base64 images are 4/3 of their bytes), bytes",
         &c->server.openai.max_body_bytes);
  f->Add("liveness_interval_ms",
         "how often the self-probe and the stuck-step watchdog run, ms; 0: neither",
         &c->server.liveness.check_interval);
  f->Add("self_probe", "probe our own listener (a new connection and a health check)",
         &c->server.liveness.self_probe);
  f->Add("self_probe_timeout_ms", "deadline of one self-probe, ms",
         &c->server.liveness.probe_timeout);
  f->Add("self_probe_failures", "failed self-probes in a row before health turns NOT_SERVING",
         &c->server.liveness.probe_failures);
  f->Add("max_step_ms",
         "a worker step running longer turns health NOT_SERVING (stuck worker), ms; 0: never",
         &c->server.liveness.max_step_time);

  f->Add("max_running", "sequences decoded together (also bounded by --max_sequences)",
         &c->scheduler.max_running);
  f->Add("max_prefill_tokens_per_step", "prompt tokens prefilled in one step, summed over requests",
         &c->scheduler.max_prefill_tokens_per_step);
  f->Add("max_queued", "requests waiting beyond the batch before RESOURCE_EXHAUSTED",
         &c->scheduler.max_queued);
  f->Add("max_queue_wait_ms", "longest wait for a batch slot before RESOURCE_EXHAUSTED, ms",
         &c->scheduler.max_queue_wait);
  f->Add("preprocess_threads", "CPU threads for image decoding, preprocessing and tokenisation",
         &c->scheduler.preprocess_threads);
  f->Add("release_heap_when_idle",
         "when the worker goes idle, return freed heap pages to the kernel (malloc_trim)",
         &c->scheduler.release_heap_when_idle);
  f->Add("malloc_arena_max", "glibc malloc arenas the threads share; 0: glibc's default",
         &c->server.malloc_arena_max);

  f->Add("model_dir",
         "checkpoint directory (config.json, *.safetensors, tokenizer.model); flexvqa_server's "
         "default "
         "is the embedded tiny model, written there on first start",
         &c->engine.model_dir);
  f->Add("vision_dir", "original-LLaVA layout only: the CLIP directory; empty: from config",
         &c->engine.vision_dir);
  f->Add("device", "cpu | cuda | cuda:N", &c->engine.device);
  f->Add("dtype", "auto | float32 | bfloat16 | float16", &c->engine.dtype);
  f->Add("chat_template",
         "prompt template: llava_v1 | vicuna_v1 | llava_hf (docs/chat_templates.md); empty: the "
         "checkpoint's (llava_hf for llava-hf layouts, vicuna_v1 for original LLaVA)",
         &c->engine.chat_template);
  f->Add("max_sequences", "KV-cache slots: sequences resident at once", &c->engine.max_sequences);
  f->Add("max_context", "tokens per KV slot; 0: the model's context length",
         &c->engine.max_context);
  f->Add("encoder_cache_bytes",
         "device memory for vision-tower outputs of images seen before (LRU, keyed by SHA-256 of "
         "the image bytes and the preprocessing), bytes; 0: no encoder cache",
         &c->engine.encoder_cache_bytes);
  f->Add("max_image_bytes", "largest encoded image, bytes", &c->engine.limits.max_image_bytes);
  f->Add("max_image_pixels", "largest decoded image, width*height",
         &c->engine.limits.max_image_pixels);
  f->Add("max_prompt_tokens", "largest prompt (text + image tokens); 0: context - 1",
         &c->engine.limits.max_prompt_tokens);
  f->Add("max_prompt_bytes", "largest question (or all turns together), UTF-8 bytes",
         &c->engine.limits.max_prompt_bytes);
  f->Add("max_new_tokens", "upper bound of a request's max_new_tokens",
         &c->engine.limits.max_new_tokens);

  f->Add("metrics_listen_address",
         "host:port of the Prometheus /metrics endpoint; port 0 picks a free one; empty: none",
         &c->metrics.listen_address);

  f->Add("log_level", "trace | debug | info | warn | error | critical | off", &c->logging.level);
  f->Add("log_json", "log one JSON object per line", &c->logging.json);
}

Status ValidateServerConfig(const ServerConfig& c) {
  auto positive = [](const char* name, long long v) {
    return v > 0 ? Status::Ok() : InvalidArgumentError(std::string(name) + " must be > 0");
  };
  auto non_negative = [](const char* name, long long v) {
    return v >= 0 ? Status::Ok() : InvalidArgumentError(std::string(name) + " must be >= 0");
  };
  if (c.server.listen_address.empty()) return InvalidArgumentError("listen_address is empty");
  FLEXVQA_RETURN_IF_ERROR(positive("max_message_bytes", c.server.max_message_bytes));
  FLEXVQA_RETURN_IF_ERROR(non_negative("drain_ms", c.server.drain_time.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("tls_reload_s", c.server.tls.reload_interval_s));
  FLEXVQA_RETURN_IF_ERROR(positive("max_calls_per_client", c.server.max_calls_per_client));
  FLEXVQA_RETURN_IF_ERROR(positive("openai_threads", c.server.openai.threads));
  FLEXVQA_RETURN_IF_ERROR(positive("openai_max_body_bytes", c.server.openai.max_body_bytes));
  const ConnectionOptions& n = c.server.connections;
  FLEXVQA_RETURN_IF_ERROR(positive("max_connections", n.max_connections));
  FLEXVQA_RETURN_IF_ERROR(positive("max_concurrent_streams", n.max_concurrent_streams));
  FLEXVQA_RETURN_IF_ERROR(positive("max_connection_idle_ms", n.max_idle.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("max_connection_age_ms", n.max_age.count()));
  FLEXVQA_RETURN_IF_ERROR(non_negative("max_connection_age_grace_ms", n.max_age_grace.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("handshake_timeout_ms", n.handshake_timeout.count()));
  const LivenessOptions& l = c.server.liveness;
  FLEXVQA_RETURN_IF_ERROR(non_negative("liveness_interval_ms", l.check_interval.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("self_probe_timeout_ms", l.probe_timeout.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("self_probe_failures", l.probe_failures));
  FLEXVQA_RETURN_IF_ERROR(non_negative("max_step_ms", l.max_step_time.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("max_running", c.scheduler.max_running));
  FLEXVQA_RETURN_IF_ERROR(
      positive("max_prefill_tokens_per_step", c.scheduler.max_prefill_tokens_per_step));
  FLEXVQA_RETURN_IF_ERROR(positive("max_queued", c.scheduler.max_queued));
  FLEXVQA_RETURN_IF_ERROR(positive("max_queue_wait_ms", c.scheduler.max_queue_wait.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("preprocess_threads", c.scheduler.preprocess_threads));
  FLEXVQA_RETURN_IF_ERROR(non_negative("malloc_arena_max", c.server.malloc_arena_max));
  FLEXVQA_RETURN_IF_ERROR(positive("max_sequences", c.engine.max_sequences));
  FLEXVQA_RETURN_IF_ERROR(non_negative("max_context", c.engine.max_context));
  FLEXVQA_RETURN_IF_ERROR(non_negative("encoder_cache_bytes", c.engine.encoder_cache_bytes));
  FLEXVQA_RETURN_IF_ERROR(positive("max_image_bytes", c.engine.limits.max_image_bytes));
  FLEXVQA_RETURN_IF_ERROR(positive("max_image_pixels", c.engine.limits.max_image_pixels));
  FLEXVQA_RETURN_IF_ERROR(non_negative("max_prompt_tokens", c.engine.limits.max_prompt_tokens));
  FLEXVQA_RETURN_IF_ERROR(positive("max_new_tokens", c.engine.limits.max_new_tokens));
  FLEXVQA_RETURN_IF_ERROR(positive("max_prompt_bytes", c.engine.limits.max_prompt_bytes));
  if (c.engine.limits.max_image_bytes > c.server.max_message_bytes) {
    return InvalidArgumentError(
        "max_image_bytes exceeds max_message_bytes: such an image could "
        "never arrive; raise max_message_bytes");
  }
  return Status::Ok();
}

}  // namespace flexvqa
