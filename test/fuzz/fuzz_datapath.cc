// libFuzzer target: the client data path (Client::forward_messages, remap, remap_sql,
// answer_parses, must_wait) with the server half (Server::process) and the worker's doors
// (acquire, link, release, close), in process: no PostgreSQL, no network. One Worker is
// driven on the fuzzing thread through its event loop; the client and the server are
// socketpair() ends, logged in through their real login paths. The input is
//   byte 0: the pool (bits 0-1: session, transaction, statement, transaction) and
//           cache_unnamed_statements (bit 2);
//   then records: a control byte c, side = c & 1 (0: bytes the client sends, 1: bytes the
//   server answers), n = c >> 1 (127: a big-endian u16 follows; 0: that side closes its
//   end), then n bytes.
// After each record the loop runs until quiet. A side that was closed is replaced by a new
// one for the rest of the input. Asserts: no crash or UB (ASan/UBSan), no leak, a server in
// the pool is clean, client/server links agree with their states, and what a live client
// receives is a stream of well-framed messages.
#include <event2/event.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "auth_cache.h"
#include "client.h"
#include "config.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "varcache.h"
#include "wire.h"
#include "worker.h"

namespace {
using namespace pgsluice;

const char kDbs[4][3] = {"ds", "dt", "dq", "dt"};

std::shared_ptr<const Config> make_config(bool cache_unnamed) {
  std::string text =
      "[databases]\n"
      "ds = host=127.0.0.1 port=9 dbname=ds pool_mode=session\n"
      "dt = host=127.0.0.1 port=9 dbname=dt pool_mode=transaction\n"
      "dq = host=127.0.0.1 port=9 dbname=dq pool_mode=statement\n"
      "[pgbouncer]\n"
      "auth_type = any\n"
      "max_prepared_statements = 3\n"
      "log_connections = 0\n"
      "log_disconnections = 0\n"
      "log_pooler_errors = 0\n";
  text += cache_unnamed ? "cache_unnamed_statements = 1\n" : "cache_unnamed_statements = 0\n";
  auto c = std::make_shared<Config>();
  if (!parse_config_text(*c, text, "fuzz.ini")) __builtin_trap();
  return c;
}

Runtime& runtime() {
  static Runtime* rt = [] {
    LogSettings ls;
    ls.quiet = true;
    log_configure(ls);
    auto* r = new Runtime;
    r->set_config(make_config(false));
    r->registry = std::make_unique<Registry>(1);
    r->tracked = std::make_unique<TrackedNames>();
    r->scram_nonce = "fuzz";
    r->auth_cache = std::make_unique<AuthCache>();
    return r;
  }();
  return *rt;
}

// Checks that a byte stream is a sequence of protocol messages (type, Int32 length >= 4).
struct Framer {
  uint8_t hdr[wire::kHeaderLen];
  size_t have = 0;
  uint64_t rest = 0;
  void feed(const uint8_t* p, size_t n) {
    while (n > 0) {
      if (rest > 0) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(rest, n));
        rest -= k;
        p += k;
        n -= k;
        continue;
      }
      hdr[have++] = *p++;
      n--;
      if (have == wire::kHeaderLen) {
        uint32_t len = wire::get_u32(hdr + 1);
        if (len < 4) __builtin_trap();
        rest = len - 4;
        have = 0;
      }
    }
  }
};

void set_nb(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

// Reads what the far end holds; feeds it to f when given. Returns the bytes read.
size_t drain(int fd, Framer* f) {
  if (fd < 0) return 0;
  uint8_t buf[65536];
  size_t total = 0;
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r <= 0) break;
    if (f) f->feed(buf, static_cast<size_t>(r));
    total += static_cast<size_t>(r);
  }
  return total;
}

void put(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r <= 0) return;  // full (pgsluice stopped reading) or closed: the rest is dropped
    p += r;
    n -= static_cast<size_t>(r);
  }
}

void msg(std::string& out, char type, const std::string& body) {
  out.push_back(type);
  uint8_t len[4];
  wire::put_u32(len, static_cast<uint32_t>(body.size() + 4));
  out.append(reinterpret_cast<const char*>(len), 4);
  out += body;
}

std::string cstr(const char* s) {
  return std::string(s) + '\0';
}

struct Harness {
  Runtime& rt;
  Worker w;
  Pool* pool = nullptr;
  LocalPool* lp = nullptr;
  std::string db;
  Client* client = nullptr;
  int cfar = -1;
  Framer cframe;
  Server* server = nullptr;
  int sfar = -1;

  Harness(Runtime& r, const std::string& d) : rt(r), w(&r, 0), db(d) {
    std::string err, state;
    pool = rt.registry->get(w.cfg(), db, "u", &err, &state);
    if (pool == nullptr) __builtin_trap();
    // The harness makes its servers itself: pgsluice never connects one (may_connect is
    // false while a login failure is "recent", and this one stays recent).
    pool->set_login_failed_at(1e18);
    lp = w.local_pool(pool);
  }

  ~Harness() {
    std::vector<Client*> cs = w.clients_;
    for (Client* c : cs) w.close_client(c, "fuzz end");
    std::vector<Server*> ss = w.servers_;
    for (Server* s : ss) w.close_server(s, "fuzz end");
    if (cfar >= 0) ::close(cfar);
    if (sfar >= 0) ::close(sfar);
    // ~Worker frees the closed connections
  }

