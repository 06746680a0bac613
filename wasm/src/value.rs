//! The working set's value format: compact, self-describing, a subset of CBOR (RFC 8949).
//!
//! OpenMLS hands its storage provider serde types and reads them back with serde, relying on
//! a self-describing format (it has an untagged enum, and changes its types with defaults
//! for fields added later). JSON was that format; this one keeps JSON's data model and
//! replaces its text with CBOR items:
//!
//! | serde | CBOR |
//! | --- | --- |
//! | bool, unsigned and signed integers, f32, f64 | simple value, major type 0 / 1, float |
//! | str, char | text string |
//! | bytes, and any sequence or tuple whose elements are all `u8` | byte string |
//! | other sequences, tuples | array (indefinite length if the length is unknown) |
//! | map | map (indefinite length if the length is unknown) |
//! | struct | map of field name (text) to value, in declaration order |
//! | `None`, unit, unit struct | null |
//! | `Some(v)`, newtype struct | `v` |
//! | unit variant | its name (text) |
//! | newtype, tuple or struct variant | a map of one entry: name -> value / array / map |
//!
//! Byte strings are read back as sequences of `u8` (and as bytes where a type asks for
//! bytes), so a `Vec<u8>` takes its length plus one byte per element instead of JSON's
//! decimal list. No tags, no half floats; definite lengths only where the length is known.

use std::fmt;

use serde::de::{self, Deserialize as _, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// Nesting allowed when reading (a corrupt value must fail, not exhaust the stack).
const MAX_DEPTH: usize = 256;

const UINT: u8 = 0;
const NEGINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const SIMPLE: u8 = 7;

const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
const F32: u8 = 0xfa;
const F64: u8 = 0xfb;
const BREAK: u8 = 0xff;
const INDEFINITE: u8 = 31;

#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Encode `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut ser = Serializer::default();
    value.serialize(&mut ser)?;
    Ok(ser.out)
}

/// Decode a value [`to_vec`] made; the whole input must be one value.
pub fn from_slice<T: de::DeserializeOwned>(data: &[u8]) -> Result<T> {
    let mut de = Deserializer { data, pos: 0, depth: 0 };
    let value = T::deserialize(&mut de)?;
    if de.pos != data.len() {
        return Err(Error(format!("{} bytes after the value", data.len() - de.pos)));
    }
    Ok(value)
}

// -- writing ---------------------------------------------------------------------------------

/// Where the element being written sits, for sequences that may become byte strings.
#[derive(Clone, Copy, PartialEq)]
enum Element {
    /// The first element of a sequence whose header is at `header`.
    First { header: usize },
    /// A later element of a sequence written as a byte string so far (its bytes start at `data`).
    Byte { header: usize, data: usize },
}

#[derive(Default)]
struct Serializer {
    out: Vec<u8>,
    element: Option<Element>,
}

/// An unsigned integer item (also how chunk paths spell positions).
pub(crate) fn write_uint(out: &mut Vec<u8>, n: u64) {
    header(out, UINT, n)
}

#[inline(never)]
fn header(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

impl Serializer {
    /// Called first by every value: a sequence that held only `u8`s so far and now gets
    /// something else turns back into an array.
    #[inline]
    fn value_start(&mut self) {
        if let Some(Element::Byte { header, data }) = self.element.take() {
            self.bytes_to_array(header, data);
        }
    }

    #[cold]
    #[inline(never)]
    fn bytes_to_array(&mut self, at: usize, data: usize) {
        let bytes = self.out.split_off(data);
        self.out[at] = (ARRAY << 5) | (self.out[at] & 0x1f);
        for b in bytes {
            header(&mut self.out, UINT, b as u64);
        }
    }

    /// A sequence of known length: written as a byte string if its elements are `u8`s.
    fn sequence(&mut self, len: usize) -> Compound<'_> {
        self.value_start();
        let at = self.out.len();
        header(&mut self.out, ARRAY, len as u64);
        Compound {
            ser: self,
            header: if len == 0 { None } else { Some(at) },
            started: false,
            indefinite: false,
        }
    }

    #[inline(never)]
    fn text(&mut self, s: &str) {
        header(&mut self.out, TEXT, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
}

struct Compound<'a> {
    ser: &'a mut Serializer,
    /// For a sequence that may be a byte string: where its header is.
    header: Option<usize>,
    started: bool,
    indefinite: bool,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.before_element();
        value.serialize(&mut *self.ser)?;
        self.ser.element = None;
        Ok(())
    }

    /// Tell the serializer where the next element sits (not generic: one copy).
    #[inline(never)]
    fn before_element(&mut self) {
        let state = match self.header {
            None => None,
            Some(at) if !self.started => Some(Element::First { header: at }),
            Some(at) => {
                let first = self.ser.out[at];
                if first >> 5 == BYTES {
                    Some(Element::Byte {
                        header: at,
                        data: at + header_len(first),
                    })
                } else {
                    self.header = None;
                    None
                }
            }
        };
        self.started = true;
        self.ser.element = state;
    }

    fn finish(self) -> Result<()> {
        if self.indefinite {
            self.ser.out.push(BREAK);
        }
        Ok(())
    }
}

