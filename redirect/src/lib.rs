//! Dynamic redirects (`GET /r/{key}`): immutable short keys, versioned destinations, time
//! windows, A/B splits and an audit trail.
//!
//! Not built yet: this crate holds the place the part will take in the workspace, so the
//! layout already shows where it goes. See ARCHITECTURE.md and DESIGN.md for its shape; it
//! will reuse the tiered lookup of the `bindings` crate and the HTTP surface of `service`.
