//! The few gob shapes this crate needs, on top of `weft-gob`.
//!
//! Weave creates a new gob encoder per message, so every message here is a
//! complete stream of its own.

use std::collections::BTreeMap;

use weft_gob::{Decoder, Encoder, Error};

/// Encodes a `map[string]string` as a one-value gob stream (sorted keys).
pub(crate) fn encode_string_map(map: &BTreeMap<String, String>) -> Result<Vec<u8>, Error> {
    weft_gob::to_bytes(map)
}

/// Decodes a one-value gob stream holding a `map[string]string`.
pub(crate) fn decode_string_map(bytes: &[u8]) -> Result<BTreeMap<String, String>, Error> {
    weft_gob::from_bytes(bytes)
}

/// Writes successive values with one fresh encoder.
pub(crate) struct GobWriter {
    enc: Encoder,
}

impl GobWriter {
    pub(crate) fn new() -> Self {
        GobWriter {
            enc: Encoder::new(),
        }
    }

    pub(crate) fn string(&mut self, s: &str) -> Result<(), Error> {
        self.enc.encode(s)
    }

    pub(crate) fn uint(&mut self, v: u64) -> Result<(), Error> {
        self.enc.encode(&v)
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.enc.encode(b)
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.enc.into_bytes()
    }
}

/// Reads successive values of one gob stream.
pub(crate) struct GobReader<'a> {
    dec: Decoder<'a>,
    len: usize,
}

impl<'a> GobReader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        GobReader {
            dec: Decoder::new(input),
            len: input.len(),
        }
    }

    pub(crate) fn string(&mut self) -> Result<String, Error> {
        self.dec.decode()
    }

    pub(crate) fn uint(&mut self) -> Result<u64, Error> {
        self.dec.decode()
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.dec.decode()
    }

    /// `Err(n)` when `n` bytes follow the values read.
    pub(crate) fn finish(self) -> Result<(), usize> {
        if self.dec.is_at_end() {
            Ok(())
        } else {
            Err(self.len.saturating_sub(self.dec.position()))
        }
    }
}
