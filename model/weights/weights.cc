// Maps (section, module-relative name) to the names each public layout stores, tries them in order
// and checks the stored shape before copying, so a mismatched checkpoint fails at load with a
// precise message.
#include "model/weights/weights.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "model/weights/safetensors.h"

namespace flexvqa {
namespace {

const char* SectionName(WeightSection section) {
  switch (section) {
    case WeightSection::kText:
      return "text";
    case WeightSection::kLmHead:
      return "lm_head";
    case WeightSection::kVision:
      return "vision";
    case WeightSection::kProjector:
      return "projector";
  }
  return "unknown";
}

// LLaVA's mm_projector is nn.Sequential(Linear, GELU, Linear): indices 0 and 2.
std::string OriginalProjectorName(const std::string& name) {
  for (const auto& [from, to] : {std::pair<std::string, std::string>{"linear_1.", "0."},
                                 std::pair<std::string, std::string>{"linear_2.", "2."}}) {
    if (name.compare(0, from.size(), from) == 0) return to + name.substr(from.size());
  }
  return name;
}

std::vector<std::string> Candidates(CheckpointLayout layout, WeightSection section,
                                    const std::string& name) {
  std::vector<std::string> prefixes;
  if (layout == CheckpointLayout::kHfLlava) {
    switch (section) {
      case WeightSection::kText:
        prefixes = {"language_model.model.", "model.language_model."};
        break;
      case WeightSection::kLmHead:
        prefixes = {"language_model.lm_head.", "lm_head."};
        break;
      case WeightSection::kVision:
        prefixes = {"vision_tower.vision_model.", "vision_tower.",
                    "model.vision_tower.vision_model.", "model.vision_tower."};
        break;
      case WeightSection::kProjector:
        prefixes = {"multi_modal_projector.", "model.multi_modal_projector."};
        break;
    }
    std::vector<std::string> names;
    for (const std::string& p : prefixes) names.push_back(p + name);
    return names;
  }
  switch (section) {
    case WeightSection::kText:
      return {"model." + name};
    case WeightSection::kLmHead:
      return {"lm_head." + name};
    case WeightSection::kVision:
      return {"vision_model." + name};
    case WeightSection::kProjector:
      return {"model.mm_projector." + OriginalProjectorName(name)};
  }
  return {};
}

std::string JoinQuoted(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", '" : "'") + names[i] + "'";
  return s;
}

}  // namespace

struct WeightLoader::Impl {
  CheckpointLayout layout = CheckpointLayout::kHfLlava;
  std::unique_ptr<SafetensorsCheckpoint> model;
  // The CLIP directory's checkpoint in the original layout; null when the vision tower is in
  // `model`.
  std::unique_ptr<SafetensorsCheckpoint> vision;

  const SafetensorsCheckpoint& CheckpointFor(WeightSection section) const {
    return section == WeightSection::kVision && vision ? *vision : *model;
  }

  // The first stored candidate, or "" when none is stored.
  std::string Resolve(WeightSection section, const std::string& name) const {
    const SafetensorsCheckpoint& ckpt = CheckpointFor(section);
    for (const std::string& stored : Candidates(layout, section, name)) {
      if (ckpt.Has(stored)) return stored;
    }
    return "";
  }
};

WeightLoader::WeightLoader() : impl_(std::make_unique<Impl>()) {}
WeightLoader::~WeightLoader() = default;

StatusOr<std::unique_ptr<WeightLoader>> WeightLoader::Open(const LlavaConfig& config) {
  std::unique_ptr<WeightLoader> loader(new WeightLoader());
  loader->impl_->layout = config.layout;
  auto model = SafetensorsCheckpoint::Open(config.model_dir);
  if (!model.ok()) return model.status().WithContext("loading model weights");
  loader->impl_->model = std::move(model).value();
  if (config.layout == CheckpointLayout::kOriginalLlava) {
    if (config.vision_dir.empty()) {
      return FailedPreconditionError("original-llava layout needs the CLIP directory (vision_dir)");
    }
    auto vision = SafetensorsCheckpoint::Open(config.vision_dir);
    if (!vision.ok()) return vision.status().WithContext("loading vision tower weights");
    loader->impl_->vision = std::move(vision).value();
  }
  return loader;
}

bool WeightLoader::Has(WeightSection section, const std::string& name) const {
  return !impl_->Resolve(section, name).empty();
}

StatusOr<at::Tensor> WeightLoader::Get(WeightSection section, const std::string& name,
                                       const std::vector<int64_t>& shape, at::ScalarType dtype,
                                       at::Device device) const {
  const std::string what = std::string(SectionName(section)) + " weight '" + name + "'";
  const SafetensorsCheckpoint& ckpt = impl_->CheckpointFor(section);
  const std::string stored = impl_->Resolve(section, name);
  if (stored.empty()) {
    return NotFoundError(what + " not found in " + ckpt.dir() + "; tried " +
                         JoinQuoted(Candidates(impl_->layout, section, name)));
  }
  const SafetensorsFile* file = ckpt.FileFor(stored);
  const SafetensorsTensorInfo* info = file->Find(stored);
  if (info->shape != shape) {
    return InvalidArgumentError(what + ": tensor '" + stored + "' in " + file->path() +
                                " has shape " + ShapeString(info->shape) + ", expected " +
                                ShapeString(shape));
  }
  try {
    auto tensor = file->Load(stored, dtype, device);
    if (!tensor.ok()) return tensor.status().WithContext(what);
    return tensor;
  } catch (const c10::Error& e) {
    return InternalError(what + ": " + e.what_without_backtrace());
  }
}

std::vector<std::string> WeightLoader::StoredNames() const {
  std::vector<std::string> names = impl_->model->Names();
  if (impl_->vision) {
    for (std::string& n : impl_->vision->Names()) names.push_back(std::move(n));
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

}  // namespace flexvqa
