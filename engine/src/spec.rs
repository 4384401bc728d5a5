//! The description of a pipeline, before it is built: what `lang` compiles a
//! routes file into, and what an embedder may write by hand.

use crate::params::Value;

/// One plugin instance to build.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// The plugin type name (`http`, `file`).
    pub plugin: String,
    /// Its parameters as written, including `id` and `label` when given.
    pub params: Vec<(String, Value)>,
}

impl NodeSpec {
    /// A node of type `plugin` with no parameters.
    pub fn new(plugin: impl Into<String>) -> Self {
        Self {
            plugin: plugin.into(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }
}

/// `filter <patterns...> <type> { ... }`: runs on every event whose tag matches.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterSpec {
    /// Tag patterns; any may match.
    pub patterns: Vec<String>,
    /// The filter to build.
    pub node: NodeSpec,
}

/// `match <patterns...> <type> { ... }`: the first matching block takes the
/// event. Several outputs (from `copy`) each get every event.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchSpec {
    /// Tag patterns; any may match.
    pub patterns: Vec<String>,
    /// The outputs to build (one, or several for `copy`).
    pub outputs: Vec<NodeSpec>,
}

/// A list of filters and matches: the top level, or one label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowSpec {
    /// Filters, in file order.
    pub filters: Vec<FilterSpec>,
    /// Matches, in file order.
    pub matches: Vec<MatchSpec>,
}

/// `label <name> { ... }`: a flow that events enter only when sent to it.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSpec {
    /// The label's name; `errors` receives rejected events.
    pub name: String,
    /// Its filters and matches.
    pub flow: FlowSpec,
}

/// A whole pipeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineSpec {
    /// Inputs, in file order.
    pub inputs: Vec<NodeSpec>,
    /// The top-level flow every input feeds unless it names a label.
    pub root: FlowSpec,
    /// Named flows.
    pub labels: Vec<LabelSpec>,
}

/// The name of the label that receives rejected events.
pub const ERRORS_LABEL: &str = "errors";

/// Where in a [`PipelineSpec`] something is: lets `lang` point at the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// The whole pipeline.
    Pipeline,
    /// `inputs[i]`.
    Input(usize),
    /// A label block.
    Label(usize),
    /// A filter block; `label` is `None` at top level.
    Filter {
        /// Index into `labels`, or `None` for the top level.
        label: Option<usize>,
        /// Index into `filters`.
        index: usize,
    },
    /// A match block.
    Match {
        /// Index into `labels`, or `None` for the top level.
        label: Option<usize>,
        /// Index into `matches`.
        index: usize,
    },
    /// One output of a match block.
    Output {
        /// Index into `labels`, or `None` for the top level.
        label: Option<usize>,
        /// Index into `matches`.
        index: usize,
        /// Index into that match's `outputs`.
        output: usize,
    },
}

/// Which part of a site an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Focus {
    /// The block as a whole (its type name).
    Block,
    /// One parameter, by name.
    Param(String),
    /// A place inside one parameter's value: a string (or an entry of a map
    /// or list) and a byte offset in it, e.g. where an embedded expression
    /// fails to compile.
    Value {
        /// The parameter.
        param: String,
        /// Map keys and list indices (as decimal text) from the parameter's
        /// value down to the string at fault; empty for the value itself.
        path: Vec<String>,
        /// Byte offset inside that string.
        offset: usize,
        /// How many bytes from `offset` are at fault (at least one is shown).
        len: usize,
    },
    /// One tag pattern of a filter or match, with a byte offset in it.
    Pattern {
        /// Which pattern of the block.
        index: usize,
        /// Byte offset inside the pattern text.
        offset: usize,
    },
}

/// Whether a finding stops the build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The pipeline cannot be built.
    Error,
    /// The pipeline works, but probably not as meant.
    Warning,
}

/// A problem found while building a pipeline.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// Error or warning.
    pub severity: Severity,
    /// A short stable name of the kind of problem (`E-unknown-param`,
    /// `W-shadowed`, ...), for tools and tests that must not depend on wording.
    pub code: &'static str,
    /// The block.
    pub site: Site,
    /// The part of the block.
    pub focus: Focus,
    /// What is wrong and what was expected.
    pub message: String,
    /// Extra lines: known names, hints.
    pub notes: Vec<String>,
}

impl SpecError {
    pub(crate) fn error(site: Site, focus: Focus, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code: "E-build",
            site,
            focus,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}
