//! The `.proto` front end: `service` definitions in Protocol Buffers files
//! become the same model, and go through the same emitter, as
//! `#[plexus::service]` traits.
//!
//! `protox` parses and checks the files (no `protoc` install needed),
//! `prost-build` generates the messages, and a `ServiceGenerator` hook hands
//! each service to [`crate::emit_service`]. Plexus options
//! (`schemas/plexus/options.proto`) are read from the descriptor pool, where
//! custom options survive; `prost-types` would drop them. This module runs
//! only in build scripts and never at a program's run time.

mod error;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, ExtensionDescriptor, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    ServiceDescriptor, Value,
};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};
use quote::quote;

use crate::model::{CallKind, MethodDef, Param, SchemaSource, ServiceDef, RESERVED_METHOD_NAMES};

use self::error::Places;
pub use self::error::{Error, Location, Problem};

/// Name under which `import "plexus/options.proto";` finds the bundled options.
const OPTIONS_FILE: &str = "plexus/options.proto";
const OPTIONS_SOURCE: &str = include_str!("../../../schemas/plexus/options.proto");

/// Compiles `.proto` files into Rust: prost messages plus, for every
/// `service`, a Plexus server trait, client, handler and descriptor.
///
/// Call it from `build.rs`; the output goes to `OUT_DIR`, one file per
/// package, to be included with `plexus::include_proto!("<package>")`
/// (or `include!(concat!(env!("OUT_DIR"), "/<package>.rs"))`). For files of
/// several packages, [`Builder::include_file`] writes one file declaring the
/// whole module tree.
///
/// `protos` are the files to compile and `includes` the directories imports
/// are resolved against (every proto must be under one of them).
/// `plexus/options.proto` and the Google well-known types
/// (`google/protobuf/*.proto`) are always available to import, and usable
/// anywhere a message is: as fields, in maps, oneofs and repeated fields,
/// and as requests and replies.
///
/// The generated code names only `::plexus` (messages reach `prost` and
/// `prost-types` through it), so the crate needs `plexus` as its one
/// dependency for them and `plexus-codegen` as its build dependency.
///
/// # Errors
/// An [`Error`] listing every problem found, each with file, line, column
/// and, where one is known, a hint: a file that does not exist or is not
/// under an include directory, a syntax or type error, an import that is not
/// found, a misused Plexus option, or output that cannot be written. Its
/// `Debug` is the readable text, so return it from `main`:
///
/// ```no_run
/// // build.rs
/// fn main() -> Result<(), plexus_codegen::Error> {
///     plexus_codegen::compile_protos(&["schemas/chat.proto"], &["schemas"])
/// }
/// ```
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    Builder::new().compile(protos, includes)
}

/// Configures a `.proto` compilation; [`compile_protos`] with defaults is
/// `Builder::new().compile(..)`.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    cargo_directives: Option<bool>,
    include_file: Option<PathBuf>,
}

impl Builder {
    /// A builder writing to `OUT_DIR`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the generated files to `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Whether to print `cargo:rerun-if-changed` lines for every input file.
    /// On by default when running inside a build script (`OUT_DIR` is set).
    pub fn cargo_directives(mut self, yes: bool) -> Self {
        self.cargo_directives = Some(yes);
        self
    }

    /// Also writes `name` (relative to the output directory) declaring one
    /// nested `pub mod` per package, each including its generated file, so
    /// packages `acme.shop.v1` and `acme.billing` become `acme::shop::v1` and
    /// `acme::billing`, and the paths between them resolve:
    ///
    /// ```ignore
    /// // build.rs: Builder::new().include_file("protos.rs").compile(&protos, &["schemas"])?;
    /// mod protos {
    ///     include!(concat!(env!("OUT_DIR"), "/protos.rs"));
    /// }
    /// use protos::acme::shop::v1::CatalogClient;
    /// ```
    pub fn include_file(mut self, name: impl Into<PathBuf>) -> Self {
        self.include_file = Some(name.into());
        self
    }

