//! Lowering the AST into a [`PipelineSpec`], following includes, and mapping
//! the engine's findings back to the source.
//!
//! While lowering, every spec [`Site`] gets a [`SiteLoc`]: where its block's
//! type name, each parameter's key and value, and each tag pattern literal are
//! written. The engine reports problems as `(Site, Focus)`; the side table
//! turns them into spans. The engine's checks are not repeated here.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ulog_engine::params::{PluginKind, Value as EValue};
use ulog_engine::pattern::PatternSet;
use ulog_engine::registry::Registry;
use ulog_engine::router::MatchTable;
use ulog_engine::runtime::BuildOptions;
use ulog_engine::spec::{
    FilterSpec, FlowSpec, Focus, LabelSpec, MatchSpec, NodeSpec, PipelineSpec, Severity, Site,
    SpecError,
};
use ulog_engine::Pipeline;

use crate::ast::{Block, Entry, Include, Item, Label, Route, StrLit};
use crate::diag::Diagnostic;
use crate::source::{SourceFile, Span};
use crate::{parser, Compiled, Options};

/// Stands in for a tag pattern whose `${VAR}` failed, so that pattern indexes
/// stay aligned; errors about it are not reported (the env error is).
const PLACEHOLDER_PATTERN: &str = "ulog-lang-unresolved-pattern";

/// Where the parts of one spec site are written.
#[derive(Default)]
struct SiteLoc {
    /// The block's type name (a label's name; a match block's header).
    block: Option<Span>,
    /// `(name, key span, value)` of each parameter, in order.
    params: Vec<(String, Span, crate::ast::Value)>,
    /// The tag pattern literals of a filter or match.
    patterns: Vec<StrLit>,
    /// Parameters left out of the spec because their value had an error.
    invalid_params: Vec<String>,
    /// Patterns replaced by a placeholder because interpolation failed.
    invalid_patterns: Vec<usize>,
}

/// Where lowered items go.
#[derive(Clone)]
enum Ctx {
    Root,
    Label {
        index: usize,
        name: String,
        at: Span,
    },
}

struct Lowerer<'a> {
    options: &'a Options,
    diags: Vec<Diagnostic>,
    spec: PipelineSpec,
    sites: HashMap<Site, SiteLoc>,
    /// Every file read, in order (sorts diagnostics).
    files: Vec<Arc<SourceFile>>,
    /// The include chain: canonical path and display name of each open file.
    stack: Vec<(PathBuf, String)>,
    /// A file could not be parsed: the spec is incomplete.
    syntax_failed: bool,
}

pub(crate) fn compile_file(
    path: &Path,
    registry: &Registry,
    options: &Options,
) -> Result<Compiled, Vec<Diagnostic>> {
    let name = normalize(path).display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Diagnostic::error(
                "E-io",
                None,
                format!("cannot read the routes file `{name}`: {e}"),
            )])
        }
    };
    let file = Arc::new(SourceFile::new(name, Some(path.to_path_buf()), text));
    let dir = parent_dir(path);
    let base_dir = absolute(&dir);
    compile_source(file, &dir, base_dir, registry, options)
}

/// `dir` is where includes are looked for (as the user wrote it, so names in
/// diagnostics stay relative); `base_dir` goes to the engine.
pub(crate) fn compile_source(
    file: Arc<SourceFile>,
    dir: &Path,
    base_dir: PathBuf,
    registry: &Registry,
    options: &Options,
) -> Result<Compiled, Vec<Diagnostic>> {
    let mut l = Lowerer {
        options,
        diags: Vec::new(),
        spec: PipelineSpec::default(),
        sites: HashMap::new(),
        files: Vec::new(),
        stack: Vec::new(),
        syntax_failed: false,
    };
    if let Some(path) = file.path() {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        l.stack.push((canon, file.name().to_string()));
    }
    l.lower_file(file, dir, &Ctx::Root);

    let mut diags = std::mem::take(&mut l.diags);
    if l.syntax_failed {
        // Part of the configuration is missing; the engine's findings about
        // the rest would be misleading (unknown labels defined in the broken
        // file, ...). Fix the syntax first.
        return Err(l.sorted(diags));
    }
    let build = Pipeline::build_with_ids(
        &l.spec,
        registry,
        BuildOptions {
            base_dir: base_dir.clone(),
            shutdown_timeout: options.shutdown_timeout,
        },
    );
    let shadows = shadowed(&l.spec);
    match build {
        Ok((pipeline, ids)) => {
            let warnings: Vec<Diagnostic> = pipeline
                .warnings()
                .iter()
                .filter_map(|w| l.map_spec_error(w, &shadows, &mut HashMap::new()))
                .collect();
            if diags.iter().any(Diagnostic::is_error) {
                diags.extend(warnings);
                return Err(l.sorted(diags));
            }
            Ok(Compiled {
                spec: l.spec,
                pipeline,
                ids,
                warnings,
                base_dir,
            })
        }
        Err(errors) => {
            // The engine drops its warnings when it fails; compute the same
            // shadowed-match findings from its own router.
            let warnings = shadow_warnings(&l.spec, &shadows);
            let mut seen = HashMap::new();
            for e in errors.iter().chain(&warnings) {
                if let Some(d) = l.map_spec_error(e, &shadows, &mut seen) {
                    diags.push(d);
                }
            }
            Err(l.sorted(diags))
        }
    }
}

