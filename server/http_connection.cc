#include "server/http_connection.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <string>

namespace flexvqa {

namespace {

// The port and numeric address of a socket address (httplib writes remote_addr the same way).
bool Describe(const sockaddr_storage& address, int* port, std::string* host) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    *port = ntohs(v4.sin_port);
    if (host != nullptr) inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text));
  } else if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    *port = ntohs(v6.sin6_port);
    if (host != nullptr) inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text));
  } else {
    return false;
  }
  if (host != nullptr) *host = text;
  return true;
}

bool Matches(int fd, const httplib::Request& request) {
  sockaddr_storage local{}, peer{};
  socklen_t local_size = sizeof(local), peer_size = sizeof(peer);
  int port = 0;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0 ||
      !Describe(local, &port, nullptr) || port != request.local_port) {
    return false;
  }
  std::string host;
  return getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) == 0 &&
         Describe(peer, &port, &host) && port == request.remote_port && host == request.remote_addr;
}

}  // namespace

int FindConnectionSocket(const httplib::Request& request) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    const int fd = std::atoi(entry->d_name);
    if (fd != dirfd(dir) && Matches(fd, request)) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

}  // namespace flexvqa
