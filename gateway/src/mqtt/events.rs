//! Publishes dashboard events (JSON, QoS 1) in the order the writer committed them.

use super::MqttClient;
use crate::ingest::writer::Outbound;
use crate::metrics;
use tokio::sync::mpsc;

/// Events buffered between the writer and the broker. The writer waits when
/// it is full, so a stuck broker slows ingest rather than losing events.
pub const EVENT_QUEUE_CAPACITY: usize = 16_384;

/// Publish until the writer has stopped and every queued event is handed to the session.
pub async fn run(mut events: mpsc::Receiver<Outbound>, client: MqttClient) {
    while let Some(o) = events.recv().await {
        match client.publish(o.topic, o.payload).await {
            Ok(()) => metrics::published(o.kind),
            Err(e) => {
                metrics::publish_failed(o.kind);
                tracing::warn!(error = %e, "cannot hand a dashboard event to the MQTT session");
            }
        }
    }
}
