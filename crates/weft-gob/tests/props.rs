//! Property tests: round trips of random values of random types, and random or
//! damaged input never panics.

mod common;

mod harness {
    include!("../fuzz/harness.rs");
}

use common::{normalize, same};
use proptest::collection::vec;
use proptest::prelude::*;
use weft_gob::{
    decode_all, Decoder, Encoder, ExternalKind, Field, Limits, StructValue, Type, TypeRegistry,
    Value,
};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[A-Za-z][A-Za-z0-9_.\\[\\]]{0,10}"]
}

fn leaf_type() -> impl Strategy<Value = Type> {
    prop_oneof![
        Just(Type::Bool),
        Just(Type::Int),
        Just(Type::Uint),
        Just(Type::Float),
        Just(Type::Complex),
        Just(Type::String),
        Just(Type::Bytes),
        (
            name(),
            prop_oneof![
                Just(ExternalKind::GobEncoder),
                Just(ExternalKind::BinaryMarshaler),
                Just(ExternalKind::TextMarshaler)
            ]
        )
            .prop_map(|(name, kind)| Type::External { name, kind }),
    ]
}

fn arb_type() -> impl Strategy<Value = Type> {
    leaf_type().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            (name(), inner.clone()).prop_map(|(n, e)| Type::slice(e).with_name(n)),
            (name(), 0u64..4, inner.clone())
                .prop_map(|(n, len, e)| Type::array(len, e).with_name(n)),
            (name(), inner.clone(), inner.clone())
                .prop_map(|(n, k, e)| Type::map(k, e).with_name(n)),
            (name(), vec(inner, 0..6)).prop_map(|(n, tys)| {
                Type::structure(
                    n,
                    tys.into_iter()
                        .enumerate()
                        .map(|(i, t)| Field::new(format!("F{i}"), t))
                        .collect(),
                )
            }),
        ]
    })
}

fn small_int() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), -200i64..200, any::<i64>()]
}

fn small_uint() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..300, any::<u64>()]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(f64::NAN),
        -1e6f64..1e6,
        any::<f64>()
    ]
}

/// A value of type `ty`, sometimes nil.
fn arb_value(ty: &Type) -> BoxedStrategy<Value> {
    let v: BoxedStrategy<Value> = match ty {
        Type::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Type::Int => small_int().prop_map(Value::Int).boxed(),
        Type::Uint => small_uint().prop_map(Value::Uint).boxed(),
        Type::Float => float().prop_map(Value::Float).boxed(),
        Type::Complex => (float(), float())
            .prop_map(|(a, b)| Value::Complex(a, b))
            .boxed(),
        Type::String => vec(any::<u8>(), 0..6).prop_map(Value::String).boxed(),
        Type::Bytes | Type::External { .. } => {
            vec(any::<u8>(), 0..6).prop_map(Value::Bytes).boxed()
        }
        Type::Slice { elem, .. } => vec(arb_value(elem), 0..4).prop_map(Value::Slice).boxed(),
        Type::Array { len, elem, .. } => vec(arb_value(elem), *len as usize)
            .prop_map(Value::Array)
            .boxed(),
        Type::Map { key, elem, .. } => vec((arb_value(key), arb_value(elem)), 0..4)
            .prop_map(Value::Map)
            .boxed(),
        Type::Struct(st) => {
            let name = st.name.clone();
            let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = st
                .fields
                .iter()
                .map(|f| {
                    let n = f.name.clone();
                    proptest::option::of(arb_value(&f.ty).prop_map(move |v| (n.clone(), v))).boxed()
                })
                .collect();
            fields
                .prop_map(move |fs| {
                    let mut sv = StructValue::new(name.as_str());
                    for (n, v) in fs.into_iter().flatten() {
                        sv.push(n, v);
                    }
                    Value::from(sv)
                })
                .boxed()
        }
    };
    prop_oneof![1 => Just(Value::Nil), 8 => v].boxed()
}

fn typed_value() -> impl Strategy<Value = (Type, Value)> {
    arb_type().prop_flat_map(|t| {
        let v = arb_value(&t);
        (Just(t), v)
    })
}

