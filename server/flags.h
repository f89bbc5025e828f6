// Command-line flags declared once each, with help text and an environment override: --name=value
// on the command line wins over <PREFIX><NAME> in the environment, which wins over the field's
// default (the value the bound field holds when the flag is added). Not thread-safe; used from
// main.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/status.h"

namespace flexvqa {

class FlagSet {
 public:
  // Returns the environment variable's value or nullptr (std::getenv in main, a map in tests).
  using EnvLookup = std::function<const char*(const std::string& name)>;

  explicit FlagSet(std::string env_prefix) : env_prefix_(std::move(env_prefix)) {}

  void Add(const std::string& name, const std::string& help, std::string* value);
  void Add(const std::string& name, const std::string& help, int* value);
  void Add(const std::string& name, const std::string& help, int64_t* value);
  void Add(const std::string& name, const std::string& help, double* value);
  void Add(const std::string& name, const std::string& help, bool* value);  // --name means true.
  void Add(const std::string& name, const std::string& help, std::chrono::milliseconds* value);

  // Fills the bound fields. Arguments that do not start with "--" are returned in *positional (an
  // error when positional is null). INVALID_ARGUMENT names the flag or variable and the bad value.
  Status Parse(int argc, const char* const* argv, const EnvLookup& env,
               std::vector<std::string>* positional = nullptr);

  // "--name=<default>  help [env PREFIX_NAME]" per flag.
  std::string Help() const;
  // "name=value" per flag, one line each: the configuration in effect.
  std::string Describe() const;
  std::string EnvName(const std::string& name) const;

 private:
  struct Flag {
    std::string name;
    std::string help;
    bool is_bool = false;
    std::function<bool(const std::string&)> set;  // False: not a valid value.
    std::function<std::string()> get;
    std::string default_value;
  };
  void AddFlag(Flag flag);
  Status Set(const Flag& flag, const std::string& value, const std::string& source);

  std::string env_prefix_;
  std::vector<Flag> flags_;
};

}  // namespace flexvqa
