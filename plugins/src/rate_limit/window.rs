//! The sliding-window counter behind every rate limit, local or shared through Redis.
//!
//! Time is cut into fixed windows of `window` length. The estimate of requests in the last
//! `window` is the current window's count plus the previous window's count weighted by how
//! much of it the sliding window still covers: `ceil(previous * (window - elapsed) / window)
//! + current`. A request is admitted while the estimate stays within `limit`.
//!
//! Error bound: for a key that starts fresh, admission is exact (the limit-th request passes,
//! the next is refused). Across a window boundary the estimate assumes the previous window's
//! requests were spread evenly; the worst case (all of them at its very end) admits at most
//! `limit` extra over that one boundary window, never the unbounded 2x-per-boundary of a fixed
//! window. Rounding the weighted part up means it never admits more than the even-spread model.
//! The same arithmetic runs inside Redis's Lua script, so local and shared limits agree.

/// One key's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Start of the current fixed window, in ms on the store's clock.
    pub start: u64,
    pub current: u64,
    pub previous: u64,
}

/// What a limiter decided, with what the client is told in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the current window ends (`RateLimit-Reset`).
    pub reset_secs: u64,
    /// Seconds until a request would be admitted again (`Retry-After`), when refused.
    pub retry_after_secs: u64,
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

impl Window {
    /// Move to the window that contains `now`.
    pub fn roll(&mut self, now: u64, window: u64) {
        let start = now - now % window;
        if start != self.start {
            self.previous = if start == self.start + window {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.start = start;
        }
    }

    /// Requests counted in the sliding window that ends at `now` (after `roll`).
    pub fn estimate(&self, now: u64, window: u64) -> u64 {
        let elapsed = now.saturating_sub(self.start).min(window);
        ceil_div(self.previous * (window - elapsed), window) + self.current
    }

    /// Admit up to `want` requests at `now`; returns how many were admitted.
    pub fn take(&mut self, now: u64, window: u64, limit: u64, want: u64) -> u64 {
        self.roll(now, window);
        let granted = limit.saturating_sub(self.estimate(now, window)).min(want);
        self.current += granted;
        granted
    }

    /// Milliseconds from `now` until one more request would be admitted.
    pub fn wait_for_one(&self, now: u64, window: u64, limit: u64) -> u64 {
        let elapsed = now.saturating_sub(self.start).min(window);
        if limit == 0 {
            return window - elapsed;
        }
        if self.current < limit {
            // The previous window's weight has to fall until `room` requests fit.
            let room = limit - self.current - 1;
            if self.previous == 0 || ceil_div(self.previous * (window - elapsed), window) <= room {
                return 0;
            }
            // ceil(previous * (window - e) / window) <= room  <=>  e >= window - room * window / previous
            let needed = window - (room * window) / self.previous;
            return needed.saturating_sub(elapsed).max(1);
        }
        // Only the next window, with this one as its previous, can make room.
        let until_next = window - elapsed;
        let needed = window - ((limit - 1) * window) / self.current;
        until_next + needed
    }

    /// The decision for a request that was (or was not) admitted at `now`.
    pub fn decision(&self, allowed: bool, now: u64, window: u64, limit: u64) -> Decision {
        let elapsed = now.saturating_sub(self.start).min(window);
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(self.estimate(now, window)),
            reset_secs: ceil_div(window - elapsed, 1000).max(1),
            retry_after_secs: if allowed {
                0
            } else {
                ceil_div(self.wait_for_one(now, window, limit), 1000).max(1)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    #[test]
    fn a_fresh_key_gets_exactly_the_limit() {
        let mut w = Window::default();
        let t = 1_000_000 * W + 5_000;
        for i in 0..5 {
            assert_eq!(w.take(t, W, 5, 1), 1, "request {i}");
        }
        assert_eq!(w.take(t, W, 5, 1), 0, "the sixth is refused");
        let d = w.decision(false, t, W, 5);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_secs, 55);
        assert!(
            d.retry_after_secs > 55,
            "room comes only after the window rolls: {d:?}"
        );
    }

    #[test]
    fn a_boundary_does_not_double_the_limit() {
        let mut w = Window::default();
        let end_of_first = W - 1;
        assert_eq!(w.take(end_of_first, W, 10, 10), 10);
        // Just after the boundary the previous window still counts almost fully.
        assert_eq!(w.take(W + 1, W, 10, 10), 0);
        // Halfway through, half of it has slid out.
        assert_eq!(w.take(W + W / 2, W, 10, 10), 5);
        // A window later, none of it counts.
        assert_eq!(w.take(3 * W, W, 10, 100), 10);
    }

    #[test]
    fn retry_after_points_at_the_moment_room_appears() {
        let mut w = Window::default();
        w.take(W - 1, W, 10, 10);
        let now = W + 1;
        w.roll(now, W);
        let wait = w.wait_for_one(now, W, 10);
        assert_eq!(
            w.take(now + wait - 1, W, 10, 1),
            0,
            "one ms early is still too early"
        );
        assert_eq!(w.take(now + wait, W, 10, 1), 1, "and then exactly one fits");
    }

    #[test]
    fn a_key_idle_for_two_windows_starts_fresh() {
        let mut w = Window::default();
        w.take(10, W, 3, 3);
        assert_eq!(w.take(5 * W, W, 3, 5), 3);
    }
}
