#include "server/openai_endpoint.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "server/auth.h"
#include "server/call.h"
#include "server/http_connection.h"
#include "server/openai_api.h"

namespace flexvqa {

namespace {

// One request's items, from the scheduler's threads to the HTTP thread that serves it. The HTTP
// thread waits on an eventfd (an item arrived) and on the connection (the client left) together,
// so a closed connection is noticed while the request runs, not at the next write.
class ItemChannel {
 public:
  explicit ItemChannel(int socket)
      : socket_(socket), event_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~ItemChannel() {
    if (event_ >= 0) close(event_);
  }
  ItemChannel(const ItemChannel&) = delete;
  ItemChannel& operator=(const ItemChannel&) = delete;

  // Scheduler threads.
  void Push(StreamItem item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      items_.push_back(std::move(item));
    }
    const uint64_t one = 1;
    (void)!write(event_, &one, sizeof(one));
  }

  // The HTTP thread, from here on.
  void Attach(std::shared_ptr<RequestHandle> handle) { handle_ = std::move(handle); }
  // Ends the request at the scheduler's next step (its final item follows).
  void Cancel() {
    if (handle_) handle_->Cancel();
    watching_ = false;
  }
  // The items queued, once there is one. When the client closes the connection meanwhile, the
  // request is cancelled and the wait goes on for its final item.
  std::deque<StreamItem> Next() {
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!items_.empty()) return std::exchange(items_, {});
      }
      pollfd fds[2] = {{event_, POLLIN, 0}, {socket_, POLLRDHUP, 0}};
      // The eventfd wakes us for every item; the timeout only guards against a lost wake-up.
      const int n = poll(fds, watching_ && socket_ >= 0 ? 2 : 1, 1000);
      if (n < 0 && errno != EINTR) Cancel();  // Cannot watch: the event alone still wakes us.
      if (n <= 0) continue;
      if (fds[0].revents & POLLIN) {
        uint64_t count = 0;
        (void)!read(event_, &count, sizeof(count));
      }
      if (watching_ && (fds[1].revents & POLLNVAL)) watching_ = false;  // Not a socket (any more).
      if (watching_ && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR))) Cancel();
    }
  }
  // Everything up to the final item; deltas' text appended to *text.
  StreamItem Collect(std::string* text) {
    while (true) {
      for (StreamItem& item : Next()) {
        if (item.final) return std::move(item);
        if (text != nullptr) *text += item.text;
      }
    }
  }

 private:
  const int socket_;
  const int event_;
  std::mutex mu_;
  std::deque<StreamItem> items_;  // Guarded by mu_.
  std::shared_ptr<RequestHandle> handle_;
  bool watching_ = true;
};

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Reply(const OpenAiError& error, httplib::Response& response) {
  response.status = error.http_status;
  if (error.retry_after_s > 0) {
    response.set_header("Retry-After", std::to_string(error.retry_after_s));
  }
  response.set_content(ErrorBody(error).dump(), "application/json");
}

// An SSE response in progress: the content provider writes the items as they come.
struct Stream {
  Call call;
  ChatRequest chat;
  std::string id;
  int64_t created = 0;
  std::shared_ptr<ItemChannel> channel;
  std::deque<StreamItem> pending;  // Taken before the headers went out.
  bool role_sent = false;
  bool ended = false;  // EndCall ran.

  // The events for `items`; ends the call at its final item.
  std::string Events(std::deque<StreamItem> items) {
    std::string out;
    for (StreamItem& item : items) {
      if (!item.final) {
        if (item.text.empty() && role_sent) continue;
        out += SseEvent(
            ChunkBody(id, created, chat.model, !role_sent, item.text, nullptr, chat.include_usage));
        role_sent = true;
        continue;
      }
      EndCall(call, item.status, &item);
      ended = true;
      if (!item.status.ok()) {  // The SDKs raise an error event as an APIError.
        out += SseEvent(ErrorBody(ErrorFor(item.status, &chat)));
        return out;
      }
      if (!role_sent) {
        out += SseEvent(ChunkBody(id, created, chat.model, true, "", nullptr, chat.include_usage));
      }
      out += SseEvent(ChunkBody(id, created, chat.model, false, "", &item, chat.include_usage));
      if (chat.include_usage) out += SseEvent(UsageChunkBody(id, created, chat.model, item));
      out += kSseDone;
    }
    return out;
  }
  // The client is gone before the end: cancel, and end the call once its final item came.
  void Abandon() {
    if (ended) return;
    channel->Cancel();
    StreamItem final_item = channel->Collect(nullptr);
    EndCall(call, final_item.status, &final_item);
    ended = true;
  }
};

}  // namespace

