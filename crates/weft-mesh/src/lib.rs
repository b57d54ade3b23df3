//! weft-mesh
