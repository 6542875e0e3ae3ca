//! `pool-bench`: see the crate's README, or run it with `--help`.

fn main() -> std::process::ExitCode {
    pool_bench::main()
}
