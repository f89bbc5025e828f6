#include "server/config.h"

namespace flexvqa {

void AddServerFlags(ServerConfig* c, FlagSet* f) {
  f->Add("listen_address", "host:port to serve on; port 0 picks a free one",
         &c->server.listen_address);
  f->Add("max_message_bytes", "largest gRPC message (request with its image), bytes",
         &c->server.max_message_bytes);
  f->Add("drain_ms", "on SIGTERM/SIGINT: time accepted requests get to finish, ms",
         &c->server.drain_time);

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
  f->Add("max_image_bytes", "largest encoded image, bytes", &c->engine.limits.max_image_bytes);
  f->Add("max_image_pixels", "largest decoded image, width*height",
         &c->engine.limits.max_image_pixels);
  f->Add("max_prompt_tokens", "largest prompt (text + image tokens); 0: context - 1",
         &c->engine.limits.max_prompt_tokens);
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
  FLEXVQA_RETURN_IF_ERROR(positive("max_running", c.scheduler.max_running));
  FLEXVQA_RETURN_IF_ERROR(
      positive("max_prefill_tokens_per_step", c.scheduler.max_prefill_tokens_per_step));
  FLEXVQA_RETURN_IF_ERROR(positive("max_queued", c.scheduler.max_queued));
  FLEXVQA_RETURN_IF_ERROR(positive("max_queue_wait_ms", c.scheduler.max_queue_wait.count()));
  FLEXVQA_RETURN_IF_ERROR(positive("preprocess_threads", c.scheduler.preprocess_threads));
  FLEXVQA_RETURN_IF_ERROR(positive("max_sequences", c.engine.max_sequences));
  FLEXVQA_RETURN_IF_ERROR(non_negative("max_context", c.engine.max_context));
  FLEXVQA_RETURN_IF_ERROR(positive("max_image_bytes", c.engine.limits.max_image_bytes));
  FLEXVQA_RETURN_IF_ERROR(positive("max_image_pixels", c.engine.limits.max_image_pixels));
  FLEXVQA_RETURN_IF_ERROR(non_negative("max_prompt_tokens", c.engine.limits.max_prompt_tokens));
  FLEXVQA_RETURN_IF_ERROR(positive("max_new_tokens", c.engine.limits.max_new_tokens));
  if (c.engine.limits.max_image_bytes > c.server.max_message_bytes) {
    return InvalidArgumentError(
        "max_image_bytes exceeds max_message_bytes: such an image could "
        "never arrive; raise max_message_bytes");
  }
  return Status::Ok();
}

}  // namespace flexvqa
