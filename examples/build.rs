//! Compiles the schema-first example contract (`inventory` binary).

fn main() -> Result<(), plexus_codegen::Error> {
    plexus_codegen::compile_protos(
        &["../schemas/examples/inventory.proto"],
        &["../schemas/examples"],
    )
}
