//! The gRPC (HTTP/2, mTLS) device client.

use super::{Answers, StepChannel};
use crate::error::{Error, Result};
use crate::tls::{TlsFiles, install_provider};
use seam_shared::proto::gateway::gateway_client::GatewayClient as Stub;
use seam_shared::proto::gateway::{
    CloseSessionRequest, CloseSessionResponse, GetPolicyRequest, OpenSessionRequest,
    OpenSessionResponse, PolicyResponse, ReportLinkRequest, ReportLinkResponse, WatchPolicyRequest,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// Largest answer accepted (a step with logits).
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct GrpcClient {
    stub: Stub<Channel>,
}

impl GrpcClient {
    /// Connects to `addr` (`host:port`), checking the gateway's certificate for `server_name`.
    pub async fn connect(addr: &str, server_name: &str, tls: &TlsFiles) -> Result<GrpcClient> {
        install_provider();
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| Error::Net(format!("gateway address {addr:?}: {e}")))?
            .tls_config(tls.grpc_client(server_name))
            .map_err(|e| Error::Tls(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .connect()
            .await
            .map_err(|e| Error::Net(format!("gRPC to {addr}: {}", source_chain(&e))))?;
        Ok(GrpcClient {
            stub: Stub::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .max_encoding_message_size(MAX_ANSWER_BYTES),
        })
    }

    pub async fn get_policy(&self, known_version: u64) -> Result<PolicyResponse, Status> {
        Ok(self
            .stub
            .clone()
            .get_policy(GetPolicyRequest { known_version })
            .await?
            .into_inner())
    }

    pub async fn watch_policy(
        &self,
        known_version: u64,
    ) -> Result<Answers<PolicyResponse>, Status> {
        let s = self
            .stub
            .clone()
            .watch_policy(WatchPolicyRequest { known_version })
            .await?
            .into_inner();
        Ok(Box::pin(s))
    }

    pub async fn open_session(&self, r: OpenSessionRequest) -> Result<OpenSessionResponse, Status> {
        Ok(self.stub.clone().open_session(r).await?.into_inner())
    }

    pub async fn close_session(
        &self,
        r: CloseSessionRequest,
    ) -> Result<CloseSessionResponse, Status> {
        Ok(self.stub.clone().close_session(r).await?.into_inner())
    }

    pub async fn report_link(&self, r: ReportLinkRequest) -> Result<ReportLinkResponse, Status> {
        Ok(self.stub.clone().report_link(r).await?.into_inner())
    }

    pub async fn steps(&self) -> Result<StepChannel, Status> {
        let (tx, rx) = mpsc::channel(64);
        let answers = self
            .stub
            .clone()
            .step(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, Box::pin(answers)))
    }
}

/// An error with its sources, for messages that say why a connection failed.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
