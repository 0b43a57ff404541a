//! The `.proto` front end through its public API: good schemas generate a
//! client, handler and descriptor; bad ones fail naming file, line, column,
//! problem and, where one is known, what to do.

use std::path::{Path, PathBuf};

use plexus_codegen::{Builder, Error};

/// A fresh directory under the system temp dir, holding `files`.
fn workspace(test: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-codegen-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write proto");
    }
    dir
}

fn compile(dir: &Path, file: &str) -> Result<(), Error> {
    Builder::new()
        .out_dir(dir.join("out"))
        .cargo_directives(false)
        .compile(&[dir.join(file)], &[dir])
}

const GOOD: &str = r#"syntax = "proto3";
package greet;
import "google/protobuf/empty.proto";
import "plexus/options.proto";

message Hello { string name = 1; }

// Greets people.
service Greeter {
  option (plexus.roles) = "host";
  // Says hello.
  rpc SayHello(Hello) returns (Hello) { option (plexus.role) = "host"; }
  rpc Wave(Hello) returns (google.protobuf.Empty) { option (plexus.oneway) = true; }
}
"#;

#[test]
fn good_schema_generates_messages_client_handler_and_descriptor_set() {
    let dir = workspace("good", &[("greet.proto", GOOD)]);
    compile(&dir, "greet.proto").expect("compiles");
    let code = std::fs::read_to_string(dir.join("out/greet.rs")).expect("generated file");
    for expected in [
        "pub struct Hello",
        "pub trait Greeter",
        "pub struct GreeterClient",
        "pub struct GreeterHandler<T>",
        "pub trait GreeterActor",
        "for ::plexus::node::Actor<PlexusActorState>",
        "pub struct GreeterFanout",
        "\"greet.Greeter/SayHello\"",
        "::plexus::contract::CallKind::OneWay",
        "/// Says hello.",
    ] {
        assert!(code.contains(expected), "missing `{expected}` in:\n{code}");
    }
    assert!(dir.join("out/greet.fds.bin").exists());
}

