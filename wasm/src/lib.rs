//! ping-web's OpenMLS module: OpenMLS 0.9 exposed through wasm-bindgen, bytes in, bytes out.
//!
//! Thin by design: it exposes MLS operations and the provider's key/value working set;
//! conversations, envelopes, ordering and persistence live in Python (`ping_web`).

mod bytes;
mod chunks;
mod crypto;
mod error;
mod group;
mod identity;
#[cfg(any(test, target_arch = "wasm32"))]
mod mem;
mod provider;
mod signer;
mod storage;
mod value;

pub use group::{inspect_group_info, inspect_key_package, ExternalJoin, Group};
pub use identity::{verify_with_label, Identity};
pub use provider::Provider;

use wasm_bindgen::prelude::*;

/// Versions compiled into this module, as `name=version` lines.
#[wasm_bindgen(js_name = buildInfo)]
pub fn build_info() -> String {
    format!(
        "ping_web_mls={}\nopenmls=0.9.2\nciphersuite=0x0001\nstorage_version={}",
        env!("CARGO_PKG_VERSION"),
        openmls_traits::storage::CURRENT_VERSION
    )
}

/// Panic on purpose: lets tests check that a trapped instance is never used again and
/// that clients recover from storage. Never called by ping_web itself.
#[wasm_bindgen(js_name = debugTrap)]
pub fn debug_trap() {
    panic!("debugTrap called");
}
