fn main() -> std::process::ExitCode {
    mm_upgrade::main(std::env::args_os())
}
