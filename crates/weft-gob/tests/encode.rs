//! Encoder behaviour: Go's rules for what is sent, and errors for values that do
//! not fit their type.

use std::collections::{BTreeMap, HashMap};

use weft_gob::{
    decode_all, gob_struct, Decoder, Encoder, Error, Field, GobEncode, StructValue, Type, Value,
};

fn one(ty: &Type, v: &Value) -> Vec<u8> {
    let mut enc = Encoder::new();
    enc.encode_value(ty, v).unwrap();
    enc.into_bytes()
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Holder as "Holder" {
        m: Option<BTreeMap<String, String>> => "M",
        list: Vec<String> => "List",
        inner: Option<Box<Holder2>> => "Inner",
        arr: [u8; 2] => "Arr",
        f: f32 => "F",
    }
}

gob_struct! {
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Holder2 as "Holder2" {
        n: i32 => "N",
    }
}

#[test]
fn top_level_zero_values_are_sent() {
    assert_eq!(one(&Type::Uint, &Value::Uint(0)), [0x03, 0x06, 0x00, 0x00]);
    assert_eq!(one(&Type::String, &Value::Nil), [0x03, 0x0c, 0x00, 0x00]);
    assert_eq!(
        weft_gob::to_bytes(&false).unwrap(),
        [0x03, 0x02, 0x00, 0x00]
    );
    assert_eq!(
        decode_all(&one(&Type::Int, &Value::Nil)).unwrap(),
        vec![Value::Int(0)]
    );
}

#[test]
fn struct_fields_follow_gos_omission_rules() {
    // All zero: the nil map, empty slice, nil pointer and zero float are omitted;
    // arrays are always sent.
    let v = weft_gob::to_bytes(&Holder::default()).unwrap();
    let d = decode_all(&v).unwrap();
    let s = d[0].as_struct().unwrap();
    let names: Vec<&str> = s.fields.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["Arr"]);
    // An empty (non-nil) map and a pointer to a zero struct are sent.
    let h = Holder {
        m: Some(BTreeMap::new()),
        inner: Some(Box::default()),
        f: 1.5,
        ..Default::default()
    };
    let d = decode_all(&weft_gob::to_bytes(&h).unwrap()).unwrap();
    let s = d[0].as_struct().unwrap();
    let names: Vec<&str> = s.fields.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["M", "Inner", "Arr", "F"]);
    let back: Holder = weft_gob::from_bytes(&weft_gob::to_bytes(&h).unwrap()).unwrap();
    assert_eq!(back, h);
    // The struct name inside the value is not what is sent: the type's is.
    let renamed = Value::from(StructValue::new("whatever").with("N", 3i64));
    let bytes = one(&Holder2::gob_type(), &renamed);
    assert_eq!(
        decode_all(&bytes).unwrap()[0].as_struct().unwrap().name(),
        "Holder2"
    );
}

#[test]
fn type_definitions_are_sent_once_per_stream() {
    let ty = Holder2::gob_type();
    let mut enc = Encoder::new();
    enc.encode(&Holder2 { n: 1 }).unwrap();
    let first = enc.take_bytes();
    enc.encode(&Holder2 { n: 2 }).unwrap();
    let second = enc.take_bytes();
    // The second value is only the value message: length, id 65, field 0 = 2, end.
    assert_eq!(second, [0x05, 0xff, 0x82, 0x01, 0x04, 0x00]);
    let mut whole = first.clone();
    whole.extend(&second);
    let vals = decode_all(&whole).unwrap();
    assert_eq!(vals.len(), 2);
    // Standalone, the second part lacks its type definition.
    assert_eq!(decode_all(&second), Err(Error::UnknownType(65)));
    // A new encoder starts a new stream and sends the definition again.
    let mut other = Encoder::new();
    other.encode_value(&ty, &Holder2 { n: 1 }.to_gob()).unwrap();
    assert_eq!(other.into_bytes(), first);
}

