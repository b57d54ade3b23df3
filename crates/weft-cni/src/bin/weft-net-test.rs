//! The CNI plugin as a standalone executable, for the integration tests (production uses the
//! `weft` binary invoked as `weft-net`).
fn main() {
    std::process::exit(weft_cni::main_from_env());
}