fn header_len(first: u8) -> usize {
    match first & 0x1f {
        24 => 2,
        25 => 3,
        26 => 5,
        27 => 9,
        _ => 1,
    }
}

impl<'a> ser::Serializer for &'a mut Serializer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.value_start();
        self.out.push(if v { TRUE } else { FALSE });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<()> {
        self.serialize_i64(v as i64)
    }

    fn serialize_i16(self, v: i16) -> Result<()> {
        self.serialize_i64(v as i64)
    }

    fn serialize_i32(self, v: i32) -> Result<()> {
        self.serialize_i64(v as i64)
    }

    fn serialize_i64(self, v: i64) -> Result<()> {
        self.value_start();
        if v >= 0 {
            header(&mut self.out, UINT, v as u64);
        } else {
            header(&mut self.out, NEGINT, (-1 - v) as u64);
        }
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<()> {
        match self.element.take() {
            Some(Element::First { header: at }) => {
                self.out[at] = (BYTES << 5) | (self.out[at] & 0x1f);
                self.out.push(v);
            }
            Some(Element::Byte { .. }) => self.out.push(v),
            _ => header(&mut self.out, UINT, v as u64),
        }
        Ok(())
    }

    fn serialize_u16(self, v: u16) -> Result<()> {
        self.serialize_u64(v as u64)
    }

    fn serialize_u32(self, v: u32) -> Result<()> {
        self.serialize_u64(v as u64)
    }

    fn serialize_u64(self, v: u64) -> Result<()> {
        self.value_start();
        header(&mut self.out, UINT, v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<()> {
        self.value_start();
        self.out.push(F32);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<()> {
        self.value_start();
        self.out.push(F64);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<()> {
        self.value_start();
        self.text(v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.value_start();
        header(&mut self.out, BYTES, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.value_start();
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<()> {
        self.value_start();
        self.out.push(NULL);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<()> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<()> {
        self.value_start();
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.value_start();
        header(&mut self.out, MAP, 1);
        self.text(variant);
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'a>> {
        match len {
            Some(len) => Ok(self.sequence(len)),
            None => {
                self.value_start();
                self.out.push((ARRAY << 5) | INDEFINITE);
                Ok(Compound {
                    ser: self,
                    header: None,
                    started: false,
                    indefinite: true,
                })
            }
        }
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>> {
        Ok(self.sequence(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>> {
        Ok(self.sequence(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>> {
        self.value_start();
        header(&mut self.out, MAP, 1);
        self.text(variant);
        Ok(self.sequence(len))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a>> {
        self.value_start();
        match len {
            Some(len) => header(&mut self.out, MAP, len as u64),
            None => self.out.push((MAP << 5) | INDEFINITE),
        }
        Ok(Compound {
            ser: self,
            header: None,
            started: false,
            indefinite: len.is_none(),
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>> {
        self.value_start();
        header(&mut self.out, MAP, len as u64);
        Ok(Compound {
            ser: self,
            header: None,
            started: false,
            indefinite: false,
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>> {
        self.value_start();
        header(&mut self.out, MAP, 1);
        self.text(variant);
        header(&mut self.out, MAP, len as u64);
        Ok(Compound {
            ser: self,
            header: None,
            started: false,
            indefinite: false,
        })
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        key.serialize(&mut *self.ser)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut *self.ser)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        self.ser.text(key);
        value.serialize(&mut *self.ser)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        self.ser.text(key);
        value.serialize(&mut *self.ser)
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

// -- reading ---------------------------------------------------------------------------------

struct Deserializer<'de> {
    data: &'de [u8],
    pos: usize,
    depth: usize,
}

/// One item's initial byte, decoded: major type and argument (`None`: indefinite length).
struct Head {
    major: u8,
    info: u8,
    arg: Option<u64>,
}

/// One item as far as it can be read without knowing the type it is for.
enum Token<'de> {
    Uint(u64),
    /// The integer `-1 - n`.
    Negative(u64),
    Bytes(&'de [u8]),
    Text(&'de str),
    /// How many items follow (`None`: until a break).
    Array(Option<usize>),
    /// How many entries follow (`None`: until a break).
    Map(Option<usize>),
    Bool(bool),
    Null,
    F32(f32),
    F64(f64),
}

impl<'de> Deserializer<'de> {
    fn eof() -> Error {
        Error("value ends early".into())
    }

    fn peek(&self) -> Result<u8> {
        self.data.get(self.pos).copied().ok_or_else(Self::eof)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(Self::eof)?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn head(&mut self) -> Result<Head> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => Some(info as u64),
            24 => Some(self.take(1)?[0] as u64),
            25 => Some(u16::from_be_bytes(self.take(2)?.try_into().unwrap()) as u64),
            26 => Some(u32::from_be_bytes(self.take(4)?.try_into().unwrap()) as u64),
            27 => Some(u64::from_be_bytes(self.take(8)?.try_into().unwrap())),
            INDEFINITE if (ARRAY..=MAP).contains(&major) => None,
            _ if major == SIMPLE => None,
            _ => return Err(Error(format!("unsupported item 0x{first:02x}"))),
        };
        Ok(Head { major, info, arg })
    }

    /// A length that must fit in what is left of the input (each item takes a byte at least).
    fn length(&self, n: u64) -> Result<usize> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(Self::eof)
    }

    /// The next item, decoded as far as no type is needed (one copy of this code, not one
    /// per type read: that keeps the module small).
    #[inline(never)]
    fn token(&mut self) -> Result<Token<'de>> {
        let head = self.head()?;
        Ok(match (head.major, head.arg) {
            (UINT, Some(n)) => Token::Uint(n),
            (NEGINT, Some(n)) => Token::Negative(n),
            (BYTES, Some(n)) => Token::Bytes(self.take(self.length(n)?)?),
            (TEXT, Some(n)) => {
                let n = self.length(n)?;
                Token::Text(std::str::from_utf8(self.take(n)?).map_err(|e| Error(e.to_string()))?)
            }
            (ARRAY, len) => Token::Array(len.map(|n| self.length(n)).transpose()?),
            (MAP, len) => Token::Map(len.map(|n| self.length(n)).transpose()?),
            (SIMPLE, _) => match head.info {
                20 => Token::Bool(false),
                21 => Token::Bool(true),
                22 => Token::Null,
                26 => Token::F32(f32::from_bits(head.arg.unwrap_or(0) as u32)),
                27 => Token::F64(f64::from_bits(head.arg.unwrap_or(0))),
                _ => return Err(Error(format!("unsupported simple value {}", head.info))),
            },
            _ => return Err(Error(format!("unsupported item of major type {}", head.major))),
        })
    }

    /// Like [`Self::token`], but decimal text is read as the integer it spells: that is
    /// how JSON (format 1, read by way of this format) writes the integer keys of a map.
    #[inline(never)]
    fn integer_token(&mut self) -> Result<Token<'de>> {
        Ok(match self.token()? {
            Token::Text(text) => match (text.parse::<u64>(), text.parse::<i64>()) {
                (Ok(n), _) => Token::Uint(n),
                (_, Ok(n)) => Token::Negative((-1 - n) as u64),
                _ => Token::Text(text),
            },
            token => token,
        })
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Error("value nested too deeply".into()));
        }
        Ok(())
    }

    fn visit<V: Visitor<'de>>(&mut self, token: Token<'de>, visitor: V, bytes_as_bytes: bool) -> Result<V::Value> {
        match token {
            Token::Uint(n) => visitor.visit_u64(n),
            Token::Negative(n) => match i64::try_from(n) {
                Ok(n) => visitor.visit_i64(-1 - n),
                Err(_) => visitor.visit_i128(-1 - n as i128),
            },
            Token::Bytes(bytes) if bytes_as_bytes => visitor.visit_borrowed_bytes(bytes),
            Token::Bytes(bytes) => visitor.visit_seq(ByteSeq { bytes, pos: 0 }),
            Token::Text(text) => visitor.visit_borrowed_str(text),
            Token::Array(left) => self.seq_items(visitor, left),
            Token::Map(left) => self.map_items(visitor, left),
            Token::Bool(b) => visitor.visit_bool(b),
            Token::Null => visitor.visit_unit(),
            Token::F32(f) => visitor.visit_f32(f),
            Token::F64(f) => visitor.visit_f64(f),
        }
    }

    fn skip_break(&mut self) -> Result<bool> {
        if self.peek()? == BREAK {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The items of an array or the entries of a map (`left: None`: indefinite length).
struct Items<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: Option<usize>,
    map: bool,
}

impl<'de> Items<'_, 'de> {
    fn has_next(&mut self) -> Result<bool> {
        match &mut self.left {
            Some(0) => Ok(false),
            Some(n) => {
                *n -= 1;
                Ok(true)
            }
            None => Ok(!self.de.skip_break()?),
        }
    }

    /// Skip whatever the visitor left unread.
    fn end(&mut self) -> Result<()> {
        while self.has_next()? {
            de::IgnoredAny::deserialize(&mut *self.de)?;
            if self.map {
                de::IgnoredAny::deserialize(&mut *self.de)?;
            }
        }
        Ok(())
    }
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.has_next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        self.left
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.has_next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.left
    }
}

/// A byte string read as a sequence of `u8`.
struct ByteSeq<'de> {
    bytes: &'de [u8],
    pos: usize,
}

impl<'de> de::SeqAccess<'de> for ByteSeq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        match self.bytes.get(self.pos) {
            None => Ok(None),
            Some(&b) => {
                self.pos += 1;
                seed.deserialize(b.into_deserializer()).map(Some)
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len() - self.pos)
    }
}

/// An enum: a unit variant's name, or a one-entry map from name to content.
struct Variant<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let name = seed.deserialize(&mut *self.de)?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        de::IgnoredAny::deserialize(&mut *self.de).map(|_| ())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_seq(&mut *self.de, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_map(&mut *self.de, visitor)
    }
}

/// A unit variant given by its name alone.
struct UnitVariant<'de> {
    name: &'de str,
}

impl<'de> de::EnumAccess<'de> for UnitVariant<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let name = seed.deserialize(de::value::BorrowedStrDeserializer::<Error>::new(self.name))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(Error(format!("variant {} has no content", self.name)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(Error(format!("variant {} has no content", self.name)))
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], _visitor: V) -> Result<V::Value> {
        Err(Error(format!("variant {} has no content", self.name)))
    }
}

/// What was found where something else was expected (not generic: one copy for all types).
#[cold]
#[inline(never)]
fn unexpected(token: &Token<'_>, expected: &str) -> Error {
    let found = match token {
        Token::Uint(_) | Token::Negative(_) => "an integer",
        Token::Bytes(_) => "a byte string",
        Token::Text(_) => "a text string",
        Token::Array(_) => "an array",
        Token::Map(_) => "a map",
        Token::Bool(_) => "a boolean",
        Token::Null => "null",
        Token::F32(_) | Token::F64(_) => "a float",
    };
    Error(format!("expected {expected}, found {found}"))
}

impl<'de> Deserializer<'de> {
    fn integer<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        match self.integer_token()? {
            Token::Uint(n) => visitor.visit_u64(n),
            Token::Negative(n) => match i64::try_from(n) {
                Ok(n) => visitor.visit_i64(-1 - n),
                Err(_) => visitor.visit_i128(-1 - n as i128),
            },
            token => Err(unexpected(&token, "an integer")),
        }
    }

    fn seq_items<V: Visitor<'de>>(&mut self, visitor: V, left: Option<usize>) -> Result<V::Value> {
        self.enter()?;
        let mut access = Items {
            de: &mut *self,
            left,
            map: false,
        };
        let value = visitor.visit_seq(&mut access)?;
        access.end()?;
        self.depth -= 1;
        Ok(value)
    }

    fn map_items<V: Visitor<'de>>(&mut self, visitor: V, left: Option<usize>) -> Result<V::Value> {
        self.enter()?;
        let mut access = Items {
            de: &mut *self,
            left,
            map: true,
        };
        let value = visitor.visit_map(&mut access)?;
        access.end()?;
        self.depth -= 1;
        Ok(value)
    }

    /// A sequence: an array, or a byte string read as `u8`s.
    fn sequence<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Array(left) => self.seq_items(visitor, left),
            Token::Bytes(bytes) => visitor.visit_seq(ByteSeq { bytes, pos: 0 }),
            token => Err(unexpected(&token, "a sequence")),
        }
    }

    /// A struct or map: a map, or (as serde allows for structs) an array.
    fn mapping<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Map(left) => self.map_items(visitor, left),
            Token::Array(left) => self.seq_items(visitor, left),
            token => Err(unexpected(&token, "a map")),
        }
    }

    fn text<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Text(text) => visitor.visit_borrowed_str(text),
            token => Err(unexpected(&token, "a text string")),
        }
    }
}

macro_rules! forward {
    ($helper:ident: $($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
                self.$helper(visitor)
            }
        )*
    };
}

// Each method reads only what its type can be, as serde_json does: a catch-all (`any`) would
// make every type's visitor handle every kind of item, and the module twice as large.
impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let token = self.token()?;
        self.visit(token, visitor, false)
    }

    forward! { integer:
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
    }

    forward! { text: deserialize_char deserialize_str deserialize_string }

    forward! { sequence: deserialize_seq }

    forward! { mapping: deserialize_map }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Bool(b) => visitor.visit_bool(b),
            token => Err(unexpected(&token, "a boolean")),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::F32(f) => visitor.visit_f32(f),
            Token::F64(f) => visitor.visit_f64(f),
            Token::Uint(n) => visitor.visit_u64(n),
            token => Err(unexpected(&token, "a number")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Text(text) => visitor.visit_borrowed_str(text),
            Token::Uint(n) => visitor.visit_u64(n),
            token => Err(unexpected(&token, "a name")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.pos = skip(self.data, self.pos, self.depth)?;
        visitor.visit_unit()
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Bytes(bytes) => visitor.visit_borrowed_bytes(bytes),
            Token::Array(left) => self.seq_items(visitor, left),
            token => Err(unexpected(&token, "bytes")),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == NULL {
            self.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.token()? {
            Token::Null => visitor.visit_unit(),
            token => Err(unexpected(&token, "null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.sequence(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.sequence(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.mapping(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.token()? {
            Token::Text(name) => visitor.visit_enum(UnitVariant { name }),
            Token::Map(Some(1)) => {
                self.enter()?;
                let value = visitor.visit_enum(Variant { de: &mut *self })?;
                self.depth -= 1;
                Ok(value)
            }
            token => Err(unexpected(&token, "an enum: a variant name or a map of one entry")),
        }
    }
}

// -- walking encoded items (for chunks) ------------------------------------------------------

/// A definite-length array or map item: the size of its head and how many items it holds
/// (a map's keys and values each count).
pub(crate) struct Container {
    pub head_len: usize,
    pub items: usize,
}

impl Container {
    /// The definite-length array or map starting at `pos`, if that is what is there.
    pub fn at(data: &[u8], pos: usize) -> Option<Container> {
        let first = *data.get(pos)?;
        let major = first >> 5;
        if major != ARRAY && major != MAP {
            return None;
        }
        let mut de = Deserializer { data, pos, depth: 0 };
        let head = de.head().ok()?;
        let count = usize::try_from(head.arg?).ok()?;
        let items = if major == MAP { count.checked_mul(2)? } else { count };
        Some(Container {
            head_len: de.pos - pos,
            items,
        })
    }
}

/// One item of an encoding, as [`index`] lists them (in order, containers before their items).
pub(crate) struct Item {
    pub start: usize,
    pub end: usize,
    pub head_len: usize,
    /// A definite-length array or map (the only containers chunks are made of).
    pub container: bool,
    /// Items a container holds (a map's keys and values each count).
    pub children: usize,
    /// Index of the next item that is not inside this one.
    pub next: usize,
}

/// Every item of the format-2 encoding `data`, in one pass.
pub(crate) fn index(data: &[u8]) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::with_capacity(data.len() / 8);
    // Open containers: (index, items still to come).
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    loop {
        let mut de = Deserializer { data, pos, depth: 0 };
        let head = de.head()?;
        let head_end = de.pos;
        let i = items.len();
        let (end, children) = match (head.major, head.arg) {
            (UINT | NEGINT, Some(_)) => (head_end, 0),
            (BYTES | TEXT, Some(n)) => (head_end + de.length(n)?, 0),
            (ARRAY | MAP, Some(n)) => {
                let n = de.length(n)?;
                (head_end, if head.major == MAP { 2 * n } else { n })
            }
            (ARRAY | MAP, None) => (item_end(data, pos)?, 0),
            (SIMPLE, _) if matches!(head.info, 20..=22 | 26 | 27) => (head_end, 0),
            _ => return Err(Error(format!("unsupported item 0x{:02x}", data[pos]))),
        };
        items.push(Item {
            start: pos,
            end,
            head_len: head_end - pos,
            container: head.arg.is_some() && (head.major == ARRAY || head.major == MAP),
            children,
            next: i + 1,
        });
        if children > 0 {
            if open.len() >= MAX_DEPTH {
                return Err(Error("value nested too deeply".into()));
            }
            open.push((i, children));
            pos = head_end;
            continue;
        }
        pos = end;
        // This item is done: so is every container it completes.
        loop {
            match open.last_mut() {
                None => {
                    return if pos == data.len() {
                        Ok(items)
                    } else {
                        Err(Error("bytes after the value".into()))
                    }
                }
                Some((_, left)) if *left > 1 => {
                    *left -= 1;
                    break;
                }
                Some(&mut (c, _)) => {
                    open.pop();
                    let next = items.len();
                    items[c].end = pos;
                    items[c].next = next;
                }
            }
        }
    }
}

/// Where the item starting at `pos` ends (a well-formed format-2 item; text is not checked
/// for UTF-8 here).
pub(crate) fn item_end(data: &[u8], pos: usize) -> Result<usize> {
    skip(data, pos, 0)
}

fn skip(data: &[u8], pos: usize, depth: usize) -> Result<usize> {
    if depth > MAX_DEPTH {
        return Err(Error("value nested too deeply".into()));
    }
    let mut de = Deserializer { data, pos, depth: 0 };
    let head = de.head()?;
    let mut at = de.pos;
    match (head.major, head.arg) {
        (UINT | NEGINT, Some(_)) => Ok(at),
        (BYTES | TEXT, Some(n)) => {
            let n = de.length(n)?;
            Ok(at + n)
        }
        (ARRAY | MAP, Some(n)) => {
            let n = de.length(n)?;
            let items = if head.major == MAP { 2 * n } else { n };
            for _ in 0..items {
                at = skip(data, at, depth + 1)?;
            }
            Ok(at)
        }
        (ARRAY | MAP, None) => loop {
            match data.get(at) {
                None => return Err(Deserializer::eof()),
                Some(&BREAK) => return Ok(at + 1),
                Some(_) => at = skip(data, at, depth + 1)?,
            }
        },
        (SIMPLE, _) if matches!(head.info, 20..=22 | 26 | 27) => Ok(at),
        _ => Err(Error(format!("unsupported item 0x{:02x}", data[pos]))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::fmt::Debug;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::{from_slice, item_end, to_vec, Container};

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> Vec<u8> {
        let bytes = to_vec(value).unwrap();
        let back: T = from_slice(&bytes).unwrap();
        assert_eq!(&back, value);
        assert_eq!(item_end(&bytes, 0).unwrap(), bytes.len());
        bytes
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum Kind {
        Unit,
        Newtype(u32),
        Tuple(u8, String),
        Struct { a: Vec<u8>, b: Option<i64> },
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Byte(u8);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Everything {
        name: String,
        bytes: Vec<u8>,
        empty: Vec<u8>,
        fixed: [u8; 4],
        wide: Vec<u16>,
        nested: Option<Box<Everything>>,
        kinds: Vec<Kind>,
        map: BTreeMap<u32, String>,
        deque: VecDeque<Option<Vec<u8>>>,
        maybe_bytes: Vec<Option<u8>>,
        newtypes: Vec<Byte>,
        mixed: (u8, String, u8),
        unit: (),
        flag: bool,
        negative: i64,
        float: f64,
        time: SystemTime,
        #[serde(default)]
        added_later: u8,
    }

    fn everything(nested: Option<Box<Everything>>) -> Everything {
        Everything {
            name: "ping".into(),
            bytes: (0..=255).collect(),
            empty: vec![],
            fixed: [1, 2, 3, 250],
            wide: vec![1, 2, 300],
            nested,
            kinds: vec![
                Kind::Unit,
                Kind::Newtype(7),
                Kind::Tuple(1, "t".into()),
                Kind::Struct {
                    a: vec![9; 40],
                    b: Some(-3),
                },
            ],
            map: [(1, "one".into()), (70_000, "big".into())].into(),
            deque: [None, Some(vec![5, 6]), Some(vec![])].into(),
            maybe_bytes: vec![Some(1), None, Some(255)],
            newtypes: vec![Byte(1), Byte(2)],
            mixed: (1, "x".into(), 2),
            unit: (),
            flag: true,
            negative: i64::MIN,
            float: -1.5,
            time: UNIX_EPOCH + Duration::new(1_800_000_000, 123),
            added_later: 0,
        }
    }

    #[test]
    fn everything_round_trips() {
        round_trip(&everything(Some(Box::new(everything(None)))));
        round_trip(&u64::MAX);
        round_trip(&i64::MIN);
        round_trip(&(-24i8, -25i16, 23u8, 24u8, 65_535u16, 65_536u32, f32::MIN_POSITIVE));
        round_trip(&'é');
        // As in JSON, Some(None) and None are the same null.
        assert_eq!(
            from_slice::<Option<Option<u8>>>(&to_vec(&Some(None::<u8>)).unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn the_encoding_is_cbor_with_byte_strings_for_u8_sequences() {
        assert_eq!(to_vec(&vec![1u8, 2, 3]).unwrap(), [0x43, 1, 2, 3]);
        assert_eq!(to_vec(&[0u8; 24]).unwrap()[..2], [0x58, 24]);
        assert_eq!(to_vec(&Vec::<u8>::new()).unwrap(), [0x80]);
        assert_eq!(to_vec(&vec![1u16, 2]).unwrap(), [0x82, 1, 2]);
        assert_eq!(to_vec(&"a").unwrap(), [0x61, b'a']);
        assert_eq!(to_vec(&None::<u8>).unwrap(), [0xf6]);
        assert_eq!(to_vec(&Some(5u8)).unwrap(), [0x05]);
        assert_eq!(to_vec(&-1i32).unwrap(), [0x20]);
        assert_eq!(to_vec(&Kind::Unit).unwrap(), b"\x64Unit");
        assert_eq!(to_vec(&Kind::Newtype(1)).unwrap(), b"\xa1\x67Newtype\x01");
        assert_eq!(to_vec(&Byte(4)).unwrap(), [0x04]);
        // A sequence turns back into an array when an element is not a plain u8.
        assert_eq!(to_vec(&(1u8, 2u8, "x")).unwrap(), [0x83, 1, 2, 0x61, b'x']);
        assert_eq!(to_vec(&vec![Some(1u8), None]).unwrap(), [0x82, 1, 0xf6]);
        assert_eq!(to_vec(&vec![Byte(1), Byte(200)]).unwrap(), [0x82, 1, 0x18, 200]);
        assert_eq!(to_vec(&vec![vec![1u8], vec![]]).unwrap(), [0x82, 0x41, 1, 0x80]);
        #[derive(Serialize)]
        struct Named {
            a: u8,
        }
        assert_eq!(to_vec(&Named { a: 1 }).unwrap(), [0xa1, 0x61, b'a', 1]);
    }

    #[test]
    fn fields_added_later_and_untagged_enums_read_back() {
        #[derive(Serialize)]
        struct Old {
            a: u8,
        }
        #[derive(Deserialize, PartialEq, Debug)]
        struct New {
            a: u8,
            #[serde(default)]
            b: Vec<u8>,
        }
        let new: New = from_slice(&to_vec(&Old { a: 1 }).unwrap()).unwrap();
        assert_eq!(new, New { a: 1, b: vec![] });

        // What OpenMLS's past-epoch policy does: an integer, or an older tagged form.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum Tagged {
            MaxEpochs(usize),
            KeepAll,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        #[serde(untagged)]
        enum Format {
            Int(u64),
            Tagged(Tagged),
            Bytes(Vec<u8>),
        }
        round_trip(&Format::Int(3));
        round_trip(&Format::Tagged(Tagged::MaxEpochs(2)));
        round_trip(&Format::Tagged(Tagged::KeepAll));
        round_trip(&Format::Bytes(vec![1, 2, 3]));
    }

    #[test]
    fn json_read_by_way_of_this_format_reads_as_json() {
        // How format 1 values are read: JSON text, a generic JSON value, this format, the type.
        let value = everything(None);
        let json: serde_json::Value = serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap();
        let back: Everything = from_slice(&to_vec(&json).unwrap()).unwrap();
        assert_eq!(back, value);
        // Integer map keys are text in JSON.
        let map: BTreeMap<u32, i8> = [(1, -1), (70_000, 2)].into();
        let json: serde_json::Value = serde_json::to_value(&map).unwrap();
        assert_eq!(from_slice::<BTreeMap<u32, i8>>(&to_vec(&json).unwrap()).unwrap(), map);
        assert!(from_slice::<BTreeMap<u32, i8>>(&to_vec(&BTreeMap::from([("x", 1)])).unwrap()).is_err());
    }

    #[test]
    fn what_json_would_read_this_reads() {
        // Anything in JSON's data model reads back as JSON would read it (JSON has text
        // keys only: no integer-keyed map here).
        let mut value = everything(None);
        value.map.clear();
        let json: serde_json::Value = serde_json::to_value(&value).unwrap();
        let via_cbor: serde_json::Value = from_slice(&to_vec(&value).unwrap()).unwrap();
        assert_eq!(via_cbor, json);
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = to_vec(&everything(None)).unwrap();
        for len in 0..good.len() {
            assert!(from_slice::<Everything>(&good[..len]).is_err(), "{len}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(from_slice::<Everything>(&long).is_err());
        let deep = [vec![0x81; 300], vec![0x01]].concat();
        assert!(from_slice::<serde_json::Value>(&deep)
            .unwrap_err()
            .to_string()
            .contains("deeply"));
        for bad in [
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // a huge length
            &[0xc0, 0x01],                                               // a tag
            &[0xf7],                                                     // undefined
            &[0x1c],                                                     // reserved
            &[0x62, 0xff, 0xfe],                                         // not UTF-8
            &[0xff],                                                     // a stray break
        ] {
            assert!(from_slice::<serde_json::Value>(bad).is_err(), "{bad:02x?}");
        }
        assert!(from_slice::<u8>(&to_vec(&300u16).unwrap()).is_err());
    }

    #[test]
    fn the_index_lists_every_item_once_in_order() {
        let bytes = to_vec(&(
            vec![1u16, 2],
            BTreeMap::from([(1u8, vec![3u16])]),
            "abc",
            Vec::<u8>::new(),
        ))
        .unwrap();
        let items = super::index(&bytes).unwrap();
        let starts: Vec<usize> = items.iter().map(|i| i.start).collect();
        assert_eq!(starts, [0, 1, 2, 3, 4, 5, 6, 7, 8, 12]);
        assert_eq!(
            (items[0].end, items[0].next, items[0].children),
            (bytes.len(), items.len(), 4)
        );
        assert_eq!((items[1].end, items[1].next, items[1].children), (4, 4, 2));
        assert_eq!((items[4].end, items[4].next, items[4].children), (8, 8, 2)); // the map
        assert!(items[6].container && items[6].next == 8 && !items[7].container);
        assert!(!items[8].container && items[8].end == 12); // "abc"
        assert_eq!(items[9].children, 0);
        assert!(super::index(&bytes[..bytes.len() - 1]).is_err());
        assert!(super::index(&[bytes.clone(), vec![0]].concat()).is_err());
        assert!(super::index(&[vec![0x81; 300], vec![0x01]].concat()).is_err());
    }

    #[test]
    fn containers_and_item_ends() {
        let bytes = to_vec(&(vec![1u8, 2], BTreeMap::from([(1u8, 2u8)]), "abc")).unwrap();
        let top = Container::at(&bytes, 0).unwrap();
        assert_eq!((top.head_len, top.items), (1, 3));
        let first = item_end(&bytes, 1).unwrap();
        assert_eq!(first, 4); // 0x42 1 2
        let map = Container::at(&bytes, first).unwrap();
        assert_eq!((map.head_len, map.items), (1, 2));
        assert!(Container::at(&bytes, 1).is_none()); // a byte string
        assert!(Container::at(&[0x9f, 0xff], 0).is_none()); // indefinite length
        assert!(item_end(&bytes, bytes.len()).is_err());
    }
}
