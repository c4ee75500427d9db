//! The apalis backend both carriers share: tasks come from the carrier's
//! fetch loop through a bounded channel (`prefetch` deep), are settled by
//! the [`AckLayer`], and on close the carrier hands back what it fetched but
//! never started. What differs between Redis Streams and SQLite is behind
//! [`Consumer`]: how to fetch, keep claims alive, settle and hand back.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::{Backend, BackendConfig, finalize::Ephemeral};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::settle::{AckLayer, Carrier};
use super::{ConsumerOptions, QueueError};

/// One consumer of one queue on a carrier.
pub trait Consumer: Carrier + Sized {
    /// How it consumes.
    fn options(&self) -> &ConsumerOptions;

    /// Starts its loops (fetching into `tx` until `stop`); returns the fetch
    /// loop's handle.
    fn spawn<Args: DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        tx: mpsc::Sender<Task<Args>>,
        stop: CancellationToken,
    ) -> JoinHandle<()>;

    /// Once every started task finished and `stop` is cancelled: waits for
    /// the fetch loop to end and hands back every message still claimed by
    /// this consumer (fetched but never started).
    fn close(
        self: Arc<Self>,
        fetcher: Option<JoinHandle<()>>,
    ) -> BoxFuture<'static, Result<(), QueueError>>;
}

/// The apalis backend of one consumer (see the module documentation).
pub struct ConsumerBackend<C, Args> {
    consumer: Arc<C>,
    rx: Option<mpsc::Receiver<Task<Args>>>,
    fetcher: Option<JoinHandle<()>>,
    stop: CancellationToken,
    closing: Option<BoxFuture<'static, Result<(), QueueError>>>,
    _args: PhantomData<fn() -> Args>,
}

impl<C: Consumer, Args> std::fmt::Debug for ConsumerBackend<C, Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBackend")
            .field("consumer", &self.consumer.options().consumer)
            .finish_non_exhaustive()
    }
}

impl<C, Args> ConsumerBackend<C, Args> {
    pub(crate) fn new(consumer: C) -> Self {
        Self {
            consumer: Arc::new(consumer),
            rx: None,
            fetcher: None,
            stop: CancellationToken::new(),
            closing: None,
            _args: PhantomData,
        }
    }
}

impl<C: Consumer, Args: DeserializeOwned + Send + 'static> ConsumerBackend<C, Args> {
    fn start(&mut self) -> &mut mpsc::Receiver<Task<Args>> {
        let consumer = &self.consumer;
        let stop = &self.stop;
        let fetcher = &mut self.fetcher;
        self.rx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(consumer.options().prefetch.max(1));
            *fetcher = Some(consumer.spawn(tx, stop.clone()));
            rx
        })
    }
}

impl<C, Args> Drop for ConsumerBackend<C, Args> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<C: Consumer, Args: DeserializeOwned + Send + 'static> Backend for ConsumerBackend<C, Args> {
    type Task = Task<Args>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Args>, QueueError>>> {
        self.start().poll_recv(cx).map(|task| task.map(Ok))
    }

    /// Runs once every started task finished: stops fetching and hands the
    /// messages fetched but never started back to the queue for others.
    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        if self.closing.is_none() {
            self.stop.cancel();
            if let Some(rx) = &mut self.rx {
                rx.close();
                while rx.try_recv().is_ok() {}
            }
            let fetcher = self.fetcher.take();
            self.closing = Some(self.consumer.clone().close(fetcher));
        }
        match self.closing.as_mut() {
            Some(closing) => closing.as_mut().poll(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<C: Consumer, Args> BackendConfig for ConsumerBackend<C, Args> {
    type Args = Args;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ConsumerOptions;
    type Layer = AckLayer<C>;

    fn config(&self) -> &ConsumerOptions {
        self.consumer.options()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> AckLayer<C> {
        AckLayer::new(self.consumer.clone())
    }
}
