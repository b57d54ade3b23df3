//! The encoder: a gob stream, as Go's `gob.NewEncoder(w)` followed by `Encode` calls writes it.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::registry::{RegistryInner, TypeRegistry};
use crate::traits::GobEncode;
use crate::types::{ExternalKind, StructType, Type};
use crate::value::{StructValue, Value};
use crate::wire::{put_bytes, put_float, put_int, put_uint};

/// Writes one gob stream into memory.
///
/// Each [`encode`](Encoder::encode) call appends one value, preceded by the
/// definitions of the types not yet sent on this stream, exactly as Go does:
/// every message is its byte count followed by a type id, then either a type
/// definition (negative id) or a value.
pub struct Encoder {
    out: Vec<u8>,
    registry: TypeRegistry,
    sent: HashSet<u32>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

/// Field numbering state while writing a struct: each field is preceded by the
/// difference between its number and the previous one; 0 ends the struct.
struct FieldCursor {
    last: i64,
}

impl FieldCursor {
    fn new() -> Self {
        FieldCursor { last: -1 }
    }

    fn field(&mut self, buf: &mut Vec<u8>, index: usize) {
        let index = index as i64;
        put_uint(buf, (index - self.last) as u64);
        self.last = index;
    }

    fn end(self, buf: &mut Vec<u8>) {
        buf.push(0);
    }
}

impl Encoder {
    /// A new stream with its own type ids (starting at 65).
    pub fn new() -> Encoder {
        Encoder::with_registry(TypeRegistry::new())
    }

    /// A new stream numbering types from a shared registry, as encoders within one
    /// Go process do.
    pub fn with_registry(registry: TypeRegistry) -> Encoder {
        Encoder {
            out: Vec::new(),
            registry,
            sent: HashSet::new(),
        }
    }

    /// Appends a Rust value.
    pub fn encode<T: GobEncode + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.encode_value(&T::gob_type(), &value.to_gob())
    }

    /// Appends `value`, which must have the shape of `ty`. Nothing is written if the
    /// value does not match the type.
    pub fn encode_value(&mut self, ty: &Type, value: &Value) -> Result<()> {
        let registry = self.registry.clone();
        let mut reg = registry.lock();
        let id = reg.assign(ty)?;

        // Encode the value first, so that a mismatch leaves the stream untouched.
        let mut body = Vec::new();
        put_int(&mut body, i64::from(id));
        match ty {
            Type::Struct(st) => match value {
                Value::Struct(sv) => encode_struct(&mut body, st, sv)?,
                Value::Nil => encode_struct(&mut body, st, &StructValue::default())?,
                other => return Err(Error::mismatch(ty.describe(), other.kind())),
            },
            _ => {
                // Non-struct values are sent as a one-field struct: delta 0, value.
                body.push(0);
                encode_elem(&mut body, ty, value)?;
            }
        }

        self.send_type(&reg, ty)?;
        write_message(&mut self.out, &body);
        Ok(())
    }

