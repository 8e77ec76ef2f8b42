//! What every HTTP surface of qrpool shares, so that the binder, the middle page and the
//! redirect answer, fail, report and shut down the same way.
//!
//! - [`auth`]: API keys, scopes and a rate limit per key, for every API.
//! - [`problem`]: RFC 9457 `application/problem+json` errors for the APIs.
//! - [`openapi`]: the check that keeps each hand-written OpenAPI document true.
//! - [`ops`]: `/healthz`, `/readyz` (named readiness checks) and `/metrics` (Prometheus).
//! - [`layers`]: body limit, time limit, request ids in spans, per-route metrics.
//! - [`front`]: scan paths answered before the router, observed the same way.
//! - [`serve`]: runs a service until a shutdown future resolves, then drains.

pub mod auth;
pub mod front;
pub mod image;
pub mod layers;
pub mod openapi;
pub mod ops;
pub mod problem;
mod serve;

pub use auth::{Caller, Keys};
pub use front::{Front, ScanRoute};
pub use ops::{Readiness, ReadinessCheck};
pub use problem::Problem;
pub use serve::serve;
