//! weft-wire