    /// Compiles `protos`, resolving imports against `includes`.
    ///
    /// # Errors
    /// See [`compile_protos`].
    pub fn compile(
        &self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let protos: Vec<&Path> = protos.iter().map(AsRef::as_ref).collect();
        let includes: Vec<PathBuf> = includes.iter().map(|p| p.as_ref().to_path_buf()).collect();
        let places = Places {
            includes: &includes,
        };
        let (out_dir, out_dir_from_env) = match &self.out_dir {
            Some(dir) => (dir.clone(), false),
            None => match std::env::var_os("OUT_DIR") {
                Some(dir) => (PathBuf::from(dir), true),
                None => {
                    return Err(Error::one(
                        Problem::new("OUT_DIR is not set, so there is nowhere to write the generated code")
                            .hint("call compile_protos from build.rs, where cargo sets OUT_DIR, or give Builder::out_dir"),
                    ))
                }
            },
        };
        let mut problems = check_includes(&includes);
        problems.extend(error::check_inputs(&protos, &places));
        if !problems.is_empty() {
            return Err(Error::new(problems));
        }
        std::fs::create_dir_all(&out_dir).map_err(|e| write_failed(&out_dir, &e))?;

        let mut resolver = ChainFileResolver::new();
        for include in &includes {
            resolver.add(IncludeFileResolver::new(include.clone()));
        }
        resolver.add(BundledOptions);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        compiler
            .open_files(&protos)
            .map_err(|e| Error::new(error::from_protox(&e, &places)))?;

        let emit_directives = self
            .cargo_directives
            .unwrap_or_else(|| std::env::var_os("OUT_DIR").is_some());
        if emit_directives {
            for file in compiler.files() {
                if let Some(path) = file.path() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }

        let pool = compiler.descriptor_pool();
        let options = PlexusOptions::find(&pool);
        let mut contracts = HashMap::new();
        let mut problems = Vec::new();
        let mut packages_with_services = BTreeSet::new();
        for service in pool.services() {
            if is_bundled(service.parent_file().name()) {
                continue;
            }
            match ProtoContract::read(&service, &options, &places) {
                Ok(contract) => {
                    packages_with_services.insert(service.package_name().to_owned());
                    contracts.insert(service.full_name().to_owned(), contract);
                }
                Err(mut errs) => problems.append(&mut errs),
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(problems));
        }

        let mut descriptor_sets = HashMap::new();
        for package in &packages_with_services {
            let path = out_dir.join(format!("{}.fds.bin", file_stem(package)));
            std::fs::write(
                &path,
                package_descriptor_set(&pool, package).encode_to_vec(),
            )
            .map_err(|e| write_failed(&path, &e))?;
            let absolute = std::fs::canonicalize(&path).map_err(|e| write_failed(&path, &e))?;
            descriptor_sets.insert(package.clone(), absolute);
        }

        // prost-build gets every file, the bundled ones included: it needs
        // their messages to lay out fields of well-known types, and writes no
        // code for them (they are extern, reached through `plexus::codegen`).
        let fds = compiler.file_descriptor_set();
        let generator = PlexusServices {
            contracts,
            descriptor_sets,
            errors: Rc::new(RefCell::new(Vec::new())),
        };
        let errors = Rc::clone(&generator.errors);
        let mut config = prost_build::Config::new();
        config
            .prost_path("::plexus::codegen::prost")
            .prost_types_path("::plexus::codegen::prost_types")
            .service_generator(Box::new(generator));
        // With OUT_DIR left to prost-build, its include file names the files
        // relative to `env!("OUT_DIR")` instead of by absolute path.
        if !out_dir_from_env {
            config.out_dir(&out_dir);
        }
        if let Some(include_file) = &self.include_file {
            config.include_file(include_file);
        }
        config.compile_fds(fds).map_err(|e| {
            Error::one(Problem::new(format!(
                "prost-build could not write the generated code to {}: {e}",
                out_dir.display()
            )))
        })?;
        let errors = errors.take();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::new(errors))
        }
    }
}

