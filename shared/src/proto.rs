//! Generated code for the wire contract (`proto/seam/v1/*.proto`).
//!
//! One module per protobuf package: `common` (`seam.common.v1`), `edge`
//! (`seam.edge.v1`), `gateway` (`seam.gateway.v1`), `worker`
//! (`seam.worker.v1`) and `admin` (`seam.admin.v1`). Each service has a
//! `*_client` and a `*_server` submodule.

/// Shared types: tensors, sampling, routes, route features, split-session steps.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod common {
    tonic::include_proto!("seam.common.v1");
}

/// The on-device `Assistant` API apps call.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod edge {
    tonic::include_proto!("seam.edge.v1");
}

/// The device-facing `Gateway` API of the router (gRPC and QUIC frames).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod gateway {
    tonic::include_proto!("seam.gateway.v1");
}

/// The cloud `Worker` API the gateway calls.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod worker {
    tonic::include_proto!("seam.worker.v1");
}

/// The operator `Admin` API of the gateway.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod admin {
    tonic::include_proto!("seam.admin.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of all Seam protos (with
/// source info), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/seam_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::common::{DType, StepRequest, Tensor};
    use prost::Message;

    #[test]
    fn step_request_round_trips() {
        let req = StepRequest {
            session_id: "s1".into(),
            step_id: 7,
            start_position: 12,
            hidden: Some(Tensor {
                shape: vec![2, 4],
                dtype: DType::Int8 as i32,
                data: vec![1u8, 2, 3, 4, 5, 6, 7, 8].into(),
                scales: vec![0.5, 0.25],
                group_size: 0,
                half_scales: Default::default(),
            }),
            draft_tokens: vec![42],
            rollback_to: Some(0),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let back = StepRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back, req);
        assert_eq!(back.rollback_to, Some(0));
    }

    #[test]
    fn descriptor_set_names_every_package() {
        let fds = super::FILE_DESCRIPTOR_SET;
        for pkg in [
            "seam.common.v1",
            "seam.edge.v1",
            "seam.gateway.v1",
            "seam.worker.v1",
            "seam.admin.v1",
        ] {
            assert!(
                fds.windows(pkg.len()).any(|w| w == pkg.as_bytes()),
                "{pkg} missing from the descriptor set"
            );
        }
    }
}
