// Small vocabulary types every file may use: Status, Result<T>, Fd, NameHash. No libevent, no
// OpenSSL.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace pgsluice {

// A hash for maps keyed by std::string that are searched with a std::string_view (with
// std::equal_to<>): no string is built for a lookup.
struct NameHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// The outcome of a fallible call: ok, or an error message (and, when it is to be
// shown to a PostgreSQL client, an SQLSTATE).
class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status error(std::string msg, std::string sqlstate = "08P01") {
    Status s;
    s.ok_ = false;
    s.msg_ = std::move(msg);
    s.sqlstate_ = std::move(sqlstate);
    return s;
  }
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const std::string& message() const { return msg_; }
  const std::string& sqlstate() const { return sqlstate_; }

 private:
  bool ok_ = true;
  std::string msg_;
  std::string sqlstate_;
};

// A value or a Status explaining why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T v) : value_(std::move(v)) {}
  Result(Status s) : status_(std::move(s)) {}
  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T& operator*() { return *value_; }
  T* operator->() { return &*value_; }
  const Status& status() const { return status_; }

 private:
  std::optional<T> value_;
  Status status_;
};

// A move-only owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace pgsluice
