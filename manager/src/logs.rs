//! The log broker on the leader: `service logs` asks the nodes running a
//! service's tasks for their containers' output. Nodes listen on no port,
//! so the request travels down the node's session with the leader and the
//! lines come back up the same stream, in chunks.
//!
//! A [`LogSubscription`] is one request to one node; dropping it (the caller
//! hung up, or got what it asked for) forgets it and, if the node may still
//! be sending, tells the node to stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent_common::dispatcher_proto::session_down::Kind as Down;
use agent_common::dispatcher_proto::{LogCancel, LogChunk, LogRequest, SessionDown};
use tokio::sync::mpsc;

/// Chunks held per request for a subscriber that reads slower than the node
/// sends; beyond that the request is cancelled rather than buffered.
pub const BUFFERED_CHUNKS: usize = 256;

/// The sessions that can take log requests and the requests being answered.
#[derive(Default)]
struct Inner {
    /// Per node: the generation of its open session and how to reach it.
    sessions: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<SessionDown>)>>,
    /// Per request ID: the node asked, and where its chunks go.
    streams: Mutex<HashMap<String, (String, mpsc::Sender<LogChunk>)>>,
    generations: AtomicU64,
}

/// Routes log requests down node sessions and their chunks back.
#[derive(Default)]
pub struct LogBroker {
    inner: Arc<Inner>,
}

/// One node's answer to one request, chunk by chunk.
pub struct LogSubscription {
    /// The node asked.
    pub node: String,
    /// The node's session generation when asked (a new session means the
    /// node will not answer this request any more).
    pub generation: u64,
    /// The chunks; the last one has `done` set. Ends early when the
    /// subscriber fell [`BUFFERED_CHUNKS`] behind (the node is told to stop).
    pub chunks: mpsc::Receiver<LogChunk>,
    id: String,
    inner: Arc<Inner>,
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        let was_open = self
            .inner
            .streams
            .lock()
            .map(|mut s| s.remove(&self.id).is_some())
            .unwrap_or(false);
        if was_open {
            if let Some(tx) = session_of(&self.inner, &self.node) {
                let _ = tx.1.send(SessionDown {
                    kind: Some(Down::LogCancel(LogCancel {
                        id: self.id.clone(),
                    })),
                });
            }
        }
    }
}

fn session_of(inner: &Inner, node: &str) -> Option<(u64, mpsc::UnboundedSender<SessionDown>)> {
    inner.sessions.lock().ok()?.get(node).cloned()
}

