//! The decoder: reads a gob stream (type definitions and values) from memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::traits::GobDecode;
use crate::types::{builtin, ExternalKind, Field, StructType, Type};
use crate::value::{StructValue, Value};
use crate::wire::Reader;

/// Bounds applied to untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message (default 10 MiB, Weave's `maxTCPMsgSize`).
    pub max_message_size: usize,
    /// Deepest accepted nesting of slices, arrays, maps and structs within one value
    /// (default 64; values above [`Limits::DEPTH_CAP`] act as the cap, which keeps
    /// the recursive decoder well within a thread's stack).
    pub max_depth: usize,
    /// Most items (every number, string, element, field...) accepted in one
    /// top-level value (default 1 Mi). This bounds memory: a decoded item takes a
    /// few dozen bytes while it may take one byte on the wire.
    pub max_values: usize,
}

impl Limits {
    /// The largest nesting depth honoured, whatever `max_depth` says.
    pub const DEPTH_CAP: usize = 256;

    fn depth(&self) -> usize {
        self.max_depth.min(Self::DEPTH_CAP)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 10 << 20,
            max_depth: 64,
            max_values: 1 << 20,
        }
    }
}

/// A type definition received on the stream (Go's `wireType`).
#[derive(Debug, Clone)]
enum WireType {
    Array {
        name: Arc<str>,
        elem: u32,
        len: u64,
    },
    Slice {
        name: Arc<str>,
        elem: u32,
    },
    Struct {
        name: Arc<str>,
        fields: Vec<(Arc<str>, u32)>,
    },
    Map {
        name: Arc<str>,
        key: u32,
        elem: u32,
    },
    External {
        name: Arc<str>,
        kind: ExternalKind,
    },
}

impl WireType {
    fn children(&self) -> Vec<u32> {
        match self {
            WireType::Array { elem, .. } | WireType::Slice { elem, .. } => vec![*elem],
            WireType::Struct { fields, .. } => fields.iter().map(|(_, id)| *id).collect(),
            WireType::Map { key, elem, .. } => vec![*key, *elem],
            WireType::External { .. } => Vec::new(),
        }
    }
}

/// Reads the values of one gob stream held in memory.
///
/// ```
/// use std::collections::HashMap;
/// # let bytes = {
/// #     let mut m = HashMap::new();
/// #     m.insert("Name".to_string(), "0a:1b:2c:3d:4e:5f".to_string());
/// #     weft_gob::to_bytes(&m).unwrap()
/// # };
/// let mut dec = weft_gob::Decoder::new(&bytes);
/// let features: HashMap<String, String> = dec.decode()?;
/// assert_eq!(features["Name"], "0a:1b:2c:3d:4e:5f");
/// assert!(dec.is_at_end());
/// # Ok::<(), weft_gob::Error>(())
/// ```
pub struct Decoder<'a> {
    input: Reader<'a>,
    limits: Limits,
    types: HashMap<u32, WireType>,
    checked: HashSet<u32>,
    failed: bool,
}

