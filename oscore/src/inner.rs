//! The inner plaintext of an OSCORE message (RFC 8613 §5.3): the original
//! CoAP code, the Class E options in CoAP option encoding (RFC 7252 §3.1),
//! and the payload after a `0xFF` marker when there is one.
//!
//! ```text
//! plaintext = code (1 byte) | options (delta/length encoded) | [0xFF payload]
//! ```
//!
//! Which CoAP options go inside is [`is_class_e`] (RFC 8613 §4.1); the CoAP
//! adapter splits a message's options with it. This module knows nothing of
//! CoAP headers, tokens or message ids, and decoding never panics.

use crate::MAX_PLAINTEXT_LEN;

/// The CoAP payload marker (RFC 7252 §3).
const PAYLOAD_MARKER: u8 = 0xff;
/// Nibble value: an 8-bit extended delta/length follows, minus 13.
const EXT_8: u8 = 13;
/// Nibble value: a 16-bit extended delta/length follows, minus 269.
const EXT_16: u8 = 14;
/// Nibble value reserved for the payload marker (RFC 7252 §3.1).
const RESERVED: u8 = 15;
/// Offset of an 8-bit extended delta/length.
const EXT_8_BASE: usize = 13;
/// Offset of a 16-bit extended delta/length.
const EXT_16_BASE: usize = 269;
/// Largest delta or length the encoding can express: 269 + 65535.
pub const MAX_OPTION_VALUE_LEN: usize = EXT_16_BASE + u16::MAX as usize;

/// Why an inner plaintext was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InnerError {
    /// No code byte at all.
    #[error("empty plaintext (no code byte)")]
    Empty,
    /// The plaintext ends inside an option header or value.
    #[error("truncated option {0}")]
    Truncated(&'static str),
    /// A delta or length nibble of 15 outside the payload marker.
    #[error("reserved nibble 15 in an option {0}")]
    ReservedNibble(&'static str),
    /// A payload marker followed by no payload (RFC 7252 §3: a format error).
    #[error("payload marker with an empty payload")]
    EmptyPayloadAfterMarker,
    /// An option number beyond 65535.
    #[error("option number exceeds 65535")]
    OptionNumberOverflow,
    /// An option value longer than the encoding can express.
    #[error("option {number} value of {len} bytes exceeds {MAX_OPTION_VALUE_LEN}")]
    OptionTooLong {
        /// The option number.
        number: u16,
        /// The value length.
        len: usize,
    },
    /// An encoded plaintext longer than AES-CCM can protect.
    #[error("plaintext of {0} bytes exceeds {MAX_PLAINTEXT_LEN}")]
    TooLong(usize),
}

/// A decoded inner plaintext.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InnerMessage {
    /// The original CoAP code (request method or response code).
    pub code: u8,
    /// Class E options as (number, value). Encoding sorts them by number,
    /// keeping the order of repeated options; decoding returns them sorted.
    pub options: Vec<(u16, Vec<u8>)>,
    /// The payload; empty means no payload marker.
    pub payload: Vec<u8>,
}

