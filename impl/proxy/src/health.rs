//! The proxy's `/healthz`, meaning what kube-proxy's means: unhealthy once a
//! change has waited longer than the timeout without reaching the kernel (a
//! data plane that refuses writes, caches that never list, a stuck loop);
//! healthy otherwise, including when nothing is pending. A kubelet probe or
//! a load balancer's node check then sees a node that forwards stale rules.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pending-change bookkeeping; times are passed in, so it is unit-tested
/// without a clock.
#[derive(Debug)]
pub struct Health {
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    /// When the oldest change not yet applied was queued.
    pending_since: Option<Instant>,
    /// When the kernel last took everything that was queued.
    applied_at: Option<Instant>,
}

impl Health {
    /// A tracker that fails after a change waits `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Health {
            timeout,
            state: Mutex::new(State::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// A change arrived at `now` (the first one since the last apply starts the clock).
    pub fn queued(&self, now: Instant) {
        self.with(|s| {
            s.pending_since.get_or_insert(now);
        });
    }

    /// Everything queued before this sync began reached the kernel.
    pub fn applied(&self, now: Instant) {
        self.with(|s| {
            s.pending_since = None;
            s.applied_at = Some(now);
        });
    }

    /// `Ok` with a short status, or `Err` saying how long a change has waited.
    pub fn check(&self, now: Instant) -> Result<String, String> {
        let s = self.with(|s| *s);
        match s.pending_since {
            Some(since) if now.saturating_duration_since(since) > self.timeout => Err(format!(
                "a change queued {:.1}s ago is not in the kernel (timeout {}s)",
                now.saturating_duration_since(since).as_secs_f64(),
                self.timeout.as_secs()
            )),
            _ => Ok(match s.applied_at {
                Some(at) => format!(
                    "ok: last applied {:.1}s ago",
                    now.saturating_duration_since(at).as_secs_f64()
                ),
                None => "ok: nothing applied yet".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_that_waits_past_the_timeout_is_unhealthy_until_applied() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let h = Health::new(Duration::from_secs(10));
        assert!(h.check(t0).is_ok(), "nothing pending");
        h.queued(s(1));
        assert!(h.check(s(10)).is_ok(), "9 s pending");
        // Later changes do not restart the clock.
        h.queued(s(9));
        let err = h.check(s(12)).unwrap_err();
        assert!(err.contains("11.0s"), "{err}");
        h.applied(s(13));
        assert!(h.check(s(14)).is_ok());
        assert!(h.check(s(100)).is_ok(), "idle is healthy");
        h.queued(s(100));
        assert!(h.check(s(111)).is_err());
    }
}
