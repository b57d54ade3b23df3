//! weft-gob
