//! Poly1305 (RFC 8439 §2.5) in 64-bit arithmetic: the accumulator and `r`
//! are held as three limbs of 44, 44 and 42 bits, so each product fits a
//! `u128` and a block costs nine 64x64 multiplications.
//!
//! Why not the `poly1305` crate: its AVX2 backend's helpers are compiled
//! without the `avx2` target feature, so every intrinsic is an out-of-line
//! call; for a sleeve datagram (~1.4 KB) it took about twice as long as this
//! scalar code. Results are checked against that crate by property tests.
//!
//! Two blocks are absorbed per step where possible, `h = (h + m1)·r² + m2·r`,
//! so the two multiplications do not wait on each other.

const MASK44: u64 = (1 << 44) - 1;
const MASK42: u64 = (1 << 42) - 1;
/// 2^128 expressed in the top limb (which starts at bit 88).
const HIBIT: u64 = 1 << 40;

/// A multiplier (`r` or `r²`) in limbs, with the `20·r` factors folding
/// products above 2^130 back (2^130 ≡ 5, and limb offsets add a factor 4).
#[derive(Clone, Copy)]
struct Mul {
    r: [u64; 3],
    s1: u64,
    s2: u64,
}

impl Mul {
    fn new(r: [u64; 3]) -> Self {
        Mul {
            r,
            s1: r[1] * 20,
            s2: r[2] * 20,
        }
    }
}

/// `h · m` unreduced: three column sums.
#[inline(always)]
fn mul(h: [u64; 3], m: &Mul) -> [u128; 3] {
    let w = |a: u64, b: u64| a as u128 * b as u128;
    [
        w(h[0], m.r[0]) + w(h[1], m.s2) + w(h[2], m.s1),
        w(h[0], m.r[1]) + w(h[1], m.r[0]) + w(h[2], m.s2),
        w(h[0], m.r[2]) + w(h[1], m.r[1]) + w(h[2], m.r[0]),
    ]
}

/// Partially reduces column sums to limbs (each below 2^44 + a little).
#[inline(always)]
fn carry(d: [u128; 3]) -> [u64; 3] {
    let mut d1 = d[1];
    let mut d2 = d[2];
    let mut c = d[0] >> 44;
    let mut h0 = d[0] as u64 & MASK44;
    d1 += c;
    c = d1 >> 44;
    let mut h1 = d1 as u64 & MASK44;
    d2 += c;
    c = d2 >> 42;
    let h2 = d2 as u64 & MASK42;
    h0 += c as u64 * 5;
    let c = h0 >> 44;
    h0 &= MASK44;
    h1 += c;
    [h0, h1, h2]
}

