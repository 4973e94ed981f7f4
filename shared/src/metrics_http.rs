//! The `/metrics` endpoint every Seam process serves (Prometheus text exposition, OpenMetrics
//! format): plain HTTP/1.1 on a port of its own, so that scraping never competes with the API.

use http_body_util::Full;
use hyper::body::Bytes;
use std::future::Future;
use std::sync::Arc;

/// Renders the current exposition text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    stop: impl Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let render = render.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move { Ok::<_, http::Error>(respond(req.uri().path(), &*render)) }
                });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn respond(path: &str, render: &(dyn Fn() -> String + Send + Sync)) -> http::Response<Full<Bytes>> {
    let resp = if path == "/metrics" {
        http::Response::builder()
            .header("content-type", CONTENT_TYPE)
            .body(Full::new(Bytes::from(render())))
    } else {
        http::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
    };
    resp.expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: http::Response<Full<Bytes>>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn metrics_path_renders_and_others_are_not_found() {
        let render = || "# EOF\n".to_string();
        let ok = respond("/metrics", &render);
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["content-type"], CONTENT_TYPE);
        assert_eq!(body(ok).await, "# EOF\n");
        assert_eq!(respond("/", &render).status(), 404);
    }
}
