// The connection behind an HTTP request, for noticing a client that went away while its request
// runs: cpp-httplib 0.11 gives a handler no handle on its connection (0.15's
// Request::is_connection_closed does this), so FindConnectionSocket finds the socket by its two
// addresses among the process's descriptors, once per request. The socket stays the handler's
// connection until the handler (and its content provider) returns. Any thread.
#pragma once

#include <httplib.h>

namespace flexvqa {

// The descriptor of `request`'s connection; -1 when none matches (then nothing is watched).
int FindConnectionSocket(const httplib::Request& request);

}  // namespace flexvqa
