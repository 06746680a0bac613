//! Errors cross into JavaScript as `Error` objects with a stable `code` string.
//!
//! Python maps `code` onto its `PingError` subclasses, so codes are API: add, never rename.

use std::fmt::{Debug, Display};

use wasm_bindgen::JsValue;

/// Stable error codes (see `docs/wasm-api.md`).
pub mod code {
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const MALFORMED_MESSAGE: &str = "malformed_message";
    pub const WRONG_MESSAGE_TYPE: &str = "wrong_message_type";
    pub const NOT_FOUND: &str = "not_found";
    pub const STORAGE: &str = "storage";
    pub const PENDING_COMMIT: &str = "pending_commit";
    pub const NO_PENDING_COMMIT: &str = "no_pending_commit";
    pub const NOT_MEMBER: &str = "not_member";
    pub const WRONG_EPOCH: &str = "wrong_epoch";
    pub const HASH_MISMATCH: &str = "hash_mismatch";
    pub const AAD_MISMATCH: &str = "aad_mismatch";
    pub const LIBRARY: &str = "library";
    pub const KEY_PACKAGE: &str = "key_package";
    pub const CREATE: &str = "create_failed";
    pub const JOIN: &str = "join_failed";
    pub const COMMIT: &str = "commit_failed";
    pub const SEND: &str = "send_failed";
    pub const PROCESS: &str = "process_failed";
    pub const MERGE: &str = "merge_failed";
    pub const EXPORT: &str = "export_failed";
}

/// A JS `Error` named `PingWasmError` with `code` set.
pub fn js_error(code: &str, message: impl Display) -> JsValue {
    let err = js_sys::Error::new(&format!("{message}"));
    err.set_name("PingWasmError");
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&err, &JsValue::from_str("code"), &JsValue::from_str(code));
    err.into()
}

/// Map an OpenMLS error to a code: group-state conditions get their own codes so callers
/// can react (merge/discard a pending commit, drop a conversation they were removed from);
/// everything else gets the code of the operation that failed.
pub fn mls_error<E: Debug + Display>(operation_code: &str, err: E) -> JsValue {
    let debug = format!("{err:?}");
    let code = if debug.contains("NoPendingCommit") {
        code::NO_PENDING_COMMIT
    } else if debug.contains("PendingCommit") {
        code::PENDING_COMMIT
    } else if debug.contains("UseAfterEviction") {
        code::NOT_MEMBER
    } else if debug.contains("WrongEpoch") {
        code::WRONG_EPOCH
    } else if debug.starts_with("StorageError") {
        code::STORAGE
    } else if debug.starts_with("LibraryError") {
        code::LIBRARY
    } else {
        operation_code
    };
    js_error(code, format!("{err} ({debug})"))
}

pub type JsResult<T> = Result<T, JsValue>;
