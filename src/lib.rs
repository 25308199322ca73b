//! chat-p2p: a private, end-to-end encrypted messenger for the terminal.
//!
//! Everything a profile owns (its identity, contacts and messages) lives in
//! one SQLite file opened through [`store::Store`]. The binary is a thin
//! layer over this library: [`cli`] parses arguments, calls into the other
//! modules and formats their results. [`protocol`] (with [`crypto`]) is the
//! wire format both the chat client and the [`router`] speak.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod address;
pub mod archive;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod identity;
pub mod keywrap;
pub mod link;
pub mod profile;
pub mod protocol;
pub mod render;
pub mod router;
pub mod safety;
pub mod store;
