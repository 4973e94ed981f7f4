//! `seam.admin.v1` for operators, on its own port, every call checked against a bearer token.

use crate::core::Core;
use crate::policy_store::PutRejected;
use seam_shared::proto::admin::admin_server::Admin;
use seam_shared::proto::admin::{
    GetPolicyRequest, GetPolicyResponse, ListSessionsRequest, ListSessionsResponse,
    ListWorkersRequest, ListWorkersResponse, PolicyError, PutPolicyRequest, PutPolicyResponse,
    RouteStatsRequest, RouteStatsResponse, SessionInfo,
};
use seam_shared::proto::common::{RouteCount, RouteKind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tonic::{Request, Response, Status};

/// Largest page of `ListSessions`.
const MAX_PAGE: usize = 1000;

/// Requires `authorization: Bearer <token>`; compares in constant time.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Arc<[u8]>,
}

impl BearerAuth {
    pub fn new(token: &str) -> BearerAuth {
        BearerAuth {
            expected: format!("Bearer {token}").into_bytes().into(),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl BearerAuth {
    /// Checks the value of an `authorization` header (gRPC metadata or HTTP).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        match authorization {
            Some(v) if constant_time_eq(v, &self.expected) => Ok(()),
            Some(_) => Err("wrong admin token"),
            None => Err("the admin API needs `authorization: Bearer <token>`"),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        match self.check(header) {
            Ok(()) => Ok(req),
            Err(why) => Err(Status::unauthenticated(why)),
        }
    }
}

/// The admin service.
pub struct AdminService {
    pub core: Arc<Core>,
    pub started_unix_ms: u64,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_policy(
        &self,
        _: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let p = self.core.store.current();
        Ok(Response::new(GetPolicyResponse {
            version: p.version,
            policy_toml: p.toml.to_string(),
            digest: p.digest.clone(),
            loaded_unix_ms: p.loaded_unix_ms,
            source: p.source.clone(),
        }))
    }

    async fn put_policy(
        &self,
        request: Request<PutPolicyRequest>,
    ) -> Result<Response<PutPolicyResponse>, Status> {
        let r = request.into_inner();
        match self
            .core
            .store
            .put(&r.policy_toml, r.dry_run, r.expected_version)
        {
            Ok(version) => {
                if !r.dry_run {
                    self.core.metrics.policy_version.set(version as i64);
                    self.core.metrics.policy_reload("published");
                    tracing::info!(version, source = "admin", "policy published");
                }
                Ok(Response::new(PutPolicyResponse {
                    accepted: true,
                    version,
                    errors: vec![],
                    warnings: vec![],
                }))
            }
            Err(PutRejected::Conflict { in_force }) => Err(Status::failed_precondition(format!(
                "expected_version does not match version {in_force} in force"
            ))),
            Err(PutRejected::Invalid(message)) => {
                self.core.metrics.policy_reload("rejected");
                tracing::warn!(error = %message, "policy put rejected; the policy in force stays");
                Ok(Response::new(PutPolicyResponse {
                    accepted: false,
                    version: self.core.store.current().version,
                    errors: vec![PolicyError {
                        line: 0,
                        column: 0,
                        rule: rule_named(&message),
                        message,
                    }],
                    warnings: vec![],
                }))
            }
        }
    }

    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self.core.worker_statuses();
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let r = request.into_inner();
        let size = match r.page_size as usize {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        let skip: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page_token"))?
        };
        let matching: Vec<_> = self
            .core
            .sessions
            .all()
            .into_iter()
            .filter(|s| r.device_id.is_empty() || s.owner.as_str() == r.device_id)
            .filter(|s| r.worker.is_empty() || s.worker() == r.worker)
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let sessions: Vec<SessionInfo> = matching
            .iter()
            .skip(skip)
            .take(size)
            .map(|s| SessionInfo {
                session_id: s.id.clone(),
                device_id: s.owner.to_string(),
                worker: s.worker(),
                split_layer: s.open.split_layer,
                created_unix_ms: s.created_unix_ms,
                last_active_unix_ms: now_ms.saturating_sub(s.idle_for().as_millis() as u64),
                positions: s.kv_len(),
                steps: s.steps.load(Ordering::Relaxed),
                moves: s.moves.load(Ordering::Relaxed),
            })
            .collect();
        let next = skip + sessions.len();
        Ok(Response::new(ListSessionsResponse {
            sessions,
            next_page_token: if next < matching.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn route_stats(
        &self,
        _: Request<RouteStatsRequest>,
    ) -> Result<Response<RouteStatsResponse>, Status> {
        let counts = self
            .core
            .route_counts
            .lock()
            .expect("route counts lock")
            .clone();
        let mut go_local = std::collections::HashMap::new();
        let mut out = Vec::new();
        let mut total = 0;
        for ((kind, layer, rule), count) in counts {
            total += count;
            if kind == RouteKind::Local as i32
                && let Some(reason) = rule.strip_prefix("gateway: ")
            {
                *go_local.entry(reason.to_string()).or_insert(0) += count;
            }
            out.push(RouteCount {
                kind,
                split_layer: layer,
                rule,
                count,
            });
        }
        Ok(Response::new(RouteStatsResponse {
            counts: out,
            total,
            since_unix_ms: self.started_unix_ms,
            go_local_by_reason: go_local,
        }))
    }
}

/// The rule a policy error names (``rule 2 (`night`): …``), if any.
fn rule_named(message: &str) -> String {
    message
        .split_once("rule ")
        .and_then(|(_, rest)| rest.split_once("(`"))
        .and_then(|(_, rest)| rest.split_once("`)"))
        .map(|(name, _)| name.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn bearer_token_is_required_and_checked() {
        let mut auth = BearerAuth::new("s3cret");
        let with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        assert!(auth.call(with(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
        ] {
            assert_eq!(
                auth.call(with(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }

    #[test]
    fn policy_errors_name_their_rule() {
        assert_eq!(rule_named("policy: rule 2 (`night`): bad `when`"), "night");
        assert_eq!(rule_named("missing field `version`"), "");
    }
}