#[inline(always)]
fn add(a: [u128; 3], b: [u128; 3]) -> [u128; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

/// A 16-byte little-endian number split into limbs, plus `hibit`.
#[inline(always)]
fn limbs(block: &[u8; 16], hibit: u64) -> [u64; 3] {
    let t0 = u64::from_le_bytes(block[..8].try_into().unwrap_or_default());
    let t1 = u64::from_le_bytes(block[8..].try_into().unwrap_or_default());
    [
        t0 & MASK44,
        ((t0 >> 44) | (t1 << 20)) & MASK44,
        ((t1 >> 24) & MASK42) | hibit,
    ]
}

/// The Poly1305 tag of `msg` under the one-time `key` (`r || s`).
pub(crate) fn tag(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
    let (r, s) = key.split_at(16);
    let r = limbs(r.try_into().unwrap_or(&[0; 16]), 0);
    // Clamping, in 44/44/42-bit limbs.
    let r1 = Mul::new([
        r[0] & 0xffc_0fff_ffff,
        r[1] & 0xfff_ffc0_ffff,
        r[2] & 0x00f_ffff_fc0f,
    ]);
    let r2 = Mul::new(carry(mul(r1.r, &r1)));

    let mut h = [0u64; 3];
    let mut blocks = msg.chunks_exact(32);
    for pair in &mut blocks {
        let (a, b) = pair.split_at(16);
        let a = limbs(a.try_into().unwrap_or(&[0; 16]), HIBIT);
        let b = limbs(b.try_into().unwrap_or(&[0; 16]), HIBIT);
        let ha = [h[0] + a[0], h[1] + a[1], h[2] + a[2]];
        h = carry(add(mul(ha, &r2), mul(b, &r1)));
    }
    let rest = blocks.remainder();
    let mut singles = rest.chunks_exact(16);
    for block in &mut singles {
        let m = limbs(block.try_into().unwrap_or(&[0; 16]), HIBIT);
        h = carry(mul([h[0] + m[0], h[1] + m[1], h[2] + m[2]], &r1));
    }
    let last = singles.remainder();
    if !last.is_empty() {
        let mut block = [0u8; 16];
        block[..last.len()].copy_from_slice(last);
        block[last.len()] = 1;
        let m = limbs(&block, 0);
        h = carry(mul([h[0] + m[0], h[1] + m[1], h[2] + m[2]], &r1));
    }
    finish(h, limbs(s.try_into().unwrap_or(&[0; 16]), 0))
}

/// Fully reduces `h` mod 2^130 - 5, adds `s` mod 2^128, serialises.
fn finish(h: [u64; 3], s: [u64; 3]) -> [u8; 16] {
    let [mut h0, mut h1, mut h2] = h;
    // Full carry (twice around, as h may be just above 2^130).
    for _ in 0..2 {
        let c = h1 >> 44;
        h1 &= MASK44;
        h2 += c;
        let c = h2 >> 42;
        h2 &= MASK42;
        h0 += c * 5;
        let c = h0 >> 44;
        h0 &= MASK44;
        h1 += c;
    }
    let c = h1 >> 44;
    h1 &= MASK44;
    h2 += c;
    // g = h - p = h + 5 - 2^130; take g when it did not go negative.
    let mut g0 = h0 + 5;
    let c = g0 >> 44;
    g0 &= MASK44;
    let mut g1 = h1 + c;
    let c = g1 >> 44;
    g1 &= MASK44;
    let g2 = (h2 + c).wrapping_sub(1 << 42);
    let use_g = (g2 >> 63).wrapping_sub(1); // all ones when g2 >= 0
    h0 = (h0 & !use_g) | (g0 & use_g);
    h1 = (h1 & !use_g) | (g1 & use_g);
    h2 = (h2 & !use_g) | (g2 & use_g & MASK42);
    // h + s mod 2^128.
    h0 += s[0];
    let c = h0 >> 44;
    h0 &= MASK44;
    h1 += s[1] + c;
    let c = h1 >> 44;
    h1 &= MASK44;
    h2 = (h2 + s[2] + c) & MASK42;
    let lo = h0 | (h1 << 44);
    let hi = (h1 >> 20) | (h2 << 24);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_le_bytes());
    out[8..].copy_from_slice(&hi.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use poly1305::universal_hash::KeyInit;
    use proptest::prelude::*;

    fn reference(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
        poly1305::Poly1305::new(key.into())
            .compute_unpadded(msg)
            .into()
    }

    #[test]
    fn rfc8439_vector() {
        // RFC 8439 §2.5.2.
        let key: [u8; 32] = [
            0x85, 0xd6, 0xbe, 0x78, 0x57, 0x55, 0x6d, 0x33, 0x7f, 0x44, 0x52, 0xfe, 0x42, 0xd5,
            0x06, 0xa8, 0x01, 0x03, 0x80, 0x8a, 0xfb, 0x0d, 0xb2, 0xfd, 0x4a, 0xbf, 0xf6, 0xaf,
            0x41, 0x49, 0xf5, 0x1b,
        ];
        let msg = b"Cryptographic Forum Research Group";
        let want = [
            0xa8, 0x06, 0x1d, 0xc1, 0x30, 0x51, 0x36, 0xc6, 0xc2, 0x2b, 0x8b, 0xaf, 0x0c, 0x01,
            0x27, 0xa9,
        ];
        assert_eq!(tag(&key, msg), want);
    }

    #[test]
    fn edge_values_match_reference() {
        // All-ones r and s and messages push every carry and the final
        // conditional subtraction.
        let ones = [0xffu8; 32];
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 48, 64, 1400] {
            for fill in [0x00u8, 0xff] {
                let msg = vec![fill; len];
                assert_eq!(
                    tag(&ones, &msg),
                    reference(&ones, &msg),
                    "len {len} fill {fill}"
                );
                let zero_r = {
                    let mut k = ones;
                    k[..16].fill(0);
                    k
                };
                assert_eq!(tag(&zero_r, &msg), reference(&zero_r, &msg));
            }
        }
    }

    proptest! {
        #[test]
        fn matches_reference(
            key in any::<[u8; 32]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            prop_assert_eq!(tag(&key, &msg), reference(&key, &msg));
        }
    }
}
