//! The plugin contract in pipe's own types: what plugins say about themselves
//! and what the host asks of them in each role. The rest of pipe uses these,
//! never the generated bindings of one interface version.

use serde::Serialize;

use super::grants::FieldKind;

/// What a plugin can be used as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Step,
    Health,
    Traffic,
    Analysis,
    Notify,
}

impl Role {
    /// How a pipeline names the role (`uses`, `health`, …), for messages.
    pub fn node(self) -> &'static str {
        match self {
            Role::Step => "uses",
            Role::Health => "health",
            Role::Traffic => "traffic",
            Role::Analysis => "analysis",
            Role::Notify => "notify",
        }
    }
}

/// What `describe` told us.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub summary: String,
    /// The interface version the component speaks.
    pub interface: String,
    pub fields: Vec<FieldInfo>,
    pub capabilities: Vec<String>,
    pub roles: Vec<Role>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FieldInfo {
    pub name: String,
    pub description: String,
    pub required: bool,
    pub kind: FieldKind,
}

/// One backend of a service and its share of traffic (0: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub address: String,
    pub weight: u32,
}

/// A span an analysis measures.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub canary: Vec<String>,
    pub baseline: Vec<String>,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What one side did during a window.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Side {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Measurement {
    pub canary: Side,
    pub baseline: Side,
    pub note: String,
}

/// Something a deployment did, for notifiers.
#[derive(Clone, Debug, Serialize)]
pub struct DeployEvent {
    pub pipeline: String,
    pub deploy: String,
    pub version: String,
    pub kind: String,
    pub message: String,
    pub details: Vec<(String, String)>,
    pub logs: String,
}

/// What the host asks of a plugin in one call.
#[derive(Clone, Debug)]
pub enum Call {
    Run,
    Check { address: String },
    Route { backends: Vec<Backend> },
    Measure(Window),
    Notify(DeployEvent),
}

impl Call {
    pub fn role(&self) -> Role {
        match self {
            Call::Run => Role::Step,
            Call::Check { .. } => Role::Health,
            Call::Route { .. } => Role::Traffic,
            Call::Measure(_) => Role::Analysis,
            Call::Notify(_) => Role::Notify,
        }
    }
}

/// What a call that succeeded answered.
#[derive(Clone, Debug)]
pub enum Reply {
    Done,
    Note(String),
    Measured(Measurement),
}

/// The step's settings and grants as the plugin receives them.
#[derive(Clone, Debug, Default)]
pub struct Input {
    pub config: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    pub workspace: Option<String>,
}