#[test]
fn syntax_error_names_file_and_line() {
    let broken = GOOD.replace("string name = 1;", "string name = 1");
    let dir = workspace("syntax", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("does not parse")
        .to_string();
    assert!(err.contains("greet.proto:6:"), "{err}");
}

#[test]
fn unknown_type_names_file_and_line() {
    let broken = GOOD.replace("rpc SayHello(Hello)", "rpc SayHello(Goodbye)");
    let dir = workspace("unknown-type", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("does not type-check")
        .to_string();
    assert!(err.contains("greet.proto:12:"), "{err}");
    assert!(err.contains("Goodbye"), "{err}");
}

#[test]
fn oneway_with_a_reply_is_refused_with_its_line() {
    let broken = GOOD.replace(
        "rpc Wave(Hello) returns (google.protobuf.Empty)",
        "rpc Wave(Hello) returns (Hello)",
    );
    let dir = workspace("oneway", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("oneway with a reply")
        .to_string();
    assert!(err.contains("greet.proto:13:3: rpc Wave"), "{err}");
    assert!(err.contains("has no reply"), "{err}");
    assert!(err.contains("hint: return google.protobuf.Empty"), "{err}");
}

#[test]
fn undeclared_role_is_refused_with_its_line() {
    let broken = GOOD.replace("(plexus.role) = \"host\"", "(plexus.role) = \"guest\"");
    let dir = workspace("role", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("undeclared role")
        .to_string();
    assert!(err.contains("greet.proto:12:3: rpc SayHello"), "{err}");
    assert!(err.contains("\"guest\""), "{err}");
    assert!(
        err.contains("hint: declare it in the service with `option (plexus.roles) = \"guest\";`"),
        "{err}"
    );
}

#[test]
fn missing_file_says_it_does_not_exist() {
    let dir = workspace("missing", &[]);
    let err = compile(&dir, "nowhere.proto")
        .expect_err("no such file")
        .to_string();
    assert!(err.contains("nowhere.proto: file not found"), "{err}");
    assert!(
        !err.contains("include path"),
        "not an include problem: {err}"
    );
    assert!(err.contains("hint: check the path"), "{err}");
}

#[test]
fn file_outside_the_includes_says_so_and_names_the_directory_to_add() {
    let dir = workspace("outside", &[]);
    std::fs::create_dir_all(dir.join("protos")).expect("dir");
    std::fs::create_dir_all(dir.join("other")).expect("dir");
    std::fs::write(dir.join("protos/greet.proto"), GOOD).expect("write");
    let err = Builder::new()
        .out_dir(dir.join("out"))
        .cargo_directives(false)
        .compile(&[dir.join("protos/greet.proto")], &[dir.join("other")])
        .expect_err("outside the includes");
    let text = err.to_string();
    assert!(
        text.contains("greet.proto: is not under any include directory"),
        "{text}"
    );
    let protos = dir.join("protos").display().to_string();
    assert!(
        text.contains(&format!("hint: imports inside a file are resolved against the include directories, so every file to compile lives under one: add `{protos}`")),
        "{text}"
    );
}

#[test]
fn missing_include_directory_is_named() {
    let dir = workspace("no-include", &[("greet.proto", GOOD)]);
    let err = Builder::new()
        .out_dir(dir.join("out"))
        .cargo_directives(false)
        .compile(&[dir.join("greet.proto")], &[dir.clone(), dir.join("nope")])
        .expect_err("an include directory is missing")
        .to_string();
    assert!(err.contains("nope: include directory not found"), "{err}");
}

#[test]
fn plexus_option_without_its_import_hints_the_import() {
    let broken = GOOD.replace("import \"plexus/options.proto\";\n", "");
    let dir = workspace("no-options", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto").expect_err("options not imported");
    let problem = &err.problems()[0];
    let location = problem.location.as_ref().expect("a location");
    assert!(location.file.ends_with("greet.proto"), "{err}");
    assert!(
        location.line.is_some() && location.column.is_some(),
        "{err}"
    );
    assert!(
        problem.message.contains("'plexus.roles' is not defined"),
        "{err}"
    );
    assert_eq!(
        problem.hint.as_deref(),
        Some(
            "add `import \"plexus/options.proto\";` to greet.proto; it declares the Plexus options"
        ),
        "{err}"
    );
}

#[test]
fn misspelled_plexus_option_lists_the_options() {
    let broken = GOOD.replace("(plexus.oneway)", "(plexus.onway)");
    let dir = workspace("onway", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("no such option")
        .to_string();
    assert!(err.contains("greet.proto:13:"), "{err}");
    assert!(err.contains("Plexus has no option `onway`"), "{err}");
    assert!(err.contains("(plexus.oneway)"), "{err}");
}

#[test]
fn well_known_type_without_its_import_hints_the_file() {
    let schema = GOOD.replace(
        "message Hello { string name = 1; }",
        "message Hello { string name = 1; google.protobuf.Timestamp at = 2; }",
    );
    let dir = workspace("no-wkt-import", &[("greet.proto", &schema)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("timestamp not imported")
        .to_string();
    assert!(err.contains("greet.proto:6:"), "{err}");
    assert!(
        err.contains("hint: add `import \"google/protobuf/timestamp.proto\";` to greet.proto"),
        "{err}"
    );
}

#[test]
fn missing_import_names_the_includes_searched() {
    let schema = GOOD.replace(
        "import \"plexus/options.proto\";",
        "import \"plexus/options.proto\";\nimport \"google/api/annotations.proto\";",
    );
    let dir = workspace("no-import", &[("greet.proto", &schema)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("import not found")
        .to_string();
    assert!(
        err.contains("greet.proto:5:1: import 'google/api/annotations.proto' not found"),
        "{err}"
    );
    assert!(err.contains("googleapis"), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

#[test]
fn every_problem_is_reported_readably_on_its_own_line() {
    let broken = GOOD
        .replace("(plexus.role) = \"host\"", "(plexus.role) = \"guest\"")
        .replace(
            "rpc Wave(Hello) returns (google.protobuf.Empty)",
            "rpc Wave(Hello) returns (Hello)",
        );
    let dir = workspace("several", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto").expect_err("two problems");
    assert_eq!(err.problems().len(), 2, "{err}");
    // `fn main() -> Result<(), Error>` prints `Debug`: it must be the
    // readable text, one problem per line, not a struct dump.
    let printed = format!("{err:?}");
    assert_eq!(printed, err.to_string());
    assert!(
        !printed.contains("Custom {") && !printed.contains("\\n"),
        "{printed}"
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines[0], "2 problems compiling the .proto files:",
        "{printed}"
    );
    let located: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("greet.proto:1"))
        .collect();
    assert_eq!(located.len(), 2, "{printed}");
    assert!(
        lines.iter().filter(|l| l.starts_with("  hint: ")).count() == 2,
        "{printed}"
    );
}

const TOPIC: &str = r#"syntax = "proto3";
package greet;
import "google/protobuf/empty.proto";
import "plexus/options.proto";

message Hello { string name = 1; }

// People arriving.
service Arrivals {
  option (plexus.topic) = true;
  rpc Subscribe(google.protobuf.Empty) returns (stream Hello);
}
"#;

#[test]
fn topic_service_generates_a_topic_declaration() {
    let dir = workspace("topic", &[("greet.proto", TOPIC)]);
    compile(&dir, "greet.proto").expect("compiles");
    let code = std::fs::read_to_string(dir.join("out/greet.rs")).expect("generated file");
    let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("::plexus::topic! {"), "{code}");
    assert!(flat.contains("#[doc = \"People arriving.\"]"), "{code}");
    assert!(
        flat.contains("pub struct Arrivals in \"greet\" => Hello, codec = ::plexus::codec::Prost;"),
        "{code}"
    );
    assert!(
        !code.contains("ArrivalsClient"),
        "a topic is not a service: {code}"
    );
}

#[test]
fn topic_of_the_wrong_shape_is_refused_with_its_line() {
    for (broken, why) in [
        (
            TOPIC.replace(
                "rpc Subscribe(google.protobuf.Empty) returns (stream Hello);",
                "rpc Subscribe(google.protobuf.Empty) returns (Hello);",
            ),
            "not a stream",
        ),
        (TOPIC.replace("rpc Subscribe(", "rpc Listen("), "wrong name"),
        (
            TOPIC.replace(
                "returns (stream Hello);",
                "returns (stream Hello);\n  rpc Other(Hello) returns (Hello);",
            ),
            "two methods",
        ),
    ] {
        let dir = workspace("topic-bad", &[("greet.proto", &broken)]);
        let err = compile(&dir, "greet.proto").expect_err(why).to_string();
        assert!(err.contains("greet.proto:9:"), "{why}: {err}");
        assert!(
            err.contains("(plexus.topic) has exactly one method"),
            "{why}: {err}"
        );
    }
}

const WELL_KNOWN: &str = r#"syntax = "proto3";
package clock;
import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

message Reading {
  google.protobuf.Timestamp at = 1;
  repeated google.protobuf.Duration gaps = 2;
  map<string, google.protobuf.Value> tags = 3;
  oneof source {
    google.protobuf.Any raw = 4;
    google.protobuf.StringValue name = 5;
  }
}

service Clock {
  rpc Now(google.protobuf.Empty) returns (google.protobuf.Timestamp);
  rpc Record(Reading) returns (google.protobuf.Empty);
}
"#;

#[test]
fn well_known_types_as_fields_maps_oneofs_and_repeated_compile() {
    let dir = workspace("wkt", &[("clock.proto", WELL_KNOWN)]);
    compile(&dir, "clock.proto").expect("compiles");
    let code = std::fs::read_to_string(dir.join("out/clock.rs")).expect("generated file");
    for expected in [
        "pub at: ::core::option::Option<::plexus::codegen::prost_types::Timestamp>",
        "pub struct ClockClient",
        "::plexus::codegen::prost_types::Duration",
        "::plexus::codegen::prost_types::Value",
        "Raw(::plexus::codegen::prost_types::Any)",
    ] {
        let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        let expected: String = expected.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&expected), "missing `{expected}` in:\n{code}");
    }
    // No file is generated for the well-known types themselves.
    let written: Vec<String> = std::fs::read_dir(dir.join("out"))
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.iter().all(|f| f.starts_with("clock.")),
        "{written:?}"
    );
}

/// The crate roots a generated file names (`::plexus::x` gives `plexus`).
fn crate_roots(code: &str) -> std::collections::BTreeSet<String> {
    let mut roots = std::collections::BTreeSet::new();
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("::") {
        let preceded_by_path = i > 0
            && (bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b'>');
        if preceded_by_path {
            continue;
        }
        let rest = &code[i + 2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with("::") {
            roots.insert(rest[..end].to_owned());
        }
    }
    roots
}

#[test]
fn generated_code_names_no_crate_but_plexus() {
    let dir = workspace(
        "roots",
        &[("clock.proto", WELL_KNOWN), ("greet.proto", GOOD)],
    );
    for file in ["clock.proto", "greet.proto"] {
        compile(&dir, file).expect("compiles");
    }
    for file in ["clock.rs", "greet.rs"] {
        let code = std::fs::read_to_string(dir.join("out").join(file)).expect("generated");
        let roots = crate_roots(&code);
        let allowed = ["core", "std", "plexus"];
        assert!(
            roots.iter().all(|r| allowed.contains(&r.as_str())),
            "{file} names crates other than plexus: {roots:?}"
        );
        assert!(roots.contains("plexus"), "{roots:?}");
    }
}

const SHOP: &str = r#"syntax = "proto3";
package acme.shop.v1;
message Item { string sku = 1; }
service Shop { rpc Get(Item) returns (Item); }
"#;

const SHOP_ADMIN: &str = r#"syntax = "proto3";
package acme.shop.v1.admin;
import "shop.proto";
service Admin { rpc Touch(acme.shop.v1.Item) returns (acme.shop.v1.Item); }
"#;

const BILLING: &str = r#"syntax = "proto3";
package acme.billing;
import "shop.proto";
message Invoice { repeated acme.shop.v1.Item items = 1; }
"#;

#[test]
fn include_file_declares_the_package_tree() {
    let dir = workspace(
        "include-file",
        &[
            ("shop.proto", SHOP),
            ("admin.proto", SHOP_ADMIN),
            ("billing.proto", BILLING),
        ],
    );
    Builder::new()
        .out_dir(dir.join("out"))
        .cargo_directives(false)
        .include_file("protos.rs")
        .compile(
            &[
                dir.join("shop.proto"),
                dir.join("admin.proto"),
                dir.join("billing.proto"),
            ],
            &[&dir],
        )
        .expect("compiles");
    let include = std::fs::read_to_string(dir.join("out/protos.rs")).expect("include file");
    let flat: String = include.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "pub mod acme {",
        "pub mod billing { include!(\"acme.billing.rs\"); }",
        "pub mod shop { pub mod v1 { include!(\"acme.shop.v1.rs\"); pub mod admin { include!(\"acme.shop.v1.admin.rs\"); } } }",
    ] {
        assert!(flat.contains(expected), "missing `{expected}` in:\n{include}");
    }
    // The nested package reaches its parent's messages through the tree.
    let admin = std::fs::read_to_string(dir.join("out/acme.shop.v1.admin.rs")).expect("admin");
    assert!(admin.contains("super::Item"), "{admin}");
}

#[test]
fn operations_named_like_client_methods_get_a_trailing_underscore() {
    let schema = r#"syntax = "proto3";
package tunnel;
message Hello { string name = 1; }
service Tunnel {
  rpc Connect(Hello) returns (Hello);
  rpc Peers(Hello) returns (Hello);
  rpc Type(Hello) returns (Hello);
}
"#;
    let dir = workspace("reserved", &[("tunnel.proto", schema)]);
    compile(&dir, "tunnel.proto").expect("compiles");
    let code = std::fs::read_to_string(dir.join("out/tunnel.rs")).expect("generated");
    for expected in [
        "pub async fn connect_(",
        "pub fn peers_(",
        "pub async fn r#type(",
        "\"tunnel.Tunnel/Connect\"",
    ] {
        assert!(code.contains(expected), "missing `{expected}` in:\n{code}");
    }
}