/// Several values on one stream, with types repeating.
fn typed_stream() -> impl Strategy<Value = Vec<(Type, Value)>> {
    vec(typed_value(), 1..4).prop_flat_map(|tvs| {
        let again: Vec<BoxedStrategy<(Type, Value)>> = tvs
            .iter()
            .map(|(t, _)| {
                let t2 = t.clone();
                arb_value(t).prop_map(move |v| (t2.clone(), v)).boxed()
            })
            .collect();
        (Just(tvs), again).prop_map(|(mut a, b)| {
            a.extend(b);
            a
        })
    })
}

fn encode_stream(tvs: &[(Type, Value)]) -> Vec<u8> {
    let mut enc = Encoder::new();
    for (t, v) in tvs {
        enc.encode_value(t, v).unwrap();
    }
    enc.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(tvs in typed_stream()) {
        let bytes = encode_stream(&tvs);
        let decoded = decode_all(&bytes).unwrap();
        prop_assert_eq!(decoded.len(), tvs.len());
        for ((t, v), got) in tvs.iter().zip(&decoded) {
            let want = normalize(t, v);
            prop_assert!(same(got, &want), "type {:?}\n got {:?}\nwant {:?}", t, got, want);
        }
    }

    #[test]
    fn rebuilt_types_reencode_identically(tvs in typed_stream()) {
        // Decoding with types and encoding again gives the same bytes: the type
        // definitions, their order and ids, and the values all survive.
        let bytes = encode_stream(&tvs);
        let mut dec = Decoder::new(&bytes);
        let mut enc = Encoder::new();
        let mut i = 0;
        while let Some((t, v)) = dec.next_typed().unwrap() {
            prop_assert_eq!(&t, &tvs[i].0);
            enc.encode_value(&t, &v).unwrap();
            i += 1;
        }
        prop_assert_eq!(enc.into_bytes(), bytes);
    }

    #[test]
    fn shared_registry_keeps_ids_across_streams(tvs in typed_stream()) {
        let reg = TypeRegistry::new();
        let mut first = Encoder::with_registry(reg.clone());
        let mut second = Encoder::with_registry(reg.clone());
        for (t, v) in &tvs {
            first.encode_value(t, v).unwrap();
        }
        let n = reg.len();
        for (t, v) in tvs.iter().rev() {
            second.encode_value(t, v).unwrap();
        }
        prop_assert_eq!(reg.len(), n);
        let a = decode_all(&first.into_bytes()).unwrap();
        let mut b = decode_all(&second.into_bytes()).unwrap();
        b.reverse();
        prop_assert!(a.iter().zip(&b).all(|(x, y)| same(x, y)));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let _ = decode_all(&bytes);
        let mut dec = Decoder::with_limits(&bytes, Limits { max_message_size: 64, max_depth: 4, max_values: 50 });
        while let Ok(Some(_)) = dec.next_typed() {}
        harness::decode(&bytes);
    }

    #[test]
    fn random_messages_never_panic(bodies in vec(vec(any::<u8>(), 1..40), 1..6), prefix in vec(any::<u8>(), 0..3)) {
        // Well-framed messages with random content reach deeper into the decoder.
        let mut bytes = Vec::new();
        for mut b in bodies {
            // Bias the type id towards small user ids and definitions.
            if let Some(p) = prefix.first() {
                b[0] = 0x80 | (p & 0x07);
                b.insert(0, 0xff);
            }
            bytes.push(b.len() as u8);
            bytes.extend(b);
        }
        harness::decode(&bytes);
    }

    #[test]
    fn damaged_streams_never_panic(
        tvs in typed_stream(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..5),
    ) {
        let mut bytes = encode_stream(&tvs);
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        harness::decode(&bytes);
    }

    #[test]
    fn truncated_streams_are_errors(tvs in typed_stream(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_stream(&tvs);
        let at = cut.index(bytes.len());
        let r = decode_all(&bytes[..at]);
        // Cutting at a message boundary just loses values; anywhere else is an error.
        if let Ok(vals) = r {
            prop_assert!(vals.len() < tvs.len());
        }
    }
}
