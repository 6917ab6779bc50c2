//! Claims that are ready together, sent to Redis together.
//!
//! On tokio's multi-threaded runtime a task woken by another runs right after it (the worker's
//! LIFO slot): a connection's I/O task, woken by each claim, wrote each claim on its own (1.02
//! `writev` per claim, measured with strace), and each write also runs Redis's side of loopback
//! TCP. Here the first claim of a batch leads it: it first lets every other ready task run
//! (`yield_now`), so the claims of the requests that arrived together join it, then sends them
//! as one pipeline: one message to the connection's I/O task, written at once
//! (0.43 `writev` per claim), answered at once. Each claim is still its own script with its own
//! answer (a pipeline's server errors are per command), a batch holds at most [`MAX_BATCH`]
//! claims, and it is bounded by the store's timeout: a stalled Redis does not accumulate tasks.
//!
//! The price: a connection that fails part-way through a batch's answers fails the whole batch,
//! so the claims whose answers had arrived are refused too (503), as the claims still in flight
//! always were (a client retrying one of them may then be told its proof was replayed). Giving
//! each claim a command future of its own would keep those answers, for 0.5 to 1 µs more per
//! claim (measured with `load-bench claims`); the cap bounds how many claims one failure takes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};
use tokio::sync::oneshot;

/// The most claims one batch holds: a full batch is sent at once, and the next claim starts
/// another. Bounds how long a claim waits for the answers before it.
const MAX_BATCH: usize = 64;

/// A node connection whose claims are sent in batches.
#[derive(Clone)]
pub(super) struct Batched {
    connection: MultiplexedConnection,
    queue: Arc<Mutex<Queue>>,
    timeout: Duration,
}

/// Where a claim of a batch gets its answer.
type Answer = oneshot::Sender<RedisResult<Value>>;

/// The claims waiting for the next batch.
#[derive(Default)]
struct Queue {
    claims: Vec<(Cmd, Answer)>,
}

impl Queue {
    /// Adds a claim: `true` when it is the first of its batch (so it leads it), and the batch
    /// before it when that one was full (to be sent at once).
    fn add(&mut self, command: Cmd, answer: Answer) -> (bool, Option<Vec<(Cmd, Answer)>>) {
        let full = (self.claims.len() >= MAX_BATCH).then(|| std::mem::take(&mut self.claims));
        self.claims.push((command, answer));
        (self.claims.len() == 1, full)
    }
}

impl Batched {
    /// `connection`'s batches, each bounded by `timeout`.
    pub(super) fn new(connection: MultiplexedConnection, timeout: Duration) -> Self {
        Self { connection, queue: Arc::default(), timeout }
    }

    /// The connection itself, for what is not batched.
    pub(super) fn connection(&self) -> &MultiplexedConnection {
        &self.connection
    }

    /// The connection itself, to send what is not batched through it.
    pub(super) fn connection_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.connection
    }

    /// Sends `command` in the next batch and returns its own answer (a server error as
    /// `Value::ServerError`).
    pub(super) async fn send(&self, command: Cmd) -> RedisResult<Value> {
        let (answer, receiver) = oneshot::channel();
        let (first, full) = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).add(command, answer);
        // A task of its own, not this claim's: a request that goes away (its client
        // disconnected, its deadline passed) must not take the others' claims with it.
        if let Some(full) = full {
            tokio::spawn(self.clone().send_all(full));
        }
        if first {
            // This claim leads its batch: it lets every task ready now run (and add its claim),
            // then sends the batch and hands out the answers. Its request may go away meanwhile:
            // `Lead` then hands what is left to a task of its own.
            let mut lead = Lead { waiting: Some(self.clone()), sending: None };
            tokio::task::yield_now().await;
            lead.waiting = None;
            let claims = drain(&self.queue);
            if !claims.is_empty() {
                lead.sending.insert(Box::pin(self.clone().send_all(claims))).await;
                lead.sending = None;
            }
        }
        receiver.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Sends the claims as one pipeline (one message to the connection's I/O task, so one
    /// write) and gives each its own answer.
    async fn send_all(self, claims: Vec<(Cmd, Answer)>) {
        let mut pipeline = Pipeline::with_capacity(claims.len());
        let mut answers = Vec::with_capacity(claims.len());
        for (command, answer) in claims {
            pipeline.add_command(command);
            answers.push(answer);
        }
        let mut connection = self.connection.clone();
        let sent = connection.send_packed_commands(&pipeline, 0, answers.len());
        let answer = match tokio::time::timeout(self.timeout, sent).await {
            Ok(answer) => answer,
            Err(_) => Err(RedisError::from((redis::ErrorKind::Io, "no answer in time"))),
        };
        deliver(answers, answer);
    }
}

