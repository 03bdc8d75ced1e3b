//! Image references as users type them (`busybox`, `busybox:1.36`,
//! `127.0.0.1:5000/team/app:v2`, `app@sha256:…`). The parser lives in
//! [`agent_common::reference`], shared with the manager's control API so that
//! a service's image is refused at the API edge by the engine's own rules.

pub use agent_common::reference::{Reference, ReferenceError};
