//! The router.
pub mod backend;
