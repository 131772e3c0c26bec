//! Helpers shared by the integration tests: hex, and the security contexts
//! of RFC 8613 Appendix C.
#![allow(dead_code)] // each test binary uses a different subset

use lockfleet_oscore::{Params, SecurityContext};

/// Master secret of every Appendix C vector.
pub const SECRET: &str = "0102030405060708090a0b0c0d0e0f10";
/// Master salt of C.1 and C.3.
pub const SALT: &str = "9e7ca92223786340";
/// ID Context of C.3.
pub const ID_CONTEXT: &str = "37cbf3210017a2d3";

/// Hex to bytes; test data only.
pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex is valid")
}

/// Derives a context from hex parameters; test data only.
pub fn ctx(
    secret: &str,
    salt: &str,
    sender: &str,
    recipient: &str,
    id_context: Option<&str>,
) -> SecurityContext {
    let (secret, salt, sender, recipient) = (h(secret), h(salt), h(sender), h(recipient));
    let id_context = id_context.map(h);
    SecurityContext::derive(&Params {
        master_secret: &secret,
        master_salt: &salt,
        sender_id: &sender,
        recipient_id: &recipient,
        id_context: id_context.as_deref(),
    })
    .expect("test parameters are valid")
}

/// RFC 8613 C.1.1: client, with master salt.
pub fn c1_1_client() -> SecurityContext {
    ctx(SECRET, SALT, "", "01", None)
}
/// RFC 8613 C.1.2: server, with master salt.
pub fn c1_2_server() -> SecurityContext {
    ctx(SECRET, SALT, "01", "", None)
}
/// RFC 8613 C.2.1: client, without master salt.
pub fn c2_1_client() -> SecurityContext {
    ctx(SECRET, "", "00", "01", None)
}
/// RFC 8613 C.2.2: server, without master salt.
pub fn c2_2_server() -> SecurityContext {
    ctx(SECRET, "", "01", "00", None)
}
/// RFC 8613 C.3.1: client, with ID Context.
pub fn c3_1_client() -> SecurityContext {
    ctx(SECRET, SALT, "", "01", Some(ID_CONTEXT))
}
/// RFC 8613 C.3.2: server, with ID Context.
pub fn c3_2_server() -> SecurityContext {
    ctx(SECRET, SALT, "01", "", Some(ID_CONTEXT))
}
