#include "bench/soak/soak_load.h"

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <sstream>
#include <utility>

#include "client/grpc_status_name.h"

namespace flexvqa::soak {

using Clock = std::chrono::steady_clock;

const char* CallKindName(CallKind kind) {
  switch (kind) {
    case CallKind::kNormal:
      return "normal";
    case CallKind::kAnswer:
      return "answer";
    case CallKind::kCancelTokens:
      return "cancel_after_tokens";
    case CallKind::kCancelTimed:
      return "cancel_after_ms";
    case CallKind::kDeadline:
      return "deadline";
    case CallKind::kBadInput:
      return "bad_input";
    case CallKind::kSlowReader:
      return "slow_reader";
    case CallKind::kNumKinds:
      break;
  }
  return "unknown";
}

Timer::Timer()
    : thread_([this] {
        std::unique_lock<std::mutex> lock(mu_);
        while (!stop_) {
          if (actions_.empty()) {
            cv_.wait(lock);
            continue;
          }
          const auto next = actions_.begin();
          if (cv_.wait_until(lock, next->first) == std::cv_status::timeout ||
              Clock::now() >= next->first) {
            auto due = actions_.begin();  // Still the earliest: At() only adds.
            std::function<void()> action = std::move(due->second);
            actions_.erase(due);
            lock.unlock();
            action();
            lock.lock();
          }
        }
      }) {}

Timer::~Timer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Timer::At(Clock::time_point when, std::function<void()> action) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    actions_.emplace(when, std::move(action));
  }
  cv_.notify_all();
}

namespace {

Clock::duration Ms(uint64_t ms) { return std::chrono::milliseconds(ms); }

bool Allowed(CallKind kind, grpc::StatusCode code) {
  // Load shedding (a full queue, a slot not free within --max_queue_wait_ms) is a proper terminal
  // status for any call; the summary shows how often it happened.
  if (code == grpc::StatusCode::RESOURCE_EXHAUSTED) return true;
  switch (kind) {
    case CallKind::kNormal:
    case CallKind::kAnswer:
    case CallKind::kSlowReader:
      return code == grpc::StatusCode::OK;
    case CallKind::kCancelTokens:
    case CallKind::kCancelTimed:
      return code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::OK;
    case CallKind::kDeadline:
      return code == grpc::StatusCode::DEADLINE_EXCEEDED || code == grpc::StatusCode::OK;
    case CallKind::kBadInput:
      return code == grpc::StatusCode::INVALID_ARGUMENT;
    case CallKind::kNumKinds:
      break;
  }
  return false;
}

// A malformed request, each refused before any model work.
void MakeBad(uint64_t which, const std::string& image, v1::GenerateRequest* r) {
  r->set_question("What is in the picture?");
  switch (which % 9) {
    case 0:
      r->clear_question();
      break;
    case 1:
      r->add_turns()->set_text("and turns too");
      break;
    case 2:
      r->add_images()->set_mime_type("image/gif");
      r->mutable_images(0)->set_data(image.empty() ? "GIF89a" : image);
      break;
    case 3:
      r->add_images()->set_data("\x89PNG\r\n\x1a\n not really a PNG");
      break;
    case 4:
      r->mutable_sampling()->set_max_new_tokens(0);
      break;
    case 5:
      r->mutable_sampling()->set_temperature(-1);
      break;
    case 6:
      r->mutable_sampling()->set_top_p(2);
      break;
    case 7:
      r->set_request_id(std::string(200, 'x'));
      break;
    case 8:
      r->clear_question();
      r->add_turns()->set_text("Hi");
      r->add_turns()->set_text("Hello");
      r->mutable_turns(1)->set_role(v1::ChatTurn::ROLE_ASSISTANT);
      break;
  }
}

// One streamed Generate call of any kind but kAnswer; deletes itself in OnDone.
class StreamCall : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  StreamCall(Load* load, CallKind kind, std::string id, v1::GenerateRequest request)
      : load_(load), kind_(kind), id_(std::move(id)), request_(std::move(request)) {}