fn write_failed(path: &Path, error: &std::io::Error) -> Error {
    Error::one(Problem::new(format!(
        "could not write {}: {error}",
        path.display()
    )))
}

fn check_includes(includes: &[PathBuf]) -> Vec<Problem> {
    includes
        .iter()
        .filter(|dir| !dir.is_dir())
        .map(|dir| {
            Problem::new("include directory not found")
                .at(Location::file(dir))
                .hint("check the path; relative paths are resolved from the crate's directory (the one with Cargo.toml) when run from build.rs")
        })
        .collect()
}

/// Files Plexus supplies itself; prost-build must not generate them.
fn is_bundled(name: &str) -> bool {
    name == OPTIONS_FILE || name.starts_with("google/protobuf/")
}

fn file_stem(package: &str) -> &str {
    if package.is_empty() {
        "_"
    } else {
        package
    }
}

/// Serves `plexus/options.proto` from the copy compiled into this crate.
struct BundledOptions;

impl FileResolver for BundledOptions {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_FILE {
            File::from_source(name, OPTIONS_SOURCE)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// The files of `package` plus everything they import, without source info:
/// what a peer needs to decode the package's messages by reflection.
fn package_descriptor_set(pool: &DescriptorPool, package: &str) -> prost_types::FileDescriptorSet {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<FileDescriptor> = pool
        .files()
        .filter(|f| f.package_name() == package)
        .collect();
    while let Some(file) = stack.pop() {
        if wanted.insert(file.name().to_owned()) {
            stack.extend(file.dependencies());
        }
    }
    // The pool lists files in dependency order; keep it.
    let file = pool
        .files()
        .filter(|f| wanted.contains(f.name()))
        .map(|f| {
            let mut proto = f.file_descriptor_proto().clone();
            proto.source_code_info = None;
            proto
        })
        .collect();
    prost_types::FileDescriptorSet { file }
}

/// The Plexus extensions, if the compiled files imported them.
struct PlexusOptions {
    oneway: Option<ExtensionDescriptor>,
    role: Option<ExtensionDescriptor>,
    idempotent: Option<ExtensionDescriptor>,
    roles: Option<ExtensionDescriptor>,
    version: Option<ExtensionDescriptor>,
    topic: Option<ExtensionDescriptor>,
}

impl PlexusOptions {
    fn find(pool: &DescriptorPool) -> Self {
        PlexusOptions {
            oneway: pool.get_extension_by_name("plexus.oneway"),
            role: pool.get_extension_by_name("plexus.role"),
            idempotent: pool.get_extension_by_name("plexus.idempotent"),
            roles: pool.get_extension_by_name("plexus.roles"),
            version: pool.get_extension_by_name("plexus.version"),
            topic: pool.get_extension_by_name("plexus.topic"),
        }
    }
}

fn extension<'a>(
    options: &'a prost_reflect::DynamicMessage,
    ext: &Option<ExtensionDescriptor>,
) -> Option<std::borrow::Cow<'a, Value>> {
    let ext = ext.as_ref()?;
    options
        .has_extension(ext)
        .then(|| options.get_extension(ext))
}

/// What the descriptor pool says about one service, before prost-build
/// tells us the Rust names of its message types.
struct ProtoContract {
    package: String,
    name: String,
    version: u32,
    roles: Vec<String>,
    methods: HashMap<String, ProtoMethod>,
    /// Marked `(plexus.topic)`: generated as a topic, not a service.
    topic: bool,
}

struct ProtoMethod {
    kind: CallKind,
    role: Option<String>,
    idempotent: bool,
    request_schema: String,
    reply_schema: String,
    empty_request: bool,
}

