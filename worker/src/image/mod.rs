//! Images: a content-addressed store under `<data-root>/image`, layers unpacked
//! once and shared read-only as overlayfs lower directories, and the ways
//! images arrive and leave (load/save/import/commit, registry pull/push).

pub mod reference;
pub mod registry;
