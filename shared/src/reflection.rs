//! gRPC server reflection for every Seam server, in both protocol versions: `grpc.reflection.v1`
//! and `grpc.reflection.v1alpha`, which most tools still speak (grpcurl 1.8, `grpcio-reflection`'s
//! client, Postman). Both describe the Seam protos and `grpc.health.v1`, and list the services a
//! server really serves: its own, health and both reflection versions.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// Services every Seam gRPC server has besides its own.
const ALWAYS: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn configured(services: &[&str]) -> Builder<'static> {
    let builder = Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false);
    services
        .iter()
        .chain(&ALWAYS)
        .fold(builder, |b, s| b.with_service_name(*s))
}

/// The `grpc.reflection.v1` service of a server whose own services are `services`
/// (fully-qualified names, e.g. `seam.edge.v1.Assistant`).
pub fn v1(
    services: &[&str],
) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection + use<>>, Error> {
    configured(services).build_v1()
}

/// The `grpc.reflection.v1alpha` service, the same descriptors and list.
pub fn v1alpha(
    services: &[&str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection + use<>>, Error> {
    configured(services).build_v1alpha()
}
