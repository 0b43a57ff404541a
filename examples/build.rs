//! Compiles the schema-first example contract (`inventory` binary).

fn main() -> std::io::Result<()> {
    plexus_codegen::compile_protos(
        &["../schemas/examples/inventory.proto"],
        &["../schemas/examples"],
    )
}
