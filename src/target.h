// A pool's target: where its servers connect and what they log in to, built from the
// database's [databases] entry. Never edited once published: RELOAD that changes the entry
// publishes a new Target with the next generation (Pool::retarget), and servers made for an
// older one close (idle ones at once, busy ones at release: Worker::stale).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pgsluice {

struct Target {
  uint32_t gen = 0;  // the pool's target generation this was built for
  std::string host;  // name or address; for a Unix socket its directory
  int port = 5432;
  std::string server_db;                                            // database name on the server
  std::vector<std::pair<std::string, std::string>> startup_params;  // sent to the server
  std::string connect_query;

  // True when a and b connect to the same place with the same login (gen and address aside).
  bool same_as(const Target& o) const {
    return host == o.host && port == o.port && server_db == o.server_db &&
           startup_params == o.startup_params && connect_query == o.connect_query;
  }

  // The address. A host name is resolved off the event loops (Registry's resolver thread):
  // until then the state is Pending and no server is connected. addr/addrlen (Ready) and
  // resolve_error (Failed) are written once, before the state is published with release;
  // read them only after addr_state() (acquire) says Ready or Failed.
  enum class AddrState : uint8_t { Pending, Ready, Failed };
  AddrState addr_state() const { return addr_state_.load(std::memory_order_acquire); }
  void set_addr(const sockaddr_storage& a, socklen_t len) {  // Pending -> Ready, once
    addr = a;
    addrlen = len;
    addr_state_.store(AddrState::Ready, std::memory_order_release);
  }
  void set_resolve_error(std::string err) {  // Pending -> Failed, once
    resolve_error = std::move(err);
    addr_state_.store(AddrState::Failed, std::memory_order_release);
  }
  sockaddr_storage addr{};
  socklen_t addrlen = 0;
  std::string resolve_error;  // non-empty when the address could not be resolved

 private:
  std::atomic<AddrState> addr_state_{AddrState::Pending};
};

}  // namespace pgsluice
