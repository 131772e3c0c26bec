//! `/metrics` (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (the database answers, the MQTT session is up, and we are not
//! shutting down).

use crate::mqtt::MqttClient;
use crate::store::Store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub store: Store,
    /// The gateway's MQTT sessions (devices', backend's): ready when all are up.
    pub mqtt: Vec<MqttClient>,
    pub shutdown: CancellationToken,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> String {
    // Process and runtime gauges as of this scrape.
    crate::process::sample();
    s.metrics.render()
}

async fn ready(State(s): State<HttpState>) -> (StatusCode, String) {
    if s.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if let Err(e) = s.store.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database not answering: {e}\n"),
        );
    }
    if !s.mqtt.iter().all(MqttClient::is_connected) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "MQTT session not connected\n".into(),
        );
    }
    (StatusCode::OK, "ready\n".into())
}
