// The dashboard's files (src/dashboard/), compiled into the binary by
// cmake/embed_assets.cmake so the page works offline and cannot drift from
// the server that serves it.
#pragma once

#include <string_view>

namespace synapse::net {

struct DashboardAsset {
  std::string_view path;  // "/dashboard/app.js"
  std::string_view content_type;
  std::string_view bytes;
};

// "/dashboard" and "/dashboard/" are the page; null for anything unknown.
const DashboardAsset* find_dashboard_asset(std::string_view path);

}  // namespace synapse::net
