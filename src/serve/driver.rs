//! The one loop that steps the model: a thread that owns the [`Engine`], takes requests from the
//! HTTP handlers, runs forward passes while any request is waiting or running (requests join and
//! leave the batch at step boundaries), and sends each request's events to its handler. A
//! handler that goes away (a client disconnected) has its request cancelled before the next step,
//! which frees its sequence slot and KV-cache blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::metrics::Stats;
use crate::engine::{Engine, Event, Request, RequestId};

/// What a handler hears about its request.
#[derive(Debug)]
pub enum Update {
    Event(Event),
    /// The forward pass failed; the request is over.
    Failed(String),
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The waiting queue is full (503).
    Busy,
    /// The request is invalid for this model (400; the error names the field where it knows it).
    Invalid(crate::error::Error),
    /// The engine has stopped (503).
    Stopped,
}

struct Submit {
    req: Request,
    updates: mpsc::UnboundedSender<Update>,
    reply: oneshot::Sender<Result<RequestId, Refused>>,
    arrived: Instant,
}

/// A request's handler and its timing.
struct Handler {
    updates: mpsc::UnboundedSender<Update>,
    arrived: Instant,
    last_token: Option<Instant>,
}

/// The handlers' side of the loop.
#[derive(Clone)]
pub struct Driver {
    tx: mpsc::UnboundedSender<Submit>,
    pub stats: Arc<Stats>,
}

impl Driver {
    /// Starts the loop on its own thread. At most `max_queue` requests wait for a slot.
    pub fn spawn(engine: Engine, max_queue: usize) -> (Driver, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        stats.update(&engine);
        let shared = stats.clone();
        let handle = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(engine, rx, max_queue, shared))
            .expect("spawning the engine thread");
        (Driver { tx, stats }, handle)
    }

    /// Queues a request; its events arrive on the returned receiver until `Finished`.
    pub async fn submit(
        &self,
        req: Request,
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<Update>), Refused> {
        let (updates, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Submit {
                req,
                updates,
                reply,
                arrived: Instant::now(),
            })
            .map_err(|_| Refused::Stopped)?;
        let id = answer.await.map_err(|_| Refused::Stopped)??;
        Ok((id, rx))
    }
}

fn run(
    mut engine: Engine,
    mut rx: mpsc::UnboundedReceiver<Submit>,
    max_queue: usize,
    stats: Arc<Stats>,
) {
    let mut handlers: HashMap<RequestId, Handler> = HashMap::new();
    loop {
        // Idle: sleep until a request comes (or every sender is gone: shut down).
        if !engine.has_work() {
            stats.update(&engine);
            match rx.blocking_recv() {
                Some(s) => accept(&mut engine, &mut handlers, s, max_queue, &stats),
                None => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            accept(&mut engine, &mut handlers, s, max_queue, &stats);
        }
        // Requests whose client went away leave before the pass.
        let gone: Vec<RequestId> = handlers
            .iter()
            .filter(|(_, h)| h.updates.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            engine.cancel(*id);
            handlers.remove(id);
        }
        // The gauges move before the counter, so that a reader who sees the cancellation also
        // sees its slot and blocks free.
        stats.update(&engine);
        stats
            .requests_cancelled
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        if !engine.has_work() {
            continue;
        }
        let stepped = pollster::block_on(engine.step());
        // Counts first, so that a client that hears its token sees them current.
        stats.update(&engine);
        match stepped {
            Ok(events) => {
                for ev in events {
                    let (id, counter) = match &ev {
                        Event::Token { id, .. } => (*id, Some(&stats.generated_tokens)),
                        Event::PromptLogprobs { id, .. } => (*id, None),
                        Event::Finished { id, .. } => (*id, Some(&stats.requests_finished)),
                    };
                    let done = matches!(ev, Event::Finished { .. });
                    if let Some(c) = counter {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(h) = handlers.get_mut(&id) {
                        if counter.is_some() {
                            h.observe(done, &stats);
                        }
                        // A closed receiver is noticed (and cancelled) before the next pass.
                        let _ = h.updates.send(Update::Event(ev));
                    }
                    if done {
                        handlers.remove(&id);
                    }
                }
            }
            Err(e) => {
                // A failed pass ends every request in it; the loop goes on for new ones.
                let msg = e.to_string();
                for (id, h) in handlers.drain() {
                    engine.cancel(id);
                    let _ = h.updates.send(Update::Failed(msg.clone()));
                }
                stats.update(&engine);
            }
        }
    }
}

impl Handler {
    /// Records a token's latency (or the request's, at its end).
    fn observe(&mut self, finished: bool, stats: &Stats) {
        let now = Instant::now();
        let Ok(mut l) = stats.latency.lock() else {
            return;
        };
        if finished {
            l.e2e.observe((now - self.arrived).as_secs_f64());
            return;
        }
        match self.last_token {
            None => l.ttft.observe((now - self.arrived).as_secs_f64()),
            Some(t) => l.itl.observe((now - t).as_secs_f64()),
        }
        self.last_token = Some(now);
    }
}

fn accept(
    engine: &mut Engine,
    handlers: &mut HashMap<RequestId, Handler>,
    s: Submit,
    max_queue: usize,
    stats: &Stats,
) {
    let s_prompt_len = s.req.prompt.len();
    let answer = if engine.waiting() >= max_queue {
        Err(Refused::Busy)
    } else {
        engine.submit(s.req).map_err(Refused::Invalid)
    };
    if let Ok(id) = answer {
        handlers.insert(
            id,
            Handler {
                updates: s.updates,
                arrived: s.arrived,
                last_token: None,
            },
        );
        stats
            .prompt_tokens
            .fetch_add(s_prompt_len as u64, Ordering::Relaxed);
    }
    if let Err(Ok(id)) = s.reply.send(answer) {
        // The handler went away before hearing back.
        engine.cancel(id);
        handlers.remove(&id);
    }
}