impl Lowerer<'_> {
    fn sorted(&self, mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
        let key = |d: &Diagnostic| match &d.primary {
            Some(s) => (
                self.files
                    .iter()
                    .position(|f| Arc::ptr_eq(f, &s.file))
                    .unwrap_or(usize::MAX - 1),
                s.start,
            ),
            None => (usize::MAX, 0),
        };
        diags.sort_by_key(key);
        diags
    }

    /// Parses `file` and lowers its items; `dir` is its directory.
    fn lower_file(&mut self, file: Arc<SourceFile>, dir: &Path, ctx: &Ctx) {
        self.files.push(file.clone());
        match parser::parse(&file, &*self.options.env, &mut self.diags) {
            Some(ast) => self.lower_items(&ast.items, dir, ctx),
            None => self.syntax_failed = true,
        }
    }

    fn lower_items(&mut self, items: &[Item], dir: &Path, ctx: &Ctx) {
        for item in items {
            match item {
                Item::Include(inc) => self.include(inc, dir, ctx),
                Item::Input(block) => match ctx {
                    Ctx::Root => self.input(block),
                    Ctx::Label { name, at, .. } => self.diags.push(
                        Diagnostic::error(
                            "E-label",
                            Some(block.type_name.span.clone()),
                            format!("an `input` cannot be inside a label (here: label `{name}`)"),
                        )
                        .note(format!(
                            "write the input at the top level with `label = \"{name}\"` to send its events to this label"
                        ))
                        .note(format!("the label starts at {}", at.location())),
                    ),
                },
                Item::Filter(route) => self.filter(route, ctx),
                Item::Match(route) => self.route_match(route, ctx),
                Item::Label(label) => match ctx {
                    Ctx::Root => self.label(label, dir),
                    Ctx::Label { name, at, .. } => self.diags.push(
                        Diagnostic::error(
                            "E-label",
                            Some(label.keyword.clone()),
                            format!("labels cannot be nested (this is inside label `{name}`)"),
                        )
                        .note(format!("the enclosing label starts at {}", at.location())),
                    ),
                },
            }
        }
    }

    fn label(&mut self, label: &Label, dir: &Path) {
        if label.name.complete && label.name.value.is_empty() {
            self.diags.push(Diagnostic::error(
                "E-label",
                Some(label.name.span.clone()),
                "a label needs a name",
            ));
        }
        let index = self.spec.labels.len();
        self.spec.labels.push(LabelSpec {
            name: label.name.value.clone(),
            flow: FlowSpec::default(),
        });
        self.sites.insert(
            Site::Label(index),
            SiteLoc {
                block: Some(label.name.span.clone()),
                ..Default::default()
            },
        );
        let ctx = Ctx::Label {
            index,
            name: label.name.value.clone(),
            at: label.keyword.to(&label.name.span),
        };
        self.lower_items(&label.items, dir, &ctx);
    }

    fn flow(&mut self, ctx: &Ctx) -> (&mut FlowSpec, Option<usize>) {
        match ctx {
            Ctx::Root => (&mut self.spec.root, None),
            Ctx::Label { index, .. } => (&mut self.spec.labels[*index].flow, Some(*index)),
        }
    }

    /// Lowers one plugin block's parameters; nested blocks are an error here.
    fn node(&mut self, block: &Block) -> (NodeSpec, SiteLoc) {
        let mut node = NodeSpec::new(block.type_name.value.clone());
        let mut loc = SiteLoc {
            block: Some(block.type_name.span.clone()),
            ..Default::default()
        };
        for entry in &block.entries {
            match entry {
                Entry::Param(p) => {
                    let value = p.value.to_engine().filter(|_| p.key.complete);
                    match value {
                        Some(v) => {
                            node.params.push((p.key.value.clone(), v));
                            loc.params.push((
                                p.key.value.clone(),
                                p.key.span.clone(),
                                p.value.clone(),
                            ));
                        }
                        None => loc.invalid_params.push(p.key.value.clone()),
                    }
                }
                Entry::Block(nested) => self.diags.push(
                    Diagnostic::error(
                        "E-copy",
                        Some(nested.type_name.span.clone()),
                        format!(
                            "a nested block is only allowed inside `copy`, and `{}` is not `copy`",
                            block.type_name.value
                        ),
                    )
                    .note("to send events to several outputs, write `match \"<pattern>\" copy { file { ... } stdout { } }`"),
                ),
            }
        }
        (node, loc)
    }

    fn patterns(&mut self, route: &Route, loc: &mut SiteLoc) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in route.patterns.iter().enumerate() {
            if p.complete {
                out.push(p.value.clone());
            } else {
                out.push(PLACEHOLDER_PATTERN.to_string());
                loc.invalid_patterns.push(i);
            }
            loc.patterns.push(p.clone());
        }
        out
    }

    fn input(&mut self, block: &Block) {
        let (node, loc) = self.node(block);
        self.sites.insert(Site::Input(self.spec.inputs.len()), loc);
        self.spec.inputs.push(node);
    }

    fn filter(&mut self, route: &Route, ctx: &Ctx) {
        if route.block.type_name.value == "copy" {
            self.diags.push(
                Diagnostic::error(
                    "E-copy",
                    Some(route.block.type_name.span.clone()),
                    "`copy` sends events to several outputs, so it belongs in a `match` block, not a `filter`",
                )
            );
            return;
        }
        let (node, mut loc) = self.node(&route.block);
        let patterns = self.patterns(route, &mut loc);
        let (flow, label) = self.flow(ctx);
        let index = flow.filters.len();
        flow.filters.push(FilterSpec { patterns, node });
        self.sites.insert(Site::Filter { label, index }, loc);
    }

    fn route_match(&mut self, route: &Route, ctx: &Ctx) {
        let header = route
            .keyword
            .to(route.patterns.last().map_or(&route.keyword, |p| &p.span));
        let mut match_loc = SiteLoc {
            block: Some(header),
            ..Default::default()
        };
        let patterns = self.patterns(route, &mut match_loc);
        let block = &route.block;
        let mut outputs = Vec::new();
        if block.type_name.value == "copy" {
            for entry in &block.entries {
                match entry {
                    Entry::Param(p) => self.diags.push(
                        Diagnostic::error(
                            "E-copy",
                            Some(p.key.span.clone()),
                            format!(
                                "`copy` takes output blocks, not parameters: found `{} = ...`",
                                p.key.value
                            ),
                        )
                        .note("write each output as `<type> { ... }` inside `copy`, e.g. `copy { file { path = \"x\" } stdout { } }`"),
                    ),
                    Entry::Block(b) if b.type_name.value == "copy" => self.diags.push(
                        Diagnostic::error(
                            "E-copy",
                            Some(b.type_name.span.clone()),
                            "`copy` cannot be nested in `copy`; list all outputs in one `copy`",
                        ),
                    ),
                    Entry::Block(b) => outputs.push(self.node(b)),
                }
            }
            if block.blocks().next().is_none() {
                self.diags.push(
                    Diagnostic::error(
                        "E-copy",
                        Some(block.type_name.span.clone()),
                        "`copy` needs at least one output block",
                    )
                    .note("e.g. `copy { file { path = \"out/x.jsonl\" } stdout { } }`"),
                );
            }
            if outputs.is_empty() {
                return;
            }
        } else {
            outputs.push(self.node(block));
        }
        let (flow, label) = self.flow(ctx);
        let index = flow.matches.len();
        let (nodes, locs): (Vec<_>, Vec<_>) = outputs.into_iter().unzip();
        flow.matches.push(MatchSpec {
            patterns,
            outputs: nodes,
        });
        self.sites.insert(Site::Match { label, index }, match_loc);
        for (output, loc) in locs.into_iter().enumerate() {
            self.sites.insert(
                Site::Output {
                    label,
                    index,
                    output,
                },
                loc,
            );
        }
    }

    fn include(&mut self, inc: &Include, dir: &Path, ctx: &Ctx) {
        if !inc.path.complete {
            return;
        }
        let pattern = inc.path.value.as_str();
        let err = |msg: String| Diagnostic::error("E-include", Some(inc.path.span.clone()), msg);
        if pattern.is_empty() {
            self.diags
                .push(err("an include needs a file name or glob".into()));
            return;
        }
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            dir.join(pattern)
        };
        let mut paths = Vec::new();
        if pattern.contains(['*', '?', '[']) {
            let glob_text = if Path::new(pattern).is_absolute() {
                pattern.to_string()
            } else {
                let d = glob::Pattern::escape(&dir.to_string_lossy());
                if d.is_empty() {
                    pattern.to_string()
                } else {
                    format!("{}/{pattern}", d.trim_end_matches('/'))
                }
            };
            let opts = glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: true,
                require_literal_leading_dot: true,
            };
            match glob::glob_with(&glob_text, opts) {
                Ok(found) => {
                    for entry in found {
                        match entry {
                            Ok(p) if p.is_file() => paths.push(p),
                            Ok(_) => {}
                            Err(e) => self.diags.push(err(format!(
                                "cannot read `{}` while expanding the include: {}",
                                e.path().display(),
                                e.error()
                            ))),
                        }
                    }
                }
                Err(e) => {
                    // Point at the offending character of the glob when it is
                    // in the part the user wrote.
                    // `pos` counts characters.
                    let byte = glob_text
                        .char_indices()
                        .nth(e.pos)
                        .map_or(glob_text.len(), |(b, _)| b);
                    let offset = byte.checked_sub(glob_text.len() - pattern.len());
                    let span = offset.map_or(inc.path.span.clone(), |o| inc.path.span_at(o));
                    self.diags.push(Diagnostic::error(
                        "E-include",
                        Some(span),
                        format!("invalid include glob: {}", e.msg),
                    ));
                    return;
                }
            }
            paths.sort();
        } else if full.is_dir() {
            self.diags.push(
                err(format!("`{}` is a directory", normalize(&full).display())).note(format!(
                    "to include the files in it, write \"{}/*.conf\"",
                    pattern.trim_end_matches('/')
                )),
            );
            return;
        } else if !full.exists() {
            self.diags.push(
                err(format!(
                    "included file `{}` not found",
                    normalize(&full).display()
                ))
                .note(format!(
                    "includes are relative to the including file's directory ({})",
                    display_dir(dir)
                )),
            );
            return;
        } else {
            paths.push(full);
        }
        for path in paths {
            let display = normalize(&path).display().to_string();
            let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if let Some(pos) = self.stack.iter().position(|(c, _)| *c == canon) {
                let chain: Vec<&str> = self.stack[pos..]
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .chain(std::iter::once(display.as_str()))
                    .collect();
                self.diags.push(
                    err(format!("include cycle: {}", chain.join(" → ")))
                        .note("a file may not include itself, directly or through other files"),
                );
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.diags
                        .push(err(format!("cannot read included file `{display}`: {e}")));
                    continue;
                }
            };
            let file = Arc::new(SourceFile::new(display.clone(), Some(path.clone()), text));
            self.stack.push((canon, display));
            let sub_dir = parent_dir(&path);
            self.lower_file(file, &sub_dir, ctx);
            self.stack.pop();
        }
    }

    /// Turns an engine finding into a diagnostic at its source span; `None`
    /// for findings caused by an error already reported (a value that could
    /// not be read and was left out).
    ///
    /// `seen` counts findings per site and parameter, so that a parameter
    /// written twice and reported twice points at each place in turn.
    fn map_spec_error(
        &self,
        e: &SpecError,
        shadows: &Shadows,
        seen: &mut HashMap<(Site, String), usize>,
    ) -> Option<Diagnostic> {
        let code = classify(e);
        let loc = self.sites.get(&e.site);
        if code == "W-shadowed" && loc.is_some_and(|l| !l.invalid_patterns.is_empty()) {
            // A pattern could not be interpolated: whether it is shadowed is
            // unknown.
            return None;
        }
        let block_span = loc.and_then(|l| l.block.clone());
        let mut notes = e.notes.clone();
        let primary = match (&e.focus, loc) {
            (Focus::Block, Some(loc)) => {
                for name in &loc.invalid_params {
                    if e.message
                        .starts_with(&format!("missing required parameter `{name}`"))
                    {
                        return None;
                    }
                }
                block_span
            }
            (Focus::Param(name), Some(loc)) => {
                if loc.invalid_params.contains(name) {
                    return None;
                }
                let given: Vec<_> = loc.params.iter().filter(|(n, _, _)| n == name).collect();
                let found = match code {
                    "E-unknown-param" => {
                        let n = seen.entry((e.site, name.clone())).or_insert(0);
                        *n += 1;
                        given.get(*n - 1).or(given.last()).map(|p| p.1.clone())
                    }
                    "E-duplicate-param" => given.last().map(|p| p.1.clone()),
                    _ => given.first().map(|p| p.2.span.clone()),
                };
                found.or(block_span)
            }
            (
                Focus::Value {
                    param,
                    path,
                    offset,
                    len,
                },
                Some(loc),
            ) => {
                if loc.invalid_params.contains(param) {
                    return None;
                }
                match loc.params.iter().find(|(n, _, _)| n == param) {
                    Some((_, _, value)) => match value.find(path) {
                        Some(crate::ast::Value {
                            kind: crate::ast::ValueKind::Str(lit),
                            ..
                        }) => {
                            let first = lit.span_at(*offset);
                            let last = lit.span_at(offset + len.saturating_sub(1));
                            Some(if last.start >= first.start {
                                first.to(&last)
                            } else {
                                first
                            })
                        }
                        Some(inner) => Some(inner.span.clone()),
                        None => Some(value.span.clone()),
                    },
                    None => block_span,
                }
            }
            (Focus::Pattern { index, offset }, Some(loc)) => {
                if loc.invalid_patterns.contains(index) {
                    return None;
                }
                match loc.patterns.get(*index) {
                    Some(lit) => Some(lit.span_at(*offset)),
                    None => block_span,
                }
            }
            (_, None) => None,
        };
        let mut primary = primary;
        // The engine names the first use of a duplicate id by its site; say
        // where that is in the file instead.
        for note in &mut notes {
            if let Some(site) = note.strip_prefix("first used at ") {
                let here = self
                    .sites
                    .iter()
                    .find(|(s, _)| format!("{s:?}") == site)
                    .and_then(|(_, l)| {
                        l.params
                            .iter()
                            .find(|p| p.0 == "id")
                            .map(|p| p.2.span.clone())
                            .or_else(|| l.block.clone())
                    });
                if let Some(span) = here {
                    *note = format!("first used at {}", span.location());
                }
            }
        }
        if code == "W-shadowed" {
            if let Site::Match { label, index } = e.site {
                if let Some(by) = shadows.get(&(label, index)) {
                    if let Some(s) = self
                        .sites
                        .get(&Site::Match { label, index: *by })
                        .and_then(|l| l.block.as_ref())
                    {
                        notes.push(format!("the earlier block is at {}", s.location()));
                    }
                }
            }
        }
        if let (Site::Label(i), true) = (e.site, e.message.contains("defined twice")) {
            let name = &self.spec.labels[i].name;
            let first = self.spec.labels[..i].iter().position(|l| &l.name == name);
            if let Some(span) = first
                .and_then(|j| self.sites.get(&Site::Label(j)))
                .and_then(|l| l.block.as_ref())
            {
                notes.push(format!("first defined at {}", span.location()));
            }
        }
        if code == "E-cycle" && primary.is_none() {
            let (span, extra) = self.locate_cycle(&e.message);
            primary = span;
            notes.extend(extra);
        }
        Some(Diagnostic {
            severity: e.severity,
            code,
            message: e.message.clone(),
            primary,
            notes,
        })
    }

    /// Finds the nodes named in the engine's "events could loop forever: a →
    /// b → a" by recomputing the ids the engine gives (explicit `id`, else
    /// `<type>#<n>` per kind and type in build order).
    fn locate_cycle(&self, message: &str) -> (Option<Span>, Vec<String>) {
        let ids = node_ids(&self.spec);
        let Some((_, chain)) = message.split_once(": ") else {
            return (None, Vec::new());
        };
        let mut first = None;
        let mut steps = Vec::new();
        for id in chain.split(" → ") {
            let span = ids
                .get(id)
                .and_then(|site| self.sites.get(site))
                .and_then(|l| l.block.clone());
            match &span {
                Some(s) => steps.push(format!("`{id}` ({})", s.location())),
                None => steps.push(format!("`{id}`")),
            }
            if first.is_none() {
                first = span;
            }
        }
        (
            first,
            vec![
                format!("the loop: {}", steps.join(" → ")),
                "a `relabel` (or a rejected event) must not lead back to a label it came from"
                    .into(),
            ],
        )
    }
}

