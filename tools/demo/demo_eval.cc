// flexvqa_demo_eval: answers a question file through the engine (model/engine.h) and scores it:
// accuracy per question kind, FLOPs and selected high-resolution tokens per question. The file is
// what tools/demo/make_split.py writes, one question per line:
// IMAGE<TAB>KIND<TAB>QUESTION<TAB>ANSWER (IMAGE relative to the file's directory). Greedy decoding;
// an answer is right when the generated text, trimmed, equals ANSWER. With --expect FILE (lines
// KIND<TAB>MIN_ACCURACY, '#' comments; tools/demo/evaluate.py --expect-out writes it) it exits 1
// when a kind scores below its minimum or is missing: the CI accuracy test.
//   flexvqa_demo_eval --model DIR --questions FILE [--threshold T] [--batch N] [--max-new-tokens N]
//                     [--answers OUT.tsv] [--expect FILE] [--chat-template NAME]
// --chat-template: the prompt template (default: the checkpoint layout's, vicuna_v1 here); runs
// before 2026-12-02 trained with llava_v1's system prompt (docs/demo_model.md).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "model/engine.h"

namespace {

struct Question {
  std::string image, kind, text, answer;
};

struct Tally {
  int right = 0, total = 0;
  double flops = 0, selected = 0;
};

int Fail(const flexvqa::Status& status) {
  std::fprintf(stderr, "flexvqa_demo_eval: %s\n", status.ToString().c_str());
  return 1;
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\n") - b + 1);
}

flexvqa::StatusOr<std::vector<Question>> ReadQuestions(const std::string& path) {
  std::ifstream in(path);
  if (!in) return flexvqa::NotFoundError("cannot read " + path);
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::vector<Question> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string field; std::getline(ss, field, '\t');) f.push_back(field);
    if (f.size() != 4) return flexvqa::InvalidArgumentError(path + ": not 4 fields: " + line);
    out.push_back({(dir / f[0]).string(), f[1], f[2], f[3]});
  }
  return out;
}

