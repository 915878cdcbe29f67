//! One module per subcommand: each has an `Args` (clap) and a `run(Args) -> anyhow::Result<()>`.

pub mod inspect;
pub mod pull;
pub mod tokenize;