/// `(label, shadowed match index)` → the index of the match that shadows it.
type Shadows = HashMap<(Option<usize>, usize), usize>;

fn flows(spec: &PipelineSpec) -> impl Iterator<Item = (Option<usize>, &FlowSpec)> {
    std::iter::once((None, &spec.root)).chain(
        spec.labels
            .iter()
            .enumerate()
            .map(|(i, l)| (Some(i), &l.flow)),
    )
}

fn match_table(flow: &FlowSpec) -> MatchTable {
    MatchTable::new(
        flow.matches
            .iter()
            .map(|m| PatternSet::parse(&m.patterns).unwrap_or_default())
            .collect(),
    )
}

/// Which match blocks the engine's router says can never match. Blocks with
/// a malformed pattern are left out: they already have an error, and as an
/// empty set they would look shadowed by anything.
fn shadowed(spec: &PipelineSpec) -> Shadows {
    let mut out = HashMap::new();
    for (label, flow) in flows(spec) {
        for (shadowed, by) in match_table(flow).shadowed() {
            if PatternSet::parse(&flow.matches[shadowed].patterns).is_ok() {
                out.insert((label, shadowed), by);
            }
        }
    }
    out
}

/// The engine's shadowed-match warnings, for when its build failed and it
/// returned only errors.
fn shadow_warnings(spec: &PipelineSpec, shadows: &Shadows) -> Vec<SpecError> {
    let mut out = Vec::new();
    for (label, flow) in flows(spec) {
        let table = match_table(flow);
        for index in 0..flow.matches.len() {
            if let Some(by) = shadows.get(&(label, index)) {
                out.push(SpecError {
                    severity: Severity::Warning,
                    code: "W-shadowed",
                    site: Site::Match { label, index },
                    focus: Focus::Block,
                    message: format!(
                        "this match block never receives events: the earlier block with {} catches every tag it would",
                        table.sets()[*by]
                    ),
                    notes: vec![
                        "match blocks are tried in file order and the first that matches wins"
                            .into(),
                    ],
                });
            }
        }
    }
    out
}

