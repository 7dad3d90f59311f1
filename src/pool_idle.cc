// Idle pools freed (pool_idle_timeout, autodb_idle_timeout): the workers' side of the
// registry's retirement (pool.h, Registry): each janitor tick drops this worker's LocalPools
// of retired pools and passes the registry's epoch, and worker 0 retires and frees.
#include <algorithm>

#include "log.h"
#include "worker.h"

namespace pgsluice {

void Worker::reap_pools(double now) {
  Registry* reg = rt_->registry.get();
  if (reg == nullptr) return;
  // Worker 0 looks for idle pools (not while SUSPENDed: PgBouncer's janitor waits too).
  if (index_ == 0 && !rt_->suspended.load(std::memory_order_relaxed)) reg->retire_idle(*cfg_, now);
  if (!reg->has_retired()) return;  // the usual case: one relaxed load per tick
  // A quiescent point: no Pool* of an earlier callback is in use on this thread. A retired
  // pool had no holds, so this worker's LocalPool of it holds no client, server or lookup.
  uint64_t epoch = 0;
  for (Pool* p : reg->retired(&epoch)) {
    auto it = pools_.find(p);
    if (it == pools_.end()) continue;
    LocalPool* lp = it->second.get();
    if (!lp->waiting.empty() || !lp->idle.empty() || lp->connecting != 0 || !lp->lookups.empty()) {
      PGS_BUG("a retired pool still has clients or servers here");
      return;  // never passed: the pool stays allocated rather than dangle
    }
    if (lp->serve_queued)
      serveq_.erase(std::remove(serveq_.begin(), serveq_.end(), lp), serveq_.end());
    pools_.erase(it);  // its statistics go with it (as PgBouncer's)
  }
  reg->passed(index_, epoch);
  if (index_ == 0) reg->reclaim();
}

}  // namespace pgsluice
