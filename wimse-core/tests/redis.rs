//! The shared replay cache against a real `redis-server` on loopback (installed by `.ci/run`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wimse_core::prelude::*;
use wimse_core::replay::{RedisReplayCache, WhenUnavailable};

struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server; .ci/run does it)");
        // Bounded wait for it to accept connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn replica(f: &Fixture, url: &str, policy: WhenUnavailable) -> Verifier {
    let cache = RedisReplayCache::new(url).unwrap().when_unavailable(policy).timeout(Duration::from_millis(200));
    f.verifier().with_replay_cache(cache)
}

#[test]
fn replicas_share_replay_protection_and_fail_closed() {
    let f = Fixture::new();
    let redis = Redis::start(free_port());
    let url = redis.url();
    let (a, b) = (replica(&f, &url, WhenUnavailable::FailClosed), replica(&f, &url, WhenUnavailable::FailClosed));
    let open = replica(&f, &url, WhenUnavailable::FailOpen);

    // Accepted by one replica, refused by the other.
    let headers = f.headers(&f.wit, &f.wpt());
    a.verify(&RequestView::new(PATH, &headers)).unwrap();
    assert_eq!(b.verify(&RequestView::new(PATH, &headers)).unwrap_err().kind(), &ErrorKind::ReplayedProof);

    // Redis stops: fail closed (503), or open when so configured.
    let port = redis.stop();
    let err = a.verify(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ReplayCacheUnavailable);
    assert_eq!(wimse_core::http::Rejection::from_error(&err).status(), 503);
    open.verify(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();

    // It comes back: both recover (a fresh server, so earlier proofs are forgotten).
    let _redis = Redis::start(port);
    let headers = f.headers(&f.wit, &f.wpt());
    b.verify(&RequestView::new(PATH, &headers)).unwrap();
    assert_eq!(a.verify(&RequestView::new(PATH, &headers)).unwrap_err().kind(), &ErrorKind::ReplayedProof);
}
