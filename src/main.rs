//! The `chat-p2p` binary: everything lives in the library; this only hands
//! the process over to [`chat_p2p::cli::main`] and turns its verdict into an
//! exit code.

fn main() -> std::process::ExitCode {
    chat_p2p::cli::main()
}
