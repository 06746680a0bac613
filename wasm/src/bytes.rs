//! Flat byte encodings for lists that cross the wasm boundary in one call.
//!
//! One crossing with one buffer is much cheaper from Pyodide than an array of objects.
//! All integers are big-endian.
//! - byte list: repeated `u32 len || bytes`
//! - change list: repeated `u32 key_len || key || u32 value_len || value`, where
//!   `value_len = 0xFFFF_FFFF` (and no value bytes) marks a deleted key.
//! - input of the calls that also report changes: `u8 flags || (u32 len || field) * n || last`.

use crate::error::{code, Error, Result};
use crate::storage::Change;

const DELETED: u32 = u32::MAX;

fn push_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(Error::new(code::INVALID_INPUT, format!("truncated {}", self.what)));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
}

pub fn encode_byte_list<T: AsRef<[u8]>>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| 4 + i.as_ref().len()).sum());
    for item in items {
        push_len(&mut out, item.as_ref().len());
        out.extend_from_slice(item.as_ref());
    }
    out
}

/// Split `data` into a flags byte and `count` length-prefixed fields, the rest of `data` being
/// the last one: `u8 flags || (u32 len || bytes) * count || rest`.
pub fn split_input(data: &[u8], count: usize) -> Result<(u8, Vec<&[u8]>)> {
    let mut reader = Reader { data, what: "input" };
    let flags = reader.take(1)?[0];
    let mut fields = Vec::with_capacity(count + 1);
    for _ in 0..count {
        let len = reader.u32()? as usize;
        fields.push(reader.take(len)?);
    }
    fields.push(reader.data);
    Ok((flags, fields))
}

pub fn decode_byte_list(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut reader = Reader {
        data,
        what: "byte list",
    };
    let mut items = Vec::new();
    while !reader.data.is_empty() {
        let len = reader.u32()? as usize;
        items.push(reader.take(len)?.to_vec());
    }
    Ok(items)
}

pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut out = Vec::new();
    append_changes(&mut out, changes);
    out
}

/// Append the change list of `changes` to `out`.
pub fn append_changes(out: &mut Vec<u8>, changes: &[Change]) {
    for (key, value) in changes {
        push_len(out, key.len());
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                push_len(out, value.len());
                out.extend_from_slice(value);
            }
            None => out.extend_from_slice(&DELETED.to_be_bytes()),
        }
    }
}

pub fn decode_changes(data: &[u8]) -> Result<Vec<Change>> {
    let mut reader = Reader {
        data,
        what: "change list",
    };
    let mut changes = Vec::new();
    while !reader.data.is_empty() {
        let key_len = reader.u32()? as usize;
        let key = reader.take(key_len)?.to_vec();
        let value = match reader.u32()? {
            DELETED => None,
            len => Some(reader.take(len as usize)?.to_vec()),
        };
        changes.push((key, value));
    }
    Ok(changes)
}
