//! The records that cross process boundaries, and nothing else.
//!
//! Every part of qrpool talks about the same few things; this crate owns their types and
//! their wire formats, so that only these types cross Kafka, Redis and the databases:
//!
//! - [`request_id`]: [`RequestId`], the unguessable id a pooled code carries.
//! - [`pool_record`]: [`PoolRecord`], one pre-generated code waiting in the pool, and its
//!   versioned binary wire format.
//! - [`binding`]: [`Binding`], what a request id was bound to, and the bounded [`Params`].
//! - [`target`]: [`TargetTemplate`], where a scan is redirected, filled from params.
//! - [`link`]: [`Link`], a dynamic redirect with its versions and the policy that picks a
//!   scan's destination.
//! - [`scan_event`]: [`ScanEvent`], one scan as analytics receive it.
//! - [`tags`]: [`Tags`], the labels on a code or link that its scans' events carry.
//! - [`api_key`]: the API keys apps call with ([`KeyToken`]) and what they may do ([`Scopes`]).
//!
//! No I/O happens here: the adapters in `pool` and `bindings` move these records around.

pub mod api_key;
pub mod binding;
pub mod link;
pub mod pool_record;
pub mod request_id;
pub mod scan_event;
pub mod tags;
pub mod target;

pub use api_key::{KeyToken, Scope, Scopes, ScopesError, SessionToken, random_base62};
pub use binding::{Binding, Params, ParamsError, ParamsLimits, Tenant, TenantError};
pub use link::{
    CLICK_ID_PARAM, Link, LinkKey, LinkKeyError, LinkTarget, LinkTargetError, LinkVersion,
    RedirectStatus, Rule, Served, ServedBy, Variant, Visit, check_destination, with_click_id,
};
pub use pool_record::{CodeImage, DecodeError, PoolRecord};
pub use request_id::{ParseRequestIdError, RequestId};
pub use scan_event::{DeviceClass, EventId, ScanEvent, ScanKind, referrer_host};
pub use tags::{Tags, TagsError};
pub use target::{TargetError, TargetTemplate};

/// The fixed path prefix of the middle page; every pooled code opens `<public base>/m/<id>`.
pub const MIDDLE_PAGE_PATH: &str = "/m/";

/// The marker a printed code's URL carries, so that a scan of the code is told from a click
/// on a shared link (which drops or lacks it) in the scan events.
pub const PRINTED_MARKER: &str = "qr=1";

/// The URL a locally issued code encodes: the one fixed middle-page path with the request id
/// and the printed-code marker.
pub fn middle_page_url(public_base: &str, id: RequestId) -> String {
    format!("{public_base}{MIDDLE_PAGE_PATH}{id}?{PRINTED_MARKER}")
}
