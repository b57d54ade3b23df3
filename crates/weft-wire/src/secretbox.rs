//! NaCl `secretbox` (XSalsa20-Poly1305) working in place, with a Salsa20
//! keystream that computes eight blocks at once with AVX2 when the CPU has it.
//!
//! The sleeve's encrypted throughput is bound by this cipher: RustCrypto's
//! `salsa20` crate is portable code only, so Weft carries its own keystream.
//! Layout and results are exactly `golang.org/x/crypto/nacl/secretbox`'s
//! (checked against the RustCrypto implementation and the Go vectors):
//!
//! - `subkey = HSalsa20(key, nonce[0..16])`;
//! - Salsa20/20 under `subkey` with `nonce[16..24]`, block counter from 0;
//! - keystream bytes 0..32 are the Poly1305 key, bytes 32.. encrypt the
//!   message; the tag is Poly1305 over the ciphertext.
//!
//! Invariant: the AVX2 path and the portable path produce the same keystream
//! for every key, nonce and counter (a property test checks both against the
//! `salsa20` crate), so which one runs is invisible outside this module.

use std::cell::Cell;

use salsa20::cipher::consts::U10;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::crypto::{KEY_SIZE, NONCE_SIZE, TAG_SIZE};

/// Largest keystream batch (sixteen 64-byte blocks, the AVX-512 batch).
const BATCH: usize = 1024;
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// A secretbox key, ready to seal and open many messages.
#[derive(Clone)]
pub(crate) struct SecretBox {
    key: [u8; KEY_SIZE],
    backend: Backend,
    /// The HSalsa20 subkey of the last nonce prefix (`nonce[0..16]`) used.
    /// Weave's nonces keep the prefix fixed for a direction and channel and
    /// count in the last 8 bytes, so the subkey is derived once, not per
    /// message.
    subkey: Cell<Option<([u8; 16], [u8; 32])>>,
}

/// How the keystream is computed; all give the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// One block at a time, plain Rust.
    Portable,
    /// Eight blocks at a time in 256-bit registers.
    Avx2,
    /// Sixteen blocks at a time in 512-bit registers, with native rotates.
    Avx512,
}

impl Backend {
    /// The fastest backend this CPU runs.
    fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Backend::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Backend::Avx2;
            }
        }
        Backend::Portable
    }

    /// Every backend this CPU runs (for tests).
    #[cfg(test)]
    fn available() -> Vec<Backend> {
        let mut v = vec![Backend::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Backend::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Backend::Avx512);
            }
        }
        v
    }
}

/// A message did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenError;

impl SecretBox {
    pub(crate) fn new(key: &[u8; KEY_SIZE]) -> Self {
        SecretBox {
            key: *key,
            backend: Backend::detect(),
            subkey: Cell::new(None),
        }
    }

    /// For tests: a given backend.
    #[cfg(test)]
    fn with_backend(key: &[u8; KEY_SIZE], backend: Backend) -> Self {
        SecretBox {
            key: *key,
            backend,
            subkey: Cell::new(None),
        }
    }

    /// Encrypts `buf` in place and returns the Poly1305 tag over it.
    pub(crate) fn seal_in_place(&self, nonce: &[u8; NONCE_SIZE], buf: &mut [u8]) -> [u8; TAG_SIZE] {
        let mut ks = Keystream::new(self, nonce);
        let mut poly_key = [0u8; 32];
        ks.take(&mut poly_key);
        ks.xor(buf);
        let tag = crate::poly1305::tag(&poly_key, buf);
        poly_key.zeroize();
        tag
    }

    /// Checks `tag` over the ciphertext `buf`, then decrypts it in place.
    /// On failure `buf` is left as it was.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_SIZE],
        tag: &[u8; TAG_SIZE],
        buf: &mut [u8],
    ) -> Result<(), OpenError> {
        let mut ks = Keystream::new(self, nonce);
        let mut poly_key = [0u8; 32];
        ks.take(&mut poly_key);
        let expected = crate::poly1305::tag(&poly_key, buf);
        poly_key.zeroize();
        if !bool::from(expected.ct_eq(tag)) {
            return Err(OpenError);
        }
        ks.xor(buf);
        Ok(())
    }
}

impl SecretBox {
    /// `HSalsa20(key, prefix)`, from the cache when the prefix is the last one.
    fn subkey(&self, prefix: &[u8; 16]) -> [u8; 32] {
        if let Some((p, k)) = self.subkey.get() {
            if p == *prefix {
                return k;
            }
        }
        let k: [u8; 32] = salsa20::hsalsa::<U10>((&self.key).into(), prefix.into()).into();
        self.subkey.set(Some((*prefix, k)));
        k
    }
}

