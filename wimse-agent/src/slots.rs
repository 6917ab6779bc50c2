//! Places for open connections and streams, counted in total and per uid, so one workload
//! cannot take what the others need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many places are taken, and the bounds.
#[derive(Debug)]
pub(crate) struct Places {
    max_total: usize,
    max_per_uid: usize,
    /// The gauge that shows the total (`wimse_agent_connections`, `wimse_agent_streams`).
    gauge: &'static str,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// Why no place was free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The uid holds `max_per_uid`.
    Uid,
    /// All callers together hold `max_total`.
    Total,
}

impl Places {
    pub(crate) fn new(max_total: usize, max_per_uid: usize, gauge: &'static str) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_uid, gauge, taken: Mutex::default() })
    }

    pub(crate) fn max_per_uid(&self) -> usize {
        self.max_per_uid
    }

    /// Takes a place for `uid`, held until the returned [`Place`] is dropped.
    pub(crate) fn take(self: &Arc<Self>, uid: u32) -> Result<Place, Full> {
        let mut taken = self.taken.lock().map_err(|_| Full::Total)?;
        let mine = taken.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.max_per_uid {
            return Err(Full::Uid);
        }
        if taken.total >= self.max_total {
            return Err(Full::Total);
        }
        taken.total += 1;
        taken.per_uid.insert(uid, mine + 1);
        metrics::gauge!(self.gauge).set(taken.total as f64);
        Ok(Place { places: self.clone(), uid })
    }
}

/// One taken place.
#[derive(Debug)]
pub(crate) struct Place {
    places: Arc<Places>,
    uid: u32,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut taken) = self.places.taken.lock() {
            taken.total = taken.total.saturating_sub(1);
            if let Some(n) = taken.per_uid.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    taken.per_uid.remove(&self.uid);
                }
            }
            metrics::gauge!(self.places.gauge).set(taken.total as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_per_uid_and_in_total() {
        let places = Places::new(3, 2, "test_places");
        let a1 = places.take(1).unwrap();
        let _a2 = places.take(1).unwrap();
        assert_eq!(places.take(1).unwrap_err(), Full::Uid);
        let _b1 = places.take(2).unwrap();
        assert_eq!(places.take(3).unwrap_err(), Full::Total);
        drop(a1);
        let _c1 = places.take(3).unwrap();
        assert_eq!(places.take(1).unwrap_err(), Full::Total);
        assert_eq!(places.taken.lock().unwrap().per_uid.len(), 3);
    }
}
