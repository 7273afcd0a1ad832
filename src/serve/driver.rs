//! The one loop that steps the model: a thread that owns the [`Engine`], takes requests from the
//! HTTP handlers, runs forward passes while any request is waiting or running (requests join and
//! leave the batch at step boundaries), and sends each request's events to its handler. A
//! handler that goes away (a client disconnected) has its request cancelled before the next step,
//! which frees its sequence slot and KV-cache blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

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
    /// The request is invalid for this model (400).
    Invalid(String),
    /// The engine has stopped (503).
    Stopped,
}

struct Submit {
    req: Request,
    updates: mpsc::UnboundedSender<Update>,
    reply: oneshot::Sender<Result<RequestId, Refused>>,
}

/// The handlers' side of the loop.
#[derive(Clone)]
pub struct Driver {
    tx: mpsc::UnboundedSender<Submit>,
    /// Requests waiting or running, for /metrics-style reporting and the queue bound.
    pub active: Arc<AtomicUsize>,
}

impl Driver {
    /// Starts the loop on its own thread. At most `max_queue` requests wait for a slot.
    pub fn spawn(engine: Engine, max_queue: usize) -> (Driver, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let active = Arc::new(AtomicUsize::new(0));
        let counter = active.clone();
        let handle = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(engine, rx, max_queue, counter))
            .expect("spawning the engine thread");
        (Driver { tx, active }, handle)
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
    active: Arc<AtomicUsize>,
) {
    let mut handlers: HashMap<RequestId, mpsc::UnboundedSender<Update>> = HashMap::new();
    loop {
        // Idle: sleep until a request comes (or every sender is gone: shut down).
        if !engine.has_work() {
            match rx.blocking_recv() {
                Some(s) => accept(&mut engine, &mut handlers, s, max_queue),
                None => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            accept(&mut engine, &mut handlers, s, max_queue);
        }
        // Requests whose client went away leave before the pass.
        let gone: Vec<RequestId> = handlers
            .iter()
            .filter(|(_, h)| h.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            engine.cancel(id);
            handlers.remove(&id);
        }
        active.store(handlers.len(), Ordering::Relaxed);
        if !engine.has_work() {
            continue;
        }
        match pollster::block_on(engine.step()) {
            Ok(events) => {
                for ev in events {
                    let id = match &ev {
                        Event::Token { id, .. } | Event::Finished { id, .. } => *id,
                    };
                    let done = matches!(ev, Event::Finished { .. });
                    if let Some(h) = handlers.get(&id) {
                        // A closed receiver is noticed (and cancelled) before the next pass.
                        let _ = h.send(Update::Event(ev));
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
                    let _ = h.send(Update::Failed(msg.clone()));
                }
            }
        }
        active.store(handlers.len(), Ordering::Relaxed);
    }
}

fn accept(
    engine: &mut Engine,
    handlers: &mut HashMap<RequestId, mpsc::UnboundedSender<Update>>,
    s: Submit,
    max_queue: usize,
) {
    let answer = if engine.waiting() >= max_queue {
        Err(Refused::Busy)
    } else {
        engine
            .submit(s.req)
            .map_err(|e| Refused::Invalid(e.to_string()))
    };
    if let Ok(id) = answer {
        handlers.insert(id, s.updates);
    }
    if let Err(Ok(id)) = s.reply.send(answer) {
        // The handler went away before hearing back.
        engine.cancel(id);
        handlers.remove(&id);
    }
}