impl Drop for SecretBox {
    fn drop(&mut self) {
        self.key.zeroize();
        if let Some((_, k)) = self.subkey.get_mut() {
            k.zeroize();
        }
    }
}

fn le_words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut w = [0u32; N];
    for (w, c) in w.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// The Salsa20 input matrix for `key`, an 8-byte nonce and counter 0.
fn salsa_input(key: &[u8; KEY_SIZE], nonce8: &[u8]) -> [u32; 16] {
    let k: [u32; 8] = le_words(key);
    let n: [u32; 2] = le_words(nonce8);
    [
        SIGMA[0], k[0], k[1], k[2], k[3], SIGMA[1], n[0], n[1], 0, 0, SIGMA[2], k[4], k[5], k[6],
        k[7], SIGMA[3],
    ]
}

/// XSalsa20 keystream from its start, consumed front to back.
struct Keystream {
    input: [u32; 16],
    /// Counter of the first block of the next batch.
    counter: u64,
    buf: [u8; BATCH],
    /// Bytes of `buf` holding keystream.
    filled: usize,
    /// Bytes of `buf` already used.
    used: usize,
    backend: Backend,
}

impl Keystream {
    fn new(sb: &SecretBox, nonce: &[u8; NONCE_SIZE]) -> Self {
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&nonce[..16]);
        let mut subkey = sb.subkey(&prefix);
        let input = salsa_input(&subkey, &nonce[16..]);
        subkey.zeroize();
        Keystream {
            input,
            counter: 0,
            buf: [0; BATCH],
            filled: 0,
            used: 0,
            backend: sb.backend,
        }
    }

    /// Computes the next batch of blocks into `buf`.
    fn refill(&mut self) {
        let blocks = match self.backend {
            // SAFETY (both): `detect`/`available` only return these backends
            // when the CPU reported the feature.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe {
                avx512::blocks16(&self.input, self.counter, &mut self.buf)
            },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { avx2::blocks8(&self.input, self.counter, &mut self.buf) },
            _ => {
                let block = block(&self.input, self.counter);
                for (o, w) in self.buf.chunks_exact_mut(4).zip(block) {
                    o.copy_from_slice(&w.to_le_bytes());
                }
                1
            }
        };
        self.counter = self.counter.wrapping_add(blocks as u64);
        self.filled = 64 * blocks;
        self.used = 0;
    }

    /// Copies the next `out.len()` keystream bytes into `out`.
    fn take(&mut self, out: &mut [u8]) {
        out.fill(0);
        self.xor(out);
    }

    /// XORs the next `data.len()` keystream bytes into `data`.
    fn xor(&mut self, mut data: &mut [u8]) {
        while !data.is_empty() {
            if self.used == self.filled {
                self.refill();
            }
            let n = (self.filled - self.used).min(data.len());
            let (head, rest) = data.split_at_mut(n);
            for (d, k) in head.iter_mut().zip(&self.buf[self.used..self.used + n]) {
                *d ^= k;
            }
            self.used += n;
            data = rest;
        }
    }
}

impl Drop for Keystream {
    fn drop(&mut self) {
        // The input holds the per-message subkey. What is left in `buf` is
        // keystream no message used; it is not worth a 1 KiB volatile wipe
        // per datagram.
        self.input.zeroize();
    }
}

/// The 20 rounds of Salsa20 (10 double rounds: columns, then rows) on the
/// state `$x`, with `$qr` the backend's quarter-round on one word index set.
macro_rules! salsa20_rounds {
    ($qr:ident, $x:ident) => {
        for _ in 0..10 {
            $qr(&mut $x, 0, 4, 8, 12);
            $qr(&mut $x, 5, 9, 13, 1);
            $qr(&mut $x, 10, 14, 2, 6);
            $qr(&mut $x, 15, 3, 7, 11);
            $qr(&mut $x, 0, 1, 2, 3);
            $qr(&mut $x, 5, 6, 7, 4);
            $qr(&mut $x, 10, 11, 8, 9);
            $qr(&mut $x, 15, 12, 13, 14);
        }
    };
}

