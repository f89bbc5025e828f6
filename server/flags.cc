#include "server/flags.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <sstream>

namespace flexvqa {

namespace {

bool ParseInt64(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

void FlagSet::AddFlag(Flag flag) {
  flag.default_value = flag.get();
  flags_.push_back(std::move(flag));
}

void FlagSet::Add(const std::string& name, const std::string& help, std::string* value) {
  AddFlag({name, help, false, [value](const std::string& v) { return *value = v, true; },
           [value] { return *value; }, ""});
}

void FlagSet::Add(const std::string& name, const std::string& help, int* value) {
  AddFlag({name, help, false,
           [value](const std::string& v) {
             int64_t parsed;
             if (!ParseInt64(v, &parsed) || parsed < INT32_MIN || parsed > INT32_MAX) return false;
             *value = static_cast<int>(parsed);
             return true;
           },
           [value] { return std::to_string(*value); }, ""});
}

void FlagSet::Add(const std::string& name, const std::string& help, int64_t* value) {
  AddFlag({name, help, false, [value](const std::string& v) { return ParseInt64(v, value); },
           [value] { return std::to_string(*value); }, ""});
}

void FlagSet::Add(const std::string& name, const std::string& help, double* value) {
  AddFlag({name, help, false,
           [value](const std::string& v) {
             if (v.empty()) return false;
             char* end = nullptr;
             const double parsed = std::strtod(v.c_str(), &end);
             if (*end != '\0') return false;
             *value = parsed;
             return true;
           },
           [value] {
             std::ostringstream s;
             s << *value;
             return s.str();
           },
           ""});
}

void FlagSet::Add(const std::string& name, const std::string& help, bool* value) {
  AddFlag({name, help, true,
           [value](const std::string& v) {
             if (v == "true" || v == "1" || v.empty()) return *value = true, true;
             if (v == "false" || v == "0") return *value = false, true;
             return false;
           },
           [value] { return std::string(*value ? "true" : "false"); }, ""});
}

void FlagSet::Add(const std::string& name, const std::string& help,
                  std::chrono::milliseconds* value) {
  AddFlag({name, help, false,
           [value](const std::string& v) {
             int64_t ms;
             if (!ParseInt64(v, &ms) || ms < 0) return false;
             *value = std::chrono::milliseconds(ms);
             return true;
           },
           [value] { return std::to_string(value->count()); }, ""});
}

std::string FlagSet::EnvName(const std::string& name) const {
  std::string env = env_prefix_ + name;
  std::transform(env.begin(), env.end(), env.begin(),
                 [](unsigned char c) { return c == '-' ? '_' : std::toupper(c); });
  return env;
}

Status FlagSet::Set(const Flag& flag, const std::string& value, const std::string& source) {
  if (flag.set(value)) return Status::Ok();
  return InvalidArgumentError(source + ": '" + value + "' is not a valid value (" + flag.help +
                              ")");
}

Status FlagSet::Parse(int argc, const char* const* argv, const EnvLookup& env,
                      std::vector<std::string>* positional) {
  for (const Flag& flag : flags_) {
    const std::string env_name = EnvName(flag.name);
    if (const char* value = env ? env(env_name) : nullptr) {
      FLEXVQA_RETURN_IF_ERROR(Set(flag, value, env_name));
    }
  }
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      if (positional == nullptr) return InvalidArgumentError("unexpected argument '" + arg + "'");
      positional->push_back(arg);
      continue;
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    auto it = std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) {
      return f.name == name || (f.is_bool && "no" + f.name == name);
    });
    if (it == flags_.end()) return InvalidArgumentError("unknown flag --" + name + " (see --help)");
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (it->is_bool) {
      value = it->name == name ? "true" : "false";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return InvalidArgumentError("flag --" + name + " needs a value");
    }
    FLEXVQA_RETURN_IF_ERROR(Set(*it, value, "--" + name));
  }
  return Status::Ok();
}

std::string FlagSet::Help() const {
  std::ostringstream out;
  for (const Flag& flag : flags_) {
    out << "  --" << flag.name << "=" << flag.default_value << "\n      " << flag.help << " [env "
        << EnvName(flag.name) << "]\n";
  }
  return out.str();
}

std::string FlagSet::Describe() const {
  std::ostringstream out;
  for (const Flag& flag : flags_) out << flag.name << "=" << flag.get() << "\n";
  return out.str();
}

}  // namespace flexvqa
