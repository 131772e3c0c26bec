//! The SMS provider's webhook body as the inbox reads it, sans I/O: the
//! JSON the gateway POSTs (`to`, `message`, `reference`, `expires_at_ms`)
//! checked field by field, and the OTP found in the message. Reasons for a
//! refusal name the field, never its value (a value may hold the OTP).

use schemas::twofa::{valid_mobile, OTP_DIGITS};
use serde_json::Value;
use std::fmt;
use zeroize::Zeroizing;

/// One SMS the gateway asked the provider to send.
#[derive(Clone, PartialEq, Eq)]
pub struct SmsWebhook {
    /// E.164, e.g. `+6591234567`.
    pub to: String,
    /// The text as the phone shows it: holds the OTP.
    pub message: Zeroizing<String>,
    /// The gateway's reference, `2fa-<challenge id>`.
    pub reference: String,
    /// When the OTP stops working, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The OTP ([`extract_otp`] of the message).
    pub otp: Zeroizing<String>,
}

impl fmt::Debug for SmsWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsWebhook")
            .field("to", &schemas::twofa::mask_mobile(&self.to))
            .field("message", &"<redacted>")
            .field("reference", &self.reference)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("otp", &"<redacted>")
            .finish()
    }
}

/// Why a webhook body was refused (answered 400 and recorded as malformed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing or not a string")]
    MissingString(&'static str),
    #[error("field `expires_at_ms` is missing or not a non-negative integer")]
    MissingExpiry,
    #[error("field `to` is not an E.164 number (+ and 8 to 15 digits)")]
    BadMobile,
    #[error("field `message` holds no run of exactly {OTP_DIGITS} digits (the OTP)")]
    NoOtp,
}

/// Reads a webhook body: every field present and of its type, `to` a
/// mobile number, an OTP in `message`. Unknown fields are ignored.
pub fn parse_webhook(body: &[u8]) -> Result<SmsWebhook, WebhookError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // Position and category only: serde_json's syntax errors quote no
        // input, but its data errors can.
        WebhookError::NotJson(format!("line {} column {}", e.line(), e.column()))
    })?;
    let Value::Object(mut fields) = value else {
        return Err(WebhookError::NotAnObject);
    };
    let mut string = |name: &'static str| match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(WebhookError::MissingString(name)),
    };
    let to = string("to")?;
    let message = Zeroizing::new(string("message")?);
    let reference = string("reference")?;
    let expires_at_ms = fields
        .get("expires_at_ms")
        .and_then(Value::as_u64)
        .ok_or(WebhookError::MissingExpiry)?;
    if !valid_mobile(&to) {
        return Err(WebhookError::BadMobile);
    }
    let otp = extract_otp(&message).ok_or(WebhookError::NoOtp)?;
    let otp = Zeroizing::new(otp.to_string());
    Ok(SmsWebhook {
        to,
        message,
        reference,
        expires_at_ms,
        otp,
    })
}

/// The OTP in an SMS text: the first run of exactly [`OTP_DIGITS`] ASCII
/// digits that is not part of a longer run (so a phone number or a date
/// in the template is never taken for it).
pub fn extract_otp(message: &str) -> Option<&str> {
    let bytes = message.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i - start == OTP_DIGITS {
            // ASCII digits are single bytes: both ends are char boundaries.
            return message.get(start..i);
        }
    }
    None
}

/// The challenge id of a reference `2fa-<challenge id>`.
pub fn reference_challenge(reference: &str) -> Option<u64> {
    reference.strip_prefix("2fa-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"to": "+6591234567", "message": "Your iglooworks unlock code is 123456. It expires in 5 minutes. Never share it.", "reference": "2fa-77", "expires_at_ms": 1764000000000}"#;

    #[test]
    fn the_otp_is_the_first_run_of_exactly_six_digits() {
        assert_eq!(
            extract_otp("Your iglooworks unlock code is 123456. It expires in 5 minutes."),
            Some("123456")
        );
        // Longer and shorter runs are skipped, wherever they are.
        assert_eq!(extract_otp("Call +6591234567: code 004211"), Some("004211"));
        assert_eq!(
            extract_otp("1234567 then 12345 then 654321x"),
            Some("654321")
        );
        assert_eq!(extract_otp("654321"), Some("654321"));
        assert_eq!(extract_otp("code:111111,222222"), Some("111111"));
        assert_eq!(extract_otp("on 2025-11-24 code 12 3456"), None);
        assert_eq!(extract_otp("1234567"), None);
        assert_eq!(extract_otp(""), None);
        // Non-ASCII digits are not digits of a code; text around is any UTF-8.
        assert_eq!(extract_otp("código ١٢٣٤٥٦ é 987654 ✓"), Some("987654"));
    }

    #[test]
    fn a_gateway_body_reads_with_every_field() {
        let w = parse_webhook(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(w.to, "+6591234567");
        assert_eq!(w.otp.as_str(), "123456");
        assert_eq!(w.reference, "2fa-77");
        assert_eq!(reference_challenge(&w.reference), Some(77));
        assert_eq!(w.expires_at_ms, 1_764_000_000_000);
        let debug = format!("{w:?}");
        assert!(
            !debug.contains("123456") && !debug.contains("91234567"),
            "{debug}"
        );
    }

    #[test]
    fn malformed_bodies_are_named_without_their_values() {
        let cases: [(&str, WebhookError); 7] = [
            ("{", WebhookError::NotJson("line 1 column 1".into())),
            ("[1]", WebhookError::NotAnObject),
            (
                r#"{"message": "123456", "reference": "r", "expires_at_ms": 1}"#,
                WebhookError::MissingString("to"),
            ),
            (
                r#"{"to": "+6591234567", "message": 123456, "reference": "r", "expires_at_ms": 1}"#,
                WebhookError::MissingString("message"),
            ),
            (
                r#"{"to": "+6591234567", "message": "123456", "reference": "r", "expires_at_ms": -1}"#,
                WebhookError::MissingExpiry,
            ),
            (
                r#"{"to": "6591234567", "message": "123456", "reference": "r", "expires_at_ms": 1}"#,
                WebhookError::BadMobile,
            ),
            (
                r#"{"to": "+6591234567", "message": "code 1234567", "reference": "r", "expires_at_ms": 1}"#,
                WebhookError::NoOtp,
            ),
        ];
        for (body, expected) in cases {
            let err = parse_webhook(body.as_bytes()).unwrap_err();
            assert_eq!(err, expected, "{body}");
            assert!(!err.to_string().contains("123456"), "{err}");
        }
        assert_eq!(reference_challenge("sms-1"), None);
    }
}
