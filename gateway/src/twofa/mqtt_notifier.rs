//! The MQTT notifier: the OTP goes to the dashboard backend on
//! `notify/v1/{org}/sms` (QoS 1, JSON [`OtpNotification`]), and the backend
//! sends the text message itself. Only the backend's login may subscribe
//! there (`mqtt::front::policy`); devices cannot.
//!
//! Handed over means handed to the gateway's MQTT session, which
//! retransmits until the broker acknowledges (QoS 1). The session being
//! down, or its buffer not taking the message in time, is a failure the
//! lock hears about at once.

use super::notifier::{Notifier, NotifyError, NotifyFuture, OtpMessage};
use crate::mqtt::MqttClient;
use schemas::twofa::{sms_topic, OtpNotification};
use std::time::Duration;

/// How long a publish may wait for room in the session's buffer.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes OTPs for the dashboard backend.
pub struct MqttNotifier {
    client: MqttClient,
    template: String,
}

impl MqttNotifier {
    pub fn new(client: MqttClient, template: String) -> Self {
        MqttNotifier { client, template }
    }
}

impl Notifier for MqttNotifier {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn send<'a>(&'a self, msg: &'a OtpMessage) -> NotifyFuture<'a> {
        Box::pin(async move {
            if !self.client.is_connected() {
                return Err(NotifyError::Unavailable(
                    "the gateway's MQTT session is not connected to the broker; check the broker"
                        .into(),
                ));
            }
            let note = OtpNotification {
                notification_id: msg.challenge_id.to_string(),
                org: msg.org.clone(),
                user_id: msg.user_id.clone(),
                lock_id: msg.lock_id.clone(),
                mobile: msg.mobile.clone(),
                otp: msg.otp.to_string(),
                message: msg.render(&self.template).to_string(),
                expires_at_ms: msg.expires_at_ms,
            };
            // Infallible: a plain struct of strings and numbers.
            let payload = zeroize::Zeroizing::new(serde_json::to_vec(&note).expect("serialises"));
            drop(note);
            match tokio::time::timeout(
                HAND_OVER_TIMEOUT,
                self.client.publish(sms_topic(&msg.org), payload.to_vec()),
            )
            .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(NotifyError::Unavailable(format!(
                    "the MQTT session refused the message ({e})"
                ))),
                Err(_) => Err(NotifyError::Unavailable(format!(
                    "the MQTT session did not take the message within {} ms",
                    HAND_OVER_TIMEOUT.as_millis()
                ))),
            }
        })
    }
}
