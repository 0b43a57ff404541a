//! The `.proto` front end through its public API: good schemas generate a
//! client, handler and descriptor; bad ones fail naming file, line and problem.

use std::path::PathBuf;

use plexus_codegen::Builder;

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

fn compile(dir: &std::path::Path, file: &str) -> std::io::Result<()> {
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
        "::plexus::CallKind::OneWay",
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
    assert!(err.contains("greet.proto:13: rpc Wave"), "{err}");
    assert!(err.contains("has no reply"), "{err}");
}

#[test]
fn undeclared_role_is_refused_with_its_line() {
    let broken = GOOD.replace("(plexus.role) = \"host\"", "(plexus.role) = \"guest\"");
    let dir = workspace("role", &[("greet.proto", &broken)]);
    let err = compile(&dir, "greet.proto")
        .expect_err("undeclared role")
        .to_string();
    assert!(err.contains("greet.proto:12: rpc SayHello"), "{err}");
    assert!(err.contains("\"guest\""), "{err}");
}

#[test]
fn missing_file_is_an_error() {
    let dir = workspace("missing", &[]);
    let err = compile(&dir, "nowhere.proto")
        .expect_err("no such file")
        .to_string();
    assert!(err.contains("nowhere.proto"), "{err}");
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
