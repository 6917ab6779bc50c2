//! Claims that are ready together, sent to Redis together.
//!
//! On tokio's multi-threaded runtime a task woken by another runs right after it (the worker's
//! LIFO slot): a connection's I/O task, woken by each claim, wrote each claim on its own (1.05
//! `writev` per claim, measured with strace), and each write also runs Redis's side of loopback
//! TCP. Here the first claim of a batch hands the batch to a task that first lets every other
//! ready task run (`yield_now`), so the claims of the requests that arrived together join it,
//! then sends them as one pipeline: one write, one read and one wake-up of the I/O task per
//! batch. Each claim still gets its own answer (a pipeline's server errors are per command), and
//! the batch is bounded by the store's timeout: a stalled Redis does not accumulate tasks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};
use tokio::sync::oneshot;

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
    pipeline: Pipeline,
    answers: Vec<Answer>,
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

    pub(super) fn connection_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.connection
    }

    /// Sends `command` in the next batch and returns its own answer (a server error as
    /// `Value::ServerError`, as for any pipelined command).
    pub(super) async fn send(&self, command: Cmd) -> RedisResult<Value> {
        let (answer, receiver) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.pipeline.add_command(command);
            queue.answers.push(answer);
            queue.answers.len() == 1
        };
        if first {
            // A task of its own, not this claim's: a request that goes away (its client
            // disconnected, its deadline passed) must not take the others' claims with it.
            tokio::spawn(self.clone().flush());
        }
        receiver.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Sends the batch once every task ready now had its turn to join it.
    async fn flush(self) {
        tokio::task::yield_now().await;
        let Queue { pipeline, answers } = {
            let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *queue)
        };
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

fn closed() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "the batch's task ended without an answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(n: usize) -> (Vec<Answer>, Vec<oneshot::Receiver<RedisResult<Value>>>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    #[test]
    fn each_claim_gets_its_own_answer_and_a_failure_reaches_all() {
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
