// A TCP connection before (or instead of) the WebSocket upgrade: reads HTTP
// requests with Beast's parser, answers the plain endpoints (keep-alive), and
// hands the socket to a Connection after a successful upgrade.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <memory>

#include "limits/accept_gate.hpp"

namespace synapse::channels {
struct Services;
}

namespace synapse::net {

struct IoThread;
struct HttpContext;

// Starts serving `socket`, accepted from `peer`, on `thread` (call on that
// thread). `permit` is the socket's place in the accept gate's counts; it
// travels with the socket into the WebSocket connection.
void serve_http(IoThread& thread, boost::asio::ip::tcp::socket socket, const boost::asio::ip::tcp::endpoint& peer,
                HttpContext& ctx, std::uint64_t conn_id, limits::SocketPermit permit);

}  // namespace synapse::net