impl InnerMessage {
    /// A message with no options: how a non-CoAP transport (MQTT) wraps a
    /// payload (see the crate docs).
    pub fn bare(code: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            code,
            options: Vec::new(),
            payload: payload.into(),
        }
    }

    /// Writes `code | options | [0xFF payload]`. Options are sorted by
    /// number (stable, so repeated options keep their order).
    pub fn encode(&self) -> Result<Vec<u8>, InnerError> {
        let mut sorted: Vec<&(u16, Vec<u8>)> = self.options.iter().collect();
        sorted.sort_by_key(|(number, _)| *number);

        let values: usize = sorted.iter().map(|(_, v)| v.len() + 5).sum();
        let mut out = Vec::with_capacity(2 + values + self.payload.len());
        out.push(self.code);
        let mut previous = 0u16;
        for (number, value) in sorted {
            if value.len() > MAX_OPTION_VALUE_LEN {
                return Err(InnerError::OptionTooLong {
                    number: *number,
                    len: value.len(),
                });
            }
            let delta = usize::from(number - previous);
            let (delta_nibble, delta_ext) = nibble(delta);
            let (len_nibble, len_ext) = nibble(value.len());
            out.push(delta_nibble << 4 | len_nibble);
            out.extend_from_slice(&delta_ext[..ext_len(delta_nibble)]);
            out.extend_from_slice(&len_ext[..ext_len(len_nibble)]);
            out.extend_from_slice(value);
            previous = *number;
        }
        if !self.payload.is_empty() {
            out.push(PAYLOAD_MARKER);
            out.extend_from_slice(&self.payload);
        }
        if out.len() > MAX_PLAINTEXT_LEN {
            return Err(InnerError::TooLong(out.len()));
        }
        Ok(out)
    }

    /// Parses a decrypted plaintext. Rejects truncation, reserved nibbles,
    /// option numbers past 65535 and a marker without payload.
    pub fn decode(plaintext: &[u8]) -> Result<Self, InnerError> {
        let Some((&code, mut rest)) = plaintext.split_first() else {
            return Err(InnerError::Empty);
        };
        let mut options = Vec::new();
        let mut number = 0usize;
        while let Some((&header, tail)) = rest.split_first() {
            rest = tail;
            if header == PAYLOAD_MARKER {
                if rest.is_empty() {
                    return Err(InnerError::EmptyPayloadAfterMarker);
                }
                return Ok(Self {
                    code,
                    options,
                    payload: rest.to_vec(),
                });
            }
            let delta = extended(header >> 4, &mut rest, "delta")?;
            let len = extended(header & 0x0f, &mut rest, "length")?;
            number += delta;
            let number16 = u16::try_from(number).map_err(|_| InnerError::OptionNumberOverflow)?;
            if rest.len() < len {
                return Err(InnerError::Truncated("value"));
            }
            let (value, tail) = rest.split_at(len);
            options.push((number16, value.to_vec()));
            rest = tail;
        }
        Ok(Self {
            code,
            options,
            payload: Vec::new(),
        })
    }
}

/// The nibble and extension bytes for a delta or length (RFC 7252 §3.1).
fn nibble(value: usize) -> (u8, [u8; 2]) {
    if value < EXT_8_BASE {
        (value as u8, [0; 2])
    } else if value < EXT_16_BASE {
        (EXT_8, [(value - EXT_8_BASE) as u8, 0])
    } else {
        // Callers bound `value` by MAX_OPTION_VALUE_LEN (lengths) or by
        // u16::MAX (deltas), so the subtraction fits 16 bits.
        let ext = (value - EXT_16_BASE) as u16;
        (EXT_16, ext.to_be_bytes())
    }
}

/// How many extension bytes follow a nibble.
fn ext_len(nibble: u8) -> usize {
    match nibble {
        EXT_8 => 1,
        EXT_16 => 2,
        _ => 0,
    }
}

/// Reads the full delta or length a nibble starts, consuming its extension.
fn extended(nibble: u8, rest: &mut &[u8], what: &'static str) -> Result<usize, InnerError> {
    let take = |rest: &mut &[u8], n: usize| -> Result<usize, InnerError> {
        if rest.len() < n {
            return Err(InnerError::Truncated(what));
        }
        let (ext, tail) = rest.split_at(n);
        *rest = tail;
        Ok(ext.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b)))
    };
    match nibble {
        EXT_8 => Ok(EXT_8_BASE + take(rest, 1)?),
        EXT_16 => Ok(EXT_16_BASE + take(rest, 2)?),
        RESERVED => Err(InnerError::ReservedNibble(what)),
        small => Ok(usize::from(small)),
    }
}

/// Whether option `number` is encrypted (Class E) — true for every option
/// RFC 8613 §4.1 (Figure 5) marks E, including those marked both E and U
/// (Observe, Max-Age, Block1/2, Size1/2, No-Response), and for every option
/// the table does not list (§4.1: unknown options are Class E).
pub fn is_class_e(number: u16) -> bool {
    // Class U only: Uri-Host, Uri-Port, OSCORE, Proxy-Uri, Proxy-Scheme.
    !matches!(number, 3 | 7 | 9 | 35 | 39)
}

