//! Use cases of the observability service, over the `cqrs-es` framework.
//!
//! This crate turns requests from other domains into commands on the aggregates of
//! `skafu-domain`, retries them when two writers race on one aggregate, and runs health
//! checks through a probe port. It depends on the domain, the projections and `cqrs-es`,
//! never on a database, HTTP or AWS crate: the event repository, the snapshot table and
//! the HTTP probe are supplied by `skafu-infrastructure` through the traits here.
//!
//! Entry points:
//! - [`service::Observability`]: every write use case;
//! - [`store::SnapshotStore`]: an event store that loads from a snapshot plus the events
//!   after it, so loading does not grow with history;
//! - [`ports`]: what infrastructure must provide.

pub mod error;
pub mod ports;
pub mod service;
pub mod store;

pub use error::AppError;
