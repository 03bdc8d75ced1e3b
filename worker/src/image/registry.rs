//! Registry client (OCI distribution API). Work in progress.
