//! The OSCORE option value (RFC 8613 §6.1) and the Partial IV it carries.
//!
//! ```text
//!  0 1 2 3 4 5 6 7 <------------- n bytes -------------->
//! +-+-+-+-+-+-+-+-+--------------------------------------
//! |0 0 0|h|k|  n  |       Partial IV (if any) ...
//! +-+-+-+-+-+-+-+-+--------------------------------------
//!  <- 1 byte -> <----- s bytes ------>
//! +------------+----------------------+------------------+
//! | s (if any) | kid context (if any) | kid (if any) ... |
//! +------------+----------------------+------------------+
//! ```
//!
//! This module only parses and writes bytes; whether a field is required
//! (a request needs `kid` and a Partial IV) is checked by [`crate::protect`].
//! Decoding never panics on any input.

use std::fmt;

use crate::{MAX_ID_CONTEXT_LEN, MAX_PIV_LEN, MAX_SEQ};

/// Flag bit `k`: a `kid` follows (RFC 8613 §6.1).
const FLAG_KID: u8 = 0x08;
/// Flag bit `h`: a `kid context` with its length byte follows.
const FLAG_KID_CONTEXT: u8 = 0x10;
/// Bits 0..=2: `n`, the Partial IV length.
const MASK_PIV_LEN: u8 = 0x07;
/// Bits 5..=7: reserved (bit 7 for a future extension byte); must be zero.
const MASK_RESERVED: u8 = 0xe0;

/// Why an OSCORE option value (or a Partial IV) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A reserved flag bit (5, 6 or 7) is set.
    #[error("reserved flag bits set in {0:#04x}")]
    ReservedFlags(u8),
    /// `n` is 6 or 7, which RFC 8613 §6.1 reserves.
    #[error("reserved Partial IV length {0}")]
    ReservedPivLength(u8),
    /// The flag byte is zero but the value is not empty; RFC 8613 §6.1 says
    /// an all-zero option must be sent as an empty value.
    #[error("flag byte 0x00 must be sent as an empty option value")]
    ZeroFlagsNotEmpty,
    /// The value ends inside the named field.
    #[error("option value truncated inside the {0}")]
    Truncated(&'static str),
    /// Bytes remain after the last field (no `kid` flag to absorb them).
    #[error("{0} trailing bytes after the last field")]
    TrailingBytes(usize),
    /// The Partial IV has a leading zero byte; sequence numbers are encoded
    /// in the fewest bytes.
    #[error("Partial IV is not minimally encoded")]
    NonMinimalPartialIv,
    /// A Partial IV of 0 or more than 5 bytes, or a sequence number above
    /// 2^40 − 1.
    #[error("Partial IV out of range (1..=5 bytes, sequence number at most 2^40 - 1)")]
    PartialIvOutOfRange,
    /// A `kid context` longer than its one-byte length field can say.
    #[error("kid context of {0} bytes exceeds 255")]
    KidContextTooLong(usize),
    /// A request without a Partial IV (RFC 8613 §6.1: requests carry one).
    #[error("request has no Partial IV")]
    MissingPartialIv,
    /// A request without a `kid` (RFC 8613 §6.1: requests carry one).
    #[error("request has no kid")]
    MissingKid,
}

/// A Partial IV: the sender sequence number in the fewest big-endian bytes
/// (1 to 5; zero is one `0x00` byte). Holds only valid values, so its bytes
/// and its number correspond one to one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialIv {
    bytes: [u8; MAX_PIV_LEN],
    len: u8,
}

impl PartialIv {
    /// The Partial IV of sequence number `seq` (at most [`MAX_SEQ`]).
    pub fn from_seq(seq: u64) -> Result<Self, OptionError> {
        if seq > MAX_SEQ {
            return Err(OptionError::PartialIvOutOfRange);
        }
        let be = seq.to_be_bytes();
        // Keep at least the last byte, so zero encodes as 0x00.
        let skip = be[..7].iter().take_while(|&&b| b == 0).count();
        let len = 8 - skip;
        let mut bytes = [0u8; MAX_PIV_LEN];
        bytes[..len].copy_from_slice(&be[skip..]);
        Ok(Self {
            bytes,
            len: len as u8,
        })
    }

