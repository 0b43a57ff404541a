fn main() -> Result<(), plexus_codegen::Error> {
    plexus_codegen::compile_protos(&["proto/greeter.proto"], &["proto"])
}
