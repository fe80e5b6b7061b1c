//! `lockmesh`: the node agent and its commands (see `lockmesh --help`).
fn main() -> std::process::ExitCode {
    lockmesh::cli::main()
}