    /// Parses Partial IV bytes as carried in the option: 1 to 5 bytes,
    /// minimally encoded.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OptionError> {
        if bytes.is_empty() || bytes.len() > MAX_PIV_LEN {
            return Err(OptionError::PartialIvOutOfRange);
        }
        if bytes.len() > 1 && bytes[0] == 0 {
            return Err(OptionError::NonMinimalPartialIv);
        }
        let mut out = [0u8; MAX_PIV_LEN];
        out[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            bytes: out,
            len: bytes.len() as u8,
        })
    }

    /// The sender sequence number this Partial IV encodes.
    pub fn seq(&self) -> u64 {
        self.as_bytes()
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }

    /// The Partial IV bytes as they appear in the option, the nonce and the
    /// AAD.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for PartialIv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartialIv({})", self.seq())
    }
}

/// A decoded OSCORE option value. All fields `None` is the empty value a
/// response without a Partial IV carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OscoreOption {
    /// The sender's Partial IV (requests always; responses only when the
    /// responder used its own sequence number).
    pub partial_iv: Option<PartialIv>,
    /// The `kid context` (the ID Context, RFC 8613 §5.1), when sent.
    pub kid_context: Option<Vec<u8>>,
    /// The `kid`: the sender's Sender ID (requests always). May be empty.
    pub kid: Option<Vec<u8>>,
}

impl OscoreOption {
    /// Parses an OSCORE option value. Rejects reserved bits and lengths,
    /// truncation, trailing bytes and non-minimal Partial IVs; never panics.
    pub fn decode(value: &[u8]) -> Result<Self, OptionError> {
        let Some((&flags, mut rest)) = value.split_first() else {
            return Ok(Self::default());
        };
        if flags & MASK_RESERVED != 0 {
            return Err(OptionError::ReservedFlags(flags));
        }
        if flags == 0 {
            return Err(OptionError::ZeroFlagsNotEmpty);
        }
        let n = flags & MASK_PIV_LEN;
        if usize::from(n) > MAX_PIV_LEN {
            return Err(OptionError::ReservedPivLength(n));
        }

        let partial_iv = if n > 0 {
            let piv =
                take(&mut rest, usize::from(n)).ok_or(OptionError::Truncated("Partial IV"))?;
            Some(PartialIv::from_bytes(piv)?)
        } else {
            None
        };

        let kid_context = if flags & FLAG_KID_CONTEXT != 0 {
            let s = take(&mut rest, 1).ok_or(OptionError::Truncated("kid context length"))?[0];
            let ctx =
                take(&mut rest, usize::from(s)).ok_or(OptionError::Truncated("kid context"))?;
            Some(ctx.to_vec())
        } else {
            None
        };

        let kid = if flags & FLAG_KID != 0 {
            Some(std::mem::take(&mut rest).to_vec())
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(OptionError::TrailingBytes(rest.len()));
        }

        Ok(Self {
            partial_iv,
            kid_context,
            kid,
        })
    }

    /// Writes the option value; all fields `None` gives the empty value.
    /// Fails only for a `kid context` longer than 255 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, OptionError> {
        let piv = self
            .partial_iv
            .as_ref()
            .map_or(&[][..], PartialIv::as_bytes);
        let mut flags = piv.len() as u8;
        if self.kid.is_some() {
            flags |= FLAG_KID;
        }
        if self.kid_context.is_some() {
            flags |= FLAG_KID_CONTEXT;
        }
        if flags == 0 {
            return Ok(Vec::new());
        }

        let ctx_len = self.kid_context.as_ref().map_or(0, |c| 1 + c.len());
        let kid_len = self.kid.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(1 + piv.len() + ctx_len + kid_len);
        out.push(flags);
        out.extend_from_slice(piv);
        if let Some(ctx) = &self.kid_context {
            if ctx.len() > MAX_ID_CONTEXT_LEN {
                return Err(OptionError::KidContextTooLong(ctx.len()));
            }
            out.push(ctx.len() as u8);
            out.extend_from_slice(ctx);
        }
        if let Some(kid) = &self.kid {
            out.extend_from_slice(kid);
        }
        Ok(out)
    }
}

