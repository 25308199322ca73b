//! The `chat-p2p` binary: everything lives in the library; this only hands
//! the process over to [`chat_p2p::cli::main`] and turns its verdict into an
//! exit code.

/// jemalloc rather than the system's malloc. The import and the router
/// pass what they allocate from thread to thread (parser to writer to
/// index builder; session to queue writer to session), and glibc's malloc
/// serialises those cross-thread frees on its arena locks: a 1M-message
/// import spent most of its waits in them. Measured in docs/BENCHMARKS.md
/// "Allocator (issue 13, fourth pass)".
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    chat_p2p::cli::main()
}
