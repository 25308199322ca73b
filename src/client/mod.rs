//! The chat client: connects a profile to a router, sends its outbox,
//! takes in what is queued for it and records every message's journey in
//! the profile database.

pub mod backoff;
