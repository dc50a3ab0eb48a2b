// permessage-deflate (RFC 7692): the handshake's negotiation and the
// per-message codec, over zlib.
//
// The server always answers `server_no_context_takeover` (section 7.1.1.1):
// each outgoing message is compressed on its own, so one compressed frame
// is valid for every client that negotiated the extension and is computed
// once per message (Message::deflated), however many subscribers it goes
// to. It also always answers `client_no_context_takeover` (section 7.1.1.2,
// which lets a server impose it): every incoming message inflates on its
// own too, so no connection keeps a compression window between messages
// and the codec's state is one pair of zlib streams per thread, never per
// connection.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace synapse::wire {

// Picks the first permessage-deflate offer of a Sec-WebSocket-Extensions
// value (every header line, joined with ",") that the server can accept,
// and returns the value of the response's Sec-WebSocket-Extensions header;
// empty when there is none (the connection then runs uncompressed).
// Declined, per RFC 7692 section 7: an offer with an unknown parameter, a
// duplicate parameter or an invalid value, and one whose
// server_max_window_bits is below 15 (the shared frames use a 15-bit window).
// client_max_window_bits (with or without a value) is accepted: the server
// inflates with a 15-bit window, which reads any smaller one.
std::string negotiate_permessage_deflate(std::string_view offers);

// Compresses `payload` as one message without context takeover (a raw
// deflate stream, sync-flushed, its final 00 00 FF FF removed: section
// 7.2.1) into `out`. `level` is zlib's 1..9. Uses this thread's stream.
void deflate_message(std::string_view payload, int level, std::string& out);

enum class InflateResult { ok, too_big, corrupt };
// Inflates one message's payload (section 7.2.2: the 00 00 FF FF tail is
// appended here) into `out`. Stops with too_big as soon as the output would
// exceed `limit` bytes (0 = unlimited), so a compression bomb costs a
// buffer bounded by the limit (std::string may round its growth up to
// twice that), never what it would inflate to; corrupt when the data is not valid deflate (or refers back
// to a previous message: context takeover was refused). Uses this thread's
// stream.
InflateResult inflate_message(std::string_view compressed, std::size_t limit, std::string& out);

}  // namespace synapse::wire