/// Whether option `number` (also) travels in the outer message (Class U,
/// RFC 8613 §4.1 Figure 5). Options that are both E and U get an inner
/// value and, where §4.1.3 says so (Observe, Block for proxies, Max-Age),
/// an outer one set by the adapter. Proxy-Uri must first be split as
/// §4.1.3.3 describes.
pub fn is_class_u(number: u16) -> bool {
    matches!(
        number,
        3 | 6 | 7 | 9 | 14 | 23 | 27 | 28 | 35 | 39 | 60 | 258
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8613 Appendix C.4: GET with Uri-Path "tv1".
    #[test]
    fn rfc8613_c4_request_plaintext() {
        let msg = InnerMessage {
            code: 0x01,
            options: vec![(11, b"tv1".to_vec())],
            payload: vec![],
        };
        let wire = hex::decode("01b3747631").expect("test hex");
        assert_eq!(msg.encode(), Ok(wire.clone()));
        assert_eq!(InnerMessage::decode(&wire), Ok(msg));
    }

    // RFC 8613 Appendix C.7: 2.05 with payload "Hello World!".
    #[test]
    fn rfc8613_c7_response_plaintext() {
        let msg = InnerMessage::bare(0x45, b"Hello World!".to_vec());
        let wire = hex::decode("45ff48656c6c6f20576f726c6421").expect("test hex");
        assert_eq!(msg.encode(), Ok(wire.clone()));
        assert_eq!(InnerMessage::decode(&wire), Ok(msg));
    }

    #[test]
    fn options_are_sorted_and_repeated_options_keep_their_order() {
        let msg = InnerMessage {
            code: 0x02,
            options: vec![
                (12, vec![60]),
                (11, b"lock".to_vec()),
                (11, b"state".to_vec()),
            ],
            payload: b"x".to_vec(),
        };
        let decoded = InnerMessage::decode(&msg.encode().expect("encodable"));
        assert_eq!(
            decoded.map(|m| m.options),
            Ok(vec![
                (11, b"lock".to_vec()),
                (11, b"state".to_vec()),
                (12, vec![60]),
            ])
        );
    }

    #[test]
    fn extended_deltas_and_lengths_use_13_and_14() {
        let msg = InnerMessage {
            code: 0x45,
            options: vec![(13, vec![7; 13]), (300, vec![8; 269]), (65535, vec![])],
            payload: vec![],
        };
        let wire = msg.encode().expect("encodable");
        // Option 13: delta 13 (nibble 13, ext 0), length 13 (nibble 13, ext 0).
        assert_eq!(&wire[1..4], &[0xdd, 0x00, 0x00]);
        assert_eq!(InnerMessage::decode(&wire), Ok(msg));
    }

    #[test]
    fn malformed_plaintexts_are_refused() {
        let cases: [(&[u8], InnerError); 7] = [
            (&[], InnerError::Empty),
            (&[0x45, 0xff], InnerError::EmptyPayloadAfterMarker),
            (&[0x45, 0xf1, 0x00], InnerError::ReservedNibble("delta")),
            (&[0x45, 0x1f], InnerError::ReservedNibble("length")),
            (&[0x45, 0xd0], InnerError::Truncated("delta")),
            (&[0x45, 0xe0, 0x01], InnerError::Truncated("delta")),
            (&[0x45, 0xb3, b't', b'v'], InnerError::Truncated("value")),
        ];
        for (wire, want) in cases {
            assert_eq!(InnerMessage::decode(wire), Err(want), "{wire:02x?}");
        }
        // Two deltas of 65535 + 1 overflow the option number space.
        let overflow = [0x45, 0xe0, 0xfe, 0xf2, 0x10];
        assert_eq!(
            InnerMessage::decode(&overflow),
            Err(InnerError::OptionNumberOverflow)
        );
    }

    #[test]
    fn option_classes_follow_rfc8613_figure_5() {
        for outer_only in [3, 7, 9, 35, 39] {
            assert!(!is_class_e(outer_only) && is_class_u(outer_only));
        }
        for both in [6, 14, 23, 27, 28, 60, 258] {
            assert!(is_class_e(both) && is_class_u(both));
        }
        for inner_only in [1, 4, 5, 8, 11, 12, 15, 17, 20, 252, 292, 2049] {
            assert!(is_class_e(inner_only) && !is_class_u(inner_only));
        }
    }
}
