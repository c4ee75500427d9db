//! Outages: the `outage` profile's (permanent, or for a while after start)
//! and those started at run time by `POST /__sim/outage`, per endpoint.
//!
//! During an outage every valid, authenticated request to the endpoint is
//! answered 503 in its provider's error shape. A run-time outage replaces any
//! earlier one on the same endpoint (it lasts the new `seconds` from now);
//! `DELETE /__sim/outage` ends the run-time ones, never the profile's.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::state::{Endpoint, lock};

/// The `outage` profile's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileOutage {
    /// Not the `outage` profile.
    None,
    /// Every request fails, for good.
    Permanent,
    /// Requests fail until this moment.
    Until(Instant),
}

impl ProfileOutage {
    /// The span for `duration` from `start` (`None`: for good).
    pub(crate) fn starting(start: Instant, duration: Option<Duration>) -> Self {
        match duration.map(|d| start.checked_add(d)) {
            None | Some(None) => Self::Permanent,
            Some(Some(until)) => Self::Until(until),
        }
    }

    pub(crate) fn active(self, now: Instant) -> bool {
        match self {
            Self::None => false,
            Self::Permanent => true,
            Self::Until(until) => now < until,
        }
    }
}

/// Run-time outages: when each endpoint's ends.
#[derive(Debug, Default)]
pub(crate) struct Outages {
    until: Mutex<[Option<Instant>; 4]>,
}

impl Outages {
    /// Fails `endpoint` (every endpoint when `None`) until `until`.
    pub(crate) fn start(&self, endpoint: Option<Endpoint>, until: Instant) {
        let mut ends = lock(&self.until);
        match endpoint {
            Some(e) => ends[e.index()] = Some(until),
            None => *ends = [Some(until); 4],
        }
    }

    /// Ends every run-time outage now.
    pub(crate) fn end(&self) {
        *lock(&self.until) = [None; 4];
    }

    pub(crate) fn active(&self, endpoint: Endpoint, now: Instant) -> bool {
        lock(&self.until)[endpoint.index()].is_some_and(|until| now < until)
    }

    /// What is left of each endpoint's outage at `now` (`None`: none).
    pub(crate) fn remaining(&self, now: Instant) -> [(Endpoint, Option<Duration>); 4] {
        let ends = *lock(&self.until);
        Endpoint::ALL.map(|e| {
            let left = ends[e.index()]
                .and_then(|until| until.checked_duration_since(now))
                .filter(|left| !left.is_zero());
            (e, left)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_outage_spans() {
        let start = Instant::now();
        let later = start + Duration::from_secs(3);
        assert!(!ProfileOutage::None.active(start));
        assert!(ProfileOutage::starting(start, None).active(later));
        let timed = ProfileOutage::starting(start, Some(Duration::from_secs(2)));
        assert!(timed.active(start + Duration::from_millis(1_999)));
        assert!(!timed.active(start + Duration::from_secs(2)));
        // Too long to represent: for good.
        assert_eq!(
            ProfileOutage::starting(start, Some(Duration::MAX)),
            ProfileOutage::Permanent
        );
    }

    #[test]
    fn run_time_outages_per_endpoint() {
        let now = Instant::now();
        let outages = Outages::default();
        outages.start(Some(Endpoint::Speech), now + Duration::from_secs(1));
        assert!(outages.active(Endpoint::Speech, now));
        assert!(!outages.active(Endpoint::ChatCompletions, now));
        assert!(!outages.active(Endpoint::Speech, now + Duration::from_secs(1)));
        let left = outages.remaining(now);
        assert_eq!(left[3], (Endpoint::Speech, Some(Duration::from_secs(1))));
        assert_eq!(left[0].1, None);
        outages.start(None, now + Duration::from_secs(5));
        assert!(Endpoint::ALL.iter().all(|e| outages.active(*e, now)));
        // A new outage replaces the old one.
        outages.start(Some(Endpoint::Speech), now + Duration::from_millis(10));
        assert!(!outages.active(Endpoint::Speech, now + Duration::from_secs(1)));
        outages.end();
        assert!(Endpoint::ALL.iter().all(|e| !outages.active(*e, now)));
    }
}
