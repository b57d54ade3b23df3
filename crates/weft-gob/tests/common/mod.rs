//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use weft_gob::{StructValue, Type, Value};

/// The crate's own copy of the shared gob vectors.
pub fn vector_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors"))
}

/// The project-wide vectors (`shared/` beside the project root).
pub fn shared_vector_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/vectors/gob"
    ))
}

pub fn read_vector(file: &str) -> Vec<u8> {
    let p = vector_dir().join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a struct field holding `v` is left off the wire (mirrors gob's rule).
pub fn omitted(ty: &Type, v: &Value) -> bool {
    match (ty, v) {
        (_, Value::Nil) => true,
        (Type::Bool, Value::Bool(b)) => !*b,
        (Type::Int, Value::Int(i)) => *i == 0,
        (Type::Uint, Value::Uint(u)) => *u == 0,
        (Type::Float, Value::Float(f)) => *f == 0.0,
        (Type::Complex, Value::Complex(a, b)) => *a == 0.0 && *b == 0.0,
        (Type::String, Value::String(s)) => s.is_empty(),
        (Type::Bytes, Value::Bytes(b)) => b.is_empty(),
        (Type::Slice { .. }, Value::Slice(s) | Value::Array(s)) => s.is_empty(),
        _ => false,
    }
}

/// The zero value of a type, as a receiver sees it.
pub fn zero(ty: &Type) -> Value {
    match ty {
        Type::Bool => Value::Bool(false),
        Type::Int => Value::Int(0),
        Type::Uint => Value::Uint(0),
        Type::Float => Value::Float(0.0),
        Type::Complex => Value::Complex(0.0, 0.0),
        Type::String => Value::String(Vec::new()),
        Type::Bytes | Type::External { .. } => Value::Bytes(Vec::new()),
        Type::Slice { .. } => Value::Slice(Vec::new()),
        Type::Array { len, elem, .. } => Value::Array((0..*len).map(|_| zero(elem)).collect()),
        Type::Map { .. } => Value::Map(Vec::new()),
        Type::Struct(st) => Value::from(StructValue::new(st.name.as_str())),
    }
}

/// What a receiver decodes after `v` of type `ty` was sent: zero and nil struct
/// fields dropped, nil elsewhere replaced by zero values, struct names from the type.
pub fn normalize(ty: &Type, v: &Value) -> Value {
    match (ty, v) {
        (_, Value::Nil) => zero(ty),
        (Type::Slice { elem, .. }, Value::Slice(items) | Value::Array(items)) => {
            Value::Slice(items.iter().map(|x| normalize(elem, x)).collect())
        }
        (Type::Array { elem, .. }, Value::Slice(items) | Value::Array(items)) => {
            Value::Array(items.iter().map(|x| normalize(elem, x)).collect())
        }
        (Type::Map { key, elem, .. }, Value::Map(es)) => Value::Map(
            es.iter()
                .map(|(k, x)| (normalize(key, k), normalize(elem, x)))
                .collect(),
        ),
        (Type::Struct(st), Value::Struct(sv)) => {
            let mut out = StructValue::new(st.name.as_str());
            for f in &st.fields {
                if let Some(x) = sv.get(&f.name) {
                    if !omitted(&f.ty, x) {
                        out.push(f.name.as_str(), normalize(&f.ty, x));
                    }
                }
            }
            Value::from(out)
        }
        (_, v) => v.clone(),
    }
}

/// Structural equality with floats compared bit for bit (so NaN equals itself).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Complex(a1, a2), Value::Complex(b1, b2)) => {
            a1.to_bits() == b1.to_bits() && a2.to_bits() == b2.to_bits()
        }
        (Value::Slice(x), Value::Slice(y)) | (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
        }
        (Value::Struct(x), Value::Struct(y)) => {
            x.name == y.name
                && x.fields.len() == y.fields.len()
                && x.fields
                    .iter()
                    .zip(&y.fields)
                    .all(|((n1, v1), (n2, v2))| n1 == n2 && same(v1, v2))
        }
        _ => a == b,
    }
}

/// Standard base64 (as Go's encoding/json writes `[]byte`).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 character {c:#x} in {s:?}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i as u32);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i as u32)) as u8);
        }
    }
    out
}

fn json_is_zero(j: &serde_json::Value) -> bool {
    match j {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
    }
}

/// Checks a decoded value against the JSON form of the Go value (as Go's
/// encoding/json writes it: `[]byte` as base64, structs with every field).
pub fn json_matches(v: &Value, j: &serde_json::Value) -> Result<(), String> {
    let fail = || Err(format!("{v:?} does not match {j}"));
    match v {
        Value::Nil => {
            if json_is_zero(j) {
                Ok(())
            } else {
                fail()
            }
        }
        Value::Bool(b) if j.as_bool() == Some(*b) => Ok(()),
        Value::Uint(u) if j.as_u64() == Some(*u) => Ok(()),
        Value::Int(i) if j.as_i64() == Some(*i) => Ok(()),
        Value::String(s) if j.as_str().map(str::as_bytes) == Some(s.as_slice()) => Ok(()),
        Value::Bytes(b) if j.as_str().map(base64_decode).as_deref() == Some(b.as_slice()) => Ok(()),
        Value::Slice(items) | Value::Array(items) => {
            let Some(arr) = j.as_array() else {
                return fail();
            };
            if arr.len() != items.len() {
                return fail();
            }
            items
                .iter()
                .zip(arr)
                .try_for_each(|(x, y)| json_matches(x, y))
        }
        Value::Map(entries) => {
            let Some(obj) = j.as_object() else {
                return fail();
            };
            if obj.len() != entries.len() {
                return fail();
            }
            for (k, x) in entries {
                let key = k.as_str().map_err(|e| e.to_string())?;
                let y = obj
                    .get(key)
                    .ok_or_else(|| format!("key {key:?} missing in {j}"))?;
                json_matches(x, y)?;
            }
            Ok(())
        }
        Value::Struct(sv) => {
            let Some(obj) = j.as_object() else {
                return fail();
            };
            for (n, x) in &sv.fields {
                let y = obj
                    .get(&**n)
                    .ok_or_else(|| format!("field {n} missing in {j}"))?;
                json_matches(x, y)?;
            }
            for (k, y) in obj {
                if sv.get(k).is_none() && !json_is_zero(y) {
                    return Err(format!("field {k} = {y} not decoded from the wire"));
                }
            }
            Ok(())
        }
        _ => fail(),
    }
}
