//! Compiles the example `.proto` contract the integration tests call.

fn main() -> std::io::Result<()> {
    plexus_codegen::compile_protos(
        &["../schemas/examples/inventory.proto"],
        &["../schemas/examples"],
    )
}
