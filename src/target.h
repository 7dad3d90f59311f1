// A pool's target: where its servers connect and what they log in to, built from the
// database's [databases] entry: a list of hosts (host=a,b,c port=p or port=p1,p2,p3, as
// PgBouncer 1.24+), chosen per new server by load_balance_hosts, a host that could not be
// reached skipped for server_login_retry. Never edited once published, except failure
// times (a host name's address is its DnsName's: it follows DNS, dns.h): RELOAD that changes
// the entry publishes a new Target with the next generation (Registry::retarget), and
// servers made for an older one close (idle ones at once, busy ones at release:
// Worker::stale).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dns.h"
#include "session_state.h"

namespace pgsluice {

struct Config;
struct DatabaseDef;

enum class AddrState : uint8_t { Pending, Ready, Failed };
enum class HostDown : uint8_t { No, Unreachable, WrongRole };
const char* host_down_name(HostDown d);  // "unreachable", "wrong role for target_session_attrs"

// One host of a target.
struct TargetHost {
  std::string host;  // name or address; for a Unix socket its directory
  int port = 5432;

  // Its addresses: the host's own record (a Unix socket, a numeric address: set_addr or
  // set_resolve_error before the Target is published), or its name's latest answer
  // (set_name before publication; the Resolver replaces the answer when it changes and
  // keeps every record it published alive). Null while the name's first lookup runs.
  const AddrRecord* addr() const { return own_ ? own_.get() : name_ ? name_->current() : nullptr; }
  AddrState addr_state() const;  // Pending: addr() null; Failed: addr() failed()
  std::string resolve_error() const;
  void set_addr(const sockaddr_storage& a, socklen_t len);
  void set_resolve_error(std::string err);
  void set_name(DnsName* n) { name_ = n; }
  DnsName* name() const { return name_; }  // null: not a host name
  // The next address of r (round-robin) with this host's port, for a new server.
  socklen_t next_addr(const AddrRecord& r, sockaddr_storage* out) const;
  // True when a server that connected to `peer` through record r must go: the name now
  // resolves to addresses among which `peer` is not. A failed lookup moves nobody.
  bool moved_away(const AddrRecord* r, const sockaddr_storage& peer) const;

  // Held out of pick() until `held_until` (monotonic seconds; 0: not held): a host that
  // could not be reached for server_login_retry, one whose server did not suit
  // target_session_attrs for server_check_delay. `down` says why (No: its last login
  // succeeded, or none was tried).
  void hold(double until, HostDown why);
  void serving();  // a login on it succeeded
  std::atomic<double> held_until{0};
  std::atomic<HostDown> down{HostDown::No};

 private:
  std::unique_ptr<AddrRecord> own_;
  DnsName* name_ = nullptr;
};

// libpq's target_session_attrs.
enum class SessionAttrs : uint8_t { Any, ReadWrite, ReadOnly, Primary, Standby, PreferStandby };

struct Target {
  uint32_t gen = 0;                                // the pool's target generation it is
  SessionAttrs attrs = SessionAttrs::Any;          // what a server must be to be kept
  std::vector<std::unique_ptr<TargetHost>> hosts;  // config order; never empty
  bool round_robin = true;                         // load_balance_hosts (false: disable)
  std::string server_db;                           // database name on the server
  std::vector<std::pair<std::string, std::string>> startup_params;  // sent to the server
  std::string connect_query;
  // What connect_query's SET statements make (session_state.h): a server's settings before
  // any client's, restored instead of PostgreSQL's defaults when a client's are taken
  // away. Statements other than SET/RESET in it are not followed.
  SessionSettings connect_settings;

  // The target of a database entry for `db` as `login_user` (addresses not resolved yet).
  static std::unique_ptr<Target> from_config(const Config& cfg, const DatabaseDef& def,
                                             const std::string& db, const std::string& login_user);
  // Same hosts, ports, balancing and login (gen, addresses and failures aside).
  bool same_as(const Target& o) const;

  // Ready when some host has an address; Pending when none has one yet and some lookup is
  // still running; Failed when every host's lookup failed (resolve_error(): the first's).
  // A name's state may go from Ready to Failed and back as its answers come (dns.h).
  AddrState addr_state() const;
  std::string resolve_error() const;

  // The host for a new server: round-robin over the hosts, or (disable) the current host
  // until it fails; a host without an address or held (TargetHost::hold) is skipped. Null
  // when no host may be tried now. `moved_from`: in disable mode, the host that was current
  // when the choice moved away from it (else null). `rec`: the host's address record that
  // made it usable (Ready), for the connect.
  TargetHost* pick(double now, const TargetHost** moved_from = nullptr,
                   const AddrRecord** rec = nullptr);
  // True when pick() would find a host now (`except`: not counting that one).
  bool usable(double now, const TargetHost* except = nullptr) const;
  // The host of the last server that logged in (null: none yet); SHOW DATABASES/POOLS.
  std::atomic<const TargetHost*> current{nullptr};
  // Whether a server that logged in with these ParameterStatus values suits `attrs`, as
  // libpq decides from PostgreSQL 14's reported in_hot_standby and
  // default_transaction_read_only. `others`: another host may be tried now (prefer-standby
  // takes a primary only when none may). False: *why says what the server is.
  bool accepts(const std::vector<std::pair<std::string, std::string>>& params, bool others,
               std::string* why) const;
  // "a:5432,b:5433": every host, for logs.
  std::string describe() const;

 private:
  const AddrRecord* usable_host(const TargetHost& h, double now) const;
  std::atomic<uint32_t> next_{0};  // round-robin: the next start; disable: the current host
};

// The one connect from pgsluice to PostgreSQL, for server logins and cancel requests alike:
// a non-blocking socket to `addr`, with the TCP options of `tune` on a TCP socket. fd -1:
// no socket (err: errno). Else the caller owns fd; err is connect's errno when it failed at
// once (0: connected at once, `done`, or in progress).
struct Dial {
  int fd = -1;
  int err = 0;
  bool done = false;
};
Dial dial(const sockaddr_storage& addr, socklen_t len, const Config& tune);

}  // namespace pgsluice