/// Splits `n` bytes off the front of `rest`, or `None` if too few remain.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piv(seq: u64) -> PartialIv {
        PartialIv::from_seq(seq).expect("test sequence numbers are in range")
    }

    #[test]
    fn partial_iv_is_minimal_big_endian() {
        assert_eq!(piv(0).as_bytes(), [0x00]);
        assert_eq!(piv(20).as_bytes(), [0x14]);
        assert_eq!(piv(256).as_bytes(), [0x01, 0x00]);
        assert_eq!(piv(MAX_SEQ).as_bytes(), [0xff; 5]);
        assert_eq!(piv(MAX_SEQ).seq(), MAX_SEQ);
        assert_eq!(
            PartialIv::from_seq(MAX_SEQ + 1),
            Err(OptionError::PartialIvOutOfRange)
        );
    }

    #[test]
    fn partial_iv_bytes_with_a_leading_zero_are_refused() {
        assert_eq!(
            PartialIv::from_bytes(&[0x00, 0x14]),
            Err(OptionError::NonMinimalPartialIv)
        );
        assert_eq!(PartialIv::from_bytes(&[0x00]).map(|p| p.seq()), Ok(0));
        assert_eq!(
            PartialIv::from_bytes(&[]),
            Err(OptionError::PartialIvOutOfRange)
        );
        assert_eq!(
            PartialIv::from_bytes(&[1; 6]),
            Err(OptionError::PartialIvOutOfRange)
        );
    }

    // RFC 8613 Appendix C.4, C.5, C.6, C.8: the option values of the vectors.
    #[test]
    fn rfc8613_appendix_c_option_values_decode_and_encode() {
        let cases: [(&str, OscoreOption); 5] = [
            (
                "0914",
                OscoreOption {
                    partial_iv: Some(piv(20)),
                    kid_context: None,
                    kid: Some(vec![]),
                },
            ),
            (
                "091400",
                OscoreOption {
                    partial_iv: Some(piv(20)),
                    kid_context: None,
                    kid: Some(vec![0]),
                },
            ),
            (
                "19140837cbf3210017a2d3",
                OscoreOption {
                    partial_iv: Some(piv(20)),
                    kid_context: Some(vec![0x37, 0xcb, 0xf3, 0x21, 0x00, 0x17, 0xa2, 0xd3]),
                    kid: Some(vec![]),
                },
            ),
            (
                "0100",
                OscoreOption {
                    partial_iv: Some(piv(0)),
                    kid_context: None,
                    kid: None,
                },
            ),
            ("", OscoreOption::default()),
        ];
        for (wire, want) in cases {
            let bytes = hex::decode(wire).expect("test hex is valid");
            assert_eq!(OscoreOption::decode(&bytes).as_ref(), Ok(&want), "{wire}");
            assert_eq!(want.encode(), Ok(bytes), "{wire}");
        }
    }

    #[test]
    fn malformed_values_are_refused_with_the_reason() {
        let cases: [(&[u8], OptionError); 9] = [
            (&[0x20], OptionError::ReservedFlags(0x20)),
            (&[0x80, 0x01], OptionError::ReservedFlags(0x80)),
            (&[0x06, 1, 2, 3, 4, 5, 6], OptionError::ReservedPivLength(6)),
            (&[0x00], OptionError::ZeroFlagsNotEmpty),
            (&[0x02, 0x01], OptionError::Truncated("Partial IV")),
            (&[0x11, 0x01], OptionError::Truncated("kid context length")),
            (
                &[0x11, 0x01, 0x03, 0xaa],
                OptionError::Truncated("kid context"),
            ),
            (&[0x01, 0x01, 0xaa], OptionError::TrailingBytes(1)),
            (&[0x02, 0x00, 0x01], OptionError::NonMinimalPartialIv),
        ];
        for (wire, want) in cases {
            assert_eq!(OscoreOption::decode(wire), Err(want), "{wire:02x?}");
        }
    }

    #[test]
    fn kid_context_longer_than_255_bytes_cannot_be_encoded() {
        let opt = OscoreOption {
            partial_iv: Some(piv(1)),
            kid_context: Some(vec![0; 256]),
            kid: Some(vec![1]),
        };
        assert_eq!(opt.encode(), Err(OptionError::KidContextTooLong(256)));
    }
}