  bool client_live() const {
    return client && std::find(w.clients_.begin(), w.clients_.end(), client) != w.clients_.end();
  }
  bool server_live() const {
    return server && std::find(w.servers_.begin(), w.servers_.end(), server) != w.servers_.end();
  }

  // Runs the loop until nothing more arrives at either far end.
  void pump() {
    for (int i = 0; i < 64; i++) {
      event_base_loop(w.base(), EVLOOP_NONBLOCK);
      size_t n = drain(cfar, client_live() ? &cframe : nullptr);
      n += drain(sfar, nullptr);
      if (n == 0) {
        event_base_loop(w.base(), EVLOOP_NONBLOCK);
        if (drain(cfar, client_live() ? &cframe : nullptr) + drain(sfar, nullptr) == 0) break;
      }
    }
    check();
  }

  void check() {
    for (Server* s : w.servers_) {
      // An idle server may hold the start of an (asynchronous) message; otherwise clean.
      if (s->state() == ServerState::Idle && !s->clean() && s->in_.empty()) __builtin_trap();
      if (s->state() == ServerState::Active && (s->client_ == nullptr || s->client_->server_ != s))
        __builtin_trap();
    }
    for (Client* c : w.clients_) {
      if (c->state() == ClientState::Active && (c->server_ == nullptr || c->server_->client_ != c))
        __builtin_trap();
      if (c->state() == ClientState::Idle && c->server_ != nullptr) __builtin_trap();
    }
  }

  // A new server, logged in through Server::process and released to the pool.
  void new_server() {
    if (sfar >= 0) ::close(sfar);
    server = nullptr;
    sfar = -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) __builtin_trap();
    set_nb(sv[0]);
    set_nb(sv[1]);
    if (!pool->try_reserve()) {
      ::close(sv[0]);
      ::close(sv[1]);
      return;
    }
    auto* s = new Server(&w, Fd(sv[0]), pool, lp);
    s->id_ = rt.next_id.fetch_add(1);
    s->pos_ = w.servers_.size();  // Worker::track_server
    w.servers_.push_back(s);
    w.set_state(s, ServerState::Connecting);
    s->attach(&w);
    server = s;
    sfar = sv[1];
    s->start_login();
    drain(sfar, nullptr);  // the startup packet
    std::string m;
    msg(m, 'R', std::string("\0\0\0\0", 4));
    msg(m, 'S', cstr("server_version") + cstr("15.0"));
    msg(m, 'S', cstr("client_encoding") + cstr("UTF8"));
    msg(m, 'S', cstr("DateStyle") + cstr("ISO, MDY"));
    msg(m, 'S', cstr("TimeZone") + cstr("UTC"));
    msg(m, 'S', cstr("standard_conforming_strings") + cstr("on"));
    msg(m, 'K',
        std::string("\0\0\0\x2a"
                    "abcd",
                    8));
    msg(m, 'Z', "I");
    put(sfar, reinterpret_cast<const uint8_t*>(m.data()), m.size());
    pump();
    pool->set_login_failed_at(1e18);  // its login success cleared it: no real connect, ever
    // Idle, or linked at once to a client that waited (an unreachable server before this
    // one left its clients waiting for the next).
    if (server_live() && server->state() != ServerState::Idle &&
        !(server->state() == ServerState::Active && server->client_ != nullptr))
      __builtin_trap();
  }

  // A new client, logged in through Client::process (auth_type any).
  void new_client() {
    if (cfar >= 0) ::close(cfar);
    client = nullptr;
    cfar = -1;
    cframe = Framer{};
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) __builtin_trap();
    set_nb(sv[1]);
    rt.clients++;  // as the listener counts it
    w.new_client(sv[0], true);
    client = w.clients_.back();
    cfar = sv[1];
    std::string body = std::string("\0\3\0\0", 4) + cstr("user") + cstr("u") + cstr("database") +
                       cstr(db.c_str()) + std::string(1, '\0');
    uint8_t len[4];
    wire::put_u32(len, static_cast<uint32_t>(body.size() + 4));
    std::string pkt(reinterpret_cast<const char*>(len), 4);
    pkt += body;
    put(cfar, reinterpret_cast<const uint8_t*>(pkt.data()), pkt.size());
    pump();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Runtime& rt = runtime();
  static std::shared_ptr<const Config> cfgs[2] = {make_config(false), make_config(true)};
  rt.set_config(cfgs[(data[0] >> 2) & 1]);
  {
    Harness h(rt, kDbs[data[0] & 3]);
    size_t i = 1;
    int rounds = 0;
    while (i < size && rounds++ < 256) {
      if (!h.server_live()) h.new_server();
      if (!h.client_live()) h.new_client();
      uint8_t c = data[i++];
      bool to_server = (c & 1) != 0;
      size_t n = c >> 1;
      if (n == 127 && size - i >= 2) {
        n = (static_cast<size_t>(data[i]) << 8) | data[i + 1];
        i += 2;
      }
      n = std::min(n, size - i);
      int& far = to_server ? h.sfar : h.cfar;
      if (n == 0) {
        if (far >= 0) {
          ::close(far);
          far = -1;
        }
      } else if (far >= 0) {
        put(far, data + i, n);
      }
      i += n;
      h.pump();
    }
  }
  return 0;
}