  void Start(v1::VqaService::Stub* stub, Clock::duration deadline, Clock::duration cancel_after) {
    if (deadline > Clock::duration::zero()) {
      context_.set_deadline(std::chrono::system_clock::now() + deadline);
    }
    stub->async()->Generate(&context_, &request_, this);
    if (cancel_after >= Clock::duration::zero()) {
      AddHold();  // The timed cancel must find the call alive.
      load_->timer().At(Clock::now() + cancel_after, [this] {
        context_.TryCancel();
        RemoveHold();
      });
    }
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows.
    if (finals_ > 0) violations_.push_back("a message after the final message");
    if (response_.has_final()) {
      ++finals_;
      final_ = response_.final();
    } else if (response_.has_delta()) {
      ++deltas_;
      tokens_ += response_.delta().token_ids_size();
    }
    if (kind_ == CallKind::kCancelTokens && deltas_ == cancel_at_delta_) context_.TryCancel();
    if (kind_ == CallKind::kSlowReader) {
      AddHold();
      load_->timer().At(Clock::now() + Ms(20 + load_->Random(80)), [this] {
        StartRead(&response_);
        RemoveHold();
      });
      return;
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    if (status.ok()) {
      if (finals_ != 1) {
        violations_.push_back("OK with " + std::to_string(finals_) + " final messages");
      } else {
        if (final_.request_id() != id_) violations_.push_back("final echoes another request id");
        if (final_.usage().generated_tokens() != tokens_) {
          violations_.push_back("final counts " +
                                std::to_string(final_.usage().generated_tokens()) + " tokens, " +
                                std::to_string(tokens_) + " streamed");
        }
        if (final_.finish_reason() != v1::FINISH_REASON_STOP &&
            final_.finish_reason() != v1::FINISH_REASON_LENGTH) {
          violations_.push_back("OK with finish reason " +
                                v1::FinishReason_Name(final_.finish_reason()));
        }
      }
    } else if (finals_ > 1) {
      violations_.push_back(std::to_string(finals_) + " final messages");
    }
    if (!Allowed(kind_, status.error_code())) {
      violations_.push_back(std::string("status ") + client::GrpcCodeName(status.error_code()) +
                            " (" + status.error_message() + ")");
    }
    const bool early = (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                        status.error_code() == grpc::StatusCode::CANCELLED) &&
                       deltas_ == 0 && finals_ == 0;
    load_->Finished(id_, kind_, client::GrpcCodeName(status.error_code()), std::move(violations_),
                    early);
    delete this;
  }

  void set_cancel_at_delta(int n) { cancel_at_delta_ = n; }

 private:
  Load* const load_;
  const CallKind kind_;
  const std::string id_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  v1::GenerateFinal final_;
  int finals_ = 0, deltas_ = 0, tokens_ = 0, cancel_at_delta_ = 0;
  std::vector<std::string> violations_;  // Only the gRPC thread of this call touches it.
};

// One unary Answer call; deletes itself when done.
struct AnswerCall {
  grpc::ClientContext context;
  v1::GenerateRequest request;
  v1::AnswerResponse response;
};

}  // namespace

Load::Load(const std::string& address, LoadConfig config)
    : config_(std::move(config)), rng_(config_.seed) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  stub_ = v1::VqaService::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

Load::~Load() { StopAndWait(std::chrono::seconds(120)); }

void Load::Start() {
  for (int i = 0; i < config_.concurrency; ++i) StartNext();
}

uint64_t Load::Random(uint64_t bound) {
  std::lock_guard<std::mutex> lock(mu_);
  return rng_() % bound;
}

bool Load::StopAndWait(Clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  stopping_ = true;
  return cv_.wait_for(lock, timeout, [&] { return in_flight_ == 0; });
}