/// Gives each claim of a batch its own answer: its value from the pipeline's, or the
/// pipeline's error.
fn deliver(answers: Vec<Answer>, answer: RedisResult<Vec<Value>>) {
    match answer {
        Ok(values) if values.len() == answers.len() => {
            for (answer, value) in answers.into_iter().zip(values) {
                let _ = answer.send(Ok(value));
            }
        }
        Ok(_) => {
            let error = RedisError::from((redis::ErrorKind::Parse, "a batch's answer has the wrong length"));
            answers.into_iter().for_each(|answer| drop(answer.send(Err(error.clone()))));
        }
        Err(error) => answers.into_iter().for_each(|answer| drop(answer.send(Err(error.clone())))),
    }
}

/// The batch a claim leads, while its sending is the claim's own work: waiting for the other
/// ready tasks to add theirs, then sending it. Dropped before the batch was answered (the
/// claim's request went away), it hands the rest to a task of its own, so no other claim of
/// the batch is left without its answer; without a runtime to run it (one shutting down), the
/// queue is emptied, so its claims are refused at once instead of waiting for nobody.
struct Lead {
    waiting: Option<Batched>,
    sending: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Handle::try_current();
        if let Some(batched) = self.waiting.take() {
            // Taken from the queue here, not in the task: a task its runtime never runs then
            // drops the claims (refused), instead of leaving them queued with no leader.
            let claims = drain(&batched.queue);
            if let (false, Ok(runtime)) = (claims.is_empty(), &runtime) {
                runtime.spawn(batched.send_all(claims));
            }
        }
        if let (Some(sending), Ok(runtime)) = (self.sending.take(), &runtime) {
            runtime.spawn(sending);
        }
    }
}

fn drain(queue: &Mutex<Queue>) -> Vec<(Cmd, Answer)> {
    std::mem::take(&mut queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).claims)
}

fn closed() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "the claim's batch was dropped without an answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims join the batch under way until it holds [`MAX_BATCH`]; the next one is the first
    /// of a new batch and hands the full one over, to be sent at once.
    #[test]
    fn a_batch_holds_every_claim_until_full_then_the_next_starts_another() {
        let mut queue = Queue::default();
        let add = |queue: &mut Queue| queue.add(redis::cmd("PING"), oneshot::channel().0);
        assert!(matches!(add(&mut queue), (true, None)), "the first claim starts the batch");
        for _ in 1..MAX_BATCH {
            assert!(matches!(add(&mut queue), (false, None)), "later claims join it");
        }
        let (first, full) = add(&mut queue);
        assert!(first, "a claim past a full batch starts the next one");
        assert_eq!(full.map(|full| full.len()), Some(MAX_BATCH), "and hands the full one over");
        assert_eq!(queue.claims.len(), 1);
    }

    #[test]
    fn each_claim_gets_its_own_answer_and_a_failure_reaches_all() {
        let channels = |n: usize| -> (Vec<Answer>, Vec<oneshot::Receiver<RedisResult<Value>>>) {
            (0..n).map(|_| oneshot::channel()).unzip()
        };
        let (answers, mut receivers) = channels(2);
        let error = redis::parse_redis_value(b"-NOSCRIPT No matching script\r\n").expect("a RESP error");
        deliver(answers, Ok(vec![Value::Int(1), error]));
        assert_eq!(receivers[0].try_recv().unwrap().unwrap(), Value::Int(1));
        assert!(matches!(receivers[1].try_recv().unwrap().unwrap(), Value::ServerError(_)));

        let (answers, mut receivers) = channels(2);
        deliver(answers, Err(RedisError::from((redis::ErrorKind::Io, "broken"))));
        for receiver in &mut receivers {
            assert_eq!(receiver.try_recv().unwrap().unwrap_err().kind(), redis::ErrorKind::Io);
        }

        let (answers, mut receivers) = channels(2);
        deliver(answers, Ok(vec![Value::Int(1)]));
        for receiver in &mut receivers {
            assert_eq!(receiver.try_recv().unwrap().unwrap_err().kind(), redis::ErrorKind::Parse);
        }
    }
}
