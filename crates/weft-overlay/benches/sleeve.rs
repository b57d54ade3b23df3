//! Sleeve codec throughput: encoding and decoding plaintext datagrams, and
//! sealing and opening NaCl datagrams, for 1500-byte frames and ~64 KiB
//! frames (64000 bytes: the largest round size a NaCl datagram carries is
//! 65507 − 30 − 14 = 65463). Plus the forwarder's per-frame path
//! (decision + batching + flush) for 1500-byte frames.

use std::hint::black_box;
use std::net::SocketAddrV4;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use weft_overlay::sleeve::codec::{decode_frames, parse_sender, SleeveDecryptor, SleeveEncryptor};
use weft_overlay::sleeve::{ForwarderParams, SleeveAction, SleeveConfig, SleeveForwarder};
use weft_overlay::Millis;
use weft_wire::{PeerName, SessionKey};

const SIZES: [usize; 2] = [1500, 64000];

fn names() -> (PeerName, PeerName) {
    (
        PeerName::from_mac([2, 0, 0, 0, 0, 1]),
        PeerName::from_mac([2, 0, 0, 0, 0, 2]),
    )
}

fn key() -> SessionKey {
    SessionKey::from_bytes([0x42; 32])
}

fn bench_plain(c: &mut Criterion) {
    let (a, b) = names();
    let mut g = c.benchmark_group("sleeve_plain");
    for size in SIZES {
        let frame = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &frame, |bench, frame| {
            let mut enc = SleeveEncryptor::plaintext(a);
            let mut builder = enc.builder();
            bench.iter(|| {
                builder.push(a, b, black_box(frame)).unwrap();
                black_box(enc.finish(false, &mut builder, 1500).unwrap())
            })
        });
        let mut enc = SleeveEncryptor::plaintext(a);
        let datagram = enc.single(false, a, b, &frame).unwrap();
        g.bench_with_input(BenchmarkId::new("decode", size), &datagram, |bench, d| {
            let mut dec = SleeveDecryptor::plaintext();
            let mut scratch = Vec::new();
            bench.iter(|| {
                let (_, body) = parse_sender(black_box(d)).unwrap();
                let (_, plain) = dec.open(body, &mut scratch).unwrap();
                black_box(decode_frames(plain).unwrap().len())
            })
        });
    }
    g.finish();
}

fn bench_nacl(c: &mut Criterion) {
    let (a, b) = names();
    let mut g = c.benchmark_group("sleeve_nacl");
    for size in SIZES {
        let frame = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal", size), &frame, |bench, frame| {
            let mut enc = SleeveEncryptor::nacl(a, &key(), true);
            bench.iter(|| black_box(enc.single(true, a, b, black_box(frame)).unwrap()))
        });
        let mut enc = SleeveEncryptor::nacl(a, &key(), true);
        let datagram = enc.single(true, a, b, &frame).unwrap();
        g.bench_with_input(BenchmarkId::new("open", size), &datagram, |bench, d| {
            // A fresh decryptor per datagram: the replay window refuses the
            // same sequence number twice.
            bench.iter_batched(
                || {
                    (
                        SleeveDecryptor::nacl(&key(), false),
                        Vec::with_capacity(d.len()),
                    )
                },
                |(mut dec, mut scratch)| {
                    let (_, body) = parse_sender(d).unwrap();
                    let (_, plain) = dec.open(body, &mut scratch).unwrap();
                    black_box(decode_frames(plain).unwrap().len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_forward(c: &mut Criterion) {
    let (a, b) = names();
    let mut g = c.benchmark_group("sleeve_forward");
    // An IPv4 DF frame of 1500 bytes (1486-byte IP packet).
    let mut frame = vec![0u8; 1500];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&1486u16.to_be_bytes());
    frame[20] = 0x40;
    for (encrypted, name) in [(false, "plain"), (true, "nacl")] {
        let mut fwd = SleeveForwarder::new(
            ForwarderParams {
                local: a,
                remote: b,
                conn_uid: 1,
                outbound: true,
                remote_addr: Some(SocketAddrV4::new([10, 0, 0, 2].into(), 6783)),
                session_key: encrypted.then(key),
            },
            SleeveConfig::default(),
        );
        fwd.underlay_pmtu(Millis(0), 9000);
        while fwd.poll_action().is_some() {}
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(BenchmarkId::new("forward_flush_1500", name), |bench| {
            bench.iter(|| {
                fwd.forward(a, b, black_box(&frame), false);
                fwd.flush();
                while let Some(act) = fwd.poll_action() {
                    if let SleeveAction::SendDatagram { payload, .. } = act {
                        black_box(payload);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_plain, bench_nacl, bench_forward);
criterion_main!(benches);
