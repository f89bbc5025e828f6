#include "bench/step_counter.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <cstdio>
#include <sstream>
#include <thread>
#include <unordered_set>

namespace flexvqa {
namespace {

const std::unordered_set<std::string> kNoLaunch = {"aten::view",
                                                   "aten::reshape",
                                                   "aten::_reshape_alias",
                                                   "aten::as_strided",
                                                   "aten::slice",
                                                   "aten::select",
                                                   "aten::narrow",
                                                   "aten::transpose",
                                                   "aten::t",
                                                   "aten::permute",
                                                   "aten::expand",
                                                   "aten::unsqueeze",
                                                   "aten::squeeze",
                                                   "aten::alias",
                                                   "aten::detach",
                                                   "aten::_unsafe_view",
                                                   "aten::unfold",
                                                   "aten::diagonal",
                                                   "aten::split",
                                                   "aten::unbind",
                                                   "aten::view_as",
                                                   "aten::expand_as",
                                                   "aten::lift_fresh",
                                                   "aten::empty",
                                                   "aten::empty_strided",
                                                   "aten::empty_like",
                                                   "aten::resize_",
                                                   "aten::to",
                                                   "aten::_to_copy",
                                                   "aten::contiguous",
                                                   "aten::type_as",
                                                   "aten::item",
                                                   "aten::_local_scalar_dense",
                                                   "aten::resolve_conj",
                                                   "aten::resolve_neg",
                                                   "aten::result_type"};

bool IsTo(const std::string& name) { return name == "aten::to" || name == "aten::_to_copy"; }

// One window's counts and the storages a kernel wrote in it (weak: keeps the address from being
// reused).
struct Counts : StepCounts {
  std::unordered_set<const c10::StorageImpl*> written;
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> written_refs;
};

struct Frame {
  std::string name;
  bool launches_below = false;  // A descendant was counted.
  bool has_child = false;
  std::string signature;
};

thread_local std::vector<Frame> t_stack;
std::thread::id g_counted_thread;
Counts* g_counts = nullptr;  // Null: not counting.

std::string Signature(const at::RecordFunction& fn) {
  std::ostringstream out;
  out << fn.name();
  for (const c10::IValue& v : fn.inputs()) {
    if (v.isTensor()) {
      out << " " << (v.toTensor().defined() ? v.toTensor().sizes() : c10::IntArrayRef{});
    } else if (v.isTensorList()) {
      out << " [";
      for (const at::Tensor& t : v.toTensorList().vec()) out << t.sizes();
      out << "]";
    } else if (v.isInt() || v.isIntList() || v.isBool()) {
      out << " " << v;
    }
  }
  return out.str();
}

// A copy to the host of a tensor that a kernel of this window computed (not an upload of host
// data, which on CPU has the same target device).
bool IsDeviceToHost(const at::RecordFunction& fn) {
  bool to_cpu = false;
  for (const c10::IValue& v : fn.inputs())
    to_cpu = to_cpu || (v.isDevice() && v.toDevice().is_cpu());
  if (!to_cpu || fn.inputs().empty() || !fn.inputs()[0].isTensor()) return false;
  const at::Tensor& source = fn.inputs()[0].toTensor();
  return source.defined() && source.has_storage() &&
         g_counts->written.count(source.storage().unsafeGetStorageImpl()) > 0;
}

void NoteWritten(const at::RecordFunction& fn) {
  for (const c10::IValue& v : fn.outputs()) {
    if (!v.isTensor() || !v.toTensor().defined() || !v.toTensor().has_storage()) continue;
    c10::StorageImpl* impl = v.toTensor().storage().unsafeGetStorageImpl();
    if (g_counts->written.insert(impl).second) {
      g_counts->written_refs.emplace_back(
          c10::weak_intrusive_ptr<c10::StorageImpl>(v.toTensor().storage().getWeakStorageImpl()));
    }
  }
}

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  if (g_counts == nullptr) return nullptr;
  if (std::this_thread::get_id() != g_counted_thread) {
    ++g_counts->other_threads;
    return nullptr;
  }
  const std::string name = fn.name();
  if (name == "aten::_local_scalar_dense" || name == "aten::nonzero" ||
      (IsTo(name) && t_stack.empty() && IsDeviceToHost(fn))) {
    ++g_counts->syncs;
  }
  if (!t_stack.empty()) t_stack.back().has_child = true;
  t_stack.push_back({name, false, false, kNoLaunch.count(name) ? "" : Signature(fn)});
  return nullptr;
}

void OnEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  if (g_counts == nullptr || std::this_thread::get_id() != g_counted_thread || t_stack.empty())
    return;
  Frame frame = std::move(t_stack.back());
  t_stack.pop_back();
  if (!frame.has_child) ++g_counts->raw_leaf_ops;
  if (kNoLaunch.count(frame.name)) {
    if (frame.launches_below && !t_stack.empty()) t_stack.back().launches_below = true;
    return;
  }
  NoteWritten(fn);
  if (!t_stack.empty()) t_stack.back().launches_below = true;
  if (frame.launches_below) return;
  ++g_counts->leaf_ops;
  ++g_counts->by_name[frame.name];
  g_counts->trace.push_back((t_stack.empty() ? std::string("-") : t_stack.front().name) + " > " +
                            frame.signature);
  g_counts->signature.push_back(std::move(frame.signature));
}

}  // namespace

void InstallStepCounter() {
  static const bool installed = [] {
    at::addGlobalCallback(at::RecordFunctionCallback(&OnStart, &OnEnd)
                              .needsInputs(true)
                              .needsOutputs(true)
                              .scopes({at::RecordScope::FUNCTION}));
    return true;
  }();
  (void)installed;
}

StepCounts CountStep(const std::function<void()>& call) {
  Counts counts;
  t_stack.clear();
  g_counted_thread = std::this_thread::get_id();
  g_counts = &counts;
  call();
  g_counts = nullptr;
  return static_cast<StepCounts&&>(counts);
}

bool MeasureSteps(Engine& engine, const std::shared_ptr<const PreparedRequest>& request, int batch,
                  int steps, MeasuredSteps* out) {
  std::vector<SequenceId> ids;
  for (int b = 0; b < batch; ++b) {
    auto id = engine.Admit(request);
    if (!id.ok()) {
      std::fprintf(stderr, "step_counter: %s\n", id.status().ToString().c_str());
      for (auto admitted : ids) engine.Release(admitted);
      return false;
    }
    ids.push_back(*id);
  }
  std::vector<TokenEvent> events;
  bool ok = true;
  auto check = [&] {
    for (const auto& e : events) {
      if (!e.status.ok()) {
        std::fprintf(stderr, "step_counter: %s\n", e.status.ToString().c_str());
        ok = false;
      }
    }
    events.clear();
  };
  out->prefill = CountStep([&] { engine.Prefill(ids, &events); });
  check();
  engine.Decode(ids, &events);
  check();
  for (int s = 0; s < steps && ok; ++s) {
    out->decode.push_back(CountStep([&] { engine.Decode(ids, &events); }));
    check();
  }
  for (auto id : ids) engine.Release(id);
  return ok;
}

bool DecodeIsStatic(const MeasuredSteps& m) {
  return !m.decode.empty() && m.decode.front().signature == m.decode.back().signature;
}

double MeanDecode(const MeasuredSteps& m, int64_t StepCounts::*field) {
  double sum = 0;
  for (const StepCounts& c : m.decode) sum += static_cast<double>(c.*field);
  return m.decode.empty() ? 0 : sum / static_cast<double>(m.decode.size());
}

}  // namespace flexvqa
