#include "wire/deflate.hpp"

#include <zlib.h>

#include <algorithm>
#include <limits>
#include <cctype>
#include <new>
#include <optional>
#include <stdexcept>
#include <vector>

namespace synapse::wire {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// Splits at `sep` outside quoted strings.
std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  bool quoted = false;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  out.push_back(s.substr(start));
  return out;
}

// A window-bits value: 1*DIGIT in 8..15 without a leading zero (section
// 7.1.2), quoted or not.
std::optional<int> window_bits(std::string_view v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  if (v.empty() || v.size() > 2 || v.front() == '0') return std::nullopt;
  int n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  if (n < 8 || n > 15) return std::nullopt;
  return n;
}

// One offer's parameters; nullopt when the offer must be declined.
std::optional<std::string> accept_offer(const std::vector<std::string_view>& parts) {
  bool server_nct = false, client_nct = false, server_bits = false, client_bits = false;
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string_view p = trim(parts[i]);
    const auto eq = p.find('=');
    const std::string_view name = trim(p.substr(0, eq));
    const std::optional<std::string_view> value =
        eq == std::string_view::npos ? std::nullopt : std::optional<std::string_view>(trim(p.substr(eq + 1)));
    if (name == "server_no_context_takeover" || name == "client_no_context_takeover") {
      bool& seen = name == "server_no_context_takeover" ? server_nct : client_nct;
      if (seen || value) return std::nullopt;
      seen = true;
    } else if (name == "server_max_window_bits") {
      if (server_bits || !value) return std::nullopt;
      const auto bits = window_bits(*value);
      // A smaller window would need frames of their own for this client.
      if (!bits || *bits != 15) return std::nullopt;
      server_bits = true;
    } else if (name == "client_max_window_bits") {
      if (client_bits || (value && !window_bits(*value))) return std::nullopt;
      client_bits = true;
    } else {
      return std::nullopt;
    }
  }
  std::string r = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
  // Section 7.1.2.1: an accepted server_max_window_bits is answered.
  if (server_bits) r += "; server_max_window_bits=15";
  return r;
}

// This thread's compressor and decompressor: raw deflate, 15-bit window,
// reset for every message (no context takeover either way).
struct Streams {
  z_stream def{};
  z_stream inf{};
  int def_level = 0;  // 0: not initialised
  bool inf_ready = false;
  ~Streams() {
    if (def_level) deflateEnd(&def);
    if (inf_ready) inflateEnd(&inf);
  }
  z_stream& deflater(int level) {
    level = std::clamp(level, 1, 9);
    if (def_level && def_level != level) {
      deflateEnd(&def);
      def_level = 0;
    }
    if (!def_level) {
      def = z_stream{};
      if (deflateInit2(&def, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::bad_alloc();
      def_level = level;
    } else {
      deflateReset(&def);
    }
    return def;
  }
  z_stream& inflater() {
    if (!inf_ready) {
      inf = z_stream{};
      if (inflateInit2(&inf, -15) != Z_OK) throw std::bad_alloc();
      inf_ready = true;
    } else {
      inflateReset(&inf);
    }
    return inf;
  }
};

Streams& streams() {
  thread_local Streams s;
  return s;
}

constexpr unsigned char flush_tail[4] = {0x00, 0x00, 0xFF, 0xFF};

}  // namespace

std::string negotiate_permessage_deflate(std::string_view offers) {
  for (std::string_view offer : split(offers, ',')) {
    const auto parts = split(offer, ';');
    if (!iequals(trim(parts[0]), "permessage-deflate")) continue;
    if (auto r = accept_offer(parts)) return *r;
  }
  return {};
}

void deflate_message(std::string_view payload, int level, std::string& out) {
  z_stream& z = streams().deflater(level);
  out.resize(deflateBound(&z, static_cast<uLong>(payload.size())) + 16);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(payload.data()));
  z.avail_in = static_cast<uInt>(payload.size());
  std::size_t produced = 0;
  for (;;) {
    z.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
    z.avail_out = static_cast<uInt>(out.size() - produced);
    const int rc = deflate(&z, Z_SYNC_FLUSH);
    produced = out.size() - z.avail_out;
    if (rc != Z_OK && rc != Z_BUF_ERROR) throw std::runtime_error("deflate failed");
    // Done once all input is taken and the flush fitted (output space left).
    if (z.avail_in == 0 && z.avail_out != 0) break;
    out.resize(out.size() * 2);
  }
  out.resize(produced);
  // A sync flush ends with an empty stored block, 00 00 FF FF: removed
  // (section 7.2.1), the receiver appends it back.
  if (out.size() >= 4 && std::equal(flush_tail, flush_tail + 4, reinterpret_cast<const unsigned char*>(out.data()) +
                                                                     out.size() - 4)) {
    out.resize(out.size() - 4);
  }
}

InflateResult inflate_message(std::string_view compressed, std::size_t limit, std::string& out) {
  z_stream& z = streams().inflater();
  // The output grows with what inflates, never past limit + 1 bytes: the
  // byte past the limit is what proves the message too big.
  const std::size_t cap = limit ? limit + 1 : std::numeric_limits<std::size_t>::max() / 2;
  std::size_t produced = 0;
  out.resize(std::min<std::size_t>(cap, std::max<std::size_t>(1024, compressed.size() * 4)));
  bool ended = false;  // the sender closed the deflate stream (BFINAL)
  auto feed = [&](std::string_view in) {
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z.avail_in = static_cast<uInt>(in.size());
    do {
      if (produced == out.size()) {
        if (out.size() >= cap) return InflateResult::too_big;
        out.resize(std::min(cap, out.size() * 2));
      }
      z.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
      z.avail_out = static_cast<uInt>(out.size() - produced);
      const int rc = inflate(&z, Z_NO_FLUSH);
      produced = out.size() - z.avail_out;
      if (limit && produced > limit) return InflateResult::too_big;
      if (rc == Z_STREAM_END) {
        ended = true;
        break;
      }
      if (rc != Z_OK && rc != Z_BUF_ERROR) return InflateResult::corrupt;
      // Z_BUF_ERROR with room left: everything given was used.
    } while (z.avail_in > 0 || z.avail_out == 0);
    return InflateResult::ok;
  };
  InflateResult r = feed(compressed);
  if (r == InflateResult::ok && ended && z.avail_in != 0) r = InflateResult::corrupt;  // bytes after the end
  if (r == InflateResult::ok && !ended) r = feed(std::string_view(reinterpret_cast<const char*>(flush_tail), 4));
  out.resize(r == InflateResult::ok ? produced : 0);
  return r;
}

}  // namespace synapse::wire
