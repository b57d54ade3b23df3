//! Sealing and opening one sleeve datagram (1,400 bytes, and a 64 KiB body for the
//! cipher's bulk rate) with Weft's secretbox, against the RustCrypto `xsalsa20poly1305`
//! crate it replaced: the encrypted sleeve's throughput is bound by this.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_wire::crypto::{SessionKey, SleeveOpener, SleeveSealer};
use xsalsa20poly1305::aead::AeadInPlace;
use xsalsa20poly1305::{KeyInit, XSalsa20Poly1305};

fn bench(c: &mut Criterion) {
    let key = SessionKey::from_bytes([0x42; 32]);
    let mut group = c.benchmark_group("sleeve_crypto");
    for size in [1400usize, 65536] {
        let body = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("weft_seal", size), &body, |b, body| {
            let mut sealer = SleeveSealer::new(&key, true);
            b.iter(|| black_box(sealer.seal(false, black_box(body)).unwrap()));
        });
        let (sdf, sealed) = SleeveSealer::new(&key, true).seal(false, &body).unwrap();
        group.bench_with_input(BenchmarkId::new("weft_open", size), &sealed, |b, sealed| {
            let opener = SleeveOpener::new(&key, false);
            b.iter(|| black_box(opener.open(sdf, black_box(sealed)).unwrap()));
        });
        group.bench_with_input(
            BenchmarkId::new("rustcrypto_seal", size),
            &body,
            |b, body| {
                let cipher = XSalsa20Poly1305::new(key.as_bytes().into());
                let nonce = [0u8; 24];
                b.iter(|| {
                    let mut buf = body.clone();
                    black_box(
                        cipher
                            .encrypt_in_place_detached((&nonce).into(), b"", &mut buf)
                            .unwrap(),
                    );
                    black_box(buf)
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