#[test]
fn values_that_do_not_fit_their_type_are_refused_and_nothing_is_written() {
    let ty = Holder2::gob_type();
    let mut enc = Encoder::new();
    let e = enc
        .encode_value(
            &ty,
            &Value::from(StructValue::new("Holder2").with("N", 3u64)),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "field \"N\": type mismatch: expected int, found uint"
    );
    assert!(enc.bytes().is_empty());
    let e = enc
        .encode_value(
            &ty,
            &Value::from(StructValue::new("Holder2").with("Nn", 3i64)),
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::UnknownField { ref field, .. } if field == "Nn"),
        "{e}"
    );
    let e = enc
        .encode_value(
            &ty,
            &Value::from(StructValue::new("Holder2").with("N", 3i64).with("N", 4i64)),
        )
        .unwrap_err();
    assert_eq!(e, Error::DuplicateField("N".into()));
    let e = enc
        .encode_value(
            &Type::array(2, Type::Uint),
            &Value::Array(vec![Value::Uint(1)]),
        )
        .unwrap_err();
    assert_eq!(
        e,
        Error::ArrayLength {
            expected: 2,
            found: 1
        }
    );
    let e = enc
        .encode_value(
            &Type::slice(Type::String),
            &Value::Slice(vec![Value::Uint(1)]),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "element 0: type mismatch: expected string, found uint"
    );
    assert!(enc.bytes().is_empty());
    // The encoder is still usable.
    enc.encode(&Holder2 { n: 7 }).unwrap();
    assert_eq!(weft_gob::from_bytes::<Holder2>(enc.bytes()).unwrap().n, 7);
}

#[test]
fn rust_types_map_to_go_types() {
    assert_eq!(<Vec<u8>>::gob_type(), Type::Bytes);
    assert_eq!(<[u8]>::gob_type(), Type::Bytes);
    assert_eq!(<[u8; 4]>::gob_type(), Type::array(4, Type::Uint));
    assert_eq!(<Vec<u16>>::gob_type(), Type::slice(Type::Uint));
    assert_eq!(
        <HashMap<String, Vec<u8>>>::gob_type(),
        Type::map(Type::String, Type::Bytes)
    );
    assert_eq!(<Option<i8>>::gob_type(), Type::Int);
    assert_eq!(
        Holder2::gob_type(),
        Type::structure("Holder2", vec![Field::new("N", Type::Int)])
    );
    // A [4]byte goes element by element, as in Go; a []byte as one string.
    let arr = weft_gob::to_bytes(&[1u8, 2, 3, 4]).unwrap();
    assert_eq!(weft_gob::from_bytes::<[u8; 4]>(&arr).unwrap(), [1, 2, 3, 4]);
    assert_eq!(
        weft_gob::to_bytes(&vec![1u8, 2]).unwrap(),
        [0x05, 0x0a, 0x00, 0x02, 0x01, 0x02]
    );
    // Range checks when narrowing.
    let big = weft_gob::to_bytes(&70_000u32).unwrap();
    assert!(matches!(
        weft_gob::from_bytes::<u16>(&big),
        Err(Error::OutOfRange { target: "u16", .. })
    ));
    let huge = weft_gob::to_bytes(&1e300f64).unwrap();
    assert!(matches!(
        weft_gob::from_bytes::<f32>(&huge),
        Err(Error::OutOfRange { target: "f32", .. })
    ));
    assert_eq!(
        weft_gob::from_bytes::<f32>(&weft_gob::to_bytes(&f64::INFINITY).unwrap()).unwrap(),
        f32::INFINITY
    );
}

#[test]
fn decoding_by_name_ignores_unknown_and_tolerates_missing_fields() {
    // The sender's struct has fields in another order, an extra one, and lacks "N".
    let sender = Type::structure(
        "Holder2",
        vec![
            Field::new("Extra", Type::String),
            Field::new("Other", Type::Uint),
        ],
    );
    let v = Value::from(
        StructValue::new("Holder2")
            .with("Extra", "x")
            .with("Other", 5u64),
    );
    let got: Holder2 = weft_gob::from_bytes(&one(&sender, &v)).unwrap();
    assert_eq!(got, Holder2 { n: 0 });
    // A field of the wrong kind is an error naming it.
    let sender = Type::structure("Holder2", vec![Field::new("N", Type::String)]);
    let v = Value::from(StructValue::new("Holder2").with("N", "seven"));
    let e = weft_gob::from_bytes::<Holder2>(&one(&sender, &v)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "field \"N\" of Holder2: type mismatch: expected int, found string"
    );
}

#[test]
fn decoder_reports_position_and_end() {
    let mut enc = Encoder::new();
    enc.encode(&1u64).unwrap();
    enc.encode("two").unwrap();
    let bytes = enc.into_bytes();
    let mut dec = Decoder::new(&bytes);
    assert_eq!(dec.decode::<u64>().unwrap(), 1);
    assert_eq!(dec.position(), 4);
    assert!(!dec.is_at_end());
    assert_eq!(dec.decode::<String>().unwrap(), "two");
    assert!(dec.is_at_end());
    assert_eq!(dec.next_value(), Ok(None));
}