/// The ids the engine gives nodes: explicit `id`, else `<type>#<n>` counted
/// per type name (across kinds), inputs first, then each flow's filters and outputs.
fn node_ids(spec: &PipelineSpec) -> HashMap<String, Site> {
    let mut ids = HashMap::new();
    let mut counters: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<(Site, PluginKind, &NodeSpec)> = Vec::new();
    for (i, n) in spec.inputs.iter().enumerate() {
        order.push((Site::Input(i), PluginKind::Input, n));
    }
    for (label, flow) in flows(spec) {
        for (index, f) in flow.filters.iter().enumerate() {
            order.push((Site::Filter { label, index }, PluginKind::Filter, &f.node));
        }
        for (index, m) in flow.matches.iter().enumerate() {
            for (output, n) in m.outputs.iter().enumerate() {
                let site = Site::Output {
                    label,
                    index,
                    output,
                };
                order.push((site, PluginKind::Output, n));
            }
        }
    }
    for (site, _kind, node) in order {
        let explicit = node.params.iter().find_map(|(k, v)| match v {
            EValue::Str(s) if k == "id" => Some(s.clone()),
            _ => None,
        });
        let id = explicit.unwrap_or_else(|| {
            let n = counters.entry(node.plugin.as_str()).or_insert(0);
            *n += 1;
            format!("{}#{n}", node.plugin)
        });
        ids.entry(id).or_insert(site);
    }
    ids
}

/// The engine's stable code for a finding.
fn classify(e: &SpecError) -> &'static str {
    e.code
}

/// The directory of `path`, `.` when it has none.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn display_dir(dir: &Path) -> String {
    let d = normalize(dir);
    if d.as_os_str().is_empty() {
        ".".into()
    } else {
        d.display().to_string()
    }
}

/// `path` without `.` components and with `x/..` folded, without touching
/// the file system: what diagnostics print.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `dir` made absolute against the current directory, normalised.
fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        return normalize(dir);
    }
    match std::env::current_dir() {
        Ok(cwd) => normalize(&cwd.join(dir)),
        Err(_) => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_dots() {
        assert_eq!(normalize(Path::new("./a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("/a/b/..")), PathBuf::from("/a"));
    }
}