// KIND -> minimum accuracy.
flexvqa::StatusOr<std::map<std::string, double>> ReadExpected(const std::string& path) {
  std::ifstream in(path);
  if (!in) return flexvqa::NotFoundError("cannot read " + path);
  std::map<std::string, double> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t tab = line.find('\t');
    char* end = nullptr;
    const double min = tab == std::string::npos ? -1 : std::strtod(line.c_str() + tab + 1, &end);
    if (tab == std::string::npos || end == line.c_str() + tab + 1 || min < 0 || min > 1) {
      return flexvqa::InvalidArgumentError(path + ": not KIND<TAB>ACCURACY in [0, 1]: " + line);
    }
    out[line.substr(0, tab)] = min;
  }
  if (out.empty()) return flexvqa::InvalidArgumentError(path + " expects nothing");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  flexvqa::EngineOptions options;
  std::string questions_path, answers_path, expect_path;
  int batch = 8, max_new_tokens = 4, threshold = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i], v = argv[i + 1];
    if (arg == "--model") {
      options.model_dir = v;
    } else if (arg == "--questions") {
      questions_path = v;
    } else if (arg == "--chat-template") {
      options.chat_template = v;
    } else if (arg == "--expect") {
      expect_path = v;
    } else if (arg == "--answers") {
      answers_path = v;
    } else if (arg == "--threshold") {
      threshold = std::atoi(v.c_str());
    } else if (arg == "--batch") {
      batch = std::atoi(v.c_str());
    } else if (arg == "--max-new-tokens") {
      max_new_tokens = std::atoi(v.c_str());
    } else {
      std::fprintf(stderr, "unknown flag %s\n", arg.c_str());
      return 2;
    }
  }
  if (options.model_dir.empty() || questions_path.empty() || batch < 1 || argc % 2 != 1) {
    std::fprintf(stderr, "usage: flexvqa_demo_eval --model DIR --questions FILE [...]\n");
    return 2;
  }
  options.max_sequences = batch;
  auto questions = ReadQuestions(questions_path);
  if (!questions.ok()) return Fail(questions.status());
  std::map<std::string, double> expected;
  if (!expect_path.empty()) {
    auto read = ReadExpected(expect_path);
    if (!read.ok()) return Fail(read.status());
    expected = std::move(read).value();
  }
  auto engine = flexvqa::CreateLlavaEngine(options);
  if (!engine.ok()) return Fail(engine.status());
  std::ofstream answers;
  if (!answers_path.empty()) answers.open(answers_path);
  std::map<std::string, Tally> tally;
  for (size_t first = 0; first < questions->size(); first += batch) {
    std::vector<flexvqa::SequenceId> ids;
    std::map<flexvqa::SequenceId, std::string> text;
    std::map<flexvqa::SequenceId, size_t> index;
    for (size_t q = first; q < std::min(questions->size(), first + batch); ++q) {
      const Question& question = (*questions)[q];
      flexvqa::GenerationRequest request;
      request.turns.push_back({flexvqa::ChatTurn::Role::kUser, question.text});
      std::ifstream in(question.image, std::ios::binary);
      if (!in) return Fail(flexvqa::NotFoundError("cannot read image " + question.image));
      request.image = flexvqa::ImageInput{std::string(std::istreambuf_iterator<char>(in), {}), ""};
      request.sampling.max_new_tokens = max_new_tokens;
      if (threshold >= 0) request.selection_threshold = threshold;
      auto prepared = (*engine)->Prepare(request);
      if (!prepared.ok()) return Fail(prepared.status());
      auto id = (*engine)->Admit(*prepared);
      if (!id.ok()) return Fail(id.status());
      ids.push_back(*id);
      index[*id] = q;
    }
    std::vector<flexvqa::TokenEvent> events;
    (*engine)->Prefill(ids, &events);
    std::vector<flexvqa::SequenceId> running;
    while (!events.empty()) {
      running.clear();
      for (const auto& event : events) {
        if (!event.status.ok()) return Fail(event.status);
        text[event.sequence] += event.text;
        if (!event.finished) running.push_back(event.sequence);
      }
      events.clear();
      if (!running.empty()) (*engine)->Decode(running, &events);
    }
    for (flexvqa::SequenceId id : ids) {
      const Question& question = (*questions)[index[id]];
      const flexvqa::SequenceReport report = (*engine)->Report(id);
      const std::string got = Trim(text[id]);
      Tally& t = tally[question.kind];
      t.total += 1;
      t.right += got == question.answer ? 1 : 0;
      t.flops += report.flops.Total();
      t.selected += static_cast<double>(report.selected_hr_tokens);
      if (answers.is_open()) {
        answers << question.image << '\t' << question.kind << '\t' << question.text << '\t'
                << question.answer << '\t' << got << '\t' << report.flops.Total() << '\t'
                << report.selected_hr_tokens << '\t' << report.prompt_tokens << '\n';
      }
      (*engine)->Release(id);
    }
  }
  std::printf("kind\tquestions\taccuracy\tGFLOPs_per_question\tselected_hr_tokens_per_question\n");
  for (const auto& [kind, t] : tally) {
    std::printf("%s\t%d\t%.4f\t%.4f\t%.1f\n", kind.c_str(), t.total,
                static_cast<double>(t.right) / t.total, t.flops / t.total / 1e9,
                t.selected / t.total);
  }
  int below = 0;
  for (const auto& [kind, min] : expected) {
    auto it = tally.find(kind);
    const double accuracy =
        it == tally.end() ? -1 : static_cast<double>(it->second.right) / it->second.total;
    if (accuracy < min) {
      std::fprintf(stderr, "flexvqa_demo_eval: %s: accuracy %.4f, below the expected %.4f\n",
                   kind.c_str(), accuracy, min);
      ++below;
    }
  }
  return below > 0 ? 1 : 0;
}