impl ProtoContract {
    fn read(
        service: &ServiceDescriptor,
        plexus: &PlexusOptions,
        places: &Places<'_>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let here = |message: String| {
            Problem::new(format!("service {}: {message}", service.name())).at(location(
                &service.parent_file(),
                service.path(),
                places,
            ))
        };
        let options = service.options();
        let roles: Vec<String> = extension(&options, &plexus.roles)
            .and_then(|v| {
                v.as_list().map(|l| {
                    l.iter()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        let version = match extension(&options, &plexus.version).and_then(|v| v.as_u32()) {
            None => 1,
            Some(0) => {
                problems.push(
                    here("(plexus.version) starts at 1".to_owned())
                        .hint("write `option (plexus.version) = 1;`, or leave it out for 1"),
                );
                1
            }
            Some(v) => v,
        };
        let topic = extension(&options, &plexus.topic)
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if topic {
            let shape: Vec<_> = service
                .methods()
                .map(|m| {
                    (
                        m.name().to_owned(),
                        m.is_client_streaming(),
                        m.is_server_streaming(),
                    )
                })
                .collect();
            let fits = matches!(shape.as_slice(), [(name, false, true)] if name == "Subscribe");
            if !fits {
                let found = if shape.is_empty() {
                    "none".to_owned()
                } else {
                    shape
                        .iter()
                        .map(|(n, c, s)| {
                            format!(
                                "{n}{}{}",
                                if *c { " (client stream)" } else { "" },
                                if *s { " (server stream)" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                problems.push(
                    here(format!("a (plexus.topic) has exactly one method; found {found}"))
                        .hint("declare it as `rpc Subscribe(google.protobuf.Empty) returns (stream Event);`, where Event is the topic's message"),
                );
            }
            if !roles.is_empty() {
                problems.push(
                    here("a (plexus.topic) has the roles publisher and subscriber".to_owned())
                        .hint("remove the (plexus.roles) options"),
                );
            }
        }
        let mut methods = HashMap::new();
        for method in service.methods() {
            match ProtoMethod::read(&method, plexus, &roles, places) {
                Ok(m) => {
                    methods.insert(method.name().to_owned(), m);
                }
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(ProtoContract {
                package: service.package_name().to_owned(),
                name: service.name().to_owned(),
                version,
                roles,
                methods,
                topic,
            })
        } else {
            Err(problems)
        }
    }
}

impl ProtoMethod {
    fn read(
        method: &MethodDescriptor,
        plexus: &PlexusOptions,
        roles: &[String],
        places: &Places<'_>,
    ) -> Result<Self, Problem> {
        let here = |message: String| {
            Problem::new(format!("rpc {}: {message}", method.name())).at(location(
                &method.parent_file(),
                method.path(),
                places,
            ))
        };
        let options = method.options();
        let oneway = extension(&options, &plexus.oneway)
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let idempotent = extension(&options, &plexus.idempotent)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
            // The standard option: NO_SIDE_EFFECTS = 1, IDEMPOTENT = 2.
            || matches!(
                options.get_field_by_name("idempotency_level").as_deref(),
                Some(Value::EnumNumber(1 | 2))
            );
        let role = extension(&options, &plexus.role).and_then(|v| v.as_str().map(str::to_owned));
        if let Some(role) = &role {
            if !roles.contains(role) {
                let declared = if roles.is_empty() {
                    "the service declares no roles".to_owned()
                } else {
                    format!(
                        "the service's roles are {}",
                        roles
                            .iter()
                            .map(|r| format!("\"{r}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(here(format!(
                    "role \"{role}\" is not one of the service's roles ({declared})"
                ))
                .hint(format!(
                    "declare it in the service with `option (plexus.roles) = \"{role}\";`"
                )));
            }
        }
        let streams = (method.is_client_streaming(), method.is_server_streaming());
        let kind = match (oneway, streams) {
            (true, (false, false)) => {
                if method.output().full_name() != "google.protobuf.Empty" {
                    return Err(here(format!(
                        "a (plexus.oneway) method has no reply, but this one returns {}",
                        method.output().full_name()
                    ))
                    .hint(
                        "return google.protobuf.Empty, or drop (plexus.oneway) for an acked call",
                    ));
                }
                CallKind::OneWay
            }
            (true, _) => {
                return Err(here(
                    "a (plexus.oneway) method sends one message and cannot stream".to_owned(),
                )
                .hint("drop `stream`, or drop (plexus.oneway) for a streaming call"))
            }
            (false, (false, false)) => CallKind::Unary,
            (false, (true, false)) => CallKind::ClientStream,
            (false, (false, true)) => CallKind::ServerStream,
            (false, (true, true)) => CallKind::Bidi,
        };
        Ok(ProtoMethod {
            kind,
            role,
            idempotent,
            request_schema: message_shape(&method.input()),
            reply_schema: message_shape(&method.output()),
            empty_request: method.input().full_name() == "google.protobuf.Empty",
        })
    }
}

/// Where the element at `path` in `file` starts, from the file's source info.
fn location(file: &FileDescriptor, path: &[i32], places: &Places<'_>) -> Location {
    let span = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .map(|l| l.span.clone())
        .unwrap_or_default();
    let from_zero = |n: Option<&i32>| n.and_then(|n| u32::try_from(*n).ok()).map(|n| n + 1);
    Location {
        file: places.path_of(file.name()),
        line: from_zero(span.first()),
        column: from_zero(span.get(1)),
    }
}

/// A canonical text of a message's structure (names, numbers and types of
/// every field, recursively), so the fingerprint changes when a message does.
fn message_shape(message: &MessageDescriptor) -> String {
    let mut text = String::new();
    let mut seen = BTreeSet::new();
    write_shape(message, &mut text, &mut seen);
    text
}

fn write_shape(message: &MessageDescriptor, text: &mut String, seen: &mut BTreeSet<String>) {
    text.push_str(message.full_name());
    if !seen.insert(message.full_name().to_owned()) {
        return;
    }
    text.push('{');
    let mut nested = Vec::new();
    for field in message.fields() {
        let kind = match field.kind() {
            Kind::Message(m) => {
                let name = m.full_name().to_owned();
                nested.push(m);
                name
            }
            Kind::Enum(e) => e.full_name().to_owned(),
            other => format!("{other:?}").to_lowercase(),
        };
        let cardinality = if field.is_list() {
            "repeated "
        } else if field.is_map() {
            "map "
        } else {
            ""
        };
        text.push_str(&format!(
            "{}={}:{cardinality}{kind};",
            field.name(),
            field.number()
        ));
    }
    text.push('}');
    for m in nested {
        text.push(' ');
        write_shape(&m, text, seen);
    }
}

/// prost-build's hook: called once per service with the Rust names of its types.
struct PlexusServices {
    contracts: HashMap<String, ProtoContract>,
    descriptor_sets: HashMap<String, PathBuf>,
    errors: Rc<RefCell<Vec<Problem>>>,
}

/// The Rust name of an operation: prost-build's snake_case name, with `_`
/// appended when a generated client or fanout already has a method of that
/// name (`rpc Connect` becomes `connect_`, beside `XClient::connect`).
fn method_ident(rust_name: &str) -> Result<syn::Ident, syn::Error> {
    if RESERVED_METHOD_NAMES.contains(&rust_name) {
        Ok(syn::Ident::new(
            &format!("{rust_name}_"),
            proc_macro2::Span::call_site(),
        ))
    } else {
        syn::parse_str(rust_name)
    }
}

impl PlexusServices {
    fn lower(&self, service: &prost_build::Service) -> Result<ServiceDef, String> {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let contract = self
            .contracts
            .get(&full_name)
            .ok_or_else(|| format!("service {full_name} is missing from the descriptor pool"))?;
        let mut methods = Vec::new();
        for method in &service.methods {
            let proto = contract.methods.get(&method.proto_name).ok_or_else(|| {
                format!(
                    "{full_name}/{} is missing from the descriptor pool",
                    method.proto_name
                )
            })?;
            let input = parse_type(&method.input_type)?;
            let params = if proto.empty_request && !proto.kind.streams_requests() {
                Vec::new()
            } else {
                let name = if proto.kind.streams_requests() {
                    "requests"
                } else {
                    "request"
                };
                vec![Param {
                    name: syn::Ident::new(name, proc_macro2::Span::call_site()),
                    ty: input,
                }]
            };
            methods.push(MethodDef {
                name: method_ident(&method.name)
                    .map_err(|e| format!("{full_name}/{}: {e}", method.proto_name))?,
                schema_name: method.proto_name.clone(),
                kind: proto.kind,
                takes_context: true,
                params,
                reply: parse_type(&method.output_type)?,
                fallible_items: proto.kind.streams_replies(),
                role: proto.role.clone(),
                idempotent: proto.idempotent,
                docs: comment_lines(&method.comments),
                attrs: Vec::new(),
                request_schema: proto.request_schema.clone(),
                reply_schema: proto.reply_schema.clone(),
                declared: None,
            });
        }
        let descriptor_set = match self.descriptor_sets.get(&contract.package) {
            Some(path) => {
                let path = path.display().to_string();
                quote!(::core::include_bytes!(#path))
            }
            None => quote!(&[]),
        };
        Ok(ServiceDef {
            package: contract.package.clone(),
            name: contract.name.clone(),
            ident: syn::parse_str(&service.name)
                .map_err(|e| format!("service {full_name}: {e}"))?,
            version: contract.version,
            docs: comment_lines(&service.comments),
            roles: contract.roles.clone(),
            methods,
            codec: syn::parse_quote!(::plexus::codec::Prost),
            vis: syn::parse_quote!(pub),
            attrs: Vec::new(),
            source: SchemaSource::Proto { descriptor_set },
            span: proc_macro2::Span::call_site(),
        })
    }
}

impl PlexusServices {
    /// For a service marked `(plexus.topic)`: the `plexus::topic!`
    /// invocation declaring it, with its one method's reply as the event.
    fn topic(&self, service: &prost_build::Service) -> Option<Result<String, String>> {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let contract = self.contracts.get(&full_name).filter(|c| c.topic)?;
        Some((|| {
            let method = service
                .methods
                .first()
                .ok_or_else(|| format!("topic {full_name} has no method"))?;
            let event = parse_type(&method.output_type)?;
            let name = syn::Ident::new(&service.name, proc_macro2::Span::call_site());
            let package = &contract.package;
            let docs = comment_lines(&service.comments);
            let tokens = quote! {
                ::plexus::topic! {
                    #(#[doc = #docs])*
                    pub struct #name in #package => #event, codec = ::plexus::codec::Prost;
                }
            };
            Ok(format!("{tokens}\n"))
        })())
    }
}

impl prost_build::ServiceGenerator for PlexusServices {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        if let Some(code) = self.topic(&service) {
            match code {
                Ok(code) => buf.push_str(&code),
                Err(problem) => self.errors.borrow_mut().push(internal(problem)),
            }
            return;
        }
        let generated = self.lower(&service).and_then(|def| {
            let tokens = crate::emit_service(&def);
            syn::parse2::<syn::File>(tokens)
                .map(|file| prettyplease::unparse(&file))
                .map_err(|e| format!("generated code for {} does not parse: {e}", def.full_name()))
        });
        match generated {
            Ok(code) => buf.push_str(&code),
            Err(problem) => self.errors.borrow_mut().push(internal(problem)),
        }
    }
}

/// A failure of the generator itself rather than of the schema.
fn internal(message: String) -> Problem {
    Problem::new(message)
        .hint("this is a bug in plexus-codegen; please report it with the .proto file")
}

fn parse_type(rust: &str) -> Result<syn::Type, String> {
    syn::parse_str(rust).map_err(|e| format!("prost-build type `{rust}`: {e}"))
}

fn comment_lines(comments: &prost_build::Comments) -> Vec<String> {
    comments
        .leading
        .iter()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_owned())
        .collect()
}
