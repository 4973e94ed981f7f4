//! The tower stack of every call from the gateway to a worker: a deadline, a cap on calls in
//! flight with load shedding beyond it, and errors turned into gRPC statuses the device can act
//! on. Clones of a worker's client share its concurrency budget. A Step stream holds its permit
//! only until the worker answers with headers; steps in flight are bounded by the relay.

use crate::metrics::{Metrics, MetricsLayer};
use seam_shared::proto::worker::worker_client::WorkerClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::timeout::Timeout;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service under a worker client.
pub type WorkerSvc =
    Classify<LoadShed<ConcurrencyLimit<Timeout<crate::metrics::MetricsSvc<Channel>>>>>;

/// Turns the stack's own errors into statuses ([`classify`]).
#[derive(Clone)]
pub struct Classify<S>(S);

impl<S, R> tower::Service<R> for Classify<S>
where
    S: tower::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(classify)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let f = self.0.call(req);
        Box::pin(async move { f.await.map_err(classify) })
    }
}

/// Deadline exceeded and overload as gRPC statuses; everything else as it came.
fn classify(e: BoxError) -> BoxError {
    if e.is::<tower::timeout::error::Elapsed>() {
        return Box::new(tonic::Status::deadline_exceeded(
            "worker did not answer in time",
        ));
    }
    if e.is::<tower::load_shed::error::Overloaded>() {
        return Box::new(tonic::Status::resource_exhausted(
            "too many calls in flight to the worker",
        ));
    }
    e
}

/// A client of the worker behind `channel`.
pub fn worker_client(
    channel: Channel,
    timeout: Duration,
    max_concurrent: usize,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
) -> WorkerClient<WorkerSvc> {
    let svc = ServiceBuilder::new()
        .layer_fn(Classify)
        .load_shed()
        .concurrency_limit(max_concurrent)
        .timeout(timeout)
        .layer(MetricsLayer::new(metrics))
        .service(channel);
    WorkerClient::new(svc)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}