struct OpenAiEndpoint::Handlers {
  OpenAiBackend backend;
  std::atomic<int64_t> next_id{1};
  int64_t started = UnixSeconds();

  // Who is calling: the token's name, else the peer's address (as gRPC names it, so that one
  // client's share counts its calls on both protocols).
  StatusOr<std::string> Identify(const httplib::Request& request) const {
    if (backend.gate.tokens != nullptr) {
      if (request.get_header_value_count("Authorization") != 1) {
        return AuthenticateHeader(nullptr, *backend.gate.tokens);
      }
      const std::string value = request.get_header_value("Authorization");
      return AuthenticateHeader(&value, *backend.gate.tokens);
    }
    const bool v6 = request.remote_addr.find(':') != std::string::npos;
    return (v6 ? "ipv6:[" + request.remote_addr + "]" : "ipv4:" + request.remote_addr);
  }

  // The earliest of the timeout headers' deadlines; max without one. X-Request-Timeout is ours and
  // checked; X-Stainless-Timeout is what OpenAI's SDKs send (whole seconds, truncated: "0" for a
  // sub-second timeout, which the SDK enforces itself), so a value it cannot hold is skipped.
  StatusOr<Clock::time_point> Deadline(const httplib::Request& request, Clock::time_point arrival) {
    Clock::time_point deadline = Clock::time_point::max();
    if (request.has_header("X-Request-Timeout")) {
      StatusOr<std::chrono::milliseconds> timeout =
          ParseTimeoutSeconds(request.get_header_value("X-Request-Timeout"));
      if (!timeout.ok()) return timeout.status().WithContext("X-Request-Timeout");
      deadline = arrival + *timeout;
    }
    if (request.has_header("X-Stainless-Timeout")) {
      StatusOr<std::chrono::milliseconds> timeout =
          ParseTimeoutSeconds(request.get_header_value("X-Stainless-Timeout"));
      if (timeout.ok()) deadline = std::min(deadline, arrival + *timeout);
    }
    return deadline;
  }

  void Models(const httplib::Request& request, httplib::Response& response) const {
    if (StatusOr<std::string> client = Identify(request); !client.ok()) {
      return Reply(ErrorFor(client.status(), nullptr), response);
    }
    response.set_content(ModelsBody(backend.info->name, started).dump(), "application/json");
  }

  void Health(httplib::Response& response) const {
    const bool serving = backend.serving();
    response.status = serving ? 200 : 503;
    response.set_content(serving ? "{\"status\":\"SERVING\"}" : "{\"status\":\"NOT_SERVING\"}",
                         "application/json");
  }