void Load::StartNext() {
  static const char* kQuestions[] = {"What is in the picture?", "Describe the image in detail.",
                                     "What colour is the largest object?", "Is it day or night?"};
  CallKind kind;
  std::string id;
  v1::GenerateRequest request;
  uint64_t r1, r2, r3;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    // Weights: normal 30, answer 10, cancel after tokens 15, timed cancel 10, deadline 15, bad
    // input 10, slow reader 10.
    constexpr int kWeights[] = {30, 10, 15, 10, 15, 10, 10};
    int pick = static_cast<int>(rng_() % 100), k = 0;
    while (pick >= kWeights[k]) pick -= kWeights[k++];
    kind = static_cast<CallKind>(k);
    id = "soak-" + std::to_string(started_);
    ++started_;
    ++in_flight_;
    r1 = rng_();
    r2 = rng_();
    r3 = rng_();
  }
  request.set_request_id(id);
  const std::string image =
      config_.images.empty() ? "" : config_.images[r1 % config_.images.size()];
  if (kind == CallKind::kBadInput) {
    MakeBad(r2, image, &request);
  } else {
    request.set_question(kQuestions[r2 % 4]);
    if (!image.empty() && r1 % 4 != 0) request.add_images()->set_data(image);
    const bool long_answer = kind == CallKind::kCancelTokens || kind == CallKind::kCancelTimed ||
                             kind == CallKind::kDeadline;
    v1::SamplingParams* s = request.mutable_sampling();
    s->set_max_new_tokens(long_answer ? kLongAnswerTokens : 1 + static_cast<int>(r3 % 12));
    s->set_ignore_eos(long_answer || kind == CallKind::kSlowReader);
    s->set_temperature(r3 % 2 == 0 ? 0.0f : 0.8f);
    s->set_seed(r3);
  }
  if (kind == CallKind::kAnswer) {
    auto* call = new AnswerCall;
    call->request = std::move(request);
    stub_->async()->Answer(
        &call->context, &call->request, &call->response, [this, call, id](grpc::Status status) {
          std::vector<std::string> violations;
          if (!Allowed(CallKind::kAnswer, status.error_code())) {
            violations.push_back(std::string("status ") +
                                 client::GrpcCodeName(status.error_code()) + " (" +
                                 status.error_message() + ")");
          } else if (status.ok() && call->response.final().request_id() != id) {
            violations.push_back("Answer echoes another request id");
          }
          delete call;
          Finished(id, CallKind::kAnswer, client::GrpcCodeName(status.error_code()),
                   std::move(violations));
        });
    return;
  }
  auto* call = new StreamCall(this, kind, id, std::move(request));
  Clock::duration deadline = Clock::duration::zero();
  Clock::duration cancel_after = Clock::duration(-1);
  if (kind == CallKind::kDeadline) deadline = Ms(1 + r3 % 200);
  if (kind == CallKind::kCancelTimed) cancel_after = Ms(r3 % 100);
  if (kind == CallKind::kCancelTokens) call->set_cancel_at_delta(1 + static_cast<int>(r3 % 3));
  call->Start(stub_.get(), deadline, cancel_after);
}

void Load::Finished(const std::string& id, CallKind kind, const std::string& code,
                    std::vector<std::string> violations, bool maybe_unseen) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    maybe_unseen_ += maybe_unseen;
    if (++ended_[id] != 1)
      violations_.push_back(id + " ended " + std::to_string(ended_[id]) + " times");
    ++outcomes_[{kind, code}];
    for (std::string& v : violations) {
      violations_.push_back(id + " (" + CallKindName(kind) + "): " + std::move(v));
    }
  }
  StartNext();  // Closed loop: the next starts before this one leaves.
  std::lock_guard<std::mutex> lock(mu_);
  --in_flight_;
  cv_.notify_all();
}

LoadReport Load::Report() const {
  std::lock_guard<std::mutex> lock(mu_);
  LoadReport report;
  report.started = started_;
  report.maybe_unseen = maybe_unseen_;
  report.violations = violations_;
  for (int i = 0; i < started_; ++i) {
    const std::string id = "soak-" + std::to_string(i);
    if (ended_.count(id) == 0) report.violations.push_back(id + " never ended (lost)");
  }
  std::ostringstream summary;
  for (int k = 0; k < static_cast<int>(CallKind::kNumKinds); ++k) {
    summary << "  " << CallKindName(static_cast<CallKind>(k)) << ":";
    for (const auto& [key, count] : outcomes_) {
      if (key.first == static_cast<CallKind>(k)) summary << " " << key.second << "=" << count;
    }
    summary << "\n";
  }
  report.summary = summary.str();
  return report;
}

}  // namespace flexvqa::soak
