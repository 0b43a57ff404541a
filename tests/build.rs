//! Compiles the `.proto` contracts the integration tests call: the example
//! inventory, and the feature schemas (`schemas/features/`) that exercise
//! what real-world schemas use, several packages in one build.

fn main() -> Result<(), plexus_codegen::Error> {
    plexus_codegen::compile_protos(
        &["../schemas/examples/inventory.proto"],
        &["../schemas/examples"],
    )?;
    let features = "../schemas/features";
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    plexus_codegen::Builder::new()
        .out_dir(out_dir.join("features"))
        .include_file("features.rs")
        .compile(
            &[
                "acme/shop/v1/catalog.proto",
                "acme/shop/v1/admin/admin.proto",
                "acme/billing/billing.proto",
                "legacy/records.proto",
                "unpackaged.proto",
            ]
            .map(|file| format!("{features}/{file}")),
            &[features],
        )
}