  void ChatCompletions(const httplib::Request& request, httplib::Response& response) {
    Call call;
    call.protocol = Protocol::kOpenAi;
    call.method = "chat_completions";
    call.id = "o" + std::to_string(next_id.fetch_add(1));
    call.arrival = Clock::now();
    call.peer = request.remote_addr + ":" + std::to_string(request.remote_port);
    call.metrics = backend.metrics;
    call.max_prompt_bytes = backend.info->limits.max_prompt_bytes;
    auto chat = std::make_unique<ChatRequest>();
    // In the gRPC service's order: who is calling, their share of the server, the request.
    Status accepted = Status::Ok();
    std::optional<OpenAiError> parse_error;
    if (StatusOr<std::string> client = Identify(request); !client.ok()) {
      accepted = client.status();
    } else {
      call.client = *client;
      if (backend.gate.limiter != nullptr) {
        StatusOr<std::unique_ptr<ClientLimiter::Slot>> slot =
            backend.gate.limiter->Acquire(*client);
        accepted = slot.status();
        if (slot.ok()) call.slot = std::move(slot).value();
      }
    }
    if (accepted.ok()) {
      parse_error = ParseChatRequest(request.body, backend.info->name, chat.get());
      if (parse_error) accepted = InvalidArgumentError(parse_error->message);
    }
    if (accepted.ok()) {
      StatusOr<Clock::time_point> deadline = Deadline(request, call.arrival);
      accepted = deadline.status();
      if (deadline.ok()) call.deadline = *deadline;
    }
    auto channel = std::make_shared<ItemChannel>(FindConnectionSocket(request));
    if (accepted.ok()) {
      StatusOr<std::shared_ptr<RequestHandle>> handle =
          SubmitCall(chat->request, call, backend.scheduler,
                     [channel](StreamItem item) { channel->Push(std::move(item)); });
      accepted = handle.status();
      if (handle.ok()) channel->Attach(std::move(handle).value());
    }
    if (!accepted.ok()) {
      EndCall(call, accepted, nullptr);
      return Reply(parse_error ? *parse_error : ErrorFor(accepted, chat.get()), response);
    }
    const std::string id = "chatcmpl-" + call.id;
    const int64_t created = UnixSeconds();
    if (!chat->stream) {
      std::string text;
      StreamItem final_item = channel->Collect(&text);
      EndCall(call, final_item.status, &final_item);
      if (!final_item.status.ok()) return Reply(ErrorFor(final_item.status, chat.get()), response);
      response.set_content(CompletionBody(id, created, chat->model, text, final_item).dump(),
                           "application/json");
      return;
    }
    // The headers wait for the first item: a request the engine refuses (Prepare) still gets its
    // HTTP status rather than a 200 stream holding an error.
    std::deque<StreamItem> first = channel->Next();
    if (first.size() == 1 && first.front().final && !first.front().status.ok()) {
      EndCall(call, first.front().status, &first.front());
      return Reply(ErrorFor(first.front().status, chat.get()), response);
    }
    auto stream = std::make_shared<Stream>();
    stream->call = std::move(call);
    stream->chat = std::move(*chat);
    stream->id = id;
    stream->created = created;
    stream->channel = channel;
    stream->pending = std::move(first);
    response.set_header("Cache-Control", "no-cache");
    response.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t, httplib::DataSink& sink) {
          std::deque<StreamItem> items = !stream->pending.empty()
                                             ? std::exchange(stream->pending, {})
                                             : stream->channel->Next();
          const std::string events = stream->Events(std::move(items));
          if (!events.empty() && !sink.write(events.data(), events.size())) return false;
          if (stream->ended) sink.done();
          return true;
        },
        [stream](bool) { stream->Abandon(); });
  }
};

StatusOr<std::unique_ptr<OpenAiEndpoint>> OpenAiEndpoint::Start(const OpenAiOptions& options,
                                                                OpenAiBackend backend) {
  std::unique_ptr<OpenAiEndpoint> endpoint(new OpenAiEndpoint());
  endpoint->handlers_ = std::make_unique<Handlers>();
  endpoint->handlers_->backend = std::move(backend);
  Handlers* h = endpoint->handlers_.get();
  HttpServerOptions http;
  http.listen_address = options.listen_address;
  http.threads = options.threads;
  http.max_body_bytes = static_cast<size_t>(options.max_body_bytes);
  // A stream's writes wait for a slow reader this long before the request is cancelled.
  http.write_timeout = std::chrono::seconds(30);
  StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(http, [h](httplib::Server& s) {
    s.Post("/v1/chat/completions",
           [h](const httplib::Request& request, httplib::Response& response) {
             h->ChatCompletions(request, response);
           });
    s.Get("/v1/models", [h](const httplib::Request& request, httplib::Response& response) {
      h->Models(request, response);
    });
    s.Get("/health",
          [h](const httplib::Request&, httplib::Response& response) { h->Health(response); });
    // httplib's own refusals (413 for a body over the limit, 404, 400) in OpenAI's shape too.
    s.set_error_handler([](const httplib::Request&, httplib::Response& response) {
      if (!response.body.empty()) return;
      OpenAiError error;
      error.http_status = response.status;
      error.message = response.status == 413   ? "the request body is larger than the limit"
                      : response.status == 404 ? "no such endpoint"
                                               : "the request was refused (HTTP " +
                                                     std::to_string(response.status) + ")";
      if (response.status >= 500) error.type = "server_error";
      Reply(error, response);
    });
  });
  if (!server.ok()) return server.status().WithContext("OpenAI endpoint");
  endpoint->http_ = std::move(server).value();
  return endpoint;
}

OpenAiEndpoint::~OpenAiEndpoint() { http_.reset(); }

}  // namespace flexvqa
