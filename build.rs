//! Rebuilds the crate when a migration is added or changed: the SQL files
//! in `migrations/` are embedded at compile time (`refinery`'s
//! `embed_migrations!`), which cargo cannot see on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
