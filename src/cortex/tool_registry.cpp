#include "cortex/tool_registry.hpp"

#include <spdlog/spdlog.h>

namespace synapse::cortex {

bool ToolRegistry::claim(const std::string& provider, const std::string& ns) {
  std::lock_guard lock(mu_);
  auto [it, inserted] = namespaces_.emplace(ns, provider);
  if (!inserted && it->second != provider) {
    spdlog::error("tool namespace {} is already held by provider {}; refused for {}", ns, it->second, provider);
    return false;
  }
  return true;
}

bool ToolRegistry::add_locked(const std::string& provider, std::shared_ptr<const Tool> tool) {
  const std::string& name = tool->spec().name;
  const auto dot = name.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == name.size()) {
    spdlog::error("tool {} of provider {} refused: names are <namespace>.<tool>", name, provider);
    return false;
  }
  auto ns = namespaces_.find(std::string_view(name).substr(0, dot));
  if (ns == namespaces_.end() || ns->second != provider) {
    spdlog::error("tool {} of provider {} refused: namespace not held by that provider", name, provider);
    return false;
  }
  if (tools_.contains(name)) {
    spdlog::error("tool {} of provider {} refused: duplicate name", name, provider);
    return false;
  }
  tools_.emplace(name, Entry{provider, std::move(tool)});
  return true;
}

bool ToolRegistry::add(const std::string& provider, std::shared_ptr<const Tool> tool) {
  std::lock_guard lock(mu_);
  if (!add_locked(provider, std::move(tool))) return false;
  ++version_;
  return true;
}

std::size_t ToolRegistry::replace(const std::string& provider, std::vector<std::shared_ptr<const Tool>> tools) {
  std::lock_guard lock(mu_);
  std::erase_if(tools_, [&](const auto& kv) { return kv.second.provider == provider; });
  std::size_t n = 0;
  for (auto& t : tools) n += add_locked(provider, std::move(t)) ? 1 : 0;
  ++version_;
  return n;
}

void ToolRegistry::remove_provider(const std::string& provider) {
  std::lock_guard lock(mu_);
  std::erase_if(tools_, [&](const auto& kv) { return kv.second.provider == provider; });
  std::erase_if(namespaces_, [&](const auto& kv) { return kv.second == provider; });
  ++version_;
}

std::shared_ptr<const Tool> ToolRegistry::find(std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = tools_.find(name);
  return it == tools_.end() ? nullptr : it->second.tool;
}

boost::json::array ToolRegistry::describe() const {
  std::vector<Entry> entries;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, e] : tools_) entries.push_back(e);
  }
  // Built outside the lock: available() reads the provider's own state.
  boost::json::array out;
  for (const auto& e : entries) {
    const ToolSpec& s = e.tool->spec();
    out.push_back(boost::json::object{{"name", s.name},
                                      {"description", s.description},
                                      {"input_schema", s.input_schema},
                                      {"provider", e.provider},
                                      {"available", e.tool->available()}});
  }
  return out;
}

std::uint64_t ToolRegistry::version() const {
  std::lock_guard lock(mu_);
  return version_;
}

}  // namespace synapse::cortex
