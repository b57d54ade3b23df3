//! The dynamic value model: what the decoder produces and the encoder consumes.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::traits::GobDecode;

/// A gob value, independent of any Rust type.
///
/// Decoding yields values shaped by the sender's wire types: struct values hold
/// only the fields that were on the wire (gob omits zero-valued fields), with the
/// sender's field names. Encoding takes a value together with its [`Type`](crate::Type).
#[derive(Clone, PartialEq)]
pub enum Value {
    /// Absent: a nil pointer, nil map or slice, or a struct field that was not sent.
    /// Reading it as any kind yields that kind's zero value. In a struct it is
    /// omitted; elsewhere it encodes as the type's zero value.
    Nil,
    /// A `bool`.
    Bool(bool),
    /// Any signed integer.
    Int(i64),
    /// Any unsigned integer.
    Uint(u64),
    /// A float.
    Float(f64),
    /// A complex number (real, imaginary).
    Complex(f64, f64),
    /// A Go string: bytes, normally but not necessarily UTF-8.
    String(Vec<u8>),
    /// A `[]byte`, or the encoding of a self-encoding (`GobEncoder`...) value.
    Bytes(Vec<u8>),
    /// A slice.
    Slice(Vec<Value>),
    /// An array.
    Array(Vec<Value>),
    /// A map, as (key, element) pairs in wire order.
    Map(Vec<(Value, Value)>),
    /// A struct.
    Struct(Box<StructValue>),
}

/// A struct value: its type name and fields by Go name.
#[derive(Clone, PartialEq, Default)]
pub struct StructValue {
    /// The Go type name (as sent on the wire when decoded; ignored when encoding).
    pub name: Arc<str>,
    /// Fields by Go name. When encoding, fields missing here are omitted, like zero
    /// values; when decoded, only the fields that were on the wire are present.
    pub fields: Vec<(Arc<str>, Value)>,
}

