//! The device side of `seam.gateway.v1`, over QUIC or gRPC with the same calls, used by the edge
//! agent, the tests and the bench. Failures come back as gRPC statuses whichever the transport.

mod grpc;
mod quic;

pub use grpc::GrpcClient;
pub use quic::QuicClient;
pub use quic::client_endpoint as quic_client_endpoint;

use futures::Stream;
use seam_shared::proto::common::{StepRequest, StepResponse};
use seam_shared::proto::gateway::{
    CloseSessionRequest, CloseSessionResponse, OpenSessionRequest, OpenSessionResponse,
    PolicyResponse, ReportLinkRequest, ReportLinkResponse,
};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// A stream of answers.
pub type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A step stream: steps go in through the sender, answers come out of the stream.
pub type StepChannel = (mpsc::Sender<StepRequest>, Answers<StepResponse>);

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Grpc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Grpc => "grpc",
        }
    }
}

/// A connected device client.
#[derive(Clone)]
pub enum GatewayClient {
    Quic(QuicClient),
    Grpc(GrpcClient),
}

impl GatewayClient {
    pub fn transport(&self) -> Transport {
        match self {
            GatewayClient::Quic(_) => Transport::Quic,
            GatewayClient::Grpc(_) => Transport::Grpc,
        }
    }

    /// Smoothed RTT measured by the transport (QUIC), if it measures one.
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            GatewayClient::Quic(c) => Some(c.rtt()),
            GatewayClient::Grpc(_) => None,
        }
    }

    pub async fn get_policy(&self, known_version: u64) -> Result<PolicyResponse, Status> {
        match self {
            GatewayClient::Quic(c) => c.get_policy(known_version).await,
            GatewayClient::Grpc(c) => c.get_policy(known_version).await,
        }
    }

    pub async fn watch_policy(
        &self,
        known_version: u64,
    ) -> Result<Answers<PolicyResponse>, Status> {
        match self {
            GatewayClient::Quic(c) => c.watch_policy(known_version).await,
            GatewayClient::Grpc(c) => c.watch_policy(known_version).await,
        }
    }

    pub async fn open_session(&self, r: OpenSessionRequest) -> Result<OpenSessionResponse, Status> {
        match self {
            GatewayClient::Quic(c) => c.open_session(r).await,
            GatewayClient::Grpc(c) => c.open_session(r).await,
        }
    }

    pub async fn close_session(
        &self,
        r: CloseSessionRequest,
    ) -> Result<CloseSessionResponse, Status> {
        match self {
            GatewayClient::Quic(c) => c.close_session(r).await,
            GatewayClient::Grpc(c) => c.close_session(r).await,
        }
    }

    pub async fn report_link(&self, r: ReportLinkRequest) -> Result<ReportLinkResponse, Status> {
        match self {
            GatewayClient::Quic(c) => c.report_link(r).await,
            GatewayClient::Grpc(c) => c.report_link(r).await,
        }
    }

    /// Opens a step stream.
    pub async fn steps(&self) -> Result<StepChannel, Status> {
        match self {
            GatewayClient::Quic(c) => c.steps().await,
            GatewayClient::Grpc(c) => c.steps().await,
        }
    }
}
