fn main() -> std::process::ExitCode {
    rift::cli::run()
}
