//! The observability domain: aggregates, commands, events, value objects and the rules
//! that guard them.
//!
//! This crate owns the business rules of the design document and nothing else. It performs
//! no I/O and must not depend on a database, HTTP or AWS crate; time and randomness reach
//! it through commands, so every decision is reproducible from the event history.
//!
//! Entry points:
//! - [`metrics::Metrics`]: a batch of metrics and custom metrics recorded for one service;
//! - [`trace::Trace`]: one distributed trace with its spans, annotations and errors;
//! - [`health::HealthCheck`]: one registered health check and the results of its runs;
//! - [`validation::FieldError`]: the rule violation every aggregate reports, naming the
//!   offending field the way a caller spelled it (`metrics[3].unit`).

pub mod health;
pub mod metrics;
pub mod trace;
pub mod validation;

/// Version string stamped on every event this crate defines. Bump it per event type when
/// a payload changes shape, and add an upcaster for the old version.
pub const EVENT_VERSION: &str = "1.0";
