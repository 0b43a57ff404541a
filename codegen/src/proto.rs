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

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::io;
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

use crate::model::{CallKind, MethodDef, Param, SchemaSource, ServiceDef};

/// Name under which `import "plexus/options.proto";` finds the bundled options.
const OPTIONS_FILE: &str = "plexus/options.proto";
const OPTIONS_SOURCE: &str = include_str!("../../schemas/plexus/options.proto");

/// Compiles `.proto` files into Rust: prost messages plus, for every
/// `service`, a Plexus server trait, client, handler and descriptor.
///
/// Call it from `build.rs`; the output goes to `OUT_DIR`, one file per
/// package, to be included with
/// `include!(concat!(env!("OUT_DIR"), "/<package>.rs"))`.
///
/// `protos` are the files to compile and `includes` the directories imports
/// are resolved against (every proto must be under one of them).
/// `plexus/options.proto` and the Google well-known types are always
/// available to import.
///
/// # Errors
/// An `io::Error` whose message names the file, the line and the problem
/// when a schema does not parse, does not type-check, or misuses a Plexus
/// option; or the I/O error if the output cannot be written.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> io::Result<()> {
    Builder::new().compile(protos, includes)
}

/// Configures a `.proto` compilation; [`compile_protos`] with defaults is
/// `Builder::new().compile(..)`.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    cargo_directives: Option<bool>,
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

    /// Compiles `protos`, resolving imports against `includes`.
    ///
    /// # Errors
    /// See [`compile_protos`].
    pub fn compile(
        &self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> io::Result<()> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("OUT_DIR").map(PathBuf::from).ok_or_else(|| {
                io::Error::other(
                    "OUT_DIR is not set: call compile_protos from build.rs, or set Builder::out_dir",
                )
            })?,
        };
        std::fs::create_dir_all(&out_dir)?;

        let mut resolver = ChainFileResolver::new();
        for include in includes {
            resolver.add(IncludeFileResolver::new(include.as_ref().to_path_buf()));
        }
        resolver.add(BundledOptions);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        compiler
            .open_files(protos.iter().map(AsRef::as_ref))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;

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
            match ProtoContract::read(&service, &options) {
                Ok(contract) => {
                    packages_with_services.insert(service.package_name().to_owned());
                    contracts.insert(service.full_name().to_owned(), contract);
                }
                Err(mut errs) => problems.append(&mut errs),
            }
        }
        if !problems.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                problems.join("\n"),
            ));
        }

        let mut descriptor_sets = HashMap::new();
        for package in &packages_with_services {
            let path = out_dir.join(format!("{}.fds.bin", file_stem(package)));
            std::fs::write(
                &path,
                package_descriptor_set(&pool, package).encode_to_vec(),
            )?;
            let absolute = std::fs::canonicalize(&path)?;
            descriptor_sets.insert(package.clone(), absolute);
        }

        let mut fds = compiler.file_descriptor_set();
        fds.file.retain(|file| !is_bundled(file.name()));
        let generator = PlexusServices {
            contracts,
            descriptor_sets,
            errors: Rc::new(RefCell::new(Vec::new())),
        };
        let errors = Rc::clone(&generator.errors);
        prost_build::Config::new()
            .out_dir(&out_dir)
            .service_generator(Box::new(generator))
            .compile_fds(fds)?;
        let errors = errors.borrow();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(errors.join("\n")))
        }
    }
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
    fn read(service: &ServiceDescriptor, plexus: &PlexusOptions) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
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
                problems.push(format!(
                    "{}: service {}: (plexus.version) starts at 1",
                    location(&service.parent_file(), service.path()),
                    service.name()
                ));
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
                problems.push(format!(
                    "{}: service {}: a (plexus.topic) has exactly one method, `rpc Subscribe(google.protobuf.Empty) returns (stream Event)`; found {}",
                    location(&service.parent_file(), service.path()),
                    service.name(),
                    if shape.is_empty() {
                        "none".to_owned()
                    } else {
                        shape
                            .iter()
                            .map(|(n, c, s)| format!("{n}{}{}", if *c { " (client stream)" } else { "" }, if *s { " (server stream)" } else { "" }))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
            if !roles.is_empty() {
                problems.push(format!(
                    "{}: service {}: a (plexus.topic) has the roles publisher and subscriber; remove (plexus.roles)",
                    location(&service.parent_file(), service.path()),
                    service.name()
                ));
            }
        }
        let mut methods = HashMap::new();
        for method in service.methods() {
            match ProtoMethod::read(&method, plexus, &roles) {
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
    ) -> Result<Self, String> {
        let here = || {
            format!(
                "{}: rpc {}",
                location(&method.parent_file(), method.path()),
                method.name()
            )
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
                return Err(format!(
                    "{}: role \"{role}\" is not one of the service's roles; declare it with `option (plexus.roles) = \"{role}\";`",
                    here()
                ));
            }
        }
        let streams = (method.is_client_streaming(), method.is_server_streaming());
        let kind = match (oneway, streams) {
            (true, (false, false)) => {
                if method.output().full_name() != "google.protobuf.Empty" {
                    return Err(format!(
                        "{}: a (plexus.oneway) method has no reply; return google.protobuf.Empty instead of {}",
                        here(),
                        method.output().full_name()
                    ));
                }
                CallKind::OneWay
            }
            (true, _) => {
                return Err(format!(
                    "{}: a (plexus.oneway) method sends one message and cannot stream",
                    here()
                ))
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

/// `file:line` of the element at `path` in `file`'s source info.
fn location(file: &FileDescriptor, path: &[i32]) -> String {
    let line = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.span.first())
        .map(|line| format!(":{}", line + 1))
        .unwrap_or_default();
    format!("{}{line}", file.name())
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
    errors: Rc<RefCell<Vec<String>>>,
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
                name: syn::parse_str(&method.name)
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
                Err(problem) => self.errors.borrow_mut().push(problem),
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
            Err(problem) => self.errors.borrow_mut().push(problem),
        }
    }
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