impl Value {
    /// A Go string from Rust text.
    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into().into_bytes())
    }

    /// A `[]byte` value.
    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }

    /// The kind of the value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::String(_) => "string",
            Value::Bytes(_) => "[]byte",
            Value::Slice(_) => "slice",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Struct(_) => "struct",
        }
    }

    /// Whether this is [`Value::Nil`].
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    fn expect(&self, what: &str) -> Error {
        Error::mismatch(what, self.kind())
    }

    /// A `bool` (`Nil` reads as `false`).
    pub fn as_bool(&self) -> Result<bool> {
        match self {
            Value::Bool(b) => Ok(*b),
            Value::Nil => Ok(false),
            other => Err(other.expect("bool")),
        }
    }

    /// An unsigned integer (`Nil` reads as 0). Signed values are refused, as in Go.
    pub fn as_u64(&self) -> Result<u64> {
        match self {
            Value::Uint(u) => Ok(*u),
            Value::Nil => Ok(0),
            other => Err(other.expect("uint")),
        }
    }

    /// A signed integer (`Nil` reads as 0). Unsigned values are refused, as in Go.
    pub fn as_i64(&self) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Nil => Ok(0),
            other => Err(other.expect("int")),
        }
    }

    /// A float (`Nil` reads as 0.0).
    pub fn as_f64(&self) -> Result<f64> {
        match self {
            Value::Float(f) => Ok(*f),
            Value::Nil => Ok(0.0),
            other => Err(other.expect("float")),
        }
    }

    /// A string as UTF-8 text (`Nil` reads as empty).
    pub fn as_str(&self) -> Result<&str> {
        match self {
            Value::String(s) => std::str::from_utf8(s).map_err(|_| Error::InvalidUtf8),
            Value::Nil => Ok(""),
            other => Err(other.expect("string")),
        }
    }

    /// The raw bytes of a string or `[]byte` (`Nil` reads as empty).
    pub fn as_bytes(&self) -> Result<&[u8]> {
        match self {
            Value::String(b) | Value::Bytes(b) => Ok(b),
            Value::Nil => Ok(&[]),
            other => Err(other.expect("[]byte")),
        }
    }

    /// The elements of a slice or array (`Nil` reads as empty).
    pub fn as_slice(&self) -> Result<&[Value]> {
        match self {
            Value::Slice(v) | Value::Array(v) => Ok(v),
            Value::Nil => Ok(&[]),
            other => Err(other.expect("slice")),
        }
    }

    /// The entries of a map (`Nil` reads as empty).
    pub fn as_map(&self) -> Result<&[(Value, Value)]> {
        match self {
            Value::Map(v) => Ok(v),
            Value::Nil => Ok(&[]),
            other => Err(other.expect("map")),
        }
    }

    /// A struct, borrowed. `Nil` is refused here (there is nothing to borrow); use
    /// [`Value::into_struct`] to read `Nil` as an empty struct.
    pub fn as_struct(&self) -> Result<&StructValue> {
        match self {
            Value::Struct(s) => Ok(s),
            other => Err(other.expect("struct")),
        }
    }

    /// A struct (`Nil` reads as a struct with no fields, i.e. all zero).
    pub fn into_struct(self) -> Result<StructValue> {
        match self {
            Value::Struct(s) => Ok(*s),
            Value::Nil => Ok(StructValue::default()),
            other => Err(other.expect("struct")),
        }
    }

    /// The elements of a slice or array (`Nil` reads as empty).
    pub fn into_slice(self) -> Result<Vec<Value>> {
        match self {
            Value::Slice(v) | Value::Array(v) => Ok(v),
            Value::Nil => Ok(Vec::new()),
            other => Err(other.expect("slice")),
        }
    }

    /// The entries of a map (`Nil` reads as empty).
    pub fn into_map(self) -> Result<Vec<(Value, Value)>> {
        match self {
            Value::Map(v) => Ok(v),
            Value::Nil => Ok(Vec::new()),
            other => Err(other.expect("map")),
        }
    }

    /// The bytes of a string or `[]byte` (`Nil` reads as empty).
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        match self {
            Value::String(b) | Value::Bytes(b) => Ok(b),
            Value::Nil => Ok(Vec::new()),
            other => Err(other.expect("[]byte")),
        }
    }

    /// A string as UTF-8 text (`Nil` reads as empty).
    pub fn into_string(self) -> Result<String> {
        match self {
            Value::String(b) => String::from_utf8(b).map_err(|_| Error::InvalidUtf8),
            Value::Nil => Ok(String::new()),
            other => Err(other.expect("string")),
        }
    }

    /// Decodes this value into a Rust type.
    pub fn decode<T: GobDecode>(self) -> Result<T> {
        T::from_gob(self)
    }
}

impl StructValue {
    /// An empty struct value with the Go type name.
    pub fn new(name: impl Into<Arc<str>>) -> StructValue {
        StructValue {
            name: name.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a field (builder style).
    pub fn with(mut self, field: impl Into<Arc<str>>, value: impl Into<Value>) -> StructValue {
        self.push(field, value);
        self
    }

    /// Adds a field.
    pub fn push(&mut self, field: impl Into<Arc<str>>, value: impl Into<Value>) {
        self.fields.push((field.into(), value.into()));
    }

    /// The Go type name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field of that name, if present.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == field)
            .map(|(_, v)| v)
    }

    /// Removes the field and returns its value (`Nil` if absent).
    pub fn take(&mut self, field: &str) -> Value {
        match self.fields.iter().position(|(n, _)| &**n == field) {
            Some(i) => self.fields.swap_remove(i).1,
            None => Value::Nil,
        }
    }

    /// Decodes a field into a Rust type; an absent field decodes as its zero value
    /// (the Go semantics of an omitted field). Errors name the field.
    pub fn decode_field<T: GobDecode>(&mut self, field: &str) -> Result<T> {
        T::from_gob(self.take(field)).map_err(|e| self.field_error(field, e))
    }

    fn field_error(&self, field: &str, e: Error) -> Error {
        if self.name.is_empty() {
            e.context(format!("field {field:?}"))
        } else {
            e.context(format!("field {field:?} of {}", self.name))
        }
    }

    fn read<'a, T>(&'a self, field: &str, f: impl FnOnce(&'a Value) -> Result<T>) -> Result<T> {
        match self.get(field) {
            Some(v) => f(v).map_err(|e| self.field_error(field, e)),
            None => f(&Value::Nil),
        }
    }

    /// An unsigned integer field (0 if absent).
    pub fn get_u64(&self, field: &str) -> Result<u64> {
        self.read(field, Value::as_u64)
    }

    /// A signed integer field (0 if absent).
    pub fn get_i64(&self, field: &str) -> Result<i64> {
        self.read(field, Value::as_i64)
    }

    /// A bool field (false if absent).
    pub fn get_bool(&self, field: &str) -> Result<bool> {
        self.read(field, Value::as_bool)
    }

    /// A float field (0.0 if absent).
    pub fn get_f64(&self, field: &str) -> Result<f64> {
        self.read(field, Value::as_f64)
    }

    /// A string field as UTF-8 text ("" if absent).
    pub fn get_str(&self, field: &str) -> Result<&str> {
        self.read(field, Value::as_str)
    }

    /// A string field as an owned `String` ("" if absent).
    pub fn get_string(&self, field: &str) -> Result<String> {
        self.get_str(field).map(str::to_owned)
    }

    /// A `[]byte` (or string) field's bytes (empty if absent).
    pub fn get_bytes(&self, field: &str) -> Result<&[u8]> {
        self.read(field, Value::as_bytes)
    }
}

struct GoStr<'a>(&'a [u8]);