impl<'a> Decoder<'a> {
    /// A decoder with the default [`Limits`].
    pub fn new(input: &'a [u8]) -> Decoder<'a> {
        Decoder::with_limits(input, Limits::default())
    }

    /// A decoder with explicit limits.
    pub fn with_limits(input: &'a [u8], limits: Limits) -> Decoder<'a> {
        Decoder {
            input: Reader::new(input),
            limits,
            types: HashMap::new(),
            checked: HashSet::new(),
            failed: false,
        }
    }

    /// Whether the whole input has been consumed.
    pub fn is_at_end(&self) -> bool {
        self.input.remaining() == 0
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.input.position()
    }

    /// The next value, after any type definitions before it; `None` at the end of
    /// the stream. After an error every later call fails with [`Error::Poisoned`].
    pub fn next_value(&mut self) -> Result<Option<Value>> {
        Ok(self.guarded(Self::read_next)?.map(|(_, v)| v))
    }

    /// The next value together with its type, rebuilt from the stream's type
    /// definitions, so that it can be re-encoded (wire names included). A value of
    /// a recursive type cannot be described by a [`Type`] and gives
    /// [`Error::Unsupported`].
    pub fn next_typed(&mut self) -> Result<Option<(Type, Value)>> {
        self.guarded(|d| match d.read_next()? {
            Some((id, v)) => {
                let mut budget = d.limits.max_values;
                let ty = d.rebuild(id, &mut Vec::new(), &mut budget)?;
                Ok(Some((ty, v)))
            }
            None => Ok(None),
        })
    }

    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.failed {
            return Err(Error::Poisoned);
        }
        let r = f(self);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Builds the [`Type`] of a checked type id.
    fn rebuild(&self, id: u32, path: &mut Vec<u32>, budget: &mut usize) -> Result<Type> {
        if *budget == 0 {
            return Err(Error::TooManyValues(self.limits.max_values));
        }
        *budget -= 1;
        Ok(match id {
            builtin::BOOL => Type::Bool,
            builtin::INT => Type::Int,
            builtin::UINT => Type::Uint,
            builtin::FLOAT => Type::Float,
            builtin::COMPLEX => Type::Complex,
            builtin::BYTES => Type::Bytes,
            builtin::STRING => Type::String,
            builtin::INTERFACE => return Err(Error::Unsupported("interface")),
            _ => {
                if path.contains(&id) {
                    return Err(Error::Unsupported("recursive type"));
                }
                if path.len() >= self.limits.depth() {
                    return Err(Error::TooDeep(self.limits.depth()));
                }
                let wt = self.types.get(&id).ok_or(Error::UnknownType(id))?;
                path.push(id);
                let ty = match wt {
                    WireType::Array { name, elem, len } => Type::Array {
                        name: name.to_string(),
                        len: *len,
                        elem: Box::new(self.rebuild(*elem, path, budget)?),
                    },
                    WireType::Slice { name, elem } => Type::Slice {
                        name: name.to_string(),
                        elem: Box::new(self.rebuild(*elem, path, budget)?),
                    },
                    WireType::Map { name, key, elem } => Type::Map {
                        name: name.to_string(),
                        key: Box::new(self.rebuild(*key, path, budget)?),
                        elem: Box::new(self.rebuild(*elem, path, budget)?),
                    },
                    WireType::Struct { name, fields } => {
                        let mut out = Vec::with_capacity(fields.len());
                        for (fname, fid) in fields {
                            out.push(Field::new(
                                fname.to_string(),
                                self.rebuild(*fid, path, budget)?,
                            ));
                        }
                        Type::Struct(StructType {
                            name: name.to_string(),
                            fields: out,
                        })
                    }
                    WireType::External { name, kind } => Type::External {
                        name: name.to_string(),
                        kind: *kind,
                    },
                };
                path.pop();
                ty
            }
        })
    }

    /// The next value as a Rust type; [`Error::EndOfStream`] if there is none.
    pub fn decode<T: GobDecode>(&mut self) -> Result<T> {
        match self.next_value()? {
            Some(v) => T::from_gob(v),
            None => Err(Error::EndOfStream),
        }
    }

    fn read_next(&mut self) -> Result<Option<(u32, Value)>> {
        let mut saw_types = false;
        loop {
            if self.input.remaining() == 0 {
                return if saw_types {
                    Err(Error::TypesWithoutValue)
                } else {
                    Ok(None)
                };
            }
            let size = self.input.uint("message length")?;
            if size > self.limits.max_message_size as u64 {
                return Err(Error::MessageTooLarge {
                    size,
                    limit: self.limits.max_message_size,
                });
            }
            if size == 0 {
                return Err(Error::EmptyMessage);
            }
            let msg = self.input.take(size as usize, "message")?;
            let mut r = Reader::new(msg);
            let id = r.int("type id")?;
            if id < 0 {
                let id = id.checked_neg().ok_or(Error::BadTypeId(id))?;
                let id = user_type_id(id)?;
                if self.types.contains_key(&id) {
                    return Err(Error::DuplicateType(id));
                }
                let wt = parse_wire_type(&mut r)?;
                if r.remaining() != 0 {
                    return Err(Error::TrailingBytes {
                        count: r.remaining(),
                        what: "a type definition",
                    });
                }
                self.types.insert(id, wt);
                saw_types = true;
                continue;
            }
            let id = value_type_id(id)?;
            self.check_type(id)?;
            let mut ctx = Ctx {
                types: &self.types,
                values_left: self.limits.max_values,
                max_values: self.limits.max_values,
                max_depth: self.limits.depth(),
            };
            let value = match self.types.get(&id) {
                Some(WireType::Struct { .. }) => ctx.decode_struct(&mut r, id, 0)?,
                _ => {
                    let delta = r.uint("singleton field delta")?;
                    if delta != 0 {
                        return Err(Error::BadSingletonDelta(delta));
                    }
                    ctx.decode_value(&mut r, id, 0)?
                }
            };
            if r.remaining() != 0 {
                return Err(Error::TrailingBytes {
                    count: r.remaining(),
                    what: "a value",
                });
            }
            return Ok(Some((id, value)));
        }
    }

    /// Checks that `id` and every type reachable from it are defined (cycles allowed).
    fn check_type(&mut self, id: u32) -> Result<()> {
        if self.checked.contains(&id) {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let mut stack = vec![id];
        while let Some(t) = stack.pop() {
            if t <= builtin::INTERFACE || self.checked.contains(&t) || !seen.insert(t) {
                continue;
            }
            match self.types.get(&t) {
                Some(wt) => stack.extend(wt.children()),
                None => return Err(Error::UnknownType(t)),
            }
        }
        self.checked.extend(seen);
        Ok(())
    }
}

/// Decodes every value of a stream.
pub fn decode_all(input: &[u8]) -> Result<Vec<Value>> {
    let mut dec = Decoder::new(input);
    let mut out = Vec::new();
    while let Some(v) = dec.next_value()? {
        out.push(v);
    }
    Ok(out)
}

/// Decodes a stream holding exactly one value.
pub fn from_bytes<T: GobDecode>(input: &[u8]) -> Result<T> {
    let mut dec = Decoder::new(input);
    let v = dec.decode()?;
    if dec.next_value()?.is_some() {
        return Err(Error::ExtraValues);
    }
    Ok(v)
}

fn user_type_id(id: i64) -> Result<u32> {
    if id <= i64::from(builtin::FIRST_USER_ID) || id > i64::from(i32::MAX) {
        return Err(Error::BadTypeId(id));
    }
    Ok(id as u32)
}

fn value_type_id(id: i64) -> Result<u32> {
    if id == 0 || id > i64::from(i32::MAX) {
        return Err(Error::BadTypeId(id));
    }
    Ok(id as u32)
}

/// Reads struct fields by delta, calling `f` with each field number.
fn read_fields(
    r: &mut Reader<'_>,
    count: usize,
    st: &str,
    mut f: impl FnMut(&mut Reader<'_>, usize) -> Result<()>,
) -> Result<()> {
    let mut field: u64 = 0; // one past the last field read
    loop {
        let delta = r.uint("field delta")?;
        if delta == 0 {
            return Ok(());
        }
        let next = field.saturating_add(delta);
        if next > count as u64 {
            return Err(Error::FieldOutOfRange {
                st: st.to_string(),
                field: next - 1,
                count,
            });
        }
        field = next;
        f(r, (next - 1) as usize)?;
    }
}

fn bad_def(msg: impl Into<String>) -> Error {
    Error::BadTypeDefinition(msg.into())
}

fn read_type_ref(r: &mut Reader<'_>) -> Result<u32> {
    let id = r.int("type id")?;
    value_type_id(id).map_err(|_| bad_def(format!("component type id {id} is invalid")))
}

fn read_name(r: &mut Reader<'_>) -> Result<Arc<str>> {
    let b = r.bytes("type or field name")?;
    Ok(Arc::from(String::from_utf8_lossy(b).as_ref()))
}

/// `CommonType{Name string; Id typeId}`; only the name is kept (the message's id is
/// authoritative, as in Go).
fn parse_common(r: &mut Reader<'_>) -> Result<Arc<str>> {
    let mut name: Arc<str> = Arc::from("");
    read_fields(r, 2, "CommonType", |r, i| {
        match i {
            0 => name = read_name(r)?,
            _ => {
                r.int("CommonType.Id")?;
            }
        }
        Ok(())
    })?;
    Ok(name)
}

fn parse_wire_type(r: &mut Reader<'_>) -> Result<WireType> {
    let mut out: Option<WireType> = None;
    read_fields(r, 7, "wireType", |r, i| {
        if out.is_some() {
            return Err(bad_def("more than one kind of type in one definition"));
        }
        out = Some(match i {
            0 => {
                let (mut name, mut elem, mut len) = (Arc::from(""), None, 0i64);
                read_fields(r, 3, "arrayType", |r, j| {
                    match j {
                        0 => name = parse_common(r)?,
                        1 => elem = Some(read_type_ref(r)?),
                        _ => len = r.int("array length")?,
                    }
                    Ok(())
                })?;
                let len = u64::try_from(len)
                    .map_err(|_| bad_def(format!("negative array length {len}")))?;
                let elem = elem.ok_or_else(|| bad_def("array type without element type"))?;
                WireType::Array { name, elem, len }
            }
            1 => {
                let (mut name, mut elem) = (Arc::from(""), None);
                read_fields(r, 2, "sliceType", |r, j| {
                    match j {
                        0 => name = parse_common(r)?,
                        _ => elem = Some(read_type_ref(r)?),
                    }
                    Ok(())
                })?;
                let elem = elem.ok_or_else(|| bad_def("slice type without element type"))?;
                WireType::Slice { name, elem }
            }
            2 => {
                let mut name: Arc<str> = Arc::from("");
                let mut fields = Vec::new();
                read_fields(r, 2, "structType", |r, j| {
                    match j {
                        0 => name = parse_common(r)?,
                        _ => {
                            let count = r.uint("struct field count")?;
                            // Each field takes at least two bytes (id and terminator).
                            if count.saturating_mul(2) > r.remaining() as u64 {
                                return Err(Error::CountTooLarge {
                                    what: "struct field list",
                                    count,
                                    remaining: r.remaining(),
                                });
                            }
                            fields = Vec::with_capacity(count as usize);
                            let mut names = HashSet::new();
                            for _ in 0..count {
                                let mut fname: Arc<str> = Arc::from("");
                                let mut fid = None;
                                read_fields(r, 2, "fieldType", |r, k| {
                                    match k {
                                        0 => fname = read_name(r)?,
                                        _ => fid = Some(read_type_ref(r)?),
                                    }
                                    Ok(())
                                })?;
                                let fid = fid.ok_or_else(|| {
                                    bad_def(format!("struct field {fname:?} without a type"))
                                })?;
                                // Go struct field names are unique; field lookup by
                                // name relies on it.
                                if !names.insert(fname.clone()) {
                                    return Err(bad_def(format!(
                                        "struct field {fname:?} appears twice"
                                    )));
                                }
                                fields.push((fname, fid));
                            }
                        }
                    }
                    Ok(())
                })?;
                WireType::Struct { name, fields }
            }
            3 => {
                let (mut name, mut key, mut elem) = (Arc::from(""), None, None);
                read_fields(r, 3, "mapType", |r, j| {
                    match j {
                        0 => name = parse_common(r)?,
                        1 => key = Some(read_type_ref(r)?),
                        _ => elem = Some(read_type_ref(r)?),
                    }
                    Ok(())
                })?;
                let key = key.ok_or_else(|| bad_def("map type without key type"))?;
                let elem = elem.ok_or_else(|| bad_def("map type without element type"))?;
                WireType::Map { name, key, elem }
            }
            kind => {
                // GobEncoderT, BinaryMarshalerT, TextMarshalerT: gobEncoderType{CommonType}.
                let kind = match kind {
                    4 => ExternalKind::GobEncoder,
                    5 => ExternalKind::BinaryMarshaler,
                    _ => ExternalKind::TextMarshaler,
                };
                let mut name = Arc::from("");
                read_fields(r, 1, "gobEncoderType", |r, _| {
                    name = parse_common(r)?;
                    Ok(())
                })?;
                WireType::External { name, kind }
            }
        });
        Ok(())
    })?;
    out.ok_or_else(|| bad_def("the definition names no type"))
}

/// Per-value decoding state.
struct Ctx<'t> {
    types: &'t HashMap<u32, WireType>,
    values_left: usize,
    max_values: usize,
    max_depth: usize,
}

impl Ctx<'_> {
    fn spend(&mut self, n: u64) -> Result<()> {
        match usize::try_from(n) {
            Ok(n) if n <= self.values_left => {
                self.values_left -= n;
                Ok(())
            }
            _ => Err(Error::TooManyValues(self.max_values)),
        }
    }

    fn enter(&self, depth: usize) -> Result<usize> {
        if depth >= self.max_depth {
            return Err(Error::TooDeep(self.max_depth));
        }
        Ok(depth + 1)
    }

    /// A count of items, each needing at least `min_bytes` bytes of input.
    fn count(&mut self, r: &mut Reader<'_>, what: &'static str, min_bytes: u64) -> Result<u64> {
        let count = r.uint(what)?;
        if count.saturating_mul(min_bytes) > r.remaining() as u64 {
            return Err(Error::CountTooLarge {
                what,
                count,
                remaining: r.remaining(),
            });
        }
        self.spend(count.saturating_mul(min_bytes))?;
        Ok(count)
    }

    fn wire(&self, id: u32) -> Result<&WireType> {
        self.types.get(&id).ok_or(Error::UnknownType(id))
    }

    fn decode_value(&mut self, r: &mut Reader<'_>, id: u32, depth: usize) -> Result<Value> {
        Ok(match id {
            builtin::BOOL => Value::Bool(r.uint("bool")? != 0),
            builtin::INT => Value::Int(r.int("int")?),
            builtin::UINT => Value::Uint(r.uint("uint")?),
            builtin::FLOAT => Value::Float(r.float("float")?),
            builtin::COMPLEX => {
                let re = r.float("complex")?;
                Value::Complex(re, r.float("complex")?)
            }
            builtin::BYTES => Value::Bytes(r.bytes("[]byte")?.to_vec()),
            builtin::STRING => Value::String(r.bytes("string")?.to_vec()),
            builtin::INTERFACE => return Err(Error::Unsupported("interface")),
            _ => match self.wire(id)? {
                WireType::Slice { elem, .. } => {
                    let elem = *elem;
                    let depth = self.enter(depth)?;
                    let n = self.count(r, "slice", 1)?;
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.decode_value(r, elem, depth)?);
                    }
                    Value::Slice(items)
                }
                WireType::Array { elem, len, .. } => {
                    let (elem, len) = (*elem, *len);
                    let depth = self.enter(depth)?;
                    let n = self.count(r, "array", 1)?;
                    if n != len {
                        return Err(Error::ArrayLength {
                            expected: len,
                            found: n,
                        });
                    }
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.decode_value(r, elem, depth)?);
                    }
                    Value::Array(items)
                }
                WireType::Map { key, elem, .. } => {
                    let (key, elem) = (*key, *elem);
                    let depth = self.enter(depth)?;
                    let n = self.count(r, "map", 2)?;
                    let mut entries = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let k = self.decode_value(r, key, depth)?;
                        let v = self.decode_value(r, elem, depth)?;
                        entries.push((k, v));
                    }
                    Value::Map(entries)
                }
                WireType::Struct { .. } => self.decode_struct(r, id, depth)?,
                WireType::External { .. } => Value::Bytes(r.bytes("self-encoded value")?.to_vec()),
            },
        })
    }

    fn decode_struct(&mut self, r: &mut Reader<'_>, id: u32, depth: usize) -> Result<Value> {
        let types = self.types;
        let Some(WireType::Struct { name, fields }) = types.get(&id) else {
            return Err(Error::UnknownType(id));
        };
        let depth = self.enter(depth)?;
        self.spend(1)?;
        let mut out = StructValue::new(name.clone());
        let mut field: u64 = 0; // one past the last field read
        loop {
            let delta = r.uint("field delta")?;
            if delta == 0 {
                break;
            }
            let next = field.saturating_add(delta);
            if next > fields.len() as u64 {
                return Err(Error::FieldOutOfRange {
                    st: name.to_string(),
                    field: next - 1,
                    count: fields.len(),
                });
            }
            field = next;
            let (fname, fid) = &fields[(next - 1) as usize];
            self.spend(1)?;
            let v = self.decode_value(r, *fid, depth)?;
            out.fields.push((fname.clone(), v));
        }
        Ok(Value::Struct(Box::new(out)))
    }
}
