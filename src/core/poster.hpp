// How a service hands work to a thread it does not own: a Poster runs a task
// on one particular I/O thread, later, in posting order. The network layer
// makes them from its io_contexts; services never see Asio.
#pragma once

#include <functional>

namespace synapse {

using Task = std::function<void()>;
using Poster = std::function<void(Task)>;

}  // namespace synapse
