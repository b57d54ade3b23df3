//! Gob's primitive encodings: unsigned and signed integers, floats, byte strings.
//!
//! * An unsigned integer below 128 is one byte. Larger values are sent as a byte
//!   holding the negated byte count (`0xff` = 1 byte ... `0xf8` = 8 bytes), then the
//!   value's minimal big-endian bytes.
//! * A signed integer `i` is sent as the unsigned `i << 1` when `i >= 0`, and as
//!   `(!i << 1) | 1` when negative: the low bit is the sign.
//! * A float is its IEEE-754 bits with the bytes reversed, sent as an unsigned integer
//!   (so small integral floats encode in few bytes).
//! * Strings and byte slices are a length followed by the bytes.

use crate::error::{Error, Result};

pub(crate) fn put_uint(buf: &mut Vec<u8>, u: u64) {
    if u < 0x80 {
        buf.push(u as u8);
        return;
    }
    let bytes = u.to_be_bytes();
    let skip = (u.leading_zeros() / 8) as usize;
    let n = bytes.len() - skip;
    // -n as a byte: 0xff for 1 byte ... 0xf8 for 8 bytes.
    buf.push((n as u8).wrapping_neg());
    buf.extend_from_slice(&bytes[skip..]);
}

pub(crate) fn int_to_uint(i: i64) -> u64 {
    if i < 0 {
        (!(i as u64) << 1) | 1
    } else {
        (i as u64) << 1
    }
}

pub(crate) fn uint_to_int(u: u64) -> i64 {
    if u & 1 == 1 {
        !(u >> 1) as i64
    } else {
        (u >> 1) as i64
    }
}

pub(crate) fn put_int(buf: &mut Vec<u8>, i: i64) {
    put_uint(buf, int_to_uint(i));
}

pub(crate) fn put_float(buf: &mut Vec<u8>, f: f64) {
    put_uint(buf, f.to_bits().swap_bytes());
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_uint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Bounds-checked cursor over one message (or the whole stream).
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn byte(&mut self, what: &'static str) -> Result<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(Error::Truncated { what, needed: 1 }),
        }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let rem = self.remaining();
        if n > rem {
            return Err(Error::Truncated {
                what,
                needed: n - rem,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64> {
        let b = self.byte(what)?;
        if b < 0x80 {
            return Ok(u64::from(b));
        }
        let n = usize::from(b.wrapping_neg());
        if n > 8 {
            return Err(Error::BadUint(b));
        }
        let bytes = self.take(n, what)?;
        Ok(bytes.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    pub(crate) fn int(&mut self, what: &'static str) -> Result<i64> {
        Ok(uint_to_int(self.uint(what)?))
    }

    pub(crate) fn float(&mut self, what: &'static str) -> Result<f64> {
        Ok(f64::from_bits(self.uint(what)?.swap_bytes()))
    }

    /// A length-prefixed byte string; the length is checked against the input first.
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.uint(what)?;
        let rem = self.remaining();
        if len > rem as u64 {
            return Err(Error::CountTooLarge {
                what,
                count: len,
                remaining: rem,
            });
        }
        self.take(len as usize, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_uint(u: u64) -> Vec<u8> {
        let mut v = Vec::new();
        put_uint(&mut v, u);
        v
    }

    #[test]
    fn uint_examples_from_the_gob_documentation() {
        assert_eq!(enc_uint(0), [0x00]);
        assert_eq!(enc_uint(7), [0x07]);
        assert_eq!(enc_uint(127), [0x7f]);
        assert_eq!(enc_uint(128), [0xff, 0x80]);
        assert_eq!(enc_uint(256), [0xfe, 0x01, 0x00]);
        assert_eq!(
            enc_uint(u64::MAX),
            [0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn int_sign_in_low_bit() {
        let mut v = Vec::new();
        put_int(&mut v, -129);
        // -129 -> (128 << 1) | 1 = 257
        assert_eq!(v, [0xfe, 0x01, 0x01]);
        for i in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(uint_to_int(int_to_uint(i)), i);
        }
    }

    #[test]
    fn float_bytes_reversed() {
        let mut v = Vec::new();
        put_float(&mut v, 17.0);
        // 17.0 = 0x4031000000000000, reversed 0x3140 -> fe 31 40
        assert_eq!(v, [0xfe, 0x31, 0x40]);
        let mut r = Reader::new(&v);
        assert_eq!(r.float("f").unwrap(), 17.0);
    }

    #[test]
    fn reader_rejects_bad_and_short_uints() {
        assert_eq!(Reader::new(&[0x80]).uint("x"), Err(Error::BadUint(0x80)));
        assert_eq!(
            Reader::new(&[0xf7, 0, 0]).uint("x"),
            Err(Error::BadUint(0xf7))
        );
        assert!(matches!(
            Reader::new(&[0xfe, 0x01]).uint("x"),
            Err(Error::Truncated { needed: 1, .. })
        ));
        assert!(matches!(
            Reader::new(&[]).uint("x"),
            Err(Error::Truncated { .. })
        ));
        // Non-minimal encodings are accepted, as Go does.
        assert_eq!(Reader::new(&[0xfe, 0x00, 0x05]).uint("x"), Ok(5));
    }

    #[test]
    fn byte_string_length_checked_before_reading() {
        assert!(matches!(
            Reader::new(&[0x05, 1, 2]).bytes("s"),
            Err(Error::CountTooLarge {
                count: 5,
                remaining: 2,
                ..
            })
        ));
        let data = [0x02, 9, 8, 7];
        let mut r = Reader::new(&data);
        assert_eq!(r.bytes("s").unwrap(), &[9, 8]);
        assert_eq!(r.remaining(), 1);
    }
}
