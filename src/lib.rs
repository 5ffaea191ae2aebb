//! patchbay: a declarative integration engine.
//!
//! Data flows one way: YAML is loaded ([`yaml`], [`recipe`]), validated
//! against the [`catalog`] and [`connections`] into a
//! [`recipe::validate::ValidRecipe`], and only that is run.

pub mod authoring;
pub mod catalog;
pub mod cli;
pub mod connections;
pub mod connectors;
pub mod diagnostic;
pub mod dispatch;
pub mod duration;
/// The HighLevel and SendPulse emulators (the `sandbox` feature).
#[cfg(feature = "sandbox")]
pub use patchbay_emulators as emulator;
pub mod engine;
pub mod fire;
pub mod hostile;
pub mod id;
pub mod interpreter;
pub mod jsonpath;
pub mod metrics;
pub mod ops;
pub mod recipe;
pub mod reload;
pub mod run;
pub mod safefile;
pub mod schema;
pub mod secret;
pub mod server;
pub mod status;
pub mod store;
pub mod template;
pub mod testing;
pub mod yaml;
pub mod zone;