impl LogBroker {
    /// A session of `node` opened: requests for the node go to `tx`.
    /// Returns the session's generation.
    pub fn attach(&self, node: &str, tx: mpsc::UnboundedSender<SessionDown>) -> u64 {
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut s) = self.inner.sessions.lock() {
            s.insert(node.to_string(), (generation, tx));
        }
        generation
    }

    /// Session `generation` of `node` closed.
    pub fn detach(&self, node: &str, generation: u64) {
        if let Ok(mut s) = self.inner.sessions.lock() {
            if s.get(node).map(|(g, _)| *g) == Some(generation) {
                s.remove(node);
            }
        }
    }

    /// The generation of `node`'s open session, if it has one.
    pub fn generation(&self, node: &str) -> Option<u64> {
        session_of(&self.inner, node).map(|(g, _)| g)
    }

    /// Asks `node` for the last `tail` lines (negative: all) of
    /// `container_ids`, and with `follow` for every line written after.
    /// `None` when the node has no session with this manager.
    pub fn subscribe(
        &self,
        node: &str,
        container_ids: Vec<String>,
        tail: i64,
        follow: bool,
    ) -> Option<LogSubscription> {
        let (generation, session) = session_of(&self.inner, node)?;
        let id = crate::store::new_id();
        let (tx, chunks) = mpsc::channel(BUFFERED_CHUNKS);
        if let Ok(mut s) = self.inner.streams.lock() {
            s.insert(id.clone(), (node.to_string(), tx));
        }
        let sub = LogSubscription {
            node: node.to_string(),
            generation,
            chunks,
            id: id.clone(),
            inner: Arc::clone(&self.inner),
        };
        session
            .send(SessionDown {
                kind: Some(Down::LogRequest(LogRequest {
                    id,
                    container_ids,
                    tail,
                    follow,
                })),
            })
            .ok()?;
        Some(sub)
    }

    /// Hands a chunk that `node` sent to its subscriber. False when nobody
    /// waits for it any more (the node should stop sending), and for a
    /// request that was not sent to `node`: only the node asked may answer.
    pub fn publish(&self, node: &str, chunk: LogChunk) -> bool {
        let Ok(mut streams) = self.inner.streams.lock() else {
            return false;
        };
        let Some((asked, tx)) = streams.get(&chunk.request_id) else {
            return false;
        };
        if asked != node {
            tracing::warn!(
                node,
                asked = %asked,
                "a node sent log lines for a request sent to another node; ignored"
            );
            return false;
        }
        let done = chunk.done;
        let id = chunk.request_id.clone();
        let delivered = tx.try_send(chunk).is_ok();
        if done || !delivered {
            streams.remove(&id);
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: &str, text: &str, done: bool) -> LogChunk {
        LogChunk {
            request_id: id.into(),
            lines: vec![agent_common::dispatcher_proto::LogLine {
                container_id: "c".into(),
                stderr: false,
                text: text.into(),
                time_nanos: 1,
            }],
            error: String::new(),
            done,
        }
    }

    fn request_id(msg: SessionDown) -> String {
        match msg.kind {
            Some(Down::LogRequest(r)) => r.id,
            other => panic!("expected a log request, got {other:?}"),
        }
    }

    #[test]
    fn requests_reach_the_session_and_chunks_the_subscriber() {
        let broker = LogBroker::default();
        assert!(broker
            .subscribe("n1", vec!["c".into()], 10, false)
            .is_none());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let generation = broker.attach("n1", tx);
        assert_eq!(broker.generation("n1"), Some(generation));
        let mut sub = broker
            .subscribe("n1", vec!["c".into()], 10, true)
            .expect("the node has a session");
        let id = request_id(rx.try_recv().expect("a request was sent"));
        assert!(broker.publish("n1", chunk(&id, "one", false)));
        assert_eq!(sub.chunks.try_recv().expect("chunk").lines[0].text, "one");
        // Another node cannot answer this request.
        assert!(!broker.publish("n2", chunk(&id, "forged", false)));
        assert!(
            sub.chunks.try_recv().is_err(),
            "the forged chunk was delivered"
        );
        // Unknown requests are refused (the node is told to stop).
        assert!(!broker.publish("n1", chunk("other", "x", false)));
        // The subscriber hangs up: the node is told to stop this request.
        drop(sub);
        match rx.try_recv().expect("a cancel was sent").kind {
            Some(Down::LogCancel(c)) => assert_eq!(c.id, id),
            other => panic!("expected a cancel, got {other:?}"),
        }
        assert!(!broker.publish("n1", chunk(&id, "late", false)));
    }

    #[test]
    fn a_finished_request_is_not_cancelled_and_old_sessions_detach_nothing() {
        let broker = LogBroker::default();
        let (tx1, _rx1) = mpsc::unbounded_channel();
        let old = broker.attach("n1", tx1);
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let new = broker.attach("n1", tx2);
        broker.detach("n1", old);
        assert_eq!(broker.generation("n1"), Some(new));
        let mut sub = broker.subscribe("n1", vec![], -1, false).expect("session");
        let id = request_id(rx2.try_recv().expect("request"));
        assert!(broker.publish("n1", chunk(&id, "last", true)));
        assert!(sub.chunks.try_recv().expect("chunk").done);
        drop(sub);
        assert!(rx2.try_recv().is_err(), "no cancel after done");
        broker.detach("n1", new);
        assert_eq!(broker.generation("n1"), None);
    }
}