/// The low and high words of block counters `counter .. counter + N`, one
/// lane per block, for the SIMD backends' state words 8 and 9.
#[cfg(target_arch = "x86_64")]
fn counter_lanes<const N: usize>(counter: u64) -> ([u32; N], [u32; N]) {
    let mut lo = [0u32; N];
    let mut hi = [0u32; N];
    for (i, (lo, hi)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
        let c = counter.wrapping_add(i as u64);
        *lo = c as u32;
        *hi = (c >> 32) as u32;
    }
    (lo, hi)
}

#[inline(always)]
fn quarter(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[b] ^= x[a].wrapping_add(x[d]).rotate_left(7);
    x[c] ^= x[b].wrapping_add(x[a]).rotate_left(9);
    x[d] ^= x[c].wrapping_add(x[b]).rotate_left(13);
    x[a] ^= x[d].wrapping_add(x[c]).rotate_left(18);
}

/// One Salsa20/20 block (portable).
fn block(input: &[u32; 16], counter: u64) -> [u32; 16] {
    let mut s = *input;
    s[8] = counter as u32;
    s[9] = (counter >> 32) as u32;
    let mut x = s;
    salsa20_rounds!(quarter, x);
    for (x, s) in x.iter_mut().zip(s) {
        *x = x.wrapping_add(s);
    }
    x
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    fn rotl<const L: i32, const R: i32>(v: __m256i) -> __m256i {
        // SAFETY: only reached from `blocks8`, which requires AVX2.
        unsafe { _mm256_or_si256(_mm256_slli_epi32::<L>(v), _mm256_srli_epi32::<R>(v)) }
    }

    #[inline(always)]
    fn qr(x: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize) {
        // SAFETY: only reached from `blocks8`, which requires AVX2.
        unsafe {
            x[b] = _mm256_xor_si256(x[b], rotl::<7, 25>(_mm256_add_epi32(x[a], x[d])));
            x[c] = _mm256_xor_si256(x[c], rotl::<9, 23>(_mm256_add_epi32(x[b], x[a])));
            x[d] = _mm256_xor_si256(x[d], rotl::<13, 19>(_mm256_add_epi32(x[c], x[b])));
            x[a] = _mm256_xor_si256(x[a], rotl::<18, 14>(_mm256_add_epi32(x[d], x[c])));
        }
    }

    /// Transposes eight vectors of eight words: `out[j]` lane `i` = `v[i]` lane `j`.
    #[inline(always)]
    fn transpose(v: [__m256i; 8]) -> [__m256i; 8] {
        // SAFETY: only reached from `blocks8`, which requires AVX2.
        unsafe {
            let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
            let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
            let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
            let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
            let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
            let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
            let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
            let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            [
                _mm256_permute2x128_si256::<0x20>(u0, u4),
                _mm256_permute2x128_si256::<0x20>(u1, u5),
                _mm256_permute2x128_si256::<0x20>(u2, u6),
                _mm256_permute2x128_si256::<0x20>(u3, u7),
                _mm256_permute2x128_si256::<0x31>(u0, u4),
                _mm256_permute2x128_si256::<0x31>(u1, u5),
                _mm256_permute2x128_si256::<0x31>(u2, u6),
                _mm256_permute2x128_si256::<0x31>(u3, u7),
            ]
        }
    }

    /// Salsa20/20 blocks `counter .. counter + 8` of `input` into
    /// `out[..512]`; returns 8, the number of blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn blocks8(
        input: &[u32; 16],
        counter: u64,
        out: &mut [u8; super::BATCH],
    ) -> usize {
        let (lo, hi) = super::counter_lanes::<8>(counter);
        let mut s = [_mm256_setzero_si256(); 16];
        for (i, v) in s.iter_mut().enumerate() {
            *v = _mm256_set1_epi32(input[i] as i32);
        }
        // SAFETY: `lo`/`hi` are 32 bytes each; loadu has no alignment need.
        unsafe {
            s[8] = _mm256_loadu_si256(lo.as_ptr().cast());
            s[9] = _mm256_loadu_si256(hi.as_ptr().cast());
        }
        let mut x = s;
        salsa20_rounds!(qr, x);
        for i in 0..16 {
            x[i] = _mm256_add_epi32(x[i], s[i]);
        }
        let first = transpose([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let second = transpose([x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15]]);
        let p = out.as_mut_ptr();
        for j in 0..8 {
            // SAFETY: block j occupies out[64j .. 64j + 64], inside the
            // 512-byte array; storeu has no alignment need.
            unsafe {
                _mm256_storeu_si256(p.add(64 * j).cast(), first[j]);
                _mm256_storeu_si256(p.add(64 * j + 32).cast(), second[j]);
            }
        }
        8
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline(always)]
    fn qr(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
        // SAFETY: only reached from `blocks16`, which requires AVX-512F.
        unsafe {
            x[b] = _mm512_xor_si512(x[b], _mm512_rol_epi32::<7>(_mm512_add_epi32(x[a], x[d])));
            x[c] = _mm512_xor_si512(x[c], _mm512_rol_epi32::<9>(_mm512_add_epi32(x[b], x[a])));
            x[d] = _mm512_xor_si512(x[d], _mm512_rol_epi32::<13>(_mm512_add_epi32(x[c], x[b])));
            x[a] = _mm512_xor_si512(x[a], _mm512_rol_epi32::<18>(_mm512_add_epi32(x[d], x[c])));
        }
    }

    /// Within each 128-bit lane, transposes four vectors of words `w..w+4`:
    /// `out[m]` lane `k` = those four words of block `4k + m`.
    #[inline(always)]
    fn transpose4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> [__m512i; 4] {
        // SAFETY: only reached from `blocks16`, which requires AVX-512F.
        unsafe {
            let t0 = _mm512_unpacklo_epi32(a, b);
            let t1 = _mm512_unpackhi_epi32(a, b);
            let t2 = _mm512_unpacklo_epi32(c, d);
            let t3 = _mm512_unpackhi_epi32(c, d);
            [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ]
        }
    }

    /// Salsa20/20 blocks `counter .. counter + 16` of `input` into `out`;
    /// returns 16, the number of blocks.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn blocks16(
        input: &[u32; 16],
        counter: u64,
        out: &mut [u8; super::BATCH],
    ) -> usize {
        let (lo, hi) = super::counter_lanes::<16>(counter);
        let mut s = [_mm512_setzero_si512(); 16];
        for (i, v) in s.iter_mut().enumerate() {
            *v = _mm512_set1_epi32(input[i] as i32);
        }
        // SAFETY: `lo`/`hi` are 64 bytes each; loadu has no alignment need.
        unsafe {
            s[8] = _mm512_loadu_si512(lo.as_ptr().cast());
            s[9] = _mm512_loadu_si512(hi.as_ptr().cast());
        }
        let mut x = s;
        salsa20_rounds!(qr, x);
        for i in 0..16 {
            x[i] = _mm512_add_epi32(x[i], s[i]);
        }
        // g[q][m]: lane k holds words 4q..4q+4 of block 4k + m.
        let g = [
            transpose4(x[0], x[1], x[2], x[3]),
            transpose4(x[4], x[5], x[6], x[7]),
            transpose4(x[8], x[9], x[10], x[11]),
            transpose4(x[12], x[13], x[14], x[15]),
        ];
        let p = out.as_mut_ptr();
        #[allow(clippy::needless_range_loop)] // m indexes the second axis of g
        for m in 0..4 {
            // Regroup 128-bit lanes: block 4k + m = lane k of g[0..4][m].
            let t0 = _mm512_shuffle_i32x4::<0x44>(g[0][m], g[1][m]);
            let t1 = _mm512_shuffle_i32x4::<0x44>(g[2][m], g[3][m]);
            let t2 = _mm512_shuffle_i32x4::<0xEE>(g[0][m], g[1][m]);
            let t3 = _mm512_shuffle_i32x4::<0xEE>(g[2][m], g[3][m]);
            let blocks = [
                _mm512_shuffle_i32x4::<0x88>(t0, t1),
                _mm512_shuffle_i32x4::<0xDD>(t0, t1),
                _mm512_shuffle_i32x4::<0x88>(t2, t3),
                _mm512_shuffle_i32x4::<0xDD>(t2, t3),
            ];
            for (k, b) in blocks.into_iter().enumerate() {
                // SAFETY: block 4k + m occupies 64 bytes inside the
                // 1024-byte array; storeu has no alignment need.
                unsafe { _mm512_storeu_si512(p.add(64 * (4 * k + m)).cast(), b) };
            }
        }
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use salsa20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use xsalsa20poly1305::aead::AeadInPlace;
    use xsalsa20poly1305::{KeyInit as _, XSalsa20Poly1305};

    fn reference_keystream(key: &[u8; 32], nonce: &[u8; 24], skip: u64, len: usize) -> Vec<u8> {
        let mut c = salsa20::XSalsa20::new(key.into(), nonce.into());
        c.seek(skip);
        let mut out = vec![0u8; len];
        c.apply_keystream(&mut out);
        out
    }

    fn our_keystream(sb: &SecretBox, nonce: &[u8; 24], skip: usize, len: usize) -> Vec<u8> {
        let mut ks = Keystream::new(sb, nonce);
        let mut skipped = vec![0u8; skip];
        ks.take(&mut skipped);
        let mut out = vec![0u8; len];
        ks.xor(&mut out);
        out
    }

    proptest! {
        #[test]
        fn keystream_matches_reference(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            skip in 0usize..700,
            len in 0usize..3000,
        ) {
            let want = reference_keystream(&key, &nonce, skip as u64, len);
            for backend in Backend::available() {
                let sb = SecretBox::with_backend(&key, backend);
                prop_assert_eq!(&our_keystream(&sb, &nonce, skip, len), &want, "{:?}", backend);
            }
        }

        #[test]
        fn seal_open_match_reference(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let reference = XSalsa20Poly1305::new((&key).into());
            let mut want = msg.clone();
            let want_tag = reference
                .encrypt_in_place_detached((&nonce).into(), b"", &mut want)
                .unwrap();
            for backend in Backend::available() {
                let sb = SecretBox::with_backend(&key, backend);
                let mut buf = msg.clone();
                let tag = sb.seal_in_place(&nonce, &mut buf);
                prop_assert_eq!(&buf, &want);
                prop_assert_eq!(&tag[..], &want_tag[..]);
                prop_assert!(sb.open_in_place(&nonce, &tag, &mut buf).is_ok());
                prop_assert_eq!(&buf, &msg);
            }
        }
    }

    proptest! {
        #[test]
        fn one_box_many_nonces_matches_reference(
            key in any::<[u8; 32]>(),
            prefixes in any::<[[u8; 16]; 2]>(),
            nonces in proptest::collection::vec((0usize..2, any::<[u8; 8]>()), 1..12),
        ) {
            // The cached subkey must follow every change of nonce prefix.
            let reference = XSalsa20Poly1305::new((&key).into());
            for backend in Backend::available() {
                let sb = SecretBox::with_backend(&key, backend);
                for (which, tail) in &nonces {
                    let mut nonce = [0u8; 24];
                    nonce[..16].copy_from_slice(&prefixes[*which]);
                    nonce[16..].copy_from_slice(tail);
                    let mut want = b"sixty-four bytes of a sleeve packet, give or take a few".to_vec();
                    let mut buf = want.clone();
                    let want_tag = reference
                        .encrypt_in_place_detached((&nonce).into(), b"", &mut want)
                        .unwrap();
                    let tag = sb.seal_in_place(&nonce, &mut buf);
                    prop_assert_eq!(&buf, &want);
                    prop_assert_eq!(&tag[..], &want_tag[..]);
                }
            }
        }
    }

    #[test]
    fn counter_carries_into_the_high_word() {
        // Blocks straddling 2^32 exercise the 64-bit counter in both paths.
        let key = [7u8; 32];
        let input = salsa_input(&key, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let start = (1u64 << 32) - 3;
        for backend in Backend::available() {
            let mut ks = Keystream {
                input,
                counter: start,
                buf: [0; BATCH],
                filled: 0,
                used: 0,
                backend,
            };
            ks.refill();
            let n = ks.filled / 64;
            let want: Vec<u32> = (0..n as u64)
                .flat_map(|i| block(&input, start + i))
                .collect();
            let got: Vec<u32> = ks.buf[..ks.filled]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(got, want, "{backend:?}");
        }
    }

    #[test]
    fn tampering_is_refused_and_leaves_the_buffer() {
        let sb = SecretBox::new(&[9u8; 32]);
        let nonce = [3u8; 24];
        let mut buf = b"pod to pod, over the sleeve".to_vec();
        let tag = sb.seal_in_place(&nonce, &mut buf);
        let sealed = buf.clone();
        buf[5] ^= 1;
        let tampered = buf.clone();
        assert_eq!(sb.open_in_place(&nonce, &tag, &mut buf), Err(OpenError));
        assert_eq!(buf, tampered);
        let mut bad_tag = tag;
        bad_tag[0] ^= 0x80;
        let mut buf = sealed.clone();
        assert_eq!(sb.open_in_place(&nonce, &bad_tag, &mut buf), Err(OpenError));
        let mut other_nonce = nonce;
        other_nonce[23] ^= 1;
        assert_eq!(
            sb.open_in_place(&other_nonce, &tag, &mut buf),
            Err(OpenError)
        );
        assert_eq!(buf, sealed);
    }
}