impl fmt::Debug for GoStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "{:?}", String::from_utf8_lossy(self.0)),
        }
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => write!(f, "nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Uint(u) => write!(f, "{u}u"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Complex(re, im) => write!(f, "({re:?}+{im:?}i)"),
            Value::String(s) => GoStr(s).fmt(f),
            Value::Bytes(b) => write!(f, "bytes{:?}", Hex(b)),
            Value::Slice(v) => f.debug_list().entries(v).finish(),
            Value::Array(v) => {
                write!(f, "array")?;
                f.debug_list().entries(v).finish()
            }
            Value::Map(m) => f
                .debug_map()
                .entries(m.iter().map(|(k, v)| (k, v)))
                .finish(),
            Value::Struct(s) => s.fmt(f),
        }
    }
}

impl fmt::Debug for StructValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct(if self.name.is_empty() {
            "struct"
        } else {
            &self.name
        });
        for (n, v) in &self.fields {
            d.field(n, v);
        }
        d.finish()
    }
}

macro_rules! from_prim {
    ($($t:ty => $variant:ident as $as:ty),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$variant(x as $as)
            }
        })*
    };
}

from_prim! {
    u8 => Uint as u64, u16 => Uint as u64, u32 => Uint as u64, u64 => Uint as u64,
    usize => Uint as u64,
    i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
    isize => Int as i64,
    f32 => Float as f64, f64 => Float as f64,
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s.into_bytes())
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b)
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Value {
        Value::Bytes(b.to_vec())
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::Slice(v)
    }
}

impl From<StructValue> for Value {
    fn from(s: StructValue) -> Value {
        Value::Struct(Box::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_helpers_give_zero_for_absent_and_errors_for_wrong_kind() {
        let s = StructValue::new("peerSummary")
            .with("UID", 7u64)
            .with("NickName", "node-1")
            .with("NameByte", vec![1u8, 2]);
        assert_eq!(s.get_u64("UID").unwrap(), 7);
        assert_eq!(s.get_u64("Version").unwrap(), 0);
        assert_eq!(s.get_str("NickName").unwrap(), "node-1");
        assert_eq!(s.get_bytes("NameByte").unwrap(), &[1, 2]);
        assert!(!s.get_bool("HasShortID").unwrap());
        let err = s.get_i64("UID").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field \"UID\" of peerSummary: type mismatch: expected int, found uint"
        );
        assert!(matches!(err.root(), Error::Mismatch { .. }));
    }

    #[test]
    fn invalid_utf8_is_kept_as_bytes() {
        let v = Value::String(vec![0xff, b'a']);
        assert_eq!(v.as_str(), Err(Error::InvalidUtf8));
        assert_eq!(v.as_bytes().unwrap(), &[0xff, b'a']);
        assert_eq!(format!("{v:?}"), "\"\u{fffd}a\"");
    }
}
