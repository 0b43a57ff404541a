//! What a failed `.proto` compilation tells its user: every problem found,
//! each with the file, line and column it is at and, where one is known,
//! what to do about it.
//!
//! This module only describes and renders problems; finding them is the
//! compiler's job (`protox`, then the Plexus checks in `super`). The text is
//! made for the place a build script's error ends up, a terminal.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;

/// Why [`compile_protos`](crate::compile_protos) failed: every problem it
/// found, each naming where it is and, when it can, what to do.
///
/// `Debug` prints the same text as `Display`, so a build script declared
/// `fn main() -> Result<(), plexus_codegen::Error>` shows the problems as
/// they are, one per line:
///
/// ```text
/// Error: schemas/greet.proto:12:50: name 'plexus.oneway' is not defined
///   hint: add `import "plexus/options.proto";` to greet.proto; it declares the Plexus options
/// ```
pub struct Error {
    problems: Vec<Problem>,
}

/// One problem in a schema, in its place on disk, or in writing the output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Where it is, when it is in a file.
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when that is known.
    pub hint: Option<String>,
}

/// A place in a `.proto` file; line and column count from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as found on disk (`schemas/greet.proto`), or its import name
    /// when it has no place on disk (the bundled `plexus/options.proto`).
    pub file: PathBuf,
    /// The line, when known.
    pub line: Option<u32>,
    /// The column, when known.
    pub column: Option<u32>,
}

