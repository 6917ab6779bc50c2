//! The Redis rows: a `redis-server` and a three-node Redis Cluster on loopback, for the run.

use std::time::Duration;

use wimse_core::replay::{RedisReplayStore, ReplayClaim, ReplayStore};
use wimse_testkit::servers::{RedisCluster, RedisServer};

use crate::setup::{ReplaySetup, now};
use crate::{Error, Store};

/// Clock leeway of the servers (the verifier's default).
const LEEWAY: u64 = 30;

pub(crate) struct Redis {
    single: RedisServer,
    cluster: RedisCluster,
    /// A new store refuses proofs that could predate it; proofs signed from here on are fine.
    ready_at: u64,
}

impl Redis {
    /// Starts both, or `None` when `redis-server` is not installed.
    pub(crate) async fn start() -> Result<Option<Self>, Error> {
        let (Some(single), Some(cluster)) = (RedisServer::start(), RedisCluster::start()) else {
            return Ok(None);
        };
        // Start each store's epoch now (a fresh store cannot tell it is new), so the wait for
        // it overlaps with the in-memory configurations.
        let started = now();
        for store in [RedisReplayStore::new(&single.url())?, RedisReplayStore::cluster(cluster.urls())?] {
            let store = store.timeout(Duration::from_secs(5));
            store.join().await?;
            let _ = store.claim(&ReplayClaim::signature_nonce("load-bench", started + 1, 0), started).await;
        }
        Ok(Some(Self { single, cluster, ready_at: started + LEEWAY + 1 }))
    }

    /// The setup for a server on `store` (`None` for the in-memory ones), once proofs signed
    /// now are accepted by it.
    pub(crate) async fn replay_setup(&self, store: Store) -> Option<ReplaySetup> {
        let setup = match store {
            Store::Redis => ReplaySetup::Redis(self.single.url()),
            Store::RedisCluster => ReplaySetup::Cluster(self.cluster.urls()),
            Store::Memory | Store::MemoryHandOff => return None,
        };
        let wait = self.ready_at.saturating_sub(now());
        if wait > 0 {
            println!("waiting {wait} s until proofs are newer than the Redis stores' epoch");
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        Some(setup)
    }
}
