//! `seam.gateway.v1.Gateway` over gRPC (HTTP/2 with mTLS): the device is the one its client
//! certificate names; everything else is [`Core`].

use crate::core::Core;
use crate::identity::{self, DeviceId};
use futures::Stream;
use seam_shared::proto::common::{StepRequest, StepResponse};
use seam_shared::proto::gateway::gateway_server::Gateway;
use seam_shared::proto::gateway::{
    CloseSessionRequest, CloseSessionResponse, GetPolicyRequest, OpenSessionRequest,
    OpenSessionResponse, PolicyResponse, ReportLinkRequest, ReportLinkResponse, WatchPolicyRequest,
};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The gRPC face of the gateway.
#[derive(Clone)]
pub struct GrpcGateway {
    pub core: Arc<Core>,
}

/// The device behind a request, from its verified client certificate.
pub fn device_of<T>(req: &Request<T>) -> Result<DeviceId, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a device client certificate is required"))?;
    identity::device_id(&certs).map_err(Status::unauthenticated)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Gateway for GrpcGateway {
    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<PolicyResponse>, Status> {
        let device = device_of(&request)?;
        Ok(Response::new(
            self.core.get_policy(&device, request.into_inner()),
        ))
    }

    type WatchPolicyStream = BoxStream<PolicyResponse>;

    async fn watch_policy(
        &self,
        request: Request<WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        let device = device_of(&request)?;
        let s = self.core.watch_policy(&device, request.into_inner());
        Ok(Response::new(Box::pin(s)))
    }

    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionResponse>, Status> {
        let device = device_of(&request)?;
        self.core
            .open_session(&device, request.into_inner())
            .await
            .map(Response::new)
    }

    type StepStream = BoxStream<StepResponse>;

    async fn step(
        &self,
        request: Request<Streaming<StepRequest>>,
    ) -> Result<Response<Self::StepStream>, Status> {
        let device = device_of(&request)?;
        let rx = self.core.relay(device, "grpc", request.into_inner());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        let device = device_of(&request)?;
        self.core
            .close_session(&device, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn report_link(
        &self,
        request: Request<ReportLinkRequest>,
    ) -> Result<Response<ReportLinkResponse>, Status> {
        let device = device_of(&request)?;
        self.core
            .report_link(&device, request.into_inner())
            .map(Response::new)
    }
}