    /// The stream written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// Takes the bytes written so far, leaving the stream state (types sent) as is:
    /// what is written next continues the same stream.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The whole stream.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Sends the definition of `ty` (if not sent yet), then of its component types,
    /// depth first, in Go's order.
    fn send_type(&mut self, reg: &RegistryInner, ty: &Type) -> Result<()> {
        if ty.builtin_id().is_some() {
            return Ok(());
        }
        let id = reg
            .get(ty)
            .ok_or(Error::Unsupported("type missing from the registry"))?;
        if !self.sent.insert(id) {
            return Ok(());
        }
        let mut body = Vec::new();
        put_int(&mut body, -i64::from(id));
        write_wire_type(&mut body, reg, ty, id)?;
        write_message(&mut self.out, &body);
        match ty {
            Type::Struct(st) => {
                for f in &st.fields {
                    self.send_type(reg, &f.ty)?;
                }
            }
            Type::Slice { elem, .. } | Type::Array { elem, .. } => self.send_type(reg, elem)?,
            Type::Map { key, elem, .. } => {
                self.send_type(reg, key)?;
                self.send_type(reg, elem)?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn write_message(out: &mut Vec<u8>, body: &[u8]) {
    put_uint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn component_id(reg: &RegistryInner, ty: &Type) -> Result<i64> {
    reg.get(ty)
        .map(i64::from)
        .ok_or(Error::Unsupported("type missing from the registry"))
}

/// `CommonType{Name string; Id typeId}`.
fn write_common(buf: &mut Vec<u8>, name: &str, id: u32) {
    let mut c = FieldCursor::new();
    if !name.is_empty() {
        c.field(buf, 0);
        put_bytes(buf, name.as_bytes());
    }
    c.field(buf, 1);
    put_int(buf, i64::from(id));
    c.end(buf);
}

/// Go's `wireType` struct: `{ArrayT, SliceT, StructT, MapT, GobEncoderT,
/// BinaryMarshalerT, TextMarshalerT}`, exactly one set.
fn write_wire_type(buf: &mut Vec<u8>, reg: &RegistryInner, ty: &Type, id: u32) -> Result<()> {
    let mut w = FieldCursor::new();
    match ty {
        Type::Array { name, len, elem } => {
            // arrayType{CommonType; Elem typeId; Len int}
            w.field(buf, 0);
            let mut a = FieldCursor::new();
            a.field(buf, 0);
            write_common(buf, name, id);
            a.field(buf, 1);
            put_int(buf, component_id(reg, elem)?);
            if *len != 0 {
                a.field(buf, 2);
                let len = i64::try_from(*len).map_err(|_| Error::OutOfRange {
                    value: len.to_string(),
                    target: "gob array length",
                })?;
                put_int(buf, len);
            }
            a.end(buf);
        }
        Type::Slice { name, elem } => {
            // sliceType{CommonType; Elem typeId}
            w.field(buf, 1);
            let mut s = FieldCursor::new();
            s.field(buf, 0);
            write_common(buf, name, id);
            s.field(buf, 1);
            put_int(buf, component_id(reg, elem)?);
            s.end(buf);
        }
        Type::Struct(st) => {
            // structType{CommonType; Field []fieldType}; fieldType{Name string; Id typeId}
            w.field(buf, 2);
            let mut s = FieldCursor::new();
            s.field(buf, 0);
            write_common(buf, &st.name, id);
            if !st.fields.is_empty() {
                s.field(buf, 1);
                put_uint(buf, st.fields.len() as u64);
                for f in &st.fields {
                    let mut fc = FieldCursor::new();
                    if !f.name.is_empty() {
                        fc.field(buf, 0);
                        put_bytes(buf, f.name.as_bytes());
                    }
                    fc.field(buf, 1);
                    put_int(buf, component_id(reg, &f.ty)?);
                    fc.end(buf);
                }
            }
            s.end(buf);
        }
        Type::Map { name, key, elem } => {
            // mapType{CommonType; Key typeId; Elem typeId}
            w.field(buf, 3);
            let mut m = FieldCursor::new();
            m.field(buf, 0);
            write_common(buf, name, id);
            m.field(buf, 1);
            put_int(buf, component_id(reg, key)?);
            m.field(buf, 2);
            put_int(buf, component_id(reg, elem)?);
            m.end(buf);
        }
        Type::External { name, kind } => {
            // gobEncoderType{CommonType}
            let index = match kind {
                ExternalKind::GobEncoder => 4,
                ExternalKind::BinaryMarshaler => 5,
                ExternalKind::TextMarshaler => 6,
            };
            w.field(buf, index);
            let mut g = FieldCursor::new();
            g.field(buf, 0);
            write_common(buf, name, id);
            g.end(buf);
        }
        _ => return Err(Error::Unsupported("definition of a built-in type")),
    }
    w.end(buf);
    Ok(())
}

/// Whether a struct field holding `v` is left out: nil, or a zero number, bool,
/// string, `[]byte` or slice. Maps, arrays, structs and self-encoding values are
/// sent even when empty, as Go does. A value of the wrong kind is not omitted, so
/// that encoding reports the mismatch.
fn omitted(ty: &Type, v: &Value) -> bool {
    match (ty, v) {
        (_, Value::Nil) => true,
        (Type::Bool, Value::Bool(b)) => !*b,
        (Type::Int, Value::Int(i)) => *i == 0,
        (Type::Uint, Value::Uint(u)) => *u == 0,
        (Type::Float, Value::Float(f)) => *f == 0.0,
        (Type::Complex, Value::Complex(re, im)) => *re == 0.0 && *im == 0.0,
        (Type::String, Value::String(s)) => s.is_empty(),
        (Type::Bytes, Value::Bytes(b)) => b.is_empty(),
        (Type::Slice { .. }, Value::Slice(s) | Value::Array(s)) => s.is_empty(),
        _ => false,
    }
}

fn encode_struct(buf: &mut Vec<u8>, st: &StructType, sv: &StructValue) -> Result<()> {
    let mut c = FieldCursor::new();
    let mut matched = 0usize;
    for (i, f) in st.fields.iter().enumerate() {
        let found = match sv.fields.get(i) {
            Some((n, v)) if **n == *f.name => Some(v),
            _ => sv
                .fields
                .iter()
                .find(|(n, _)| **n == *f.name)
                .map(|(_, v)| v),
        };
        let Some(v) = found else { continue };
        matched += 1;
        if omitted(&f.ty, v) {
            continue;
        }
        c.field(buf, i);
        encode_elem(buf, &f.ty, v).map_err(|e| e.context(format!("field {:?}", f.name)))?;
    }
    if matched != sv.fields.len() {
        for (k, (n, _)) in sv.fields.iter().enumerate() {
            if !st.fields.iter().any(|f| *f.name == **n) {
                return Err(Error::UnknownField {
                    st: st.name.clone(),
                    field: n.to_string(),
                });
            }
            if sv.fields[..k].iter().any(|(m, _)| m == n) {
                return Err(Error::DuplicateField(n.to_string()));
            }
        }
    }
    c.end(buf);
    Ok(())
}

/// Writes the zero value of a type (for `Nil` where a value must be sent).
fn encode_zero(buf: &mut Vec<u8>, ty: &Type) {
    match ty {
        Type::Complex => buf.extend_from_slice(&[0, 0]),
        Type::Array { len, elem, .. } => {
            put_uint(buf, *len);
            for _ in 0..*len {
                encode_zero(buf, elem);
            }
        }
        // Numbers, bools, empty strings/slices/maps/opaque bytes, and empty
        // structs (just the terminator) are all a single 0 byte.
        _ => buf.push(0),
    }
}

/// Writes a value in a context where it is always sent (top level, element of a
/// slice, array or map, or a struct field already known to be non-zero).
fn encode_elem(buf: &mut Vec<u8>, ty: &Type, v: &Value) -> Result<()> {
    match (ty, v) {
        (_, Value::Nil) => encode_zero(buf, ty),
        (Type::Bool, Value::Bool(b)) => put_uint(buf, u64::from(*b)),
        (Type::Int, Value::Int(i)) => put_int(buf, *i),
        (Type::Uint, Value::Uint(u)) => put_uint(buf, *u),
        (Type::Float, Value::Float(f)) => put_float(buf, *f),
        (Type::Complex, Value::Complex(re, im)) => {
            put_float(buf, *re);
            put_float(buf, *im);
        }
        (Type::String, Value::String(s)) => put_bytes(buf, s),
        (Type::Bytes, Value::Bytes(b)) => put_bytes(buf, b),
        (Type::External { .. }, Value::Bytes(b)) => put_bytes(buf, b),
        (Type::Slice { elem, .. }, Value::Slice(items) | Value::Array(items)) => {
            put_uint(buf, items.len() as u64);
            for (i, item) in items.iter().enumerate() {
                encode_elem(buf, elem, item).map_err(|e| e.context(format!("element {i}")))?;
            }
        }
        (Type::Array { len, elem, .. }, Value::Slice(items) | Value::Array(items)) => {
            if items.len() as u64 != *len {
                return Err(Error::ArrayLength {
                    expected: *len,
                    found: items.len() as u64,
                });
            }
            put_uint(buf, *len);
            for (i, item) in items.iter().enumerate() {
                encode_elem(buf, elem, item).map_err(|e| e.context(format!("element {i}")))?;
            }
        }
        (Type::Map { key, elem, .. }, Value::Map(entries)) => {
            put_uint(buf, entries.len() as u64);
            for (k, v) in entries {
                encode_elem(buf, key, k).map_err(|e| e.context("map key"))?;
                encode_elem(buf, elem, v).map_err(|e| e.context(format!("map element {k:?}")))?;
            }
        }
        (Type::Struct(st), Value::Struct(sv)) => {
            encode_struct(buf, st, sv).map_err(|e| e.context(format!("struct {}", st.name)))?
        }
        (ty, v) => return Err(Error::mismatch(ty.describe(), v.kind())),
    }
    Ok(())
}