impl Error {
    pub(super) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        Error { problems }
    }

    pub(super) fn one(problem: Problem) -> Self {
        Error::new(vec![problem])
    }

    /// Every problem found, in the order they were found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl Problem {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Problem {
            location: None,
            message: message.into(),
            hint: None,
        }
    }

    pub(super) fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub(super) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl Location {
    pub(super) fn file(file: impl Into<PathBuf>) -> Self {
        Location {
            file: file.into(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.len() > 1 {
            writeln!(
                f,
                "{} problems compiling the .proto files:",
                self.problems.len()
            )?;
        }
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The same text as `Display`: `main` returning `Err` prints `Debug`, and
/// that is where a build script's error is read.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {}

/// Where import names live on disk, to turn `greet.proto` into the path a
/// user can open (`schemas/greet.proto`).
pub(super) struct Places<'a> {
    pub includes: &'a [PathBuf],
}

impl Places<'_> {
    /// The first include directory's copy of `name`, else `name` itself.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.includes
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    pub fn includes_list(&self) -> String {
        if self.includes.is_empty() {
            return "none given".to_owned();
        }
        self.includes
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every problem `protox` reports, with a place and a hint each.
pub(super) fn from_protox(error: &protox::Error, places: &Places<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let source = error.source_code();
    problems.push(from_diagnostic(error, source, error.file(), places));
    if let Some(related) = error.related() {
        for diagnostic in related {
            let own = diagnostic.source_code().or(source);
            problems.push(from_diagnostic(diagnostic, own, error.file(), places));
        }
    }
    problems
}

fn from_diagnostic(
    diagnostic: &dyn Diagnostic,
    source: Option<&dyn miette::SourceCode>,
    file: Option<&str>,
    places: &Places<'_>,
) -> Problem {
    let message = diagnostic.to_string();
    let mut location = None;
    if let (Some(source), Some(label)) = (source, diagnostic.labels().and_then(|mut l| l.next())) {
        if let Ok(contents) = source.read_span(label.inner(), 0, 0) {
            let name = contents.name().or(file).unwrap_or("<unknown file>");
            location = Some(Location {
                file: places.path_of(name),
                line: u32::try_from(contents.line() + 1).ok(),
                column: u32::try_from(contents.column() + 1).ok(),
            });
        }
    }
    if location.is_none() {
        location = file.map(|name| Location::file(places.path_of(name)));
    }
    let file_name = file.unwrap_or("the file");
    let hint = hint_for(&message, file_name, places)
        .or_else(|| diagnostic.help().map(|help| help.to_string()));
    Problem {
        location,
        message,
        hint,
    }
}

/// Options `plexus/options.proto` declares, for telling a missing import
/// from a misspelled option.
const PLEXUS_OPTIONS: &[&str] = &["oneway", "idempotent", "role", "roles", "version", "topic"];

/// The well-known type files protox bundles, by the types they declare.
const WELL_KNOWN: &[(&str, &str)] = &[
    ("Any", "any"),
    ("Api", "api"),
    ("Method", "api"),
    ("Mixin", "api"),
    ("Duration", "duration"),
    ("Empty", "empty"),
    ("FieldMask", "field_mask"),
    ("SourceContext", "source_context"),
    ("Struct", "struct"),
    ("Value", "struct"),
    ("ListValue", "struct"),
    ("NullValue", "struct"),
    ("Timestamp", "timestamp"),
    ("Type", "type"),
    ("Field", "type"),
    ("Enum", "type"),
    ("EnumValue", "type"),
    ("Option", "type"),
    ("Syntax", "type"),
    ("DoubleValue", "wrappers"),
    ("FloatValue", "wrappers"),
    ("Int64Value", "wrappers"),
    ("UInt64Value", "wrappers"),
    ("Int32Value", "wrappers"),
    ("UInt32Value", "wrappers"),
    ("BoolValue", "wrappers"),
    ("StringValue", "wrappers"),
    ("BytesValue", "wrappers"),
];

fn hint_for(message: &str, file: &str, places: &Places<'_>) -> Option<String> {
    // "name 'x' is not defined", or inside a package "'x' resolves to 'p.x', which is not defined".
    let undefined = message.ends_with("is not defined");
    if let Some(name) = quoted_after(message, "'").filter(|_| undefined) {
        if let Some(option) = name.strip_prefix("plexus.") {
            return Some(if PLEXUS_OPTIONS.contains(&option) {
                format!(
                    "add `import \"plexus/options.proto\";` to {file}; it declares the Plexus options"
                )
            } else {
                format!(
                    "Plexus has no option `{option}`; methods take (plexus.oneway), (plexus.idempotent) and (plexus.role), services (plexus.roles), (plexus.version) and (plexus.topic), all from `import \"plexus/options.proto\";`"
                )
            });
        }
        if let Some(ty) = name
            .strip_prefix("google.protobuf.")
            .or_else(|| name.strip_prefix(".google.protobuf."))
        {
            if let Some((_, stem)) = WELL_KNOWN.iter().find(|(t, _)| *t == ty) {
                return Some(format!(
                    "add `import \"google/protobuf/{stem}.proto\";` to {file}"
                ));
            }
        }
        return None;
    }
    if let Some(import) = quoted_after(message, "import '") {
        if message.ends_with("not found") {
            let bundled = if import.starts_with("google/protobuf/") {
                "; the bundled well-known types are any, api, descriptor, duration, empty, field_mask, source_context, struct, timestamp, type, wrappers and compiler/plugin"
            } else if import.starts_with("google/") {
                "; only google/protobuf/* is bundled: for googleapis files (google/api, google/rpc, ...) add a directory holding them to the includes"
            } else {
                ""
            };
            return Some(format!(
                "imports are looked up in the include directories ({}) and in the bundled plexus/options.proto and google/protobuf/*; add the directory that contains `{import}` to the includes{bundled}",
                places.includes_list()
            ));
        }
    }
    None
}

/// The text between `prefix` and the next `'` in `message`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('\'')?;
    Some(&message[start..start + len])
}

/// Checks, before compiling, that each input file exists and sits under an
/// include directory: protox cannot tell the two apart and says "not in any
/// include path" for both.
pub(super) fn check_inputs(protos: &[&Path], places: &Places<'_>) -> Vec<Problem> {
    let cwd = std::env::current_dir().ok();
    let canonical_includes: Vec<Option<PathBuf>> = places
        .includes
        .iter()
        .map(|dir| std::fs::canonicalize(dir).ok())
        .collect();
    let mut problems = Vec::new();
    for &proto in protos {
        if proto.is_file() {
            let canonical = std::fs::canonicalize(proto).ok();
            let included = canonical.as_ref().is_some_and(|file| {
                canonical_includes
                    .iter()
                    .flatten()
                    .any(|dir| file.starts_with(dir))
            });
            if !included {
                let dir = proto
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                problems.push(
                    Problem::new(format!(
                        "is not under any include directory (includes: {})",
                        places.includes_list()
                    ))
                    .at(Location::file(proto))
                    .hint(format!(
                        "imports inside a file are resolved against the include directories, so every file to compile lives under one: add `{}` (or a parent of it) to the includes",
                        dir.display()
                    )),
                );
            }
            continue;
        }
        // protox also accepts a name relative to an include directory.
        let by_name =
            proto.is_relative() && places.includes.iter().any(|d| d.join(proto).is_file());
        if by_name {
            continue;
        }
        let wherefrom = match &cwd {
            Some(cwd) => format!(
                "relative paths are resolved from {} (a build script runs in its crate's directory, the one with Cargo.toml)",
                cwd.display()
            ),
            None => "relative paths are resolved from the current directory".to_owned(),
        };
        let hint = if places.includes.is_empty() {
            format!("check the path; {wherefrom}")
        } else {
            format!(
                "check the path; {wherefrom}, or from an include directory ({})",
                places.includes_list()
            )
        };
        problems.push(
            Problem::new("file not found")
                .at(Location::file(proto))
                .hint(hint),
        );
    }
    problems
}
