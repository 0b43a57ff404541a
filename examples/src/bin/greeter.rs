//! Placeholder until the macro example lands.
fn main() {}
